/* Message heads built in a stack buffer and handed to libevent in one piece. */
#ifndef TOLLGATE_HEADBUF_H
#define TOLLGATE_HEADBUF_H

#include <string.h>
#include <event2/buffer.h>
#include "tollgate/common.h"
#include "tollgate/http.h"

/* Builds a message head in a stack buffer and hands libevent one piece
 * (spilling into the evbuffer only for very long heads). Without an evbuffer
 * it builds a line in place, cut at the buffer's size. */
struct headbuf {
    struct evbuffer *out;
    size_t len, total;
    char p[4096];
};

static inline void hb_init(struct headbuf *hb, struct evbuffer *out)
{
    hb->out = out;
    hb->len = hb->total = 0;
}

static inline void hb_add(struct headbuf *hb, const char *s, size_t n)
{
    if (hb->out == NULL && hb->len + n > sizeof(hb->p))
        n = sizeof(hb->p) - hb->len; /* a line: cut */
    hb->total += n;
    if (hb->len + n > sizeof(hb->p)) {
        evbuffer_add(hb->out, hb->p, hb->len);
        hb->len = 0;
        if (n > sizeof(hb->p)) {
            evbuffer_add(hb->out, s, n);
            return;
        }
    }
    memcpy(hb->p + hb->len, s, n);
    hb->len += n;
}

static inline void hb_str(struct headbuf *hb, const char *s)
{
    hb_add(hb, s, strlen(s));
}

static inline void hb_int(struct headbuf *hb, long long v)
{
    char d[24];
    size_t n;
    const char *p = tg_fmt_int(d, v, &n);
    hb_add(hb, p, n);
}

static inline void hb_header(struct headbuf *hb, const char *name, size_t nlen, const char *value,
                             size_t vlen)
{
    hb_add(hb, name, nlen);
    hb_add(hb, ": ", 2);
    hb_add(hb, value, vlen);
    hb_add(hb, "\r\n", 2);
}

/* Header lines kept as they came ("Name: value\r\n", in the head they were
 * parsed from) are copied in runs: consecutive kept lines are one copy. A
 * line written any other way (other spacing, or a value the parser trimmed)
 * is written afresh by hb_header, as before. Flush the run before adding
 * anything else. */
struct hrun {
    const char *p;
    size_t n;
};

static inline void hb_run_flush(struct headbuf *hb, struct hrun *run)
{
    if (run->n) hb_add(hb, run->p, run->n);
    run->n = 0;
}

static inline void hb_keep(struct headbuf *hb, struct hrun *run, const struct tg_http_header *h)
{
    const char *line = h->name;
    if (h->value == line + h->nlen + 2 && line[h->nlen] == ':' && line[h->nlen + 1] == ' ' &&
        h->value[h->vlen] == '\r' && h->value[h->vlen + 1] == '\n') {
        size_t len = (size_t)h->nlen + 2 + h->vlen + 2;
        if (run->n && run->p + run->n == line) {
            run->n += len;
            return;
        }
        hb_run_flush(hb, run);
        run->p = line;
        run->n = len;
        return;
    }
    hb_run_flush(hb, run);
    hb_header(hb, h->name, h->nlen, h->value, h->vlen);
}

/* Writes what is buffered; returns the head's whole length. */
static inline size_t hb_flush(struct headbuf *hb)
{
    if (hb->len) evbuffer_add(hb->out, hb->p, hb->len);
    hb->len = 0;
    return hb->total;
}

static inline void hb_status_line(struct headbuf *hb, int status)
{
    hb_add(hb, "HTTP/1.1 ", 9);
    hb_int(hb, status);
    hb_add(hb, " ", 1);
    hb_str(hb, tg_http_reason(status));
    hb_add(hb, "\r\n", 2);
}

#endif
