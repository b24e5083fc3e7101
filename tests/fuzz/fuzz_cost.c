/* Fuzzes the cost estimator and the usage request rewrite with request bodies. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "tollgate/cost.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static void estimate(enum tg_cost_model model, int cpt, const char *body, size_t len)
{
    struct tg_cost c, a;
    struct tg_request_info info;
    struct tg_usage u;
    char err[TG_ERR_LEN];
    int rc = tg_cost_estimate(model, cpt, 4096, body, len, &c, &info, err);
    if (rc != 0) {
        /* only a body can be wrong, and a requests route needs none */
        CHECK(rc == -1 && model != TG_COST_REQUESTS);
        CHECK(strnlen(err, TG_ERR_LEN) > 0 && strnlen(err, TG_ERR_LEN) < TG_ERR_LEN);
        for (int i = 0; i < TG_UNIT_COUNT; i++)
            CHECK(c.u[i] == 0);
        return;
    }
    CHECK(strnlen(info.model, TG_MODEL_LEN) < TG_MODEL_LEN);
    CHECK(c.u[TG_UNIT_REQUESTS] == TG_MICRO);
    CHECK(c.u[TG_UNIT_TOKENS] >= 0 && c.u[TG_UNIT_TOKENS] % TG_MICRO == 0);
    CHECK(info.prompt_tokens_est >= 0 && info.prompt_tokens_est <= c.u[TG_UNIT_TOKENS] / TG_MICRO);
    if (model != TG_COST_TOKENS) CHECK(c.u[TG_UNIT_TOKENS] == 0);
    if (model == TG_COST_VIDEO) {
        CHECK(info.video_seconds >= 1 && info.video_seconds <= 3600);
        CHECK(info.width >= 1 && info.width <= 8192 && info.height >= 1 && info.height <= 8192);
        CHECK(c.u[TG_UNIT_VIDEO_SECONDS] > 0);
    } else {
        CHECK(c.u[TG_UNIT_VIDEO_SECONDS] == 0);
    }
    /* with no usage from the reply, the actual cost of a video or requests
     * route is the estimate; of a token route, at most the estimate */
    memset(&u, 0, sizeof u);
    tg_cost_actual(model, cpt, &info, &u, &a);
    CHECK(a.u[TG_UNIT_REQUESTS] == TG_MICRO);
    CHECK(a.u[TG_UNIT_VIDEO_SECONDS] == c.u[TG_UNIT_VIDEO_SECONDS]);
    CHECK(a.u[TG_UNIT_TOKENS] >= 0 && a.u[TG_UNIT_TOKENS] <= c.u[TG_UNIT_TOKENS]);
}

static void request_usage(const char *body, size_t len)
{
    static const char ins[] = "\"stream_options\":{\"include_usage\":true}";
    json_error_t e;
    json_t *in = json_loadb(body, len, 0, &e);
    size_t n = 0;
    char *out = tg_cost_request_usage(body, len, &n);
    CHECK(json_is_object(in) == (out != NULL));
    if (!out) goto done;
    bool had = json_object_get(in, "stream_options") != NULL;
    json_t *j = json_loadb(out, n, 0, &e);
    CHECK(json_is_object(j));
    CHECK(json_is_true(json_object_get(json_object_get(j, "stream_options"), "include_usage")));
    /* every other member is unchanged */
    CHECK(json_object_size(j) == json_object_size(in) + !had);
    json_object_del(j, "stream_options");
    json_object_del(in, "stream_options");
    CHECK(json_equal(j, in));
    json_decref(j);
    if (!had) {
        /* inserted after the first '{', all other bytes as they were */
        size_t at = (size_t)((const char *)memchr(body, '{', len) - body) + 1;
        CHECK(n == len + sizeof ins - 1 || n == len + sizeof ins);
        CHECK(memcmp(out, body, at) == 0);
        CHECK(memcmp(out + at, ins, sizeof ins - 1) == 0);
        CHECK(memcmp(out + n - (len - at), body + at, len - at) == 0);
    }
done:
    json_decref(in);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    estimate(TG_COST_REQUESTS, 4, body, size);
    estimate(TG_COST_TOKENS, 4, body, size);
    estimate(TG_COST_TOKENS, 1, body, size);
    estimate(TG_COST_VIDEO, 4, body, size);
    request_usage(body, size);
    return 0;
}
