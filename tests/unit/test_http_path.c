/* Tests of path normalisation and the query check: a table, every byte, every encoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "tollgate/http_path.h"

/* One path and what becomes of it: `want` is its normal form, the path itself
 * when it is already normal, or NULL when it is refused; `why` is then a word
 * the reason must contain. */
struct path_case {
    const char *in;
    size_t len;
    const char *want;
    const char *why;
};

#define SAME(s)                                                                                    \
    {                                                                                              \
        s, sizeof(s) - 1, s, NULL                                                                  \
    }
#define NORM(s, w)                                                                                 \
    {                                                                                              \
        s, sizeof(s) - 1, w, NULL                                                                  \
    }
#define REFUSED(s, w)                                                                              \
    {                                                                                              \
        s, sizeof(s) - 1, NULL, w                                                                  \
    }

/* Reason words: which rule refused the path. */
#define START "start"
#define BYTE "not allowed"
#define PCT "two hex digits"
#define SLASH "encoded '/' or '\\'"
#define CTL "encoded control"

static const struct path_case cases[] = {
    /* already normal: the common case */
    SAME("/"),
    SAME("/v1/chat/completions"),
    SAME("/v1/completions"),
    SAME("/v1/embeddings"),
    SAME("/v1/models"),
    SAME("/v1/models/gpt-4o-mini"),
    SAME("/v1/videos/video_123/content"),
    SAME("/v1/"),
    SAME("/v1/chat/completions/"),
    SAME("/.well-known/openid-configuration"),
    SAME("/a/..b"),
    SAME("/a/b.."),
    SAME("/a/..."),
    SAME("/a/.b/"),
    SAME("/a/.../b"),
    SAME("/v1/files/file-abc:content"),
    SAME("/a;b=c/d"),
    SAME("/a/..;/b"), /* a segment "..;" is not a dot segment (see the header of http_path.c) */
    SAME("/a/%C3%A9"),
    SAME("/a/%20b"),
    SAME("/a/%25"),
    SAME("/a/%252e%252e"), /* an encoded '%' stays: no double decoding */
    SAME("/a/%3F"),
    SAME("/a/%23"),
    SAME("/a/%3B"),
    SAME("/a/%2A"),
    SAME("/a/%FF"),
    SAME("/!$&'()*+,;=:@-._~"),
    SAME("/ABCDEFGHIJKLMNOPQRSTUVWXYZ/abcdefghijklmnopqrstuvwxyz/0123456789"),

    /* the route-cost bypass: every spelling of "../" from /v1/models to the chat route */
    NORM("/v1/models/../chat/completions", "/v1/chat/completions"),
    NORM("/v1/models/%2e%2e/chat/completions", "/v1/chat/completions"),
    NORM("/v1/models/%2E%2E/chat/completions", "/v1/chat/completions"),
    NORM("/v1/models/%2E./chat/completions", "/v1/chat/completions"),
    NORM("/v1/models/.%2e/chat/completions", "/v1/chat/completions"),
    NORM("/v1/models/./../chat/completions", "/v1/chat/completions"),
    NORM("/v1/models//../chat/completions", "/v1/chat/completions"),
    NORM("/v1/%63hat/completions", "/v1/chat/completions"),
    NORM("/v1/%63%68%61%74/%63ompletions", "/v1/chat/completions"),
    NORM("/%76%31/chat/completions", "/v1/chat/completions"),
    NORM("/v1/models/gpt-4o/../../chat/completions", "/v1/chat/completions"),
    NORM("/v1/embeddings/../../../../v1/chat/completions", "/v1/chat/completions"),
    REFUSED("/v1/chat%2fcompletions", SLASH),
    REFUSED("/v1/chat%2Fcompletions", SLASH),
    REFUSED("/v1/models/..%2fchat/completions", SLASH),
    REFUSED("/v1/models/%2e%2e%2fchat/completions", SLASH),
    REFUSED("/v1\\chat", BYTE),
    REFUSED("/v1/models/..\\chat/completions", BYTE),
    REFUSED("/v1%5cchat", SLASH),
    REFUSED("/v1%5Cchat", SLASH),
    REFUSED("/v1/chat/completions%00", CTL),
    REFUSED("/v1/chat/completions\0", BYTE),
    REFUSED("/v1/chat/completions\0/../../models", BYTE),

    /* unreserved characters decoded, other encodings kept in upper case */
    NORM("/%7Euser", "/~user"),
    NORM("/%7euser", "/~user"),
    NORM("/%41%5a%30%2D%5F%7e%2E", "/AZ0-_~."),
    NORM("/a%2Eb", "/a.b"),
    NORM("/a/%c3%a9", "/a/%C3%A9"),
    NORM("/a/%C3%a9", "/a/%C3%A9"),
    NORM("/a%3f", "/a%3F"),
    NORM("/%e2%82%ac", "/%E2%82%AC"),
    NORM("/%ff", "/%FF"),
    NORM("/%3b%3d", "/%3B%3D"),
    NORM("/a/%2e%2e%2e", "/a/..."),
    NORM("/a/.%2e./b", "/a/.../b"),
    NORM("/a/%2e%2ex", "/a/..x"),
    NORM("/a/b..%3b/c", "/a/b..%3B/c"),

    /* runs of '/' */
    NORM("//", "/"),
    NORM("///", "/"),
    NORM("//v1/chat/completions", "/v1/chat/completions"),
    NORM("/v1//chat/completions", "/v1/chat/completions"),
    NORM("/v1///chat////completions", "/v1/chat/completions"),
    NORM("/v1/chat/completions//", "/v1/chat/completions/"),
    NORM("/a//../b", "/b"), /* collapsed first, then the dot segment */
    NORM("/a/.//b", "/a/b"),

    /* dot segments (RFC 3986 5.2.4) */
    NORM("/../v1/x", "/v1/x"),
    NORM("/v1/models/..", "/v1/"),
    NORM("/v1/models/../", "/v1/"),
    NORM("/v1/./x/.", "/v1/x/"),
    NORM("/v1/./x/./", "/v1/x/"),
    NORM("/.", "/"),
    NORM("/..", "/"),
    NORM("/./", "/"),
    NORM("/../", "/"),
    NORM("/..//..", "/"),
    NORM("/./././.", "/"),
    NORM("/../../../..", "/"),
    NORM("/a/b/c/../../d", "/a/d"),
    NORM("/a/b/c/./../../g", "/a/g"),
    NORM("/a/b/../../../../c", "/c"),
    NORM("/a/b/..", "/a/"),
    NORM("/a/b/.", "/a/b/"),
    NORM("/a/b/%2e", "/a/b/"),
    NORM("/a/b/%2E%2e/", "/a/"),
    NORM("/a/b;c/../d", "/a/d"),
    NORM("/.hidden/../x", "/x"),
    NORM("/a/../.b", "/.b"),
    NORM("/a/../..b", "/..b"),
    NORM("/mid/content=5/../6", "/mid/6"), /* RFC 3986 5.4.1's example */

    /* refused: not a path */
    REFUSED("", START),
    REFUSED("v1/chat/completions", START),
    REFUSED("*", START),
    REFUSED("http://h/v1/chat/completions", START),
    REFUSED("%2Fv1", START),
    REFUSED(".", START),

    /* refused: bytes outside pchar and '/' */
    REFUSED("/v1 chat", BYTE),
    REFUSED("/v1/\"", BYTE),
    REFUSED("/<", BYTE),
    REFUSED("/>", BYTE),
    REFUSED("/{", BYTE),
    REFUSED("/}", BYTE),
    REFUSED("/|", BYTE),
    REFUSED("/^", BYTE),
    REFUSED("/`", BYTE),
    REFUSED("/#", BYTE),
    REFUSED("/?", BYTE),
    REFUSED("/[", BYTE),
    REFUSED("/]", BYTE),
    REFUSED("/\t", BYTE),
    REFUSED("/\r", BYTE),
    REFUSED("/\n", BYTE),
    REFUSED("/\x7f", BYTE),
    REFUSED("/\x80", BYTE),
    REFUSED("/\xc3\xa9", BYTE),
    REFUSED("/\xff", BYTE),
    REFUSED("\\v1", START),

    /* refused: malformed encodings */
    REFUSED("/%", PCT),
    REFUSED("/%2", PCT),
    REFUSED("/a%", PCT),
    REFUSED("/a%4", PCT),
    REFUSED("/%zz", PCT),
    REFUSED("/%2g", PCT),
    REFUSED("/%g2", PCT),
    REFUSED("/%%41", PCT),
    REFUSED("/% 41", PCT),
    REFUSED("/%-1", PCT),
    REFUSED("/%+1", PCT),

    /* refused: encoded control bytes */
    REFUSED("/%00", CTL),
    REFUSED("/%01", CTL),
    REFUSED("/%0a", CTL),
    REFUSED("/%0D%0A", CTL),
    REFUSED("/%1f", CTL),
    REFUSED("/%1F", CTL),
    REFUSED("/%7f", CTL),
    REFUSED("/%7F", CTL),

    /* refused after something that changes: the whole path is checked */
    REFUSED("/v1/../a\\", BYTE),
    REFUSED("/v1//%zz", PCT),
    REFUSED("/%63/%2f", SLASH),
    REFUSED("/a/%c3/%00", CTL),
    REFUSED("/./\xff", BYTE),
};

static char *dup_bytes(const char *s, size_t len)
{
    char *d = malloc(len ? len : 1);
    assert_non_null(d);
    memcpy(d, s, len);
    return d;
}

/* Runs one case, out of place and in place, and checks the contract: 0 and
 * -1 write nothing, n > 0 is a different path, and why is fit for a client. */
static void check_case(const struct path_case *c)
{
    char *out = malloc(c->len ? c->len : 1);
    char *canary = malloc(c->len ? c->len : 1);
    assert_non_null(out);
    assert_non_null(canary);
    memset(out, 0xA5, c->len);
    memset(canary, 0xA5, c->len);
    const char *why = NULL;
    ssize_t n = tg_http_path_normalize(c->in, c->len, out, &why);
    if (c->want == NULL) {
        if (n != -1) fail_msg("[%.*s] accepted (%zd), should be refused", (int)c->len, c->in, n);
        assert_non_null(why);
        if (!strstr(why, c->why)) fail_msg("[%.*s]: reason \"%s\"", (int)c->len, c->in, why);
        for (const char *p = why; *p; p++)
            assert_true(*p >= 0x20 && *p < 0x7f);
        assert_memory_equal(out, canary, c->len);
    } else if (strcmp(c->want, c->in) == 0 && strlen(c->in) == c->len) {
        if (n != 0) fail_msg("[%s] reported changed (%zd)", c->in, n);
        assert_memory_equal(out, canary, c->len);
    } else {
        if (n <= 0) fail_msg("[%.*s] gave %zd, want [%s]", (int)c->len, c->in, n, c->want);
        if ((size_t)n != strlen(c->want) || memcmp(out, c->want, (size_t)n) != 0)
            fail_msg("[%s] gave [%.*s], want [%s]", c->in, (int)n, out, c->want);
    }

    /* in place: the same result; the input untouched unless n > 0 */
    char *buf = dup_bytes(c->in, c->len);
    const char *why2 = NULL;
    ssize_t m = tg_http_path_normalize(buf, c->len, buf, &why2);
    assert_int_equal(m, n);
    if (n > 0)
        assert_memory_equal(buf, out, (size_t)n);
    else
        assert_memory_equal(buf, c->in, c->len);
    if (n < 0) assert_string_equal(why2, why);
    free(buf);
    free(canary);
    free(out);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++)
        check_case(&cases[i]);
}

/* The normal form of every accepted case is its own normal form. */
static void test_idempotent(void **state)
{
    (void)state;
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        const struct path_case *c = &cases[i];
        if (!c->want) continue;
        size_t len = strlen(c->want);
        char out[256];
        const char *why = NULL;
        ssize_t n = tg_http_path_normalize(c->want, len, out, &why);
        if (n != 0) fail_msg("[%s] (from [%s]) is not normal: %zd", c->want, c->in, n);
    }
}

/* The bytes the rules allow in a path besides '%': pchar's unreserved,
 * sub-delims, ':' and '@', and '/'. */
static bool path_byte(int b)
{
    return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') ||
           (b != 0 && strchr("-._~!$&'()*+,;=:@/", b) != NULL);
}

static bool unreserved(int b)
{
    return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') ||
           (b != 0 && strchr("-._~", b) != NULL);
}

/* Every byte value in the middle of a segment: allowed ones leave the path
 * as it is, the others refuse it ('%' is then a malformed encoding). */
static void test_every_byte(void **state)
{
    (void)state;
    for (int b = 0; b < 256; b++) {
        char in[4] = {'/', 'a', (char)b, 'z'};
        char out[4];
        const char *why = NULL;
        ssize_t n = tg_http_path_normalize(in, 4, out, &why);
        if (path_byte(b)) {
            if (n != 0) fail_msg("byte 0x%02x: %zd", b, n);
        } else {
            if (n != -1) fail_msg("byte 0x%02x accepted", b);
            assert_non_null(why);
        }
        /* as the first byte only '/' makes a path */
        char first[2] = {(char)b, 'a'};
        n = tg_http_path_normalize(first, 2, out, &why);
        assert_int_equal(n, b == '/' ? 0 : -1);
    }
}

/* Every encoded byte, with its hex digits in upper and in lower case. */
static void test_every_encoding(void **state)
{
    (void)state;
    static const char up[] = "0123456789ABCDEF", lo[] = "0123456789abcdef";
    for (int v = 0; v < 256; v++) {
        for (int lower = 0; lower < 2; lower++) {
            const char *hex = lower ? lo : up;
            char in[6] = {'/', 'x', '%', hex[v >> 4], hex[v & 15], 'y'};
            char out[6];
            const char *why = NULL;
            ssize_t n = tg_http_path_normalize(in, 6, out, &why);
            if (v < 0x20 || v == 0x7f) {
                assert_int_equal(n, -1);
                assert_non_null(strstr(why, CTL));
            } else if (v == '/' || v == '\\') {
                assert_int_equal(n, -1);
                assert_non_null(strstr(why, SLASH));
            } else if (unreserved(v)) {
                char want[3] = {'/', 'x', (char)v};
                assert_int_equal(n, 4);
                assert_memory_equal(out, want, 3);
                assert_int_equal(out[3], 'y');
            } else {
                bool has_letter = (v >> 4) >= 10 || (v & 15) >= 10;
                if (!lower || !has_letter) {
                    assert_int_equal(n, 0);
                } else {
                    char want[6] = {'/', 'x', '%', up[v >> 4], up[v & 15], 'y'};
                    assert_int_equal(n, 6); /* the same length, yet changed */
                    assert_memory_equal(out, want, 6);
                }
            }
        }
    }
}

/* The paths a gateway sees nearly always are decided in the first pass and
 * reported unchanged: nothing is written, the caller forwards what it has. */
static void test_common_paths_unchanged(void **state)
{
    (void)state;
    static const char *const common[] = {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/models",
        "/v1/models/gpt-4o-2024-08-06",
        "/v1/videos",
        "/v1/videos/video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5/content",
        "/v1/files/file-abc123:content",
        "/openai/deployments/gpt-4o/chat/completions",
        "/v1/models/ft:gpt-4o-mini:org:custom_suffix:id",
        "/healthz",
        "/",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(common); i++) {
        size_t len = strlen(common[i]);
        char out[128];
        memset(out, 0x5A, sizeof out);
        const char *why = NULL;
        ssize_t n = tg_http_path_normalize(common[i], len, out, &why);
        if (n != 0) fail_msg("[%s]: %zd", common[i], n);
        assert_null(why);
        for (size_t k = 0; k < sizeof out; k++)
            assert_int_equal((unsigned char)out[k], 0x5A);
    }
}

/* Long paths: many segments collapsed and removed, the result at the right
 * end of a buffer of exactly the input's size (ASan sees any overrun). */
static void test_long_paths(void **state)
{
    (void)state;
    enum { N = 4096 };
    char *in = malloc(N), *out = malloc(N);
    assert_non_null(in);
    assert_non_null(out);
    /* "/a/a/a/.../a" then as many "/..": the root */
    size_t len = 0, segs = N / 5;
    for (size_t k = 0; k < segs; k++) {
        in[len++] = '/';
        in[len++] = 'a';
    }
    for (size_t k = 0; k < segs; k++) {
        memcpy(in + len, "/..", 3);
        len += 3;
    }
    const char *why = NULL;
    ssize_t n = tg_http_path_normalize(in, len, out, &why);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], '/');
    /* N slashes: one */
    memset(in, '/', N);
    n = tg_http_path_normalize(in, N, out, &why);
    assert_int_equal(n, 1);
    /* "/%61" repeated: "/a" repeated, in place */
    len = 0;
    while (len + 4 <= N) {
        memcpy(in + len, "/%61", 4);
        len += 4;
    }
    n = tg_http_path_normalize(in, len, in, &why);
    assert_int_equal(n, len / 2);
    for (size_t k = 0; k < (size_t)n; k += 2) {
        assert_int_equal(in[k], '/');
        assert_int_equal(in[k + 1], 'a');
    }
    free(in);
    free(out);
}

/* Expands a pattern: '~' is the prefix, '$' the suffix, other bytes stand
 * for themselves. */
static size_t expand(char *dst, const char *pat, const char *pre, size_t pl, const char *suf)
{
    size_t n = 0;
    for (; *pat; pat++) {
        if (*pat == '~') {
            memcpy(dst + n, pre, pl);
            n += pl;
        } else if (*pat == '$') {
            memcpy(dst + n, suf, strlen(suf));
            n += strlen(suf);
        } else {
            dst[n++] = *pat;
        }
    }
    return n;
}

/* Every rule at every offset: after a first segment of 1 to 40 letters, at
 * the end of the path and before another segment. The first pass reads eight
 * bytes at a time; this puts what it must see in every place in and across
 * those eight. */
static void test_every_offset(void **state)
{
    (void)state;
    static const char suf[] = "/xyzxyzxyzxyzxyzxyzx";
    static const struct {
        const char *tail, *end, *mid; /* what P tail and P tail S become; NULL: kept */
    } rules[] = {
        {"/./b", "~/b", "~/b$"}, {"//b", "~/b", "~/b$"},      {"/../b", "/b", "/b$"},
        {"/.", "~/", "~$"},      {"/..", "/", "$"},           {"//", "~/", "~$"},
        {"/.b", NULL, NULL},     {"/..b", NULL, NULL},        {"/b.", NULL, NULL},
        {"/...", NULL, NULL},    {"/", NULL, "~$"},           {"/%2e/b", "~/b", "~/b$"},
        {"/%41", "~/A", "~/A$"}, {"/%3a", "~/%3A", "~/%3A$"}, {"/%3A", NULL, NULL},
        {"/.%2E", "/", "$"},     {"/%2e.", "/", "$"},
    };
    for (size_t r = 0; r < TG_ARRAY_LEN(rules); r++) {
        for (size_t k = 1; k <= 40; k++) {
            char pre[48];
            pre[0] = '/';
            for (size_t j = 0; j < k; j++)
                pre[1 + j] = (char)('a' + j % 26);
            size_t pl = k + 1;
            for (int mid = 0; mid < 2; mid++) {
                char in[128], want[128], out[128];
                size_t tl = strlen(rules[r].tail), len = 0;
                memcpy(in, pre, pl);
                memcpy(in + pl, rules[r].tail, tl);
                len = pl + tl;
                if (mid) {
                    memcpy(in + len, suf, sizeof suf - 1);
                    len += sizeof suf - 1;
                }
                const char *pat = mid ? rules[r].mid : rules[r].end;
                const char *why = NULL;
                ssize_t n = tg_http_path_normalize(in, len, out, &why);
                if (!pat) {
                    if (n != 0) fail_msg("[%.*s]: %zd, should be kept", (int)len, in, n);
                    continue;
                }
                size_t wl = expand(want, pat, pre, pl, suf);
                if (n <= 0 || (size_t)n != wl || memcmp(out, want, wl) != 0)
                    fail_msg("[%.*s] gave [%.*s] (%zd), want [%.*s]", (int)len, in,
                             (int)(n > 0 ? n : 0), out, n, (int)wl, want);
            }
        }
    }
}

static bool qvalid(const char *s)
{
    return tg_http_query_valid(s, strlen(s));
}

static void test_query(void **state)
{
    (void)state;
    assert_true(tg_http_query_valid("", 0));
    assert_true(tg_http_query_valid(NULL, 0));
    assert_true(qvalid("limit=3&after=model-x"));
    assert_true(qvalid("a=b&c=%20d&e=%c3%A9"));
    assert_true(qvalid("next=/v1/models?x=1"));
    assert_true(qvalid("?"
                       "?//"));
    assert_true(qvalid("!$&'()*+,;=:@-._~"));
    assert_true(qvalid("a=%00")); /* well formed: what it decodes to is not checked */
    assert_true(qvalid("a=%2F%2e%2E"));
    assert_false(qvalid("a=%zz"));
    assert_false(qvalid("a=%2"));
    assert_false(qvalid("a=%"));
    assert_false(qvalid("a b"));
    assert_false(qvalid("a#b"));
    assert_false(qvalid("a[0]=1"));
    assert_false(qvalid("a=\"x\""));
    assert_false(qvalid("a=<x>"));
    assert_false(qvalid("a=\\"));
    assert_false(qvalid("a=|"));
    assert_false(qvalid("a=\xc3\xa9"));
    assert_false(tg_http_query_valid("a\0b", 3));
    for (int b = 0; b < 256; b++) {
        char q[3] = {'a', (char)b, 'z'};
        bool want = b == '?' || (b != '%' && path_byte(b));
        if (tg_http_query_valid(q, 3) != want) fail_msg("query byte 0x%02x", b);
    }
    /* a truncated encoding at the very end of the counted bytes */
    assert_false(tg_http_query_valid("a=%41", 4));
    assert_true(tg_http_query_valid("a=%41", 5));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_idempotent),
        cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_every_encoding),
        cmocka_unit_test(test_common_paths_unchanged),
        cmocka_unit_test(test_long_paths),
        cmocka_unit_test(test_every_offset),
        cmocka_unit_test(test_query),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
