/* The HTTP/1.1 codec: a fast path for plain heads, libhttp-parser for everything else. */
#ifndef TOLLGATE_HTTP_H
#define TOLLGATE_HTTP_H

#include <string.h>
#include <http_parser.h>
#include "tollgate/common.h"

#define TG_HTTP_MAX_HEADERS 128
#define TG_HTTP_MAX_HEAD (64 * 1024) /* a longer header block gets 431 */

struct tg_http_header {
    const char *name;
    const char *value;
    uint32_t nlen, vlen;
};

/* Receives body bytes (de-chunked) while a message is fed. */
typedef void (*tg_http_body_fn)(void *arg, const char *data, size_t len);

/* One parsed message head plus the parser that goes on to read its body.
 * Header pointers point into the caller's copy of the head bytes. */
struct tg_http_msg {
    http_parser parser;
    tg_http_body_fn on_body;
    void *arg;
    const char *url;
    uint32_t url_len;
    int status;      /* replies */
    bool keep_alive; /* http_should_keep_alive at headers complete */
    bool chunked;
    bool has_te;            /* any Transfer-Encoding */
    int64_t content_length; /* -1 when absent */
    bool expect_continue;
    bool head_done, done;
    bool skip_body; /* reply to a HEAD request */
    bool fast;            /* the head was read by the fast path: so is the body */
    uint64_t body_left;   /* fast path: body bytes still to come */
    size_t nheaders;
    struct tg_http_header headers[TG_HTTP_MAX_HEADERS];
};

enum tg_http_result {
    TG_HTTP_OK = 0,
    TG_HTTP_MALFORMED = -1,        /* 400 */
    TG_HTTP_TOO_MANY_HEADERS = -2, /* 431 */
    TG_HTTP_SMUGGLING = -3,        /* Content-Length with Transfer-Encoding: 400 */
};

/* Starts a message of `type` (HTTP_REQUEST or HTTP_RESPONSE). */
void tg_http_msg_init(struct tg_http_msg *m, enum http_parser_type type, tg_http_body_fn on_body,
                      void *arg);

/* Parses a complete head (through the blank line; `len` includes it). The
 * bytes must stay in place while the header pointers are used. */
enum tg_http_result tg_http_parse_head(struct tg_http_msg *m, const char *head, size_t len) TG_WUR;

/* tg_http_parse_head without its fast path: every head through http-parser.
 * For tests, which hold the two to the same results. */
enum tg_http_result tg_http_parse_head_full(struct tg_http_msg *m, const char *head,
                                            size_t len) TG_WUR;

/* Feeds body bytes; returns how many were consumed (fewer than len when the
 * message ended: the rest belongs to the next message), or -1 on a framing
 * error. m->done is set at the end of the message. */
ssize_t tg_http_feed(struct tg_http_msg *m, const char *data, size_t len) TG_WUR;

/* Marks the end of input for a reply read until close. */
void tg_http_feed_eof(struct tg_http_msg *m);

/* Case-insensitive header lookup of a name written as tg_http_lc_is wants it;
 * NULL when absent (vlen set otherwise). */
const char *tg_http_header(const struct tg_http_msg *m, const char *name, size_t *vlen);

/* True for headers a proxy never forwards (RFC 9110 hop-by-hop and friends). */
bool tg_http_is_hop_by_hop(const char *name, size_t len);

/* The reason phrase of a status code ("OK", "Too Many Requests", ...). */
const char *tg_http_reason(int status);

/* Case-insensitive comparison of a counted name with a C string. */
bool tg_http_name_is(const char *name, size_t len, const char *lit);

/* The same for a literal in lower case, of letters, digits and '-' only, and
 * a name of printable ASCII (a header name or value): then `c | 0x20` lowers
 * a letter and matches nothing else by accident, so eight bytes compare at
 * once. Inline: the proxy compares a few names per header of every message,
 * and strlen of a literal folds to a constant. */
static inline bool tg_http_lc_is(const char *name, size_t len, const char *lit)
{
    if (strlen(lit) != len) return false;
    if (len < 8) {
        for (size_t i = 0; i < len; i++)
            if (((unsigned char)name[i] | 0x20) != (unsigned char)lit[i]) return false;
        return true;
    }
    const uint64_t lower = 0x2020202020202020ULL;
    uint64_t a, b;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        memcpy(&a, name + i, 8);
        memcpy(&b, lit + i, 8);
        if ((a | lower) != b) return false;
    }
    memcpy(&a, name + len - 8, 8); /* the last eight, overlapping: the tail */
    memcpy(&b, lit + len - 8, 8);
    return (a | lower) == b;
}

#endif
