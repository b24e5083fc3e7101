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
    json_object_foreach(m, k, v)
    {
        if (!strcmp(k, "content") || !strcmp(k, "reasoning_content") || !strcmp(k, "refusal"))
            c += text_chars(v);
        if (!strcmp(k, "tool_calls") && json_is_array(v))
            json_array_foreach(v, i, tc) c +=
                text_chars(json_object_get(json_object_get(tc, "function"), "arguments"));
    }
    return c;
}

/* The reference: what the scanner must read from one JSON object, computed with jansson. */
struct expect {
    struct tg_usage u;
    bool inexact; /* a usage number was not an integer: only its presence is compared */
};

static void expect_usage(struct expect *x, json_t *v)
{
    const char *k;
    json_t *uv;
    int64_t p = 0, c = 0, t = -1;
    json_object_foreach(v, k, uv)
    {
        if (json_is_real(uv)) x->inexact = true;
        if (!json_is_integer(uv) || json_integer_value(uv) < 0) continue;
        int64_t n = json_integer_value(uv);
        if (n > MAX_USAGE) n = MAX_USAGE;
        if (!strcmp(k, "prompt_tokens") || !strcmp(k, "input_tokens")) p = n;
        if (!strcmp(k, "completion_tokens") || !strcmp(k, "output_tokens")) c = n;
        if (!strcmp(k, "total_tokens")) t = n;
    }
    x->u.have_tokens = true;
    x->u.prompt_tokens = p;
    x->u.completion_tokens = c;
    x->u.total_tokens = t >= 0 ? t : p + c;
}

/* Returns true for a usage-only chunk (empty choices and a usage object). */
static bool expect_object(struct expect *x, json_t *root)
{
    const char *k, *ck;
    json_t *v, *ch, *cv;
    size_t i;
    bool empty = false, usage = false;
    json_object_foreach(root, k, v)
    {
        if (!strcmp(k, "usage") && json_is_object(v)) {
            expect_usage(x, v);
            usage = true;
        } else if (!strcmp(k, "response") && json_is_object(v)) {
            json_object_foreach(v, ck, cv) if (!strcmp(ck, "usage") && json_is_object(cv))
                expect_usage(x, cv);
        } else if (!strcmp(k, "choices")) {
            empty = json_is_array(v) && json_array_size(v) == 0;
            json_array_foreach(v, i, ch)
            {
                json_object_foreach(ch, ck, cv)
                {
                    if (!strcmp(ck, "delta") || !strcmp(ck, "message"))
                        x->u.content_chars += message_chars(cv);
                    else if (!strcmp(ck, "text"))
                        x->u.content_chars += text_chars(cv);
                }
            }
        }
    }
    return empty && usage;
}

/* Reads a payload as the scanner must. -1: not comparable (an object jansson
 * refuses, or one with duplicate keys); 1: a usage-only chunk; 0: other. */
static int expect_payload(struct expect *x, const char *p, size_t n)
{
    json_error_t e;
    size_t i = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    if (i == n || p[i] != '{') return 0; /* not an object: nothing to read */
    json_t *root = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!root) return -1;
    int rc = expect_object(x, root);
    json_decref(root);
    return rc;
}

static void compare(const struct expect *x, const struct tg_usage *got)
{
    CHECK(got->content_chars == x->u.content_chars);
    CHECK(got->have_tokens == x->u.have_tokens);
    if (!x->inexact) {
        CHECK(got->prompt_tokens == x->u.prompt_tokens);
        CHECK(got->completion_tokens == x->u.completion_tokens);
        CHECK(got->total_tokens == x->u.total_tokens);
    }
}

/* SSE the plain way: the whole input, events split at blank lines, data lines
 * joined with '\n'. Fills the bytes to emit; false if not comparable. */
static bool expect_sse(const char *in, size_t n, bool strip, struct expect *x, struct out *o)
{
    size_t i = 0;
    bool ok = true;
    while (i < n && ok) {
        size_t start = i;
        bool ended = false;
        while (i < n && !ended) {
            const char *nl = memchr(in + i, '\n', n - i);
            size_t le = nl ? (size_t)(nl - in) : n, ce = le;
            if (ce > i && in[ce - 1] == '\r') ce--;
            ended = nl && ce == i;
            i = nl ? le + 1 : n;
        }
        char *data = malloc(i - start + 1);
        size_t dl = 0, ndata = 0;
        CHECK(data);
        for (size_t l = start; l < i;) {
            const char *nl = memchr(in + l, '\n', i - l);
            size_t le = nl ? (size_t)(nl - in) : i, ce = le;
            if (ce > l && in[ce - 1] == '\r') ce--;
            const char *line = in + l;
            size_t len = ce - l;
            l = nl ? le + 1 : i;
            if (len < 4 || memcmp(line, "data", 4) != 0 || (len > 4 && line[4] != ':')) continue;
            size_t v = len > 4 ? 5 : 4;
            if (v < len && line[v] == ' ') v++;
            if (ndata++) data[dl++] = '\n';
            memcpy(data + dl, line + v, len - v);
            dl += len - v;
        }
        int rc = 0;
        if (ndata && !(dl == 6 && !memcmp(data, "[DONE]", 6))) rc = expect_payload(x, data, dl);
        free(data);
        if (rc < 0) ok = false;
        if (!(strip && ended && rc == 1)) emit(o, in + start, i - start);
    }
    return ok;
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
    struct expect x;
    memset(&x, 0, sizeof x);
    if (!sse && expect_payload(&x, in, n) >= 0) compare(&x, u);
    if (sse) {
        struct out o = {NULL, 0, 0};
        if (expect_sse(in, n, strip, &x, &o)) {
            compare(&x, u);
            if (strip)
                CHECK(o.len == whole.out.len &&
                      (o.len == 0 || !memcmp(o.buf, whole.out.buf, o.len)));
        }
        free(o.buf);
    }

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
