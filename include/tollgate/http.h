/* The HTTP/1.1 codec: strict message framing (RFC 9112) for requests and replies.
 *
 * One reading of every byte stream: whatever the codec cannot read in exactly
 * one way it refuses, with the status to answer (a request) or to report as
 * 502 (a reply). A message is read in two steps: tg_http_scan_head finds the
 * end of its head while the bytes arrive (and refuses an overlong request
 * line, too many lines or a bare LF at once), tg_http_parse_head reads the
 * whole head, and tg_http_feed reads the body (Content-Length, chunked, or
 * until close for a reply) and hands its de-chunked bytes to a callback.
 * Trailer fields of a chunked body are checked and dropped, never merged into
 * the head. */
#ifndef TOLLGATE_HTTP_H
#define TOLLGATE_HTTP_H

#include <string.h>
#include <sys/types.h>
#include "tollgate/common.h"

#define TG_HTTP_MAX_HEADERS 128             /* more header lines get 431 */
#define TG_HTTP_MAX_HEAD (64 * 1024)        /* a longer head gets 431 */
#define TG_HTTP_MAX_REQUEST_LINE (8 * 1024) /* a longer request line gets 414 */

enum tg_http_kind { TG_HTTP_REQUEST, TG_HTTP_REPLY };

/* The methods the proxy treats apart; any other token is TG_HTTP_OTHER. */
enum tg_http_method {
    TG_HTTP_OTHER,
    TG_HTTP_GET,
    TG_HTTP_HEAD,
    TG_HTTP_POST,
    TG_HTTP_PUT,
    TG_HTTP_DELETE,
    TG_HTTP_PATCH,
    TG_HTTP_OPTIONS,
    TG_HTTP_TRACE,
    TG_HTTP_CONNECT,
};

/* Why a message was refused (0 is none). tg_http_status gives the status a
 * request refused so is answered with, tg_http_error the sentence. */
enum tg_http_result {
    TG_HTTP_OK = 0,
    TG_HTTP_MALFORMED = -1,        /* 400 */
    TG_HTTP_TOO_MANY_HEADERS = -2, /* 431 */
    TG_HTTP_SMUGGLING = -3,        /* Content-Length with Transfer-Encoding, or two lengths: 400 */
    TG_HTTP_HEAD_TOO_LARGE = -4,   /* 431 */
    TG_HTTP_URI_TOO_LONG = -5,     /* 414 */
    TG_HTTP_BAD_VERSION = -6,      /* a well-formed version other than 1.0 and 1.1: 505 */
    TG_HTTP_UNKNOWN_CODING = -7,   /* a transfer coding other than chunked: 501 */
    TG_HTTP_OBS_FOLD = -8,         /* a header line continued on the next: 400 */
    TG_HTTP_BAD_HOST = -9,         /* HTTP/1.1 without exactly one Host: 400 */
    TG_HTTP_BAD_CHUNK = -10,       /* chunked body framing: 400 */
};

int tg_http_status(enum tg_http_result res);
const char *tg_http_error(enum tg_http_result res);

/* Finds the end of a message head while its bytes arrive. Zero it (or
 * tg_http_scan_init) before the first byte of a head. */
struct tg_http_scan {
    size_t pos;       /* bytes of the head scanned so far */
    size_t line;      /* where the current line starts */
    uint32_t lines;   /* complete lines so far */
    bool cr;          /* the last byte scanned was CR */
    uint8_t tlen;     /* bytes in tail */
    char tail[9];     /* a request line's last bytes so far: " HTTP/x.y" when whole */
    enum tg_http_kind kind;
};

static inline void tg_http_scan_init(struct tg_http_scan *s, enum tg_http_kind kind)
{
    memset(s, 0, sizeof(*s));
    s->kind = kind;
}

/* Scans `data[0..len)`, the head's bytes from s->pos on (the caller passes
 * each new piece once, in order). Returns the length of the whole head
 * (through its blank line) once it is found: that end lies within this
 * piece; 0 when more bytes are needed; or a negative tg_http_result: a bare
 * LF, a CR not followed by LF, a request line that does not end in an
 * HTTP version (" HTTP/x.y"), a request line longer than
 * TG_HTTP_MAX_REQUEST_LINE, more than TG_HTTP_MAX_HEADERS header lines or a
 * head longer than TG_HTTP_MAX_HEAD, each refused as soon as it is seen. */
ssize_t tg_http_scan_head(struct tg_http_scan *s, const char *data, size_t len) TG_WUR;

struct tg_http_header {
    const char *name;
    const char *value; /* without leading and trailing whitespace */
    uint32_t nlen, vlen;
};

/* Receives body bytes (de-chunked) while a message is fed. */
typedef void (*tg_http_body_fn)(void *arg, const char *data, size_t len);

/* One parsed message head and the state of reading its body. Header pointers
 * point into the caller's copy of the head bytes. */
struct tg_http_msg {
    enum tg_http_kind kind;
    tg_http_body_fn on_body;
    void *arg;
    /* the request line */
    enum tg_http_method method;
    const char *method_name; /* the token as sent */
    uint32_t method_len;
    const char *target; /* as sent; for an absolute-form target, its path and query */
    uint32_t target_len;
    bool absolute_form;
    uint8_t minor; /* HTTP/1.<minor>: 0 or 1 */
    /* the status line */
    int status;
    /* framing */
    bool keep_alive;        /* the connection may carry another message after this one */
    bool chunked;           /* Transfer-Encoding: chunked */
    bool until_close;       /* a reply without a length: its body ends at EOF */
    int64_t content_length; /* -1 when absent */
    bool expect_continue;
    bool connection_options; /* Connection names a header to drop (see tg_http_listed) */
    bool skip_body;          /* set before parsing a reply to a HEAD request */
    bool head_done, done;
    uint64_t body_left; /* Content-Length bytes or bytes of the current chunk still to come */
    uint8_t cstate;     /* the chunked reader's state */
    uint32_t cline;     /* bytes of the current chunk-size or trailer line */
    uint32_t ctrailer;  /* bytes of trailer fields so far */
    const char *connection; /* the Connection header's value, when there is one */
    uint32_t connection_len;
    size_t nheaders;
    struct tg_http_header headers[TG_HTTP_MAX_HEADERS];
};

/* Starts a message of `kind`. */
void tg_http_msg_init(struct tg_http_msg *m, enum tg_http_kind kind, tg_http_body_fn on_body,
                      void *arg);

/* Parses a complete head (through the blank line; `len` includes it, as
 * tg_http_scan_head returned it). The bytes must stay in place while the
 * header pointers are used. */
enum tg_http_result tg_http_parse_head(struct tg_http_msg *m, const char *head, size_t len) TG_WUR;

/* Feeds body bytes; returns how many were consumed (fewer than len when the
 * message ended: the rest belongs to the next message), or a negative
 * tg_http_result on a framing error. m->done is set at the end of the
 * message. */
ssize_t tg_http_feed(struct tg_http_msg *m, const char *data, size_t len) TG_WUR;

/* Marks the end of input: ends a reply read until close. A message with a
 * length or chunks that is not done by then was cut short. */
void tg_http_feed_eof(struct tg_http_msg *m);

/* Case-insensitive header lookup of a name written as tg_http_lc_is wants it;
 * NULL when absent (vlen set otherwise). */
const char *tg_http_header(const struct tg_http_msg *m, const char *name, size_t *vlen);

/* True for headers a proxy never forwards (RFC 9110 hop-by-hop and friends). */
bool tg_http_is_hop_by_hop(const char *name, size_t len);

/* True when the message's Connection header lists `name` (which is then
 * hop-by-hop for this message, RFC 9110 7.6.1). */
bool tg_http_listed(const struct tg_http_msg *m, const char *name, size_t len);

/* The method's name ("GET", ... or the token as sent). */
static inline const char *tg_http_method_name(const struct tg_http_msg *m, size_t *len)
{
    *len = m->method_len;
    return m->method_name;
}

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
