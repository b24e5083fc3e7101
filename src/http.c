/* The HTTP/1.1 codec: a fast path for plain heads, libhttp-parser for everything else. */
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include "tollgate/http.h"

/* Heads are parsed whole (the caller waits for the blank line), so every
 * callback points into the caller's copy of the head and tokens come in one
 * piece; the pieces are still joined in case the parser splits one. */
static int on_url(http_parser *p, const char *at, size_t len)
{
    struct tg_http_msg *m = p->data;
    if (m->url == NULL) m->url = at;
    m->url_len = (uint32_t)(at + len - m->url);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct tg_http_msg *m = p->data;
    if (m->nheaders > 0 && m->headers[m->nheaders - 1].value == NULL) {
        struct tg_http_header *h = &m->headers[m->nheaders - 1];
        h->nlen = (uint32_t)(at + len - h->name);
        return 0;
    }
    if (m->nheaders == TG_HTTP_MAX_HEADERS) return -1;
    struct tg_http_header *h = &m->headers[m->nheaders++];
    h->name = at;
    h->nlen = (uint32_t)len;
    h->value = NULL;
    h->vlen = 0;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct tg_http_msg *m = p->data;
    struct tg_http_header *h = &m->headers[m->nheaders - 1];
    if (h->value == NULL) h->value = at;
    h->vlen = (uint32_t)(at + len - h->value);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct tg_http_msg *m = p->data;
    m->head_done = true;
    m->status = (int)p->status_code;
    m->keep_alive = http_should_keep_alive(p) != 0;
    m->content_length = (p->flags & F_CONTENTLENGTH) ? (int64_t)p->content_length : -1;
    m->chunked = (p->flags & F_CHUNKED) != 0;
    for (size_t i = 0; i < m->nheaders; i++) {
        struct tg_http_header *h = &m->headers[i];
        if (h->value == NULL) h->value = "";
        if (tg_http_name_is(h->name, h->nlen, "transfer-encoding"))
            m->has_te = true;
        else if (tg_http_name_is(h->name, h->nlen, "expect") && h->vlen == 12 &&
                 strncasecmp(h->value, "100-continue", 12) == 0)
            m->expect_continue = true;
    }
    return m->skip_body ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct tg_http_msg *m = p->data;
    if (m->on_body) m->on_body(m->arg, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct tg_http_msg *m = p->data;
    m->done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void tg_http_msg_init(struct tg_http_msg *m, enum http_parser_type type, tg_http_body_fn body_fn,
                      void *arg)
{
    memset(m, 0, offsetof(struct tg_http_msg, headers));
    http_parser_init(&m->parser, type);
    m->parser.data = m;
    m->on_body = body_fn;
    m->arg = arg;
    m->content_length = -1;
}

/* ---- the fast path ----
 * Most heads are plain: a common method and an origin-form target, HTTP/1.0 or
 * 1.1, token names, printable values, Content-Length or no body. Those are read
 * here in one pass, several times faster than http-parser's byte-at-a-time
 * state machine with a callback per piece. Anything else (Transfer-Encoding,
 * Upgrade, a Connection header other than close/keep-alive, an interim or
 * body-less reply, obs-fold, bytes outside the plain set, a duplicate
 * Content-Length, ...) makes it give up without a verdict, and http-parser
 * judges the head as before: the fast path accepts a subset of what
 * http-parser accepts and reads it the same way (test_http holds the two to
 * the same results). */

/* Character classes of the fast path: T = token (RFC 9110 tchar), U = the
 * bytes it takes in a request target (unreserved, sub-delims, ':', '/', '?',
 * '@', '%'); one table lookup per byte. */
enum { T = 1, U = 2 };
static const unsigned char cclass[256] = {
    ['a' ... 'z'] = T | U, ['A' ... 'Z'] = T | U, ['0' ... '9'] = T | U,
    ['!'] = T | U,         ['#'] = T,             ['$'] = T | U,
    ['%'] = T | U,         ['&'] = T | U,         ['\''] = T | U,
    ['*'] = T | U,         ['+'] = T | U,         ['-'] = T | U,
    ['.'] = T | U,         ['^'] = T,             ['_'] = T | U,
    ['`'] = T,             ['|'] = T,             ['~'] = T | U,
    ['('] = U,             [')'] = U,             [','] = U,
    [';'] = U,             ['='] = U,             [':'] = U,
    ['/'] = U,             ['?'] = U,             ['@'] = U,
};

static bool tchar(unsigned char ch)
{
    return (cclass[ch] & T) != 0;
}

static bool url_char(unsigned char ch)
{
    return (cclass[ch] & U) != 0;
}

/* "HTTP/1.0" or "HTTP/1.1" at p (8 bytes available). */
static bool version(struct tg_http_msg *m, const char *p)
{
    if (memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1')) return false;
    m->parser.http_major = 1;
    m->parser.http_minor = (unsigned short)(p[7] - '0');
    return true;
}

static const char *request_line(struct tg_http_msg *m, const char *p, const char *end)
{
    static const struct {
        const char *name;
        size_t len;
        enum http_method method;
    } methods[] = {{"POST ", 5, HTTP_POST},     {"GET ", 4, HTTP_GET},
                   {"PUT ", 4, HTTP_PUT},       {"DELETE ", 7, HTTP_DELETE},
                   {"HEAD ", 5, HTTP_HEAD},     {"PATCH ", 6, HTTP_PATCH},
                   {"OPTIONS ", 8, HTTP_OPTIONS}};
    size_t i = 0, n = sizeof(methods) / sizeof(methods[0]);
    while (i < n && !((size_t)(end - p) > methods[i].len &&
                      memcmp(p, methods[i].name, methods[i].len) == 0))
        i++;
    if (i == n) return NULL;
    m->parser.method = methods[i].method;
    p += methods[i].len;
    const char *url = p;
    if (p >= end || *p != '/') return NULL;
    while (p < end && url_char((unsigned char)*p))
        p++;
    if (end - p < 11 || *p != ' ' || !version(m, p + 1) || p[9] != '\r' || p[10] != '\n')
        return NULL;
    m->url = url;
    m->url_len = (uint32_t)(p - url);
    return p + 11;
}

static const char *status_line(struct tg_http_msg *m, const char *p, const char *end)
{
    if (end - p < 14 || !version(m, p) || p[8] != ' ') return NULL;
    p += 9;
    for (int i = 0; i < 3; i++)
        if (p[i] < '0' || p[i] > '9') return NULL;
    int status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    /* Interim and body-less replies are http-parser's. */
    if (status < 200 || status == 204 || status == 304 || p[3] != ' ') return NULL;
    p += 4;
    while (p < end && ((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f))
        p++;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return NULL;
    m->status = status;
    m->parser.status_code = (unsigned)status;
    return p + 2;
}

static bool fast_head(struct tg_http_msg *m, const char *head, size_t len)
{
    const char *p = head, *end = head + len;
    if (len < 4 || memcmp(end - 4, "\r\n\r\n", 4) != 0 || m->skip_body) return false;
    bool request = m->parser.type == HTTP_REQUEST;
    p = request ? request_line(m, p, end) : status_line(m, p, end);
    if (p == NULL) return false;
    bool close = false, keep = false;
    int64_t clen = -1;
    size_t nh = 0;
    while (!(p[0] == '\r' && p[1] == '\n')) { /* the head ends with CRLF CRLF: no overrun */
        const char *name = p;
        while (tchar((unsigned char)*p))
            p++;
        size_t nlen = (size_t)(p - name);
        if (nlen == 0 || *p != ':' || nh == TG_HTTP_MAX_HEADERS) return false;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *value = p;
        while ((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f)
            p++;
        size_t vlen = (size_t)(p - value);
        if (p[0] != '\r' || p[1] != '\n' || vlen == 0 || value[vlen - 1] == ' ') return false;
        p += 2;
        switch (nlen) {
        case 6:
            if (tg_http_lc_is(name, nlen, "expect") && vlen == 12 &&
                strncasecmp(value, "100-continue", 12) == 0)
                m->expect_continue = true;
            break;
        case 7:
            if (tg_http_lc_is(name, nlen, "upgrade")) return false;
            break;
        case 10:
            if (tg_http_lc_is(name, nlen, "connection")) {
                if (tg_http_lc_is(value, vlen, "close"))
                    close = true;
                else if (tg_http_lc_is(value, vlen, "keep-alive"))
                    keep = true;
                else
                    return false;
            }
            break;
        case 14:
            if (tg_http_lc_is(name, nlen, "content-length")) {
                if (clen >= 0 || vlen > 15) return false;
                clen = 0;
                for (size_t i = 0; i < vlen; i++) {
                    if (value[i] < '0' || value[i] > '9') return false;
                    clen = clen * 10 + (value[i] - '0');
                }
            }
            break;
        case 16:
            if (tg_http_lc_is(name, nlen, "proxy-connection")) return false;
            break;
        case 17:
            if (tg_http_lc_is(name, nlen, "transfer-encoding")) return false;
            break;
        default:
            break;
        }
        struct tg_http_header *h = &m->headers[nh++];
        h->name = name;
        h->nlen = (uint32_t)nlen;
        h->value = value;
        h->vlen = (uint32_t)vlen;
    }
    if (p + 2 != end) return false;
    if (!request && clen < 0) return false; /* read until close: http-parser's */
    m->nheaders = nh;
    m->content_length = clen;
    /* http_should_keep_alive, for a message that never needs EOF to end */
    m->keep_alive = m->parser.http_minor == 1 ? !close : keep;
    m->head_done = true;
    m->fast = true;
    m->body_left = clen > 0 ? (uint64_t)clen : 0;
    m->done = m->body_left == 0;
    return true;
}

enum tg_http_result tg_http_parse_head(struct tg_http_msg *m, const char *head, size_t len)
{
    if (fast_head(m, head, len)) return TG_HTTP_OK;
    /* Undo what the fast path may have set before it gave up. */
    bool skip_body = m->skip_body;
    tg_http_msg_init(m, (enum http_parser_type)m->parser.type, m->on_body, m->arg);
    m->skip_body = skip_body;
    return tg_http_parse_head_full(m, head, len);
}

enum tg_http_result tg_http_parse_head_full(struct tg_http_msg *m, const char *head, size_t len)
{
    size_t n = http_parser_execute(&m->parser, &settings, head, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&m->parser);
    if (!m->head_done) {
        if (m->nheaders == TG_HTTP_MAX_HEADERS) return TG_HTTP_TOO_MANY_HEADERS;
        return TG_HTTP_MALFORMED;
    }
    if (e != HPE_PAUSED && e != HPE_OK) return TG_HTTP_MALFORMED;
    if (n != len) return TG_HTTP_MALFORMED;
    if (e == HPE_PAUSED) http_parser_pause(&m->parser, 0);
    if (m->has_te && tg_http_header(m, "content-length", NULL) != NULL) return TG_HTTP_SMUGGLING;
    if (m->has_te && !m->chunked) return TG_HTTP_MALFORMED;
    /* A message without a body ends at its head. */
    if (!m->done && m->parser.type == HTTP_REQUEST && !m->chunked && m->content_length <= 0)
        m->done = true;
    if (!m->done && m->skip_body) m->done = true;
    if (!m->done && m->parser.type == HTTP_RESPONSE &&
        (m->status == 204 || m->status == 304 || m->status / 100 == 1 || m->content_length == 0))
        m->done = true;
    return TG_HTTP_OK;
}

ssize_t tg_http_feed(struct tg_http_msg *m, const char *data, size_t len)
{
    if (m->done || len == 0) return 0;
    if (m->fast) {
        size_t n = len < m->body_left ? len : (size_t)m->body_left;
        if (m->on_body) m->on_body(m->arg, data, n);
        m->body_left -= n;
        m->done = m->body_left == 0;
        return (ssize_t)n;
    }
    size_t n = http_parser_execute(&m->parser, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&m->parser);
    if (e == HPE_PAUSED) {
        http_parser_pause(&m->parser, 0);
        return (ssize_t)n;
    }
    if (e != HPE_OK) return -1;
    return (ssize_t)n;
}

void tg_http_feed_eof(struct tg_http_msg *m)
{
    if (m->done || m->fast) return; /* a fast message has a length: EOF before it is no end */
    http_parser_execute(&m->parser, &settings, NULL, 0);
    if (HTTP_PARSER_ERRNO(&m->parser) == HPE_PAUSED) http_parser_pause(&m->parser, 0);
}

bool tg_http_name_is(const char *name, size_t len, const char *lit)
{
    return strncasecmp(name, lit, len) == 0 && lit[len] == '\0';
}

const char *tg_http_header(const struct tg_http_msg *m, const char *name, size_t *vlen)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct tg_http_header *h = &m->headers[i];
        if (h->nlen == len && tg_http_lc_is(h->name, len, name)) {
            if (vlen) *vlen = h->vlen;
            return h->value;
        }
    }
    return NULL;
}

bool tg_http_is_hop_by_hop(const char *name, size_t len)
{
    switch (len) {
    case 2:
        return tg_http_lc_is(name, len, "te");
    case 7:
        return tg_http_lc_is(name, len, "trailer") || tg_http_lc_is(name, len, "upgrade");
    case 10:
        return tg_http_lc_is(name, len, "connection") || tg_http_lc_is(name, len, "keep-alive");
    case 17:
        return tg_http_lc_is(name, len, "transfer-encoding");
    default:
        return len > 6 && tg_http_lc_is(name, 6, "proxy-");
    }
}

const char *tg_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}
