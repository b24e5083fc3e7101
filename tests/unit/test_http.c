/* Tests of the HTTP codec: the fast head path against http-parser, head for head. */
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
    char data[512];
    size_t len;
};

static void on_body(void *arg, const char *data, size_t len)
{
    struct body *b = arg;
    if (b->len + len <= sizeof(b->data)) memcpy(b->data + b->len, data, len);
    b->len += len;
}

/* The head as the proxy hands it over: through the first blank line. */
static size_t head_len(const char *s, size_t len)
{
    for (size_t i = 0; i + 4 <= len; i++)
        if (memcmp(s + i, "\r\n\r\n", 4) == 0) return i + 4;
    return 0;
}

static int fast_taken;

/* Parses `head` both ways and asserts the same outcome, then feeds `body` to
 * both in pieces of `step` bytes and asserts the same consumption. */
static void same(enum http_parser_type type, const char *head, size_t len, bool skip_body,
                 const char *body, size_t blen, size_t step)
{
    static struct tg_http_msg a, b; /* large: not on the stack */
    struct body ba = {.len = 0}, bb = {.len = 0};
    tg_http_msg_init(&a, type, on_body, &ba);
    tg_http_msg_init(&b, type, on_body, &bb);
    a.skip_body = b.skip_body = skip_body;
    enum tg_http_result ra = tg_http_parse_head(&a, head, len);
    enum tg_http_result rb = tg_http_parse_head_full(&b, head, len);
    if (ra != rb) fail_msg("result %d vs %d for [%.*s]", ra, rb, (int)len, head);
    if (ra != TG_HTTP_OK) return;
    fast_taken += a.fast;
    assert_int_equal(a.parser.method, b.parser.method);
    assert_int_equal(a.parser.http_major, b.parser.http_major);
    assert_int_equal(a.parser.http_minor, b.parser.http_minor);
    assert_int_equal(a.status, b.status);
    assert_int_equal(a.url_len, b.url_len);
    if (a.url_len) assert_memory_equal(a.url, b.url, a.url_len);
    if (a.keep_alive != b.keep_alive)
        fail_msg("keep_alive %d vs %d for [%.*s]", a.keep_alive, b.keep_alive, (int)len, head);
    assert_int_equal(a.chunked, b.chunked);
    assert_int_equal(a.has_te, b.has_te);
    assert_int_equal(a.content_length, b.content_length);
    assert_int_equal(a.expect_continue, b.expect_continue);
    assert_int_equal(a.done, b.done);
    assert_int_equal(a.nheaders, b.nheaders);
    for (size_t i = 0; i < a.nheaders; i++) {
        assert_int_equal(a.headers[i].nlen, b.headers[i].nlen);
        assert_memory_equal(a.headers[i].name, b.headers[i].name, a.headers[i].nlen);
        if (a.headers[i].vlen != b.headers[i].vlen)
            fail_msg("header %.*s: %u vs %u bytes in [%.*s]", (int)a.headers[i].nlen,
                     a.headers[i].name, a.headers[i].vlen, b.headers[i].vlen, (int)len, head);
        assert_memory_equal(a.headers[i].value, b.headers[i].value, a.headers[i].vlen);
    }
    for (size_t off = 0; off < blen;) {
        size_t n = blen - off < step ? blen - off : step;
        ssize_t na = tg_http_feed(&a, body + off, n);
        ssize_t nb = tg_http_feed(&b, body + off, n);
        assert_int_equal(na, nb);
        assert_int_equal(a.done, b.done);
        if (na <= 0 || (size_t)na < n) break;
        off += n;
    }
    tg_http_feed_eof(&a);
    tg_http_feed_eof(&b);
    assert_int_equal(a.done, b.done);
    assert_int_equal(ba.len, bb.len);
    if (ba.len && ba.len <= sizeof(ba.data)) assert_memory_equal(ba.data, bb.data, ba.len);
}

static void same_str(enum http_parser_type type, const char *head, const char *body)
{
    size_t len = strlen(head);
    size_t hl = head_len(head, len);
    assert_true(hl > 0);
    for (size_t step = 1; step <= 64; step *= 4)
        same(type, head, hl, false, body, strlen(body), step);
}

static const char *const plain_requests[] = {
    "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\n"
    "Content-Type: application/json\r\nContent-Length: 17\r\n\r\n",
    "GET /v1/models?limit=3&x=%20y HTTP/1.1\r\nHost: gw\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "POST /v1/embeddings HTTP/1.1\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n",
    "POST /v1/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    "PUT /a HTTP/1.1\r\nX-Empty-Ish:   v\r\nContent-Length: 007\r\n\r\n",
    "DELETE /a HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    "HEAD /a HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    "PATCH /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
    "OPTIONS /a HTTP/1.1\r\n\r\n",
};

static const char *const plain_replies[] = {
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
    "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
    "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
    "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
    "HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n",
    "HTTP/1.1 200 OK\r\nX-A: b\r\nX-A: c\r\nContent-Length: 2\r\n\r\n",
};

/* Heads the fast path must leave to http-parser, each judged the same way. */
static const char *const other_heads[] = {
    "POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    "POST /v1/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    "POST /v1/x HTTP/1.1\r\nContent-Length: 3x\r\n\r\n",
    "POST /v1/x HTTP/1.1\r\nContent-Length: 3 \r\n\r\n",
    "POST /v1/x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "GET /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
    "GET /a HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
    "GET /a HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
    "GET /a HTTP/1.1\r\nBad Name: v\r\n\r\n",
    "GET /a HTTP/1.1\r\nX-Empty:\r\n\r\n",
    "GET /a HTTP/1.1\r\nX-Tab: a\tb\r\n\r\n",
    "GET /a HTTP/1.1\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
    "GET /a#frag HTTP/1.1\r\n\r\n",
    "GET http://host/a HTTP/1.1\r\n\r\n",
    "GET * HTTP/1.1\r\n\r\n",
    "BREW /pot HTTP/1.1\r\n\r\n",
    "GET /a HTTP/2.0\r\n\r\n",
    "GET /a HTTP/1.1\n\r\n\r\n",
    "get /a HTTP/1.1\r\n\r\n",
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "HTTP/1.1 200 OK\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n",
    "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n",
};

static void test_plain_heads_take_the_fast_path(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"m\",\"x\":1}GET / HTTP/1.1\r\n";
    for (size_t i = 0; i < sizeof(plain_requests) / sizeof(plain_requests[0]); i++) {
        fast_taken = 0;
        same_str(HTTP_REQUEST, plain_requests[i], body);
        if (fast_taken == 0) fail_msg("not fast: %s", plain_requests[i]);
    }
    for (size_t i = 0; i < sizeof(plain_replies) / sizeof(plain_replies[0]); i++) {
        fast_taken = 0;
        same_str(HTTP_RESPONSE, plain_replies[i], body);
        if (fast_taken == 0) fail_msg("not fast: %s", plain_replies[i]);
    }
}

static void test_other_heads_are_judged_as_before(void **state)
{
    (void)state;
    const char *body = "3\r\nabc\r\n0\r\n\r\nxyz";
    for (size_t i = 0; i < sizeof(other_heads) / sizeof(other_heads[0]); i++) {
        enum http_parser_type t = strncmp(other_heads[i], "HTTP/", 5) == 0 ? HTTP_RESPONSE
                                                                            : HTTP_REQUEST;
        fast_taken = 0;
        same_str(t, other_heads[i], body);
        if (fast_taken) fail_msg("fast: %s", other_heads[i]);
    }
}

static void test_reply_to_head_request_is_left_to_http_parser(void **state)
{
    (void)state;
    const char *h = plain_replies[0];
    fast_taken = 0;
    same(HTTP_RESPONSE, h, strlen(h), true, "abc", 3, 1);
    assert_int_equal(fast_taken, 0);
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* Random edits of plain heads: whatever the fast path still takes, it must
 * read exactly as http-parser does. */
static void test_mutated_heads_agree(void **state)
{
    (void)state;
    static const char alphabet[] = " \t\r\n:;,/?#%0129aZ-_.\"\x7f\x80\xff\x01";
    int fast = 0, total = 0;
    for (int iter = 0; iter < 40000; iter++) {
        bool req = rnd() % 2 == 0;
        const char *seed = req ? plain_requests[rnd() % (sizeof(plain_requests) / sizeof(char *))]
                               : plain_replies[rnd() % (sizeof(plain_replies) / sizeof(char *))];
        char buf[512];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int edits = 1 + (int)(rnd() % 3);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(rnd() % len);
            char ch = alphabet[rnd() % (sizeof(alphabet) - 1)];
            switch (rnd() % 3) {
            case 0:
                buf[at] = ch;
                break;
            case 1:
                if (len + 1 < sizeof(buf)) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = ch;
                    len++;
                }
                break;
            default:
                if (len > 4) {
                    memmove(buf + at, buf + at + 1, len - at - 1);
                    len--;
                }
                break;
            }
        }
        size_t hl = head_len(buf, len);
        if (hl == 0) continue;
        fast_taken = 0;
        same(req ? HTTP_REQUEST : HTTP_RESPONSE, buf, hl, false, "0123456789abcdefgh", 18,
             1 + (size_t)(rnd() % 7));
        fast += fast_taken;
        total++;
    }
    print_message("mutated heads: %d parsed, %d by the fast path\n", total, fast);
    assert_true(fast > total / 10); /* the comparison covered the fast path */
}

/* Header names compare without regard to ASCII case, and only whole: a
 * prefix or an extension of the name is another name. tg_http_lc_is (for
 * lower-case literals) agrees with tg_http_name_is on every printable byte. */
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
        cmocka_unit_test(test_plain_heads_take_the_fast_path),
        cmocka_unit_test(test_other_heads_are_judged_as_before),
        cmocka_unit_test(test_reply_to_head_request_is_left_to_http_parser),
        cmocka_unit_test(test_mutated_heads_agree),
        cmocka_unit_test(test_name_comparison),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
