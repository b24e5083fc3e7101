/* The HTTP/1.1 codec: strict message framing (RFC 9112) for requests and replies. */
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include "tollgate/http.h"

/* Character classes, one table lookup per byte:
 *   T  tchar (RFC 9110 5.6.2): a method, a header name, a coding
 *   V  what a field value holds: VCHAR, obs-text, SP, HTAB
 *   R  what a request target holds: VCHAR (the path is judged later, by
 *      tg_http_path_normalize)
 *   X  a hex digit */
enum { T = 1, V = 2, R = 4, X = 8 };
static const unsigned char cclass[256] = {
    ['\t'] = V,
    [' '] = V,
    ['!'] = T | V | R,
    ['"'] = V | R,
    ['#'] = T | V | R,
    ['$'] = T | V | R,
    ['%'] = T | V | R,
    ['&'] = T | V | R,
    ['\''] = T | V | R,
    ['('] = V | R,
    [')'] = V | R,
    ['*'] = T | V | R,
    ['+'] = T | V | R,
    [','] = V | R,
    ['-'] = T | V | R,
    ['.'] = T | V | R,
    ['/'] = V | R,
    ['0' ... '9'] = T | V | R | X,
    [':' ... '@'] = V | R,
    ['A' ... 'F'] = T | V | R | X,
    ['G' ... 'Z'] = T | V | R,
    ['['] = V | R,
    ['\\'] = V | R,
    [']'] = V | R,
    ['^'] = T | V | R,
    ['_'] = T | V | R,
    ['`'] = T | V | R,
    ['a' ... 'f'] = T | V | R | X,
    ['g' ... 'z'] = T | V | R,
    ['{'] = V | R,
    ['|'] = T | V | R,
    ['}'] = V | R,
    ['~'] = T | V | R,
    [0x80 ... 0xff] = V,
};

#define IS(ch, cls) ((cclass[(unsigned char)(ch)] & (cls)) != 0)

int tg_http_status(enum tg_http_result res)
{
    switch (res) {
    case TG_HTTP_OK:
        return 200;
    case TG_HTTP_TOO_MANY_HEADERS:
    case TG_HTTP_HEAD_TOO_LARGE:
        return 431;
    case TG_HTTP_URI_TOO_LONG:
        return 414;
    case TG_HTTP_BAD_VERSION:
        return 505;
    case TG_HTTP_UNKNOWN_CODING:
        return 501;
    default:
        return 400;
    }
}

const char *tg_http_error(enum tg_http_result res)
{
    switch (res) {
    case TG_HTTP_OK:
        return "";
    case TG_HTTP_TOO_MANY_HEADERS:
        return "The request has more than 128 header fields.";
    case TG_HTTP_HEAD_TOO_LARGE:
        return "The request header block exceeds 65536 bytes.";
    case TG_HTTP_URI_TOO_LONG:
        return "The request line exceeds 8192 bytes.";
    case TG_HTTP_BAD_VERSION:
        return "Only HTTP/1.0 and HTTP/1.1 are supported.";
    case TG_HTTP_UNKNOWN_CODING:
        return "The only transfer coding supported is chunked.";
    case TG_HTTP_SMUGGLING:
        return "A request may carry one Content-Length or Transfer-Encoding: chunked, not both "
               "and not twice.";
    case TG_HTTP_OBS_FOLD:
        return "A header field may not start with whitespace or be folded onto several lines.";
    case TG_HTTP_BAD_HOST:
        return "An HTTP/1.1 request must carry exactly one Host header field.";
    case TG_HTTP_BAD_CHUNK:
        return "The request body's chunked framing is invalid.";
    case TG_HTTP_MALFORMED:
    default:
        return "The request could not be parsed as HTTP/1.1.";
    }
}

/* ---- finding the end of a head ---- */

/* Keeps the last sizeof(s->tail) bytes of the request line seen so far. */
static void keep_tail(struct tg_http_scan *s, const char *seg, size_t n)
{
    const size_t cap = sizeof(s->tail);
    if (n >= cap) {
        memcpy(s->tail, seg + n - cap, cap);
        s->tlen = (uint8_t)cap;
        return;
    }
    size_t keep = s->tlen < cap - n ? s->tlen : cap - n;
    memmove(s->tail, s->tail + s->tlen - keep, keep);
    memcpy(s->tail + keep, seg, n);
    s->tlen = (uint8_t)(keep + n);
}

/* A whole request line ends in " HTTP/" DIGIT "." DIGIT (RFC 9112 2.3); one
 * without (HTTP/0.9's "GET /") is refused when its CR arrives, not after a
 * head that will never come. The version itself is judged by parse_head. */
static bool ends_in_version(const struct tg_http_scan *s)
{
    const char *t = s->tail;
    return s->tlen == sizeof(s->tail) && memcmp(t, " HTTP/", 6) == 0 && t[6] >= '0' &&
           t[6] <= '9' && t[7] == '.' && t[8] >= '0' && t[8] <= '9';
}

ssize_t tg_http_scan_head(struct tg_http_scan *s, const char *data, size_t len)
{
    const char *p = data, *end = data + len;
    const size_t base = s->pos;
    while (p < end) {
        if (s->cr) {
            if (*p != '\n') return TG_HTTP_MALFORMED; /* a CR alone */
            s->cr = false;
            size_t lf = base + (size_t)(p - data);
            p++;
            if (lf - 1 == s->line) { /* an empty line */
                if (s->lines == 0) return TG_HTTP_MALFORMED;
                if (lf + 1 > TG_HTTP_MAX_HEAD) return TG_HTTP_HEAD_TOO_LARGE;
                s->pos = lf + 1;
                return (ssize_t)(lf + 1);
            }
            if (++s->lines > TG_HTTP_MAX_HEADERS + 1) return TG_HTTP_TOO_MANY_HEADERS;
            s->line = lf + 1;
            continue;
        }
        const char *seg = p;
        while (p < end && *p != '\r' && *p != '\n')
            p++;
        size_t at = base + (size_t)(p - data);
        bool request_line = s->lines == 0 && s->kind == TG_HTTP_REQUEST;
        if (request_line) {
            if (at - s->line > TG_HTTP_MAX_REQUEST_LINE) return TG_HTTP_URI_TOO_LONG;
            keep_tail(s, seg, (size_t)(p - seg));
        }
        if (at > TG_HTTP_MAX_HEAD) return TG_HTTP_HEAD_TOO_LARGE;
        if (p == end) break;
        if (*p == '\n') return TG_HTTP_MALFORMED; /* a bare LF */
        if (request_line && !ends_in_version(s)) return TG_HTTP_MALFORMED;
        s->cr = true;
        p++;
    }
    s->pos = base + len;
    return 0;
}

/* ---- the head ---- */

/* A Host value (RFC 9112 3.2, RFC 3986 3.2.2): uri-host [ ":" port ], where
 * the host is a reg-name (unreserved, pct-encoded, sub-delims), an IPv4
 * address or a bracketed IP literal; empty is allowed. Judged by its bytes:
 * whitespace, '/', '?', '#', '@' and the like make it invalid. */
static bool host_char(unsigned char ch)
{
    return IS(ch, R) && strchr("\"<>[]\\^`{|}/?#@:", ch) == NULL;
}

static bool host_valid(const char *v, size_t n)
{
    size_t i = 0;
    if (n > 0 && v[0] == '[') { /* an IP literal: IPv6 or IPvFuture */
        for (i = 1; i < n && v[i] != ']'; i++)
            if (!host_char((unsigned char)v[i]) && v[i] != ':') return false;
        if (i == n || i == 1) return false;
        i++;
    } else {
        while (i < n && host_char((unsigned char)v[i]))
            i++;
    }
    if (i == n) return true;
    if (v[i] != ':') return false;
    for (i++; i < n; i++)
        if (v[i] < '0' || v[i] > '9') return false;
    return true;
}

void tg_http_msg_init(struct tg_http_msg *m, enum tg_http_kind kind, tg_http_body_fn body_fn,
                      void *arg)
{
    memset(m, 0, offsetof(struct tg_http_msg, headers));
    m->kind = kind;
    m->on_body = body_fn;
    m->arg = arg;
    m->content_length = -1;
}

static enum tg_http_method method_of(const char *p, size_t n)
{
    static const struct {
        const char *name;
        enum tg_http_method method;
    } methods[] = {{"GET", TG_HTTP_GET},         {"HEAD", TG_HTTP_HEAD},
                   {"POST", TG_HTTP_POST},       {"PUT", TG_HTTP_PUT},
                   {"DELETE", TG_HTTP_DELETE},   {"PATCH", TG_HTTP_PATCH},
                   {"OPTIONS", TG_HTTP_OPTIONS}, {"TRACE", TG_HTTP_TRACE},
                   {"CONNECT", TG_HTTP_CONNECT}};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i].name) == n && memcmp(methods[i].name, p, n) == 0)
            return methods[i].method;
    return TG_HTTP_OTHER;
}

/* "HTTP/1.0" or "HTTP/1.1" at p, with 8 bytes there. */
static enum tg_http_result version(struct tg_http_msg *m, const char *p)
{
    if (memcmp(p, "HTTP/", 5) != 0 || !(p[5] >= '0' && p[5] <= '9') || p[6] != '.' ||
        !(p[7] >= '0' && p[7] <= '9'))
        return TG_HTTP_MALFORMED;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) return TG_HTTP_BAD_VERSION;
    m->minor = (uint8_t)(p[7] - '0');
    return TG_HTTP_OK;
}

/* An absolute-form target (RFC 9112 3.2.2): "http://authority/path?query".
 * The route is chosen on its path and query, which it points the target at. */
static enum tg_http_result absolute_form(struct tg_http_msg *m)
{
    const char *t = m->target, *end = t + m->target_len;
    size_t skip = 0;
    if (m->target_len > 7 && strncasecmp(t, "http://", 7) == 0)
        skip = 7;
    else if (m->target_len > 8 && strncasecmp(t, "https://", 8) == 0)
        skip = 8;
    else
        return TG_HTTP_MALFORMED;
    const char *a = t + skip, *q = a;
    while (q < end && *q != '/' && *q != '?' && *q != '#')
        q++;
    if (q == a || (q < end && *q != '/')) return TG_HTTP_MALFORMED;
    m->absolute_form = true;
    if (q == end) {
        m->target = "/";
        m->target_len = 1;
    } else {
        m->target = q;
        m->target_len = (uint32_t)(end - q);
    }
    return TG_HTTP_OK;
}

static const char *request_line(struct tg_http_msg *m, const char *p, const char *end,
                                enum tg_http_result *res)
{
    *res = TG_HTTP_MALFORMED;
    const char *start = p;
    while (p < end && IS(*p, T))
        p++;
    if (p == start || p == end || *p != ' ') return NULL;
    m->method_name = start;
    m->method_len = (uint32_t)(p - start);
    m->method = method_of(start, m->method_len);
    const char *t = ++p;
    while (p < end && IS(*p, R))
        p++;
    if (p == t || p == end || *p != ' ') return NULL; /* no target, two spaces, no version */
    m->target = t;
    m->target_len = (uint32_t)(p - t);
    p++;
    if (end - p < 10 || p[8] != '\r' || p[9] != '\n') return NULL;
    if ((*res = version(m, p)) != TG_HTTP_OK) return NULL;
    if (*t == '/' || (m->target_len == 1 && *t == '*') || m->method == TG_HTTP_CONNECT)
        *res = TG_HTTP_OK;
    else
        *res = absolute_form(m);
    return *res == TG_HTTP_OK ? p + 10 : NULL;
}

static const char *status_line(struct tg_http_msg *m, const char *p, const char *end,
                               enum tg_http_result *res)
{
    *res = TG_HTTP_MALFORMED;
    if (end - p < 14 || p[8] != ' ') return NULL;
    if ((*res = version(m, p)) != TG_HTTP_OK) return NULL;
    *res = TG_HTTP_MALFORMED;
    p += 9;
    for (int i = 0; i < 3; i++)
        if (p[i] < '0' || p[i] > '9') return NULL;
    m->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (m->status < 100 || m->status > 599) return NULL; /* RFC 9110 15: 100 to 599 */
    p += 3;
    if (*p == ' ') {
        p++;
        while (p < end && IS(*p, V))
            p++;
    }
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return NULL;
    *res = TG_HTTP_OK;
    return p + 2;
}

/* One element of a comma-separated list value (RFC 9110 5.6.1), without
 * its surrounding whitespace; empty elements are skipped. Returns false at
 * the end of the value. */
static bool list_next(const char **p, const char *end, const char **el, size_t *elen)
{
    while (*p < end) {
        const char *s = *p;
        while (*p < end && **p != ',')
            (*p)++;
        const char *e = *p;
        if (*p < end) (*p)++; /* the comma */
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            *el = s;
            *elen = (size_t)(e - s);
            return true;
        }
    }
    return false;
}

struct te_state {
    unsigned fields, chunked, others;
    bool chunked_last, bad;
};

static void transfer_codings(struct te_state *te, const char *v, size_t vlen)
{
    const char *p = v, *end = v + vlen, *el;
    size_t elen;
    te->fields++;
    while (list_next(&p, end, &el, &elen)) {
        size_t k = 0;
        while (k < elen && IS(el[k], T))
            k++;
        if (k == 0 || (k < elen && el[k] != ';' && el[k] != ' ' && el[k] != '\t')) te->bad = true;
        if (k == elen && tg_http_name_is(el, elen, "chunked")) {
            te->chunked++;
            te->chunked_last = true;
        } else {
            te->others++;
            te->chunked_last = false;
        }
    }
}

static bool connection_options(struct tg_http_msg *m, const char *v, size_t vlen, bool *close,
                               bool *keep)
{
    const char *p = v, *end = v + vlen, *el;
    size_t elen;
    bool ok = true;
    while (list_next(&p, end, &el, &elen)) {
        for (size_t k = 0; k < elen; k++)
            ok = ok && IS(el[k], T);
        if (tg_http_name_is(el, elen, "close"))
            *close = true;
        else if (tg_http_name_is(el, elen, "keep-alive"))
            *keep = true;
        else
            m->connection_options = true;
    }
    return ok;
}

enum tg_http_result tg_http_parse_head(struct tg_http_msg *m, const char *head, size_t len)
{
    const char *p = head, *end = head + len;
    enum tg_http_result res;
    p = m->kind == TG_HTTP_REQUEST ? request_line(m, p, end, &res) : status_line(m, p, end, &res);
    if (p == NULL) return res;
    bool close = false, keep = false;
    unsigned hosts = 0;
    struct te_state te = {0};
    size_t nh = 0;
    for (;;) {
        if (end - p < 2) return TG_HTTP_MALFORMED;
        if (p[0] == '\r') {
            if (p[1] != '\n') return TG_HTTP_MALFORMED;
            p += 2;
            break;
        }
        if (*p == ' ' || *p == '\t') return TG_HTTP_OBS_FOLD; /* or whitespace before a name */
        const char *name = p;
        while (p < end && IS(*p, T))
            p++;
        size_t nlen = (size_t)(p - name);
        if (nlen == 0 || p == end || *p != ':') return TG_HTTP_MALFORMED;
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *value = p;
        while (p < end && IS(*p, V))
            p++;
        const char *vend = p;
        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        size_t vlen = (size_t)(vend - value);
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return TG_HTTP_MALFORMED;
        p += 2;
        if (nh == TG_HTTP_MAX_HEADERS) return TG_HTTP_TOO_MANY_HEADERS;
        switch (nlen) {
        case 4:
            if (tg_http_lc_is(name, nlen, "host")) {
                if (m->kind == TG_HTTP_REQUEST && !host_valid(value, vlen)) return TG_HTTP_BAD_HOST;
                hosts++;
            }
            break;
        case 6:
            if (tg_http_lc_is(name, nlen, "expect") && tg_http_name_is(value, vlen, "100-continue"))
                m->expect_continue = true;
            break;
        case 10:
            if (tg_http_lc_is(name, nlen, "connection") &&
                !connection_options(m, value, vlen, &close, &keep))
                return TG_HTTP_MALFORMED;
            break;
        case 14:
            if (tg_http_lc_is(name, nlen, "content-length")) {
                if (m->content_length >= 0) return TG_HTTP_SMUGGLING;
                if (vlen == 0 || vlen > 18) return TG_HTTP_MALFORMED;
                int64_t cl = 0;
                for (size_t i = 0; i < vlen; i++) {
                    if (value[i] < '0' || value[i] > '9') return TG_HTTP_MALFORMED;
                    cl = cl * 10 + (value[i] - '0');
                }
                m->content_length = cl;
            }
            break;
        case 17:
            if (tg_http_lc_is(name, nlen, "transfer-encoding")) transfer_codings(&te, value, vlen);
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
    if (p != end) return TG_HTTP_MALFORMED;
    m->nheaders = nh;
    if (te.fields) {
        if (m->content_length >= 0) return TG_HTTP_SMUGGLING;
        /* HTTP/1.0 has no Transfer-Encoding: an HTTP/1.0 message with one is
         * framed faultily (RFC 9112 6.1), whatever it says */
        if (m->minor == 0) return TG_HTTP_MALFORMED;
        if (te.bad || te.chunked + te.others == 0 || te.chunked > 1 ||
            (te.chunked && !te.chunked_last))
            return TG_HTTP_MALFORMED;
        if (te.others) return TG_HTTP_UNKNOWN_CODING;
        m->chunked = true;
    }
    m->keep_alive = m->minor == 1 ? !close : keep && !close;
    m->head_done = true;
    if (m->kind == TG_HTTP_REQUEST) {
        if (hosts > 1 || (m->minor == 1 && hosts == 0)) return TG_HTTP_BAD_HOST;
        if (!m->chunked) {
            m->body_left = m->content_length > 0 ? (uint64_t)m->content_length : 0;
            m->done = m->body_left == 0;
        }
        return TG_HTTP_OK;
    }
    if (m->skip_body || m->status / 100 == 1 || m->status == 204 || m->status == 304) {
        m->chunked = false;
        m->done = true;
    } else if (!m->chunked) {
        if (m->content_length >= 0) {
            m->body_left = (uint64_t)m->content_length;
            m->done = m->body_left == 0;
        } else {
            m->until_close = true;
            m->keep_alive = false;
        }
    }
    return TG_HTTP_OK;
}

/* ---- the body ---- */

enum {
    CS_SIZE,       /* the first hex digit of a chunk size */
    CS_SIZE_MORE,  /* more digits, or what follows them */
    CS_SIZE_BWS,   /* whitespace after the size: an extension must follow */
    CS_EXT_NAME0,  /* after ';': whitespace, then an extension's name */
    CS_EXT_NAME,   /* the name (a token) */
    CS_EXT_NAMEWS, /* whitespace after the name: '=' or ';' follows (BWS is no line end) */
    CS_EXT_VAL0,   /* after '=': whitespace, then a token or a quoted string */
    CS_EXT_TOKEN,  /* a token value */
    CS_EXT_QUOTED, /* inside a quoted value */
    CS_EXT_ESCAPE, /* after a backslash in a quoted value */
    CS_EXT_END,    /* after a quoted value: ';' or CR, or whitespace */
    CS_EXT_ENDWS,  /* whitespace after a value: ';' follows */
    CS_SIZE_LF,    /* the LF after a chunk-size line */
    CS_DATA,       /* chunk data */
    CS_DATA_CR,    /* the CRLF after chunk data */
    CS_DATA_LF,
    CS_TRAILER,    /* the start of a trailer line, or the final CRLF */
    CS_TRAILER_NAME,
    CS_TRAILER_VALUE,
    CS_TRAILER_LF,
    CS_END_LF,     /* the LF of the final CRLF */
};

#define CHUNK_LINE_MAX 4096

static ssize_t feed_chunked(struct tg_http_msg *m, const char *data, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char ch = (unsigned char)data[i];
        switch (m->cstate) {
        case CS_DATA: {
            size_t n = len - i < m->body_left ? len - i : (size_t)m->body_left;
            if (m->on_body) m->on_body(m->arg, data + i, n);
            m->body_left -= n;
            i += n;
            if (m->body_left == 0) m->cstate = CS_DATA_CR;
            continue;
        }
        case CS_SIZE:
        case CS_SIZE_MORE:
            if (IS(ch, X)) {
                if (m->body_left >> 58) return TG_HTTP_BAD_CHUNK; /* over 2^62 bytes */
                unsigned d = ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
                m->body_left = m->body_left << 4 | d;
                m->cstate = CS_SIZE_MORE;
            } else if (m->cstate == CS_SIZE) {
                return TG_HTTP_BAD_CHUNK;
            } else if (ch == '\r') {
                m->cstate = CS_SIZE_LF;
            } else if (ch == ';') {
                m->cstate = CS_EXT_NAME0;
            } else if (ch == ' ' || ch == '\t') {
                m->cstate = CS_SIZE_BWS;
            } else {
                return TG_HTTP_BAD_CHUNK;
            }
            break;
        /* chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
         * (RFC 9112 7.1.1); extensions are checked and dropped. */
        case CS_SIZE_BWS:
            if (ch == ';')
                m->cstate = CS_EXT_NAME0;
            else if (ch != ' ' && ch != '\t')
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_EXT_NAME0:
            if (IS(ch, T))
                m->cstate = CS_EXT_NAME;
            else if (ch != ' ' && ch != '\t')
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_EXT_VAL0:
            if (IS(ch, T))
                m->cstate = CS_EXT_TOKEN;
            else if (ch == '"')
                m->cstate = CS_EXT_QUOTED;
            else if (ch != ' ' && ch != '\t')
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_EXT_NAME:
        case CS_EXT_TOKEN:
            if (IS(ch, T)) break;
            /* what may follow a name or a value */
            /* fall through */
        case CS_EXT_NAMEWS:
        case CS_EXT_END:
        case CS_EXT_ENDWS:
            if (ch == '\r' && m->cstate != CS_EXT_NAMEWS && m->cstate != CS_EXT_ENDWS)
                m->cstate = CS_SIZE_LF;
            else if (ch == ';')
                m->cstate = CS_EXT_NAME0;
            else if (ch == '=' && (m->cstate == CS_EXT_NAME || m->cstate == CS_EXT_NAMEWS))
                m->cstate = CS_EXT_VAL0;
            else if (ch == ' ' || ch == '\t')
                m->cstate = m->cstate == CS_EXT_NAME || m->cstate == CS_EXT_NAMEWS ? CS_EXT_NAMEWS
                                                                                   : CS_EXT_ENDWS;
            else
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_EXT_QUOTED: /* qdtext: HTAB, SP, VCHAR but '"' and '\\', obs-text */
            if (ch == '"')
                m->cstate = CS_EXT_END;
            else if (ch == '\\')
                m->cstate = CS_EXT_ESCAPE;
            else if (!IS(ch, V))
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_EXT_ESCAPE: /* quoted-pair: HTAB, SP, VCHAR, obs-text */
            if (!IS(ch, V)) return TG_HTTP_BAD_CHUNK;
            m->cstate = CS_EXT_QUOTED;
            break;
        case CS_SIZE_LF:
            if (ch != '\n') return TG_HTTP_BAD_CHUNK;
            m->cline = 0;
            m->cstate = m->body_left ? CS_DATA : CS_TRAILER;
            i++;
            continue;
        case CS_DATA_CR:
            if (ch != '\r') return TG_HTTP_BAD_CHUNK;
            m->cstate = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (ch != '\n') return TG_HTTP_BAD_CHUNK;
            m->cstate = CS_SIZE;
            m->cline = 0;
            i++;
            continue;
        case CS_TRAILER:
            if (ch == '\r') {
                m->cstate = CS_END_LF;
                break;
            }
            if (!IS(ch, T)) return TG_HTTP_BAD_CHUNK; /* whitespace (obs-fold) included */
            m->cstate = CS_TRAILER_NAME;
            break;
        case CS_TRAILER_NAME:
            if (ch == ':')
                m->cstate = CS_TRAILER_VALUE;
            else if (!IS(ch, T))
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_TRAILER_VALUE:
            if (ch == '\r')
                m->cstate = CS_TRAILER_LF;
            else if (!IS(ch, V))
                return TG_HTTP_BAD_CHUNK;
            break;
        case CS_TRAILER_LF:
            if (ch != '\n') return TG_HTTP_BAD_CHUNK;
            m->cstate = CS_TRAILER;
            m->cline = 0;
            i++;
            continue;
        case CS_END_LF:
            if (ch != '\n') return TG_HTTP_BAD_CHUNK;
            m->done = true;
            return (ssize_t)(i + 1);
        default:
            return TG_HTTP_BAD_CHUNK;
        }
        /* a byte of a size, extension or trailer line */
        if (++m->cline > CHUNK_LINE_MAX) return TG_HTTP_BAD_CHUNK;
        if (m->cstate >= CS_TRAILER && ++m->ctrailer > TG_HTTP_MAX_HEAD) return TG_HTTP_BAD_CHUNK;
        i++;
    }
    return (ssize_t)len;
}

ssize_t tg_http_feed(struct tg_http_msg *m, const char *data, size_t len)
{
    if (m->done || len == 0) return 0;
    if (m->until_close) {
        if (m->on_body) m->on_body(m->arg, data, len);
        return (ssize_t)len;
    }
    if (m->chunked) return feed_chunked(m, data, len);
    size_t n = len < m->body_left ? len : (size_t)m->body_left;
    if (m->on_body) m->on_body(m->arg, data, n);
    m->body_left -= n;
    m->done = m->body_left == 0;
    return (ssize_t)n;
}

void tg_http_feed_eof(struct tg_http_msg *m)
{
    if (m->until_close) m->done = true;
}

/* ---- headers ---- */

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

bool tg_http_listed(const struct tg_http_msg *m, const char *name, size_t len)
{
    if (!m->connection_options) return false;
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct tg_http_header *h = &m->headers[i];
        if (h->nlen != 10 || !tg_http_lc_is(h->name, 10, "connection")) continue;
        const char *p = h->value, *end = h->value + h->vlen, *el;
        size_t elen;
        while (list_next(&p, end, &el, &elen))
            if (elen == len && strncasecmp(el, name, len) == 0) return true;
    }
    return false;
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
    case 414:
        return "URI Too Long";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}
