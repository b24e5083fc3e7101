/* Fuzzes the cost estimator and the usage request rewrite with request bodies; a
 * jansson-based estimator of the same rules is the reference the estimate must equal. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "tollgate/cost.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- the reference: the same estimate computed on jansson's parse ---- */

#define MAX_N 128
#define MAX_TOKENS_PARAM 2147483647LL
#define MAX_VIDEO_SECONDS 3600
#define MAX_VIDEO_SIDE 8192
static const char bad_json_msg[] =
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)";

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a <= 0 ? 0 : (a + b - 1) / b;
}

/* Code points in UTF-8 text: every byte that does not continue a sequence. */
static int64_t utf8_chars(const char *s, size_t n)
{
    int64_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* micro-units of `usec` micro-seconds of video at w x h */
static int64_t video_micro(int64_t usec, int w, int h)
{
    return ceil_div(usec * w * h, TG_VIDEO_REF_PIXELS);
}

/* "WxH", each side 1..MAX_VIDEO_SIDE, nothing else. */
static bool parse_size(const char *s, size_t n, int *w, int *h)
{
    int v[2] = {0, 0};
    size_t i = 0;
    for (int k = 0; k < 2; k++) {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 6)
            v[k] = v[k] * 10 + (s[i++] - '0');
        if (i == start || v[k] < 1 || v[k] > MAX_VIDEO_SIDE) return false;
        if (k == 0) {
            if (i >= n || (s[i] != 'x' && s[i] != 'X')) return false;
            i++;
        }
    }
    if (i != n) return false;
    *w = v[0];
    *h = v[1];
    return true;
}

/* A plain decimal ("8", "4.5") in [0, MAX_VIDEO_SECONDS]. */
static bool parse_seconds(const char *s, size_t n, double *out)
{
    char tmp[32];
    size_t digits = 0, dots = 0;
    if (n == 0 || n >= sizeof tmp) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else if (s[i] == '.' && dots++ == 0)
            ;
        else
            return false;
    }
    if (digits == 0) return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    double d = strtod(tmp, NULL);
    if (!(d >= 0 && d <= MAX_VIDEO_SECONDS)) return false;
    *out = d;
    return true;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a decimal number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

static int bad_type(char err[TG_ERR_LEN], const char *param, const char *expected,
                    const json_t *got)
{
    snprintf(err, TG_ERR_LEN, "Invalid type for '%s': expected %s, but got %s instead.", param,
             expected, type_name(got));
    return -1;
}

/* A member that is absent or null reads as absent. */
static json_t *member(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

/* An integer parameter in [lo, hi]; decimals with an integral value are accepted. */
static int int_param(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out,
                     char err[TG_ERR_LEN])
{
    json_t *v = member(obj, key);
    int64_t x;
    if (!v) return 0;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e18) {
        x = (int64_t)json_real_value(v);
    } else {
        return bad_type(err, key, "an integer", v);
    }
    if (x < lo) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid '%s': integer below minimum value. Expected a value >= %lld, but got "
                 "%lld instead.",
                 key, (long long)lo, (long long)x);
        return -1;
    }
    if (x > hi) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid '%s': integer above maximum value. Expected a value <= %lld, but got "
                 "%lld instead.",
                 key, (long long)hi, (long long)x);
        return -1;
    }
    *out = x;
    return 1;
}

struct prompt {
    int64_t chars;  /* text, to be divided by chars_per_token */
    int64_t tokens; /* token ids given directly */
};

static void add_text(struct prompt *pr, const json_t *s)
{
    pr->chars += utf8_chars(json_string_value(s), json_string_length(s));
}

/* A message's content: a string, null, or an array of parts whose `text` counts. */
static int count_content(json_t *content, const char *param, struct prompt *pr,
                         char err[TG_ERR_LEN])
{
    size_t i;
    json_t *part;
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) {
        add_text(pr, content);
        return 0;
    }
    if (!json_is_array(content)) return bad_type(err, param, "a string or an array", content);
    json_array_foreach(content, i, part)
    {
        json_t *text = json_is_object(part) ? json_object_get(part, "text") : NULL;
        if (json_is_string(text)) add_text(pr, text);
    }
    return 0;
}

static int count_messages(json_t *msgs, struct prompt *pr, char err[TG_ERR_LEN])
{
    size_t i;
    json_t *m;
    char param[48];
    if (!json_is_array(msgs)) return bad_type(err, "messages", "an array", msgs);
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m)) {
            snprintf(param, sizeof param, "messages[%zu]", i);
            return bad_type(err, param, "an object", m);
        }
        snprintf(param, sizeof param, "messages[%zu].content", i);
        if (count_content(json_object_get(m, "content"), param, pr, err) < 0) return -1;
    }
    return 0;
}

/* `prompt` or `input`: a string, or an array of strings, token ids, token-id
 * arrays, or (Responses-style) message items. */
static int count_inputs(json_t *v, const char *name, struct prompt *pr, char err[TG_ERR_LEN])
{
    static const char expected[] = "a string or an array";
    size_t i, j;
    json_t *el, *tok;
    char param[48];
    if (json_is_string(v)) {
        add_text(pr, v);
        return 0;
    }
    if (!json_is_array(v)) return bad_type(err, name, expected, v);
    json_array_foreach(v, i, el)
    {
        snprintf(param, sizeof param, "%s[%zu]", name, i);
        if (json_is_string(el)) {
            add_text(pr, el);
        } else if (json_is_integer(el)) {
            pr->tokens++;
        } else if (json_is_array(el)) {
            json_array_foreach(el, j, tok)
            {
                if (!json_is_integer(tok)) {
                    snprintf(param, sizeof param, "%s[%zu][%zu]", name, i, j);
                    return bad_type(err, param, "an integer", tok);
                }
            }
            pr->tokens += (int64_t)json_array_size(el);
        } else if (json_is_object(el)) {
            json_t *c = json_object_get(el, "content");
            json_t *t = json_object_get(el, "text");
            if (json_is_string(t)) add_text(pr, t);
            if (c && count_content(c, param, pr, err) < 0) return -1;
        } else {
            return bad_type(err, param, "a string, an integer or an array", el);
        }
    }
    return 0;
}

static void copy_model(struct tg_request_info *info, const char *s, size_t n)
{
    if (n > TG_MODEL_LEN - 1) {
        n = TG_MODEL_LEN - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(info->model, s, n);
    info->model[n] = '\0';
}

static void common_info(json_t *root, struct tg_request_info *info)
{
    json_t *model = json_object_get(root, "model");
    json_t *so = json_object_get(root, "stream_options");
    if (json_is_string(model))
        copy_model(info, json_string_value(model), json_string_length(model));
    info->stream = json_is_true(json_object_get(root, "stream"));
    info->client_wants_usage =
        json_is_object(so) && json_is_true(json_object_get(so, "include_usage"));
}

static int estimate_tokens(json_t *root, int cpt, int default_max, struct tg_cost *out,
                           struct tg_request_info *info, char err[TG_ERR_LEN])
{
    struct prompt pr = {0, 0};
    json_t *msgs = member(root, "messages");
    json_t *prompt = member(root, "prompt");
    json_t *input = member(root, "input");
    int64_t max = default_max > 0 ? default_max : 0, n = 1;
    int rc;

    if (msgs && count_messages(msgs, &pr, err) < 0) return -1;
    if (prompt && count_inputs(prompt, "prompt", &pr, err) < 0) return -1;
    if (input && count_inputs(input, "input", &pr, err) < 0) return -1;
    int64_t tokens = ceil_div(pr.chars, cpt) + pr.tokens;
    info->prompt_tokens_est = tokens;

    if (!(input && !msgs && !prompt)) {
        rc = int_param(root, "max_completion_tokens", 1, MAX_TOKENS_PARAM, &max, err);
        if (rc < 0) return -1;
        if (rc == 0 && int_param(root, "max_tokens", 1, MAX_TOKENS_PARAM, &max, err) < 0) return -1;
        if (int_param(root, "n", 1, MAX_N, &n, err) < 0) return -1;
        tokens += max * n;
    }
    out->u[TG_UNIT_TOKENS] = tokens * TG_MICRO;
    return 0;
}

struct video_req {
    double seconds;
    int width, height;
};

static int video_seconds_param(bool is_string, const char *s, size_t n, double num,
                               struct video_req *vr, char err[TG_ERR_LEN])
{
    double d = num;
    if ((is_string && !parse_seconds(s, n, &d)) || !(d > 0 && d <= MAX_VIDEO_SECONDS)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid value for 'seconds': expected a positive number of seconds, at most %d.",
                 MAX_VIDEO_SECONDS);
        return -1;
    }
    vr->seconds = d;
    return 0;
}

static int video_size_param(const char *s, size_t n, struct video_req *vr, char err[TG_ERR_LEN])
{
    if (!parse_size(s, n, &vr->width, &vr->height)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid value for 'size': expected WIDTHxHEIGHT with each side from 1 to %d, "
                 "like '1280x720'.",
                 MAX_VIDEO_SIDE);
        return -1;
    }
    return 0;
}

static int video_json(json_t *root, struct video_req *vr, char err[TG_ERR_LEN])
{
    json_t *sec = member(root, "seconds");
    json_t *size = member(root, "size");
    if (sec) {
        if (json_is_string(sec)) {
            if (video_seconds_param(true, json_string_value(sec), json_string_length(sec), 0, vr,
                                    err) < 0)
                return -1;
        } else if (json_is_number(sec)) {
            if (video_seconds_param(false, NULL, 0, json_number_value(sec), vr, err) < 0) return -1;
        } else {
            return bad_type(err, "seconds", "a string or a number", sec);
        }
    }
    if (size) {
        if (!json_is_string(size)) return bad_type(err, "size", "a string", size);
        if (video_size_param(json_string_value(size), json_string_length(size), vr, err) < 0)
            return -1;
    }
    return 0;
}

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int ref_estimate(enum tg_cost_model model, int chars_per_token, int default_max_tokens,
                        const char *body, size_t len, struct tg_cost *out,
                        struct tg_request_info *info, char err[TG_ERR_LEN])
{
    json_t *root = NULL;
    json_error_t jerr;
    struct video_req vr = {TG_VIDEO_DEFAULT_SECONDS, TG_VIDEO_DEFAULT_WIDTH,
                           TG_VIDEO_DEFAULT_HEIGHT};
    int cpt = chars_per_token > 0 ? chars_per_token : 1;
    int rc = -1;
    const char *first = body ? skip_ws(body, body + len) : NULL;

    memset(out, 0, sizeof *out);
    memset(info, 0, sizeof *info);
    err[0] = '\0';
    out->u[TG_UNIT_REQUESTS] = TG_MICRO;

    if (model == TG_COST_REQUESTS) {
        /* no body needed: read model and stream when it is a JSON object */
        if (first && first < body + len && *first == '{') root = json_loadb(body, len, 0, &jerr);
        if (json_is_object(root)) common_info(root, info);
        rc = 0;
        goto out;
    }
    if (len > 0 && body) root = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    if (!root) {
        snprintf(err, TG_ERR_LEN, "%s", bad_json_msg);
        goto out;
    }
    if (!json_is_object(root)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid request body: expected a JSON object, but got %s instead.",
                 type_name(root));
        goto out;
    }
    common_info(root, info);
    if (model == TG_COST_TOKENS) {
        rc = estimate_tokens(root, cpt, default_max_tokens, out, info, err);
        goto out;
    }
    if (video_json(root, &vr, err) < 0) goto out;
    /* a started second is charged whole */
    info->video_seconds = (int64_t)ceil(vr.seconds);
    info->width = vr.width;
    info->height = vr.height;
    out->u[TG_UNIT_VIDEO_SECONDS] =
        video_micro(info->video_seconds * TG_MICRO, info->width, info->height);
    rc = 0;
out:
    json_decref(root);
    if (rc < 0) memset(out, 0, sizeof *out);
    return rc;
}

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
    const char *first = skip_ws(body, body + len);
    /* not for multipart, nor with a NUL byte: jansson skips one that follows
     * a number or literal (its stream buffer mistakes it for its own end) */
    if (!(model == TG_COST_VIDEO && body + len - first >= 2 && first[0] == '-' &&
          first[1] == '-') &&
        !memchr(body, '\0', len)) {
        /* JSON (not multipart): exactly what the jansson reading gives */
        struct tg_cost rc_cost;
        struct tg_request_info rinfo;
        char rerr[TG_ERR_LEN];
        int rrc = ref_estimate(model, cpt, 4096, body, len, &rc_cost, &rinfo, rerr);
        CHECK(rc == rrc);
        if (rc != 0) CHECK(strcmp(err, rerr) == 0);
        if (rc == 0) {
            CHECK(memcmp(c.u, rc_cost.u, sizeof c.u) == 0);
            CHECK(strcmp(info.model, rinfo.model) == 0);
            CHECK(info.stream == rinfo.stream &&
                  info.client_wants_usage == rinfo.client_wants_usage);
            CHECK(info.prompt_tokens_est == rinfo.prompt_tokens_est);
            CHECK(info.video_seconds == rinfo.video_seconds);
            CHECK(info.width == rinfo.width && info.height == rinfo.height);
        }
    }
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
    CHECK(json_is_object(in) == (out != NULL) || memchr(body, '\0', len));
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
