/* Fuzzes the reply scanner: the first byte picks the mode, the rest is the reply,
 * fed in several splits that must all give the same usage and the same bytes. */
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

#define MAX_USAGE 1000000000000LL

struct out {
    char *buf;
    size_t len, cap;
};

static void emit(void *arg, const char *d, size_t n)
{
    struct out *o = arg;
    CHECK(n > 0);
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2;
        o->buf = realloc(o->buf, o->cap);
        CHECK(o->buf);
    }
    memcpy(o->buf + o->len, d, n);
    o->len += n;
}

struct run {
    struct tg_usage u;
    bool overflow;
    struct out out;
};

/* mode 0: whole; 1: one byte at a time; 2: pieces drawn from `seed` */
static void run(bool sse, bool strip, const char *in, size_t n, int mode, uint64_t seed,
                struct run *r)
{
    struct tg_scan s;
    memset(r, 0, sizeof *r);
    tg_scan_init(&s, sse, strip, emit, &r->out);
    for (size_t i = 0; i < n;) {
        size_t k = n - i;
        if (mode == 1) k = 1;
        if (mode == 2) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            k = 1 + (seed >> 33) % 97;
            if (k > n - i) k = n - i;
        }
        tg_scan_feed(&s, in + i, k);
        i += k;
    }
    tg_scan_finish(&s);
    r->u = s.usage;
    r->overflow = s.overflow;
    tg_scan_deinit(&s);
}

static void same(const struct run *a, const struct run *b)
{
    CHECK(a->u.prompt_tokens == b->u.prompt_tokens);
    CHECK(a->u.completion_tokens == b->u.completion_tokens);
    CHECK(a->u.total_tokens == b->u.total_tokens);
    CHECK(a->u.have_tokens == b->u.have_tokens);
    CHECK(a->u.have_video == b->u.have_video);
    CHECK(a->u.video_seconds == b->u.video_seconds);
    CHECK(a->u.width == b->u.width && a->u.height == b->u.height);
    CHECK(a->u.content_chars == b->u.content_chars);
    CHECK(a->overflow == b->overflow);
    CHECK(a->out.len == b->out.len);
    CHECK(a->out.len == 0 || memcmp(a->out.buf, b->out.buf, a->out.len) == 0);
}

static int64_t text_chars(json_t *s)
{
    int64_t c = 0;
    if (!json_is_string(s)) return 0;
    const char *p = json_string_value(s);
    for (size_t i = 0; i < json_string_length(s); i++)
        c += ((unsigned char)p[i] & 0xC0) != 0x80;
    return c;
}

static int64_t message_chars(json_t *m)
{
    const char *k;
    json_t *v, *tc;
    size_t i;
    int64_t c = 0;
    json_object_foreach (m, k, v) {
        if (!strcmp(k, "content") || !strcmp(k, "reasoning_content") || !strcmp(k, "refusal"))
            c += text_chars(v);
        if (!strcmp(k, "tool_calls") && json_is_array(v))
            json_array_foreach (v, i, tc)
                c += text_chars(json_object_get(json_object_get(tc, "function"), "arguments"));
    }
    return c;
}

/* What the scanner must read from a body jansson accepts (no duplicate keys):
 * the same usage and text, computed from the parsed document. */
static void compare_with_jansson(const char *in, size_t n, const struct tg_usage *got)
{
    json_error_t e;
    json_t *root = json_loadb(in, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    const char *k;
    json_t *v, *ch;
    size_t i;
    if (!json_is_object(root)) goto out;
    bool usage = false, exact = true;
    int64_t p = 0, c = 0, t = -1, chars = 0;
    json_object_foreach (root, k, v) {
        if (!strcmp(k, "usage") && json_is_object(v)) {
            const char *uk;
            json_t *uv;
            usage = true;
            p = c = 0;
            t = -1;
            json_object_foreach (v, uk, uv) {
                if (json_is_real(uv)) exact = false; /* read as its integer part */
                if (!json_is_integer(uv) || json_integer_value(uv) < 0) continue;
                int64_t x = json_integer_value(uv);
                if (x > MAX_USAGE) x = MAX_USAGE;
                if (!strcmp(uk, "prompt_tokens") || !strcmp(uk, "input_tokens")) p = x;
                if (!strcmp(uk, "completion_tokens") || !strcmp(uk, "output_tokens")) c = x;
                if (!strcmp(uk, "total_tokens")) t = x;
            }
        }
        if (!strcmp(k, "choices") && json_is_array(v)) {
            json_array_foreach (v, i, ch) {
                const char *ck;
                json_t *cv;
                json_object_foreach (ch, ck, cv) {
                    if (!strcmp(ck, "delta") || !strcmp(ck, "message"))
                        chars += message_chars(cv);
                    else if (!strcmp(ck, "text"))
                        chars += text_chars(cv);
                }
            }
        }
    }
    CHECK(got->content_chars == chars);
    CHECK(got->have_tokens == usage);
    if (usage && exact) {
        CHECK(got->prompt_tokens == p && got->completion_tokens == c);
        CHECK(got->total_tokens == (t >= 0 ? t : p + c));
    }
out:
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    bool sse = data[0] & 1, strip = data[0] & 2;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    uint64_t seed = data[0] >> 2;
    for (size_t i = 0; i < n && i < 64; i++)
        seed = seed * 31 + (uint8_t)in[i];

    struct run whole, other;
    run(sse, strip, in, n, 0, 0, &whole);
    const struct tg_usage *u = &whole.u;
    CHECK(u->prompt_tokens >= 0 && u->completion_tokens >= 0 && u->total_tokens >= 0);
    CHECK(u->content_chars >= 0 && u->content_chars <= (int64_t)n);
    CHECK(!u->have_video || (u->video_seconds >= 0 && u->video_seconds <= 3600));
    CHECK(whole.out.len <= n);
    if (!(sse && strip)) CHECK(whole.out.len == n && (n == 0 || !memcmp(whole.out.buf, in, n)));
    if (!sse) compare_with_jansson(in, n, u);

    if (n <= 16384) {
        run(sse, strip, in, n, 1, 0, &other);
        same(&whole, &other);
        free(other.out.buf);
    }
    for (int k = 0; k < 3; k++) {
        run(sse, strip, in, n, 2, seed + (uint64_t)k, &other);
        same(&whole, &other);
        free(other.out.buf);
    }
    free(whole.out.buf);
    return 0;
}
