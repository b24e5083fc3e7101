/* The HTTP/1.1 codec: libhttp-parser behind one module, for requests and replies. */
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

enum tg_http_result tg_http_parse_head(struct tg_http_msg *m, const char *head, size_t len)
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
    if (m->done) return;
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
        if (h->nlen == len && strncasecmp(h->name, name, len) == 0) {
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
        return tg_http_name_is(name, len, "te");
    case 7:
        return tg_http_name_is(name, len, "trailer") || tg_http_name_is(name, len, "upgrade");
    case 10:
        return tg_http_name_is(name, len, "connection") || tg_http_name_is(name, len, "keep-alive");
    case 17:
        return tg_http_name_is(name, len, "transfer-encoding");
    default:
        return len > 6 && strncasecmp(name, "proxy-", 6) == 0;
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
