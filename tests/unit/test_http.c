/* Tests of the HTTP codec: every framing rule, each way a head or body can be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "tollgate/http.h"

struct body {
    char data[4096];
    size_t len;
};

static void on_body(void *arg, const char *data, size_t len)
{
    struct body *b = arg;
    if (b->len + len <= sizeof(b->data)) memcpy(b->data + b->len, data, len);
    b->len += len;
}

/* Scans `s` whole, then one byte at a time: both give the same answer. */
static ssize_t scan(enum tg_http_kind kind, const char *s, size_t len)
{
    struct tg_http_scan a, b;
    tg_http_scan_init(&a, kind);
    tg_http_scan_init(&b, kind);
    ssize_t whole = tg_http_scan_head(&a, s, len), bytes = 0;
    for (size_t i = 0; i < len && bytes == 0; i++)
        bytes = tg_http_scan_head(&b, s + i, 1);
    assert_int_equal(whole, bytes);
    return whole;
}

/* Scans and parses a request head; the result and, through m, the message. */
static enum tg_http_result parse(enum tg_http_kind kind, const char *s, struct tg_http_msg *m,
                                 struct body *b)
{
    size_t len = strlen(s);
    ssize_t n = scan(kind, s, len);
    if (n < 0) return (enum tg_http_result)n;
    assert_true(n > 0);
    tg_http_msg_init(m, kind, on_body, b);
    return tg_http_parse_head(m, s, (size_t)n);
}

static enum tg_http_result req(const char *s)
{
    static struct tg_http_msg m;
    struct body b = {.len = 0};
    return parse(TG_HTTP_REQUEST, s, &m, &b);
}

static void test_request_heads(void **state)
{
    (void)state;
    struct tg_http_msg m;
    struct body b = {.len = 0};
    assert_int_equal(parse(TG_HTTP_REQUEST,
                           "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\n"
                           "Content-Length: 12\r\nX-Pad:  spaced value \t\r\nEmpty:\r\n\r\n",
                           &m, &b),
                     TG_HTTP_OK);
    assert_int_equal(m.method, TG_HTTP_POST);
    assert_int_equal(m.target_len, strlen("/v1/chat/completions?x=1"));
    assert_int_equal(m.minor, 1);
    assert_int_equal(m.content_length, 12);
    assert_true(m.keep_alive);
    assert_false(m.done);
    assert_int_equal(m.nheaders, 4);
    size_t vlen;
    const char *v = tg_http_header(&m, "x-pad", &vlen);
    assert_non_null(v);
    assert_int_equal(vlen, strlen("spaced value"));
    assert_memory_equal(v, "spaced value", vlen);
    assert_non_null(tg_http_header(&m, "empty", &vlen));
    assert_int_equal(vlen, 0);

    /* HTTP/1.0: no Host needed, keep-alive only when asked for */
    assert_int_equal(parse(TG_HTTP_REQUEST, "GET /v1/models HTTP/1.0\r\n\r\n", &m, &b), TG_HTTP_OK);
    assert_false(m.keep_alive);
    assert_true(m.done);
    assert_int_equal(
        parse(TG_HTTP_REQUEST, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &m, &b),
        TG_HTTP_OK);
    assert_true(m.keep_alive);
    assert_int_equal(parse(TG_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                           &m, &b),
                     TG_HTTP_OK);
    assert_false(m.keep_alive);

    /* absolute form: routed on its path */
    assert_int_equal(parse(TG_HTTP_REQUEST,
                           "POST http://gw.example:8080/v1/embeddings?a=b HTTP/1.1\r\nHost: x\r\n"
                           "Content-Length: 0\r\n\r\n",
                           &m, &b),
                     TG_HTTP_OK);
    assert_true(m.absolute_form);
    assert_int_equal(m.target_len, strlen("/v1/embeddings?a=b"));
    assert_memory_equal(m.target, "/v1/embeddings?a=b", m.target_len);
    assert_int_equal(parse(TG_HTTP_REQUEST, "GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_int_equal(m.target_len, 1);
    assert_memory_equal(m.target, "/", 1);

    /* methods */
    assert_int_equal(parse(TG_HTTP_REQUEST, "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_int_equal(m.method, TG_HTTP_OTHER);
    size_t ml;
    assert_memory_equal(tg_http_method_name(&m, &ml), "PURGE", 5);
    assert_int_equal(ml, 5);
    assert_int_equal(parse(TG_HTTP_REQUEST, "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_int_equal(m.method, TG_HTTP_CONNECT);
    assert_int_equal(parse(TG_HTTP_REQUEST, "get / HTTP/1.1\r\nHost: a\r\n\r\n", &m, &b), TG_HTTP_OK);
    assert_int_equal(m.method, TG_HTTP_OTHER); /* methods are case-sensitive */
    /* Host values: a name, an IPv4 or bracketed IPv6 address, a port; or empty */
    static const char *const hosts[] = {"gw.example.com:8080", "127.0.0.1", "[::1]:443",
                                        "[v1.x]", "my_host-1%41", ""};
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        char head[128];
        snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", hosts[i]);
        assert_int_equal(parse(TG_HTTP_REQUEST, head, &m, &b), TG_HTTP_OK);
    }

    /* Connection options name headers to drop */
    assert_int_equal(parse(TG_HTTP_REQUEST,
                           "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret ,,\r\n"
                           "X-Secret: 1\r\n\r\n",
                           &m, &b),
                     TG_HTTP_OK);
    assert_true(m.keep_alive);
    assert_true(tg_http_listed(&m, "x-secret", 8));
    assert_true(tg_http_listed(&m, "X-SECRET", 8));
    assert_false(tg_http_listed(&m, "x-secre", 7));
    assert_false(tg_http_listed(&m, "host", 4));

    /* Expect */
    assert_int_equal(
        parse(TG_HTTP_REQUEST,
              "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", &m,
              &b),
        TG_HTTP_OK);
    assert_true(m.expect_continue);
}

static void test_refused_request_heads(void **state)
{
    (void)state;
    const struct {
        const char *head;
        enum tg_http_result want;
    } cases[] = {
        /* the request line */
        {"GET /\r\n\r\n", TG_HTTP_MALFORMED},                            /* HTTP/0.9 form */
        {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},       /* two spaces */
        {"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},       /* a tab */
        {" GET / HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},        /* not a token */
        {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", TG_HTTP_BAD_VERSION},
        {"GET / HTTP/1.2\r\nHost: a\r\n\r\n", TG_HTTP_BAD_VERSION},
        {"GET / HTTP/0.9\r\nHost: a\r\n\r\n", TG_HTTP_BAD_VERSION},
        {"GET / HTTP/11\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / http/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED}, /* raw UTF-8 */
        {"GET v1/models HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED}, /* no authority */
        {"GET ftp://h/x HTTP/1.1\r\nHost: a\r\n\r\n", TG_HTTP_MALFORMED},
        /* header lines */
        {"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / HTTP/1.1\r\nHost: a\r\nContent Length: 5\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / HTTP/1.1\r\n Host: a\r\n\r\n", TG_HTTP_OBS_FOLD},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n", TG_HTTP_OBS_FOLD},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n\tb\r\n\r\n", TG_HTTP_OBS_FOLD},
        {"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-Del: a\x7f""b\r\n\r\n", TG_HTTP_MALFORMED},
        {"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", TG_HTTP_MALFORMED},
        /* Host */
        {"GET / HTTP/1.1\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nX: y\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", TG_HTTP_BAD_HOST}, /* not a uri-host */
        {"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: h:80x\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.1\r\nHost: h\xc3\xa9\r\n\r\n", TG_HTTP_BAD_HOST},
        {"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", TG_HTTP_BAD_HOST},
        /* lengths and codings */
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
         TG_HTTP_SMUGGLING},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         TG_HTTP_SMUGGLING},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         TG_HTTP_SMUGGLING},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n",
         TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         TG_HTTP_UNKNOWN_CODING},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
         TG_HTTP_UNKNOWN_CODING},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", TG_HTTP_UNKNOWN_CODING},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
         TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.1\r\nHost: a\r\nConnection: a b\r\n\r\n", TG_HTTP_MALFORMED},
        /* HTTP/1.0 has no transfer codings (RFC 9112 6.1): not read as chunked */
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TG_HTTP_MALFORMED},
        {"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
         TG_HTTP_MALFORMED},
        {"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         TG_HTTP_SMUGGLING},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum tg_http_result got = req(cases[i].head);
        if (got != cases[i].want) fail_msg("case %zu: got %d, want %d", i, got, cases[i].want);
    }
    assert_int_equal(tg_http_status(TG_HTTP_BAD_VERSION), 505);
    assert_int_equal(tg_http_status(TG_HTTP_UNKNOWN_CODING), 501);
    assert_int_equal(tg_http_status(TG_HTTP_OBS_FOLD), 400);
    assert_int_equal(tg_http_status(TG_HTTP_URI_TOO_LONG), 414);
    assert_int_equal(tg_http_status(TG_HTTP_TOO_MANY_HEADERS), 431);
}

/* The scanner refuses what it can as soon as it sees it. */
static void test_scanner_refuses_at_once(void **state)
{
    (void)state;
    struct tg_http_scan s;
    /* a bare LF, in the request line or a header line */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, "GET / HTTP/1.1\n", 15), TG_HTTP_MALFORMED);
    assert_int_equal(scan(TG_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\n\r\n", 26),
                     TG_HTTP_MALFORMED);
    assert_int_equal(scan(TG_HTTP_REPLY, "HTTP/1.1 200 OK\r\n\n", 18), TG_HTTP_MALFORMED);
    assert_int_equal(scan(TG_HTTP_REQUEST, "GET / HTTP/1.1\rX", 16), TG_HTTP_MALFORMED);
    /* a request line without a version (HTTP/0.9), judged at its CR */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, "GET /", 5), 0);
    assert_int_equal(tg_http_scan_head(&s, "\r", 1), TG_HTTP_MALFORMED);
    assert_int_equal(scan(TG_HTTP_REQUEST, "GET / HTTP/1\r\n", 14), TG_HTTP_MALFORMED);
    assert_int_equal(scan(TG_HTTP_REQUEST, "GET / http/1.1\r\n", 16), TG_HTTP_MALFORMED);
    assert_int_equal(scan(TG_HTTP_REQUEST, "HTTP/1.1\r\n", 10), TG_HTTP_MALFORMED);
    /* the version's bytes may arrive one at a time */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    const char *one = "GET /v1 HTTP/1.1\r\nHost: a\r\n\r\n";
    for (size_t i = 0; one[i]; i++)
        assert_int_equal(tg_http_scan_head(&s, one + i, 1), one[i + 1] ? 0 : (ssize_t)strlen(one));
    /* HTTP/2.0 is a version: parse_head answers it (505) */
    assert_int_equal(scan(TG_HTTP_REQUEST, "GET / HTTP/2.0\r\n\r\n", 18), 18);
    /* a request line past 8 KiB, before its end arrives */
    size_t n = TG_HTTP_MAX_REQUEST_LINE + 16;
    char *line = malloc(n);
    memcpy(line, "GET /", 5);
    memset(line + 5, 'a', n - 5);
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, line, TG_HTTP_MAX_REQUEST_LINE), 0);
    assert_int_equal(tg_http_scan_head(&s, line + TG_HTTP_MAX_REQUEST_LINE, 16),
                     TG_HTTP_URI_TOO_LONG);
    /* a header line that long is fine (the head limit holds it) */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, "GET / HTTP/1.1\r\nX: ", 19), 0);
    assert_int_equal(tg_http_scan_head(&s, line, n), 0);
    assert_int_equal(tg_http_scan_head(&s, "\r\n\r\n", 4), (ssize_t)(19 + n + 4));
    free(line);
    /* header lines past the count, though small */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, "GET / HTTP/1.1\r\n", 16), 0);
    ssize_t r = 0;
    int lines = 0;
    while (r == 0 && lines < 1000) {
        r = tg_http_scan_head(&s, "A: b\r\n", 6);
        lines++;
    }
    assert_int_equal(r, TG_HTTP_TOO_MANY_HEADERS);
    assert_int_equal(lines, TG_HTTP_MAX_HEADERS + 1);
    /* ... and exactly the most that is allowed */
    char *head = malloc(64 * 1024);
    size_t hl = (size_t)sprintf(head, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < TG_HTTP_MAX_HEADERS; i++)
        hl += (size_t)sprintf(head + hl, "H%d: v\r\n", i);
    hl += (size_t)sprintf(head + hl, "\r\n");
    assert_int_equal(scan(TG_HTTP_REQUEST, head, hl), (ssize_t)hl);
    /* a head past 64 KiB */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, "GET / HTTP/1.1\r\n", 16), 0);
    memset(head, 'x', 64 * 1024);
    memcpy(head, "X: ", 3);
    assert_int_equal(tg_http_scan_head(&s, head, 64 * 1024), TG_HTTP_HEAD_TOO_LARGE);
    free(head);
    /* the end of the head is found in the piece it is in */
    tg_http_scan_init(&s, TG_HTTP_REQUEST);
    assert_int_equal(tg_http_scan_head(&s, "GET / HTTP/1.1\r\nHost: a\r", 24), 0);
    assert_int_equal(tg_http_scan_head(&s, "\n\r\nPOST", 7), 27);
}

/* Feeds `body` in pieces of `step` bytes; returns the bytes consumed or an error. */
static ssize_t feed(struct tg_http_msg *m, const char *body, size_t len, size_t step)
{
    size_t used = 0;
    while (used < len && !m->done) {
        size_t n = len - used < step ? len - used : step;
        ssize_t r = tg_http_feed(m, body + used, n);
        if (r < 0) return r;
        used += (size_t)r;
        if ((size_t)r < n) break;
    }
    return (ssize_t)used;
}

static void chunked(const char *body, ssize_t want_used, const char *want_data, bool done)
{
    static const char head[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
    for (size_t step = 1; step <= 64; step = step * 2 + 1) {
        struct tg_http_msg m;
        struct body b = {.len = 0};
        assert_int_equal(parse(TG_HTTP_REQUEST, head, &m, &b), TG_HTTP_OK);
        assert_true(m.chunked);
        ssize_t used = feed(&m, body, strlen(body), step);
        if (used != want_used) fail_msg("step %zu: %s: used %zd, want %zd", step, body, used, want_used);
        if (want_used >= 0) {
            assert_int_equal(b.len, strlen(want_data));
            assert_memory_equal(b.data, want_data, b.len);
            assert_int_equal(m.done, done);
        }
    }
}

static void test_chunked_bodies(void **state)
{
    (void)state;
    chunked("5\r\nhello\r\n0\r\n\r\n", 15, "hello", true);
    chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /", 26, "hello world", true);
    chunked("000005\r\nhello\r\n0000\r\n\r\n", 23, "hello", true);
    chunked("A\r\n0123456789\r\n0\r\n\r\n", 20, "0123456789", true);
    chunked("5;name=value;q=\"a b\"\r\nhello\r\n0\r\n\r\n", 34, "hello", true);
    chunked("5 ; ext\r\nhello\r\n0\r\n\r\n", 21, "hello", true);
    /* trailers are read and dropped: never body, never head */
    chunked("5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-B: c\r\n\r\n", 49, "hello", true);
    chunked("5\r\nhel", 6, "hel", false);
    /* refused */
    chunked("5\r\nhelloXX0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);   /* no CRLF after data */
    chunked("5\r\nhello\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);   /* bare LF */
    chunked("\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);  /* no size */
    chunked("-5\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("0x5\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5 \r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false); /* whitespace, no ext */
    chunked("fffffffffffffffff\r\n", TG_HTTP_BAD_CHUNK, "", false);   /* too large */
    chunked("5\r\nhello\r\n0\r\n X: y\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false); /* folded trailer */
    chunked("5\r\nhello\r\n0\r\nX y\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5\r\nhello\r\n0\r\n\r\r", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a\x01\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    /* chunk extensions: BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] */
    chunked("5;a;b=c ; d = \"x\\\"y\"\r\nhello\r\n0;z\r\n\r\n", 36, "hello", true);
    chunked("5;a \r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false); /* BWS, no ';' after */
    chunked("5;a=b \r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a=\"\"\r\nhello\r\n0\r\n\r\n", 20, "hello", true);
    chunked("5;\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);       /* no name */
    chunked("5;=v\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5; \"quoted\"\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a=\"open\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a=\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);    /* no value */
    chunked("5;a b\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a=b=c\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
    chunked("5;a=(b)\r\nhello\r\n0\r\n\r\n", TG_HTTP_BAD_CHUNK, "", false);
}

static void test_length_bodies(void **state)
{
    (void)state;
    struct tg_http_msg m;
    struct body b = {.len = 0};
    assert_int_equal(
        parse(TG_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", &m, &b),
        TG_HTTP_OK);
    assert_int_equal(feed(&m, "helloGET /", 10, 3), 5);
    assert_true(m.done);
    assert_memory_equal(b.data, "hello", 5);
}

static void test_replies(void **state)
{
    (void)state;
    struct tg_http_msg m;
    struct body b = {.len = 0};
    /* until close */
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_true(m.until_close);
    assert_false(m.keep_alive);
    assert_int_equal(tg_http_feed(&m, "abc", 3), 3);
    assert_false(m.done);
    tg_http_feed_eof(&m);
    assert_true(m.done);
    /* a length cut short is not done at EOF */
    b.len = 0;
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_int_equal(tg_http_feed(&m, "abc", 3), 3);
    tg_http_feed_eof(&m);
    assert_false(m.done);
    /* and so is a chunked reply */
    assert_int_equal(
        parse(TG_HTTP_REPLY, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &m, &b),
        TG_HTTP_OK);
    assert_int_equal(tg_http_feed(&m, "5\r\nab", 5), 5);
    tg_http_feed_eof(&m);
    assert_false(m.done);
    /* no body: HEAD, 204, 304, 1xx */
    tg_http_msg_init(&m, TG_HTTP_REPLY, on_body, &b);
    m.skip_body = true;
    const char *h = "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n";
    assert_int_equal(tg_http_parse_head(&m, h, strlen(h)), TG_HTTP_OK);
    assert_true(m.done);
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.1 204 No Content\r\n\r\n", &m, &b), TG_HTTP_OK);
    assert_true(m.done);
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.1 100 Continue\r\n\r\n", &m, &b), TG_HTTP_OK);
    assert_int_equal(m.status, 100);
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_true(m.done && m.keep_alive);
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_false(m.keep_alive);
    assert_int_equal(parse(TG_HTTP_REPLY, "HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", &m, &b),
                     TG_HTTP_OK);
    assert_int_equal(m.status, 599);
    /* refused: the same strictness as for requests */
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 200 O\x01K\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", /* status codes are 100 to 599 */
        "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parse(TG_HTTP_REPLY, bad[i], &m, &b) == TG_HTTP_OK) fail_msg("reply %zu accepted", i);
}

/* Every byte of a valid head, replaced by every other byte: the codec never
 * reads outside the head, and whatever it accepts has a Host, a method and a
 * target of visible bytes. */
static void test_mutated_heads(void **state)
{
    (void)state;
    const char *base = "POST /v1/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-A: b\r\n\r\n";
    size_t len = strlen(base);
    for (size_t at = 0; at < len; at++) {
        for (int ch = 0; ch < 256; ch++) {
            char *s = malloc(len); /* exactly the head: ASan sees any overrun */
            memcpy(s, base, len);
            s[at] = (char)ch;
            struct tg_http_msg m;
            struct body b = {.len = 0};
            ssize_t n = scan(TG_HTTP_REQUEST, s, len);
            if (n > 0) {
                tg_http_msg_init(&m, TG_HTTP_REQUEST, on_body, &b);
                if (tg_http_parse_head(&m, s, (size_t)n) == TG_HTTP_OK) {
                    assert_true(m.method_len > 0 && m.target_len > 0);
                    for (uint32_t i = 0; i < m.target_len; i++)
                        assert_true(m.target[i] > 0x20 && m.target[i] < 0x7f);
                    assert_non_null(tg_http_header(&m, "host", NULL));
                }
            }
            free(s);
        }
    }
}

static void test_name_comparison(void **state)
{
    (void)state;
    assert_true(tg_http_name_is("Content-Length", 14, "content-length"));
    assert_true(tg_http_name_is("content-length", 14, "Content-Length"));
    assert_true(tg_http_name_is("X-API-KEY", 9, "x-api-Key"));
    assert_true(tg_http_lc_is("Content-Length", 14, "content-length"));
    assert_true(tg_http_lc_is("X-REQUEST-ID", 12, "x-request-id"));
    assert_false(tg_http_lc_is("Content-Lengt", 13, "content-length"));
    assert_false(tg_http_lc_is("Content-Length2", 15, "content-length"));
    assert_false(tg_http_lc_is("Content_Length", 14, "content-length"));
    assert_true(tg_http_lc_is("", 0, ""));
    const char *lits[] = {"a", "z", "0", "9", "-", "te"};
    for (size_t l = 0; l < sizeof(lits) / sizeof(lits[0]); l++) {
        size_t n = strlen(lits[l]);
        for (int c = 0x20; c < 0x7f; c++) { /* first byte varied over all printables */
            char name[16] = {(char)c, lits[l][1], 0};
            assert_int_equal(tg_http_lc_is(name, n, lits[l]), tg_http_name_is(name, n, lits[l]));
        }
    }
    const char *longer[] = {"x-request-id", "content-length", "transfer-encoding", "keep-alive"};
    for (size_t l = 0; l < sizeof(longer) / sizeof(longer[0]); l++) {
        size_t n = strlen(longer[l]);
        for (size_t at = 0; at < n; at++) { /* each byte in turn over all printables */
            for (int c = 0x20; c < 0x7f; c++) {
                char name[32];
                memcpy(name, longer[l], n + 1);
                name[at] = (char)c;
                assert_int_equal(tg_http_lc_is(name, n, longer[l]),
                                 tg_http_name_is(name, n, longer[l]));
            }
        }
    }
    assert_true(tg_http_is_hop_by_hop("Proxy-Authorization", 19));
    assert_true(tg_http_is_hop_by_hop("KEEP-ALIVE", 10));
    assert_false(tg_http_is_hop_by_hop("proxy-", 6));
    assert_false(tg_http_is_hop_by_hop("Content-Type", 12));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_heads),
        cmocka_unit_test(test_refused_request_heads),
        cmocka_unit_test(test_scanner_refuses_at_once),
        cmocka_unit_test(test_chunked_bodies),
        cmocka_unit_test(test_length_bodies),
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_mutated_heads),
        cmocka_unit_test(test_name_comparison),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
