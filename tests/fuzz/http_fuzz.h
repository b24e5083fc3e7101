/* Shared by fuzz_http_request.c and fuzz_http_reply.c: the HTTP/1.1 codec driven
 * the way the proxy drives it (src/proxy/client.c reads requests, pump.c
 * replies), a plain reference reader of RFC 9112 written apart from it, and
 * the comparisons of what the two read.
 *
 * A run reads a whole byte stream as a sequence of messages and records, for
 * each message, how it ended (done, refused, or waiting for more bytes), the
 * refusal's code, where its head ends and the message ends, what its head
 * says (a canonical text of the parsed fields), the de-chunked body bytes and,
 * for a reply, the usage the SSE/JSON scanner reads from that body. The codec
 * is run on the stream whole, one byte at a time and in pseudo-random pieces:
 * all runs must record the same. The reference reads the whole stream with
 * plain code (lines split on CRLF, then the grammar line by line) and must
 * record the same as the codec, with the exceptions documented at
 * ref_* and in README.md. */
#ifndef TG_FUZZ_HTTP_H
#define TG_FUZZ_HTTP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "tollgate/cost.h"
#include "tollgate/http.h"

#define HF static __attribute__((unused))

/* ---- failing loudly, with the input ---- */

static const char *hf_driver = "fuzz_http";
static const uint8_t *hf_input;
static size_t hf_input_len;

static void hf_dump(const char *label, const void *data, size_t n)
{
    const unsigned char *p = data;
    fprintf(stderr, "%s (%zu bytes): \"", label, n);
    for (size_t i = 0; i < n && i < 4096; i++) {
        unsigned c = p[i];
        if (c == '\\' || c == '"')
            fprintf(stderr, "\\%c", c);
        else if (c == '\r')
            fputs("\\r", stderr);
        else if (c == '\n')
            fputs("\\n", stderr);
        else if (c >= 0x20 && c < 0x7f)
            fputc((int)c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fputs(n > 4096 ? "\"...\n" : "\"\n", stderr);
}

__attribute__((noreturn)) static void hf_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s: %s:%d: check failed: %s\n", hf_driver, file, line, what);
    if (hf_input) hf_dump("input", hf_input, hf_input_len);
    abort();
}

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) hf_fail(__FILE__, __LINE__, #c);                                                 \
    } while (0)

/* ---- growing byte buffers ---- */

struct hf_buf {
    char *p;
    size_t len, cap;
};

static void hf_put(struct hf_buf *b, const void *d, size_t n)
{
    if (n == 0) return;
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p != NULL);
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

__attribute__((format(printf, 2, 3))) static void hf_printf(struct hf_buf *b, const char *fmt,
                                                            ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    CHECK(k >= 0 && (size_t)k < sizeof tmp);
    hf_put(b, tmp, (size_t)k);
}

static bool hf_buf_eq(const struct hf_buf *a, const struct hf_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* ---- what a run records ---- */

enum hf_state { HF_DONE = 1, HF_HEAD_MORE, HF_BODY_MORE, HF_ERROR };

struct hf_rec {
    int state;
    int res;        /* HF_ERROR: the tg_http_result */
    size_t start;   /* where the head starts in the stream */
    size_t hlen;    /* the head's length, once it is whole */
    size_t end;     /* HF_DONE: where the message ends */
    struct hf_buf desc;    /* the parsed head (hf_describe) */
    struct hf_buf body;    /* the de-chunked body */
    struct hf_buf usage;   /* a reply: what the scanner read from the body */
    struct hf_buf emitted; /* a reply, stripping: what the scanner passed on */
    /* the reference only: */
    const char *todo; /* a known codec defect may read this message otherwise */
    int alt;          /* another refusal the codec may answer with (0: none) */
};

#define HF_MAX_MSGS 256

struct hf_run {
    struct hf_rec *r;
    size_t n, cap;
};

static struct hf_rec *hf_new_rec(struct hf_run *run, size_t start)
{
    if (run->n == run->cap) {
        run->cap = run->cap ? run->cap * 2 : 8;
        run->r = realloc(run->r, run->cap * sizeof *run->r);
        CHECK(run->r != NULL);
    }
    struct hf_rec *r = &run->r[run->n++];
    memset(r, 0, sizeof *r);
    r->start = start;
    r->state = HF_HEAD_MORE;
    return r;
}

static void hf_free_run(struct hf_run *run)
{
    for (size_t i = 0; i < run->n; i++) {
        free(run->r[i].desc.p);
        free(run->r[i].body.p);
        free(run->r[i].usage.p);
        free(run->r[i].emitted.p);
    }
    free(run->r);
    memset(run, 0, sizeof *run);
}

static void hf_print_run(const char *label, const struct hf_run *run)
{
    fprintf(stderr, "%s: %zu messages\n", label, run->n);
    for (size_t i = 0; i < run->n; i++) {
        const struct hf_rec *r = &run->r[i];
        static const char *const states[] = {"?", "done", "head-more", "body-more", "error"};
        fprintf(stderr, "  #%zu %s res=%d start=%zu hlen=%zu end=%zu%s%s alt=%d\n", i,
                states[r->state], r->res, r->start, r->hlen, r->end, r->todo ? " todo=" : "",
                r->todo ? r->todo : "", r->alt);
        hf_dump("    head", r->desc.p, r->desc.len);
        hf_dump("    body", r->body.p, r->body.len);
        if (r->usage.len) hf_dump("    usage", r->usage.p, r->usage.len);
        if (r->emitted.len) hf_dump("    emitted", r->emitted.p, r->emitted.len);
    }
}

/* A parsed head, from the codec or the reference, in one canonical text. */
struct hf_field {
    const char *name, *value;
    size_t nlen, vlen;
};

struct hf_head {
    enum tg_http_kind kind;
    int method;
    const char *mname, *target;
    size_t mlen, tlen;
    bool abs;
    int minor, status;
    bool ka, chunked, until_close, expect, copt, done;
    long long cl;
    size_t nh;
    struct hf_field h[TG_HTTP_MAX_HEADERS + 1];
};

static void hf_describe(struct hf_buf *d, const struct hf_head *h)
{
    if (h->kind == TG_HTTP_REQUEST)
        hf_printf(d, "req m=%d ", h->method);
    else
        hf_printf(d, "rep %d ", h->status);
    if (h->kind == TG_HTTP_REQUEST) {
        hf_printf(d, "%zu:", h->mlen);
        hf_put(d, h->mname, h->mlen);
        hf_printf(d, " %zu:", h->tlen);
        hf_put(d, h->target, h->tlen);
        hf_printf(d, " abs=%d ", h->abs);
    }
    hf_printf(d, "1.%d ka=%d ch=%d uc=%d cl=%lld ex=%d co=%d done=%d nh=%zu", h->minor, h->ka,
              h->chunked, h->until_close, h->cl, h->expect, h->copt, h->done, h->nh);
    for (size_t i = 0; i < h->nh; i++) {
        hf_printf(d, " %zu:", h->h[i].nlen);
        hf_put(d, h->h[i].name, h->h[i].nlen);
        hf_printf(d, "=%zu:", h->h[i].vlen);
        hf_put(d, h->h[i].value, h->h[i].vlen);
    }
}

static void hf_describe_usage(struct hf_buf *d, const struct tg_scan *s)
{
    const struct tg_usage *u = &s->usage;
    hf_printf(d, "p=%lld c=%lld t=%lld tok=%d vid=%d s=%a w=%d h=%d chars=%lld over=%d",
              (long long)u->prompt_tokens, (long long)u->completion_tokens,
              (long long)u->total_tokens, u->have_tokens, u->have_video, u->video_seconds,
              u->width, u->height, (long long)u->content_chars, s->overflow);
}

/* What a driver asks for. */
struct hf_opts {
    enum tg_http_kind kind;
    bool skip_body; /* replies: the request was HEAD */
    bool sse;       /* replies: scan every body as SSE (else those of text/event-stream) */
    bool strip;     /* replies: the scanner drops usage-only events */
};

/* Plain character classes (RFC 9110 5.6.2, 5.5; RFC 5234), without the codec's table. */
static bool ref_tchar(unsigned c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && c < 0x80 && strchr("!#$%&'*+-.^_`|~", (int)c) != NULL);
}

static bool ref_vchar(unsigned c)
{
    return c >= 0x21 && c <= 0x7e;
}

static bool ref_ws(unsigned c)
{
    return c == ' ' || c == '\t';
}

/* What a field value holds: field-vchar (VCHAR, obs-text), SP, HTAB. */
static bool ref_fchar(unsigned c)
{
    return ref_vchar(c) || c >= 0x80 || ref_ws(c);
}

static bool ref_hexdig(unsigned c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool ref_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

static bool ref_is(const uint8_t *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp((const char *)s, lit, n) == 0;
}

/* ---- the codec, driven as the proxy drives it ---- */

enum { S_IDLE, S_HEAD, S_BODY, S_END };

struct hf_codec {
    struct hf_opts o;
    const uint8_t *in;
    size_t n, avail, pos, hstart;
    int st;
    bool props; /* check the properties of what is read (once per input: the whole run) */
    struct tg_http_scan scan;
    struct tg_http_msg msg;
    char *head; /* the current head, in a block of exactly its size */
    struct tg_scan us;
    bool scanning;
    size_t body_in;   /* bytes the current message's body consumed */
    long long cl_body; /* its Content-Length, when that frames it; else -1 */
    /* n bytes: each piece is copied to its end, so that reading past the
     * piece is reading past a heap block, which ASan reports */
    uint8_t *scratch;
    struct hf_run *run;
};

static struct hf_rec *hf_cur(struct hf_codec *c)
{
    return &c->run->r[c->run->n - 1];
}

static void hf_on_body(void *arg, const char *d, size_t len)
{
    struct hf_codec *c = arg;
    CHECK(len > 0);
    hf_put(&hf_cur(c)->body, d, len);
    if (c->scanning) tg_scan_feed(&c->us, d, len);
}

static void hf_on_emit(void *arg, const char *d, size_t len)
{
    struct hf_rec *r = arg;
    CHECK(len > 0);
    hf_put(&r->emitted, d, len);
}

static void hf_head_of_msg(struct hf_head *h, const struct tg_http_msg *m)
{
    memset(h, 0, offsetof(struct hf_head, h));
    h->kind = m->kind;
    if (m->kind == TG_HTTP_REQUEST) {
        h->method = (int)m->method;
        h->mname = m->method_name;
        h->mlen = m->method_len;
        h->target = m->target;
        h->tlen = m->target_len;
        h->abs = m->absolute_form;
    } else {
        h->status = m->status;
    }
    h->minor = m->minor;
    h->ka = m->keep_alive;
    h->chunked = m->chunked;
    h->until_close = m->until_close;
    h->expect = m->expect_continue;
    h->copt = m->connection_options;
    h->done = m->done;
    h->cl = (long long)m->content_length;
    h->nh = m->nheaders;
    for (size_t i = 0; i < m->nheaders && i < TG_HTTP_MAX_HEADERS; i++) {
        h->h[i].name = m->headers[i].name;
        h->h[i].nlen = m->headers[i].nlen;
        h->h[i].value = m->headers[i].value;
        h->h[i].vlen = m->headers[i].vlen;
    }
}

static bool hf_in_block(const char *p, size_t n, const char *block, size_t len)
{
    return p >= block && p <= block + len && n <= (size_t)(block + len - p);
}

/* Properties of every head the codec accepts. */
static void hf_props_head(const struct hf_codec *c, size_t hlen)
{
    const struct tg_http_msg *m = &c->msg;
    const char *head = c->head;
    CHECK(m->head_done);
    CHECK(hlen >= 4 && hlen <= TG_HTTP_MAX_HEAD && memcmp(head + hlen - 4, "\r\n\r\n", 4) == 0);
    CHECK(m->nheaders <= TG_HTTP_MAX_HEADERS);
    CHECK(m->minor <= 1);
    unsigned hosts = 0, cls = 0, tes = 0, conns = 0;
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct tg_http_header *h = &m->headers[i];
        CHECK(h->nlen > 0 && hf_in_block(h->name, h->nlen, head, hlen));
        CHECK(hf_in_block(h->value, h->vlen, head, hlen));
        for (size_t k = 0; k < h->nlen; k++)
            CHECK(ref_tchar((unsigned char)h->name[k]));
        for (size_t k = 0; k < h->vlen; k++)
            CHECK(ref_fchar((unsigned char)h->value[k]));
        CHECK(h->vlen == 0 || (!ref_ws((unsigned char)h->value[0]) &&
                               !ref_ws((unsigned char)h->value[h->vlen - 1])));
        const uint8_t *nm = (const uint8_t *)h->name;
        hosts += ref_is(nm, h->nlen, "host");
        cls += ref_is(nm, h->nlen, "content-length");
        tes += ref_is(nm, h->nlen, "transfer-encoding");
        conns += ref_is(nm, h->nlen, "connection");
        CHECK(tg_http_header(m, "host", NULL) != NULL || !ref_is(nm, h->nlen, "host"));
    }
    /* never two readings of the length: one Content-Length at most, not with Transfer-Encoding */
    CHECK(cls <= 1 && !(cls && tes));
    CHECK((m->content_length >= 0) == (cls == 1));
    CHECK(!m->chunked || (tes > 0 && m->content_length < 0));
    /* an HTTP/1.0 message has no Transfer-Encoding it could be read by (RFC 9112 6.1) */
    CHECK(!(tes && m->minor == 0));
    if (conns == 0) CHECK(m->keep_alive == (m->minor == 1 && !m->until_close));
    if (m->kind == TG_HTTP_REQUEST) {
        CHECK(m->method_len > 0 && hf_in_block(m->method_name, m->method_len, head, hlen));
        for (size_t k = 0; k < m->method_len; k++)
            CHECK(ref_tchar((unsigned char)m->method_name[k]));
        CHECK(m->target_len > 0);
        CHECK(hf_in_block(m->target, m->target_len, head, hlen) ||
              (m->absolute_form && m->target_len == 1 && m->target[0] == '/'));
        for (size_t k = 0; k < m->target_len; k++)
            CHECK(ref_vchar((unsigned char)m->target[k]));
        CHECK(!m->absolute_form || m->target[0] == '/');
        /* one Host for HTTP/1.1, at most one for HTTP/1.0 */
        CHECK(m->minor == 1 ? hosts == 1 : hosts <= 1);
        CHECK(!m->until_close);
        CHECK(tes == 0 || m->chunked);
        CHECK(m->done == (!m->chunked && m->content_length <= 0));
    } else {
        CHECK(m->status >= 100 && m->status <= 599);
        bool none = c->o.skip_body || m->status / 100 == 1 || m->status == 204 || m->status == 304;
        if (none) CHECK(m->done && !m->chunked && !m->until_close);
        if (m->until_close)
            CHECK(!m->keep_alive && !m->chunked && m->content_length < 0 && !m->done);
        if (!none && !m->chunked) CHECK(m->done == (m->content_length == 0));
        CHECK(none || tes == 0 || m->chunked);
    }
}

static ssize_t hf_scan_piece(struct hf_codec *c, size_t from, size_t k)
{
    uint8_t *p = c->scratch + c->n - k;
    memcpy(p, c->in + from, k);
    return tg_http_scan_head(&c->scan, (const char *)p, k);
}

static ssize_t hf_feed_piece(struct hf_codec *c, size_t from, size_t k)
{
    uint8_t *p = c->scratch + c->n - k;
    memcpy(p, c->in + from, k);
    return tg_http_feed(&c->msg, (const char *)p, k);
}

static bool hf_sse_type(const uint8_t *v, size_t vlen)
{
    static const char sse[] = "text/event-stream";
    return v && vlen >= sizeof sse - 1 && strncasecmp((const char *)v, sse, sizeof sse - 1) == 0;
}

/* The message ended (done, refused in its body or cut at the end of input). */
static void hf_end_body(struct hf_codec *c)
{
    struct hf_rec *r = hf_cur(c);
    if (c->scanning) {
        tg_scan_finish(&c->us);
        hf_describe_usage(&r->usage, &c->us);
        tg_scan_deinit(&c->us);
        c->scanning = false;
    }
    if (c->props) {
        CHECK(r->body.len <= c->body_in); /* de-chunking never adds a byte */
        if (r->state == HF_DONE && c->cl_body >= 0)
            CHECK(r->body.len == c->body_in && (long long)r->body.len == c->cl_body);
        if (c->cl_body < 0 && !c->msg.chunked && !c->msg.until_close) CHECK(c->body_in == 0);
        if (c->msg.until_close) CHECK(r->body.len == c->body_in);
        if (c->msg.chunked && c->body_in > 0) CHECK(r->body.len < c->body_in);
    }
    free(c->head);
    c->head = NULL;
}

static void hf_pump(struct hf_codec *c)
{
    for (;;) {
        switch (c->st) {
        case S_IDLE:
            if (c->o.kind == TG_HTTP_REQUEST) /* as client.c does: stray CR and LF before a request */
                while (c->pos < c->avail && (c->in[c->pos] == '\r' || c->in[c->pos] == '\n'))
                    c->pos++;
            if (c->pos == c->avail) return;
            if (c->run->n == HF_MAX_MSGS) {
                c->st = S_END;
                return;
            }
            hf_new_rec(c->run, c->pos);
            c->hstart = c->pos;
            tg_http_scan_init(&c->scan, c->o.kind);
            c->st = S_HEAD;
            break;
        case S_HEAD: {
            struct hf_rec *r = hf_cur(c);
            size_t from = c->hstart + c->scan.pos;
            CHECK(from <= c->avail);
            if (from == c->avail) return;
            ssize_t k = hf_scan_piece(c, from, c->avail - from);
            if (k == 0) {
                CHECK(c->hstart + c->scan.pos == c->avail);
                return;
            }
            if (k < 0) {
                r->state = HF_ERROR;
                r->res = (int)k;
                c->st = S_END;
                return;
            }
            size_t hlen = (size_t)k;
            CHECK(c->hstart + hlen > from && c->hstart + hlen <= c->avail); /* in this piece */
            r->hlen = hlen;
            c->head = malloc(hlen);
            CHECK(c->head != NULL);
            memcpy(c->head, c->in + c->hstart, hlen);
            tg_http_msg_init(&c->msg, c->o.kind, hf_on_body, c);
            c->msg.skip_body = c->o.skip_body;
            enum tg_http_result res = tg_http_parse_head(&c->msg, c->head, hlen);
            if (res != TG_HTTP_OK) {
                CHECK(res < 0 && tg_http_status(res) >= 400 && *tg_http_error(res) != '\0');
                r->state = HF_ERROR;
                r->res = (int)res;
                free(c->head);
                c->head = NULL;
                c->st = S_END;
                return;
            }
            if (c->props) hf_props_head(c, hlen);
            struct hf_head h;
            hf_head_of_msg(&h, &c->msg);
            hf_describe(&r->desc, &h);
            r->state = HF_BODY_MORE;
            c->pos = c->hstart + hlen;
            c->body_in = 0;
            c->cl_body = -1;
            if (!c->msg.chunked && !c->msg.until_close && !c->msg.done)
                c->cl_body = c->msg.content_length;
            else if (c->msg.kind == TG_HTTP_REQUEST && !c->msg.chunked)
                c->cl_body = c->msg.content_length > 0 ? c->msg.content_length : 0;
            if (c->o.kind == TG_HTTP_REPLY && c->msg.status >= 200 && !c->msg.done) {
                size_t vlen = 0;
                const char *v = tg_http_header(&c->msg, "content-type", &vlen);
                bool sse = c->o.sse || hf_sse_type((const uint8_t *)v, vlen);
                tg_scan_init(&c->us, sse, sse && c->o.strip, sse && c->o.strip ? hf_on_emit : NULL,
                             r);
                c->scanning = true;
            }
            c->st = S_BODY;
            break;
        }
        case S_BODY: {
            struct hf_rec *r = hf_cur(c);
            if (c->msg.done) {
                r->state = HF_DONE;
                r->end = c->pos;
                hf_end_body(c);
                if (c->props && c->pos < c->avail) /* a message that is done takes no more */
                    CHECK(hf_feed_piece(c, c->pos, 1) == 0);
                c->st = S_IDLE;
                break;
            }
            if (c->pos == c->avail) return;
            size_t k = c->avail - c->pos;
            ssize_t used = hf_feed_piece(c, c->pos, k);
            if (used < 0) {
                CHECK(used == TG_HTTP_BAD_CHUNK && c->msg.chunked);
                c->body_in += k; /* at most: some of the piece was read before the fault */
                r->state = HF_ERROR;
                r->res = (int)used;
                hf_end_body(c);
                c->st = S_END;
                return;
            }
            /* something is taken, all of it unless the message ended in it */
            CHECK(used > 0 && (size_t)used <= k && (c->msg.done || (size_t)used == k));
            c->pos += (size_t)used;
            c->body_in += (size_t)used;
            break;
        }
        default:
            return;
        }
    }
}

/* The end of the input: a reply read until close ends; anything else not done was cut. */
static void hf_eof(struct hf_codec *c)
{
    if (c->st != S_BODY) return;
    struct hf_rec *r = hf_cur(c);
    bool until_close = c->msg.until_close;
    tg_http_feed_eof(&c->msg);
    CHECK(c->msg.done == until_close);
    if (c->msg.done) {
        r->state = HF_DONE;
        r->end = c->pos;
    }
    hf_end_body(c);
}

/* Splits: mode 0 the whole input at once, 1 a byte at a time, 2.. pieces drawn from seed. */
static void hf_codec_run(const struct hf_opts *o, const uint8_t *in, size_t n, int mode,
                         uint64_t seed, bool props, struct hf_run *run)
{
    static const size_t spread[] = {7, 61, 509, 4093};
    struct hf_codec *c = calloc(1, sizeof *c);
    CHECK(c != NULL);
    c->o = *o;
    c->in = in;
    c->n = n;
    c->props = props;
    c->run = run;
    c->st = S_IDLE;
    c->scratch = malloc(n ? n : 1);
    CHECK(c->scratch != NULL);
    while (c->avail < n) {
        size_t k = n - c->avail;
        if (mode == 1) k = 1;
        if (mode >= 2) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t m = 1 + (size_t)((seed >> 33) % spread[(size_t)(mode - 2) % 4]);
            if (m < k) k = m;
        }
        c->avail += k;
        hf_pump(c);
    }
    hf_eof(c);
    if (c->scanning) tg_scan_deinit(&c->us);
    free(c->head);
    free(c->scratch);
    free(c);
}

/* ---- the reference: RFC 9112 read the plain way ----
 *
 * The stream is cut into lines at CRLF; a head is the lines up to the first
 * empty one; each line is then read by its grammar; the body follows the
 * framing rules of RFC 9112 6.3 and the chunked grammar of 7.1. Limits are
 * the codec's documented ones (http.h). Where the reference and the codec
 * deliberately part from the letter of the RFC, the comment says so (and
 * README.md lists it):
 *  - stray CR and LF bytes before a request are skipped, as client.c does
 *    (RFC 9112 2.2 allows ignoring empty lines there);
 *  - a request line that does not end in " HTTP/" DIGIT "." DIGIT is refused
 *    at its CR; any other fault of a request line once its head is whole;
 *  - HTTP versions other than 1.0 and 1.1 are refused (505 / 502), 1.2 too;
 *  - a request target is 1*VCHAR (the path is judged later, by
 *    tg_http_path_normalize); "*" is taken with any method and CONNECT's
 *    target is not read further; an absolute-form target is http or https
 *    with an authority, followed by nothing or by a path: a query or fragment
 *    straight after the authority is refused;
 *  - Host's value is not checked (the proxy replaces Host);
 *  - Content-Length is 1 to 18 digits, no list; a second Content-Length line
 *    is refused even when it repeats the first;
 *  - a Transfer-Encoding element other than a bare token (one with
 *    parameters) is refused with 400 or 501: which one is not compared;
 *  - a status line may end right after the status code (no SP, no reason);
 *    a refused reply is a 502 whatever the reason: only the refusal is
 *    compared, not its code;
 *  - a chunk-size or trailer line holds at most 4095 bytes before its CR,
 *    a trailer section at most 65536 bytes, a chunk at most 2^62 - 1 bytes. */

#define REF_LINE_MAX 4096 /* bytes of a chunk-size or trailer line, its CR included */

static const struct {
    const char *name;
    enum tg_http_method method;
} ref_methods[] = {{"GET", TG_HTTP_GET},         {"HEAD", TG_HTTP_HEAD},
                   {"POST", TG_HTTP_POST},       {"PUT", TG_HTTP_PUT},
                   {"DELETE", TG_HTTP_DELETE},   {"PATCH", TG_HTTP_PATCH},
                   {"OPTIONS", TG_HTTP_OPTIONS}, {"TRACE", TG_HTTP_TRACE},
                   {"CONNECT", TG_HTTP_CONNECT}};

/* HTTP-version = "HTTP/" DIGIT "." DIGIT: 0 with *minor, or a refusal. */
static int ref_version(const uint8_t *v, size_t n, int *minor)
{
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || !ref_digit(v[5]) || v[6] != '.' ||
        !ref_digit(v[7]))
        return TG_HTTP_MALFORMED;
    if (v[5] != '1' || v[7] > '1') return TG_HTTP_BAD_VERSION;
    *minor = v[7] - '0';
    return 0;
}

/* request-line = method SP request-target SP HTTP-version (RFC 9112 3). */
static int ref_request_line(const uint8_t *l, size_t n, struct hf_head *h)
{
    const uint8_t *end = l + n, *sp1 = memchr(l, ' ', n);
    if (sp1 == NULL || sp1 == l) return TG_HTTP_MALFORMED;
    for (const uint8_t *p = l; p < sp1; p++)
        if (!ref_tchar(*p)) return TG_HTTP_MALFORMED;
    const uint8_t *t = sp1 + 1, *sp2 = memchr(t, ' ', (size_t)(end - t));
    if (sp2 == NULL || sp2 == t) return TG_HTTP_MALFORMED;
    for (const uint8_t *p = t; p < sp2; p++)
        if (!ref_vchar(*p)) return TG_HTTP_MALFORMED;
    int rc = ref_version(sp2 + 1, (size_t)(end - sp2 - 1), &h->minor);
    if (rc) return rc;
    h->mname = (const char *)l;
    h->mlen = (size_t)(sp1 - l);
    h->method = TG_HTTP_OTHER;
    for (size_t i = 0; i < sizeof ref_methods / sizeof ref_methods[0]; i++)
        if (strlen(ref_methods[i].name) == h->mlen && memcmp(ref_methods[i].name, l, h->mlen) == 0)
            h->method = (int)ref_methods[i].method;
    h->target = (const char *)t;
    h->tlen = (size_t)(sp2 - t);
    if (t[0] == '/' || (h->tlen == 1 && t[0] == '*') || h->method == TG_HTTP_CONNECT) return 0;
    /* absolute-form: scheme "://" authority [ path-abempty [ "?" query ] ] */
    const uint8_t *colon = memchr(t, ':', h->tlen);
    if (colon == NULL || sp2 - colon < 3 || memcmp(colon, "://", 3) != 0) return TG_HTTP_MALFORMED;
    if (!ref_is(t, (size_t)(colon - t), "http") && !ref_is(t, (size_t)(colon - t), "https"))
        return TG_HTTP_MALFORMED;
    const uint8_t *a = colon + 3, *q = a;
    while (q < sp2 && *q != '/' && *q != '?' && *q != '#')
        q++;
    if (q == a) return TG_HTTP_MALFORMED; /* no authority */
    if (q < sp2 && *q != '/') return TG_HTTP_MALFORMED; /* deliberate: "?" or "#" without a path */
    h->abs = true;
    if (q == sp2) {
        h->target = "/";
        h->tlen = 1;
    } else {
        h->target = (const char *)q;
        h->tlen = (size_t)(sp2 - q);
    }
    return 0;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 4);
 * status codes are 100 to 599 (RFC 9110 15). */
static int ref_status_line(const uint8_t *l, size_t n, struct hf_head *h)
{
    if (n < 12 || l[8] != ' ') return TG_HTTP_MALFORMED;
    int rc = ref_version(l, 8, &h->minor);
    if (rc) return rc;
    if (!ref_digit(l[9]) || !ref_digit(l[10]) || !ref_digit(l[11])) return TG_HTTP_MALFORMED;
    h->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    if (h->status < 100 || h->status > 599) return TG_HTTP_MALFORMED;
    if (n == 12) return 0; /* deliberate: no SP and no reason phrase */
    if (l[12] != ' ') return TG_HTTP_MALFORMED;
    for (size_t i = 13; i < n; i++) /* reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ) */
        if (!ref_fchar(l[i])) return TG_HTTP_MALFORMED;
    return 0;
}

/* Elements of a #list value (RFC 9110 5.6.1): calls back with each non-empty one, trimmed. */
struct ref_list {
    const uint8_t *p, *end;
};

static bool ref_list_next(struct ref_list *l, const uint8_t **el, size_t *len)
{
    while (l->p < l->end) {
        const uint8_t *s = l->p, *comma = memchr(s, ',', (size_t)(l->end - s));
        const uint8_t *e = comma ? comma : l->end;
        l->p = comma ? comma + 1 : l->end;
        while (s < e && ref_ws(*s))
            s++;
        while (e > s && ref_ws(e[-1]))
            e--;
        if (e > s) {
            *el = s;
            *len = (size_t)(e - s);
            return true;
        }
    }
    return false;
}

static bool ref_token(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!ref_tchar(s[i])) return false;
    return n > 0;
}

/* Host = uri-host [ ":" port ] (RFC 9112 3.2, RFC 3986 3.2.2): a reg-name of
 * unreserved, sub-delims and '%', or "[" an IP literal "]"; empty is allowed. */
static bool ref_host_byte(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || ref_digit(c) ||
           (c && strchr("-._~!$&'()*+,;=%", c) != NULL);
}

static bool ref_host_ok(const uint8_t *v, size_t n)
{
    size_t i = 0;
    if (n && v[0] == '[') {
        size_t close = 1;
        while (close < n && v[close] != ']')
            close++;
        if (close == n || close == 1) return false;
        for (i = 1; i < close; i++)
            if (!ref_host_byte(v[i]) && v[i] != ':') return false;
        i = close + 1;
    } else {
        while (i < n && ref_host_byte(v[i]))
            i++;
    }
    if (i < n && v[i++] != ':') return false;
    for (; i < n; i++)
        if (!ref_digit(v[i])) return false;
    return true;
}

/* The head: lines[0] the start line, then the field lines. 0 or a refusal;
 * *alt another refusal the codec may give instead. */
static int ref_parse_head(const struct hf_opts *o, const uint8_t *in, const size_t (*lines)[2],
                          size_t nl, struct hf_head *h, int *alt)
{
    memset(h, 0, offsetof(struct hf_head, h));
    h->kind = o->kind;
    h->cl = -1;
    const uint8_t *l0 = in + lines[0][0];
    int rc = o->kind == TG_HTTP_REQUEST ? ref_request_line(l0, lines[0][1], h)
                                        : ref_status_line(l0, lines[0][1], h);
    if (rc) return rc;
    unsigned hosts = 0, te_lines = 0, chunked = 0, others = 0, params = 0;
    bool chunked_last = false, close = false, keep = false;
    for (size_t k = 1; k < nl; k++) {
        const uint8_t *l = in + lines[k][0];
        size_t n = lines[k][1];
        /* obs-fold, or whitespace before the first field (RFC 9112 5.2, 2.2) */
        if (ref_ws(l[0])) return TG_HTTP_OBS_FOLD;
        /* field-line = field-name ":" OWS field-value OWS, no whitespace before ':' (5.1) */
        const uint8_t *colon = memchr(l, ':', n);
        if (colon == NULL || !ref_token(l, (size_t)(colon - l))) return TG_HTTP_MALFORMED;
        const uint8_t *v = colon + 1, *ve = l + n;
        for (const uint8_t *p = v; p < ve; p++)
            if (!ref_fchar(*p)) return TG_HTTP_MALFORMED;
        while (v < ve && ref_ws(*v))
            v++;
        while (ve > v && ref_ws(ve[-1]))
            ve--;
        size_t nlen = (size_t)(colon - l), vlen = (size_t)(ve - v);
        struct hf_field *f = &h->h[h->nh++];
        f->name = (const char *)l;
        f->nlen = nlen;
        f->value = (const char *)v;
        f->vlen = vlen;
        struct ref_list list = {v, ve};
        const uint8_t *el;
        size_t elen;
        if (ref_is(l, nlen, "host")) {
            if (o->kind == TG_HTTP_REQUEST && !ref_host_ok(v, vlen)) return TG_HTTP_BAD_HOST;
            hosts++;
        } else if (ref_is(l, nlen, "content-length")) {
            /* Content-Length = 1*DIGIT; never two of them (RFC 9112 6.3) */
            if (h->cl >= 0) return TG_HTTP_SMUGGLING;
            if (vlen == 0 || vlen > 18) return TG_HTTP_MALFORMED;
            long long cl = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (!ref_digit(v[i])) return TG_HTTP_MALFORMED;
                cl = cl * 10 + (v[i] - '0');
            }
            h->cl = cl;
        } else if (ref_is(l, nlen, "transfer-encoding")) {
            te_lines++;
            while (ref_list_next(&list, &el, &elen)) {
                if (!ref_token(el, elen)) {
                    params++;
                    chunked_last = false;
                } else if (ref_is(el, elen, "chunked")) {
                    chunked++;
                    chunked_last = true;
                } else {
                    others++;
                    chunked_last = false;
                }
            }
        } else if (ref_is(l, nlen, "connection")) {
            /* Connection = #connection-option, each a token (RFC 9110 7.6.1) */
            while (ref_list_next(&list, &el, &elen)) {
                if (!ref_token(el, elen)) return TG_HTTP_MALFORMED;
                if (ref_is(el, elen, "close"))
                    close = true;
                else if (ref_is(el, elen, "keep-alive"))
                    keep = true;
                else
                    h->copt = true;
            }
        } else if (ref_is(l, nlen, "expect")) {
            if (ref_is(v, vlen, "100-continue")) h->expect = true;
        }
    }
    if (te_lines) {
        /* Transfer-Encoding with Content-Length might be smuggling (RFC 9112 6.3 3) */
        if (h->cl >= 0) return TG_HTTP_SMUGGLING;
        /* an HTTP/1.0 message's Transfer-Encoding means faulty framing (6.1) */
        if (h->minor == 0) return TG_HTTP_MALFORMED;
        if (params) { /* deliberate: a coding with parameters is 400 or 501 */
            *alt = TG_HTTP_UNKNOWN_CODING;
            return TG_HTTP_MALFORMED;
        }
        /* chunked once and last, or the length cannot be known (6.1, 6.3 4) */
        if (chunked + others == 0 || chunked > 1 || (chunked && !chunked_last))
            return TG_HTTP_MALFORMED;
        if (others) return TG_HTTP_UNKNOWN_CODING; /* a coding we do not decode: 501 */
        h->chunked = true;
    }
    h->ka = h->minor == 1 ? !close : keep && !close;
    if (o->kind == TG_HTTP_REQUEST) {
        /* exactly one Host in HTTP/1.1, never two (RFC 9112 3.2) */
        if (hosts > 1 || (h->minor == 1 && hosts == 0)) return TG_HTTP_BAD_HOST;
        h->done = !h->chunked && h->cl <= 0;
        return 0;
    }
    /* a reply's length (RFC 9112 6.3 1, 2, 4, 5, 8) */
    if (o->skip_body || h->status / 100 == 1 || h->status == 204 || h->status == 304) {
        h->chunked = false;
        h->done = true;
    } else if (!h->chunked) {
        if (h->cl >= 0) {
            h->done = h->cl == 0;
        } else {
            h->until_close = true;
            h->ka = false;
        }
    }
    return 0;
}

static size_t ref_find_cr(const uint8_t *in, size_t n, size_t p)
{
    const uint8_t *cr = memchr(in + p, '\r', n - p);
    return cr ? (size_t)(cr - in) : n;
}

static size_t ref_bws(const uint8_t *s, size_t n, size_t i)
{
    while (i < n && ref_ws(s[i]))
        i++;
    return i;
}

/* A quoted-string starting at s[*k] == '"' (RFC 9110 5.6.4): 1 with *k past
 * its closing quote, 0 when the bytes end inside it, -1 when it is invalid. */
static int ref_quoted(const uint8_t *s, size_t n, size_t *k)
{
    for (size_t i = *k + 1; i < n; i++) {
        unsigned c = s[i];
        if (c == '"') {
            *k = i + 1;
            return 1;
        }
        if (c == '\\') { /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
            if (i + 1 == n) return 0;
            if (!ref_fchar(s[++i])) return -1;
            continue;
        }
        /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
        if (!ref_fchar(c)) return -1;
    }
    return 0;
}

/* A chunk-size line without its CRLF (RFC 9112 7.1, 7.1.1):
 *   1*HEXDIG *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 *   chunk-ext-name = token, chunk-ext-val = token / quoted-string.
 * 1: the n bytes are such a line; 0: they are only the start of one; -1:
 * nothing that starts so is one. *digits: the bytes of the size. */
static int ref_chunk_line(const uint8_t *s, size_t n, size_t *digits)
{
    size_t i = 0;
    while (i < n && ref_hexdig(s[i]))
        i++;
    *digits = i;
    if (i == 0) return n == 0 ? 0 : -1;
    for (;;) {
        if (i == n) return 1;
        size_t j = ref_bws(s, n, i);
        if (j == n) return 0; /* BWS: a ";" must follow */
        if (s[j] != ';') return -1;
        j = ref_bws(s, n, j + 1);
        if (j == n) return 0;
        if (!ref_tchar(s[j])) return -1;
        while (j < n && ref_tchar(s[j]))
            j++;
        size_t k = ref_bws(s, n, j);
        if (k == n || s[k] != '=') { /* no value: ";" or the end follows the name */
            i = j;
            continue;
        }
        k = ref_bws(s, n, k + 1);
        if (k == n) return 0;
        if (ref_tchar(s[k])) {
            while (k < n && ref_tchar(s[k]))
                k++;
        } else if (s[k] == '"') {
            int q = ref_quoted(s, n, &k);
            if (q <= 0) return q;
        } else {
            return -1;
        }
        i = k;
    }
}

/* A trailer field line without its CRLF: field-name ":" field-value
 * (RFC 9112 7.1.2, 5). 1, 0 or -1 as ref_chunk_line. */
static int ref_field_line(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n && ref_tchar(s[i]))
        i++;
    if (i == n) return 0;
    if (i == 0 || s[i] != ':') return -1;
    for (i++; i < n; i++)
        if (!ref_fchar(s[i])) return -1;
    return 1;
}

/* chunked-body = *chunk last-chunk trailer-section CRLF (RFC 9112 7.1) from
 * in[*pos]: HF_DONE with *pos past it, HF_BODY_MORE or HF_ERROR. The data goes
 * to r->body; trailer fields are checked and dropped. */
static int ref_chunked(const uint8_t *in, size_t n, size_t *pos, struct hf_rec *r)
{
    size_t p = *pos;
    for (;;) {
        size_t t = ref_find_cr(in, n, p), len = t - p, digits;
        bool whole = t < n;
        int ok = ref_chunk_line(in + p, len, &digits);
        uint64_t size = 0;
        for (size_t i = 0; i < digits; i++) {
            unsigned c = in[p + i];
            unsigned d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
            size = size >= (UINT64_C(1) << 60) ? UINT64_C(1) << 62 : size * 16 + d;
        }
        bool too_long = len + whole > REF_LINE_MAX, too_big = size >= UINT64_C(1) << 62;
        if (ok < 0 || (whole && ok == 0) || too_long || too_big) {
            return HF_ERROR;
        }
        if (!whole || t + 1 == n) return HF_BODY_MORE;
        if (in[t + 1] != '\n') return HF_ERROR;
        p = t + 2;
        if (size == 0) break; /* last-chunk */
        size_t take = size < n - p ? (size_t)size : n - p;
        hf_put(&r->body, in + p, take);
        p += take;
        if (take < size || p == n) return HF_BODY_MORE;
        if (in[p] != '\r') return HF_ERROR; /* chunk-data CRLF */
        if (p + 1 == n) return HF_BODY_MORE;
        if (in[p + 1] != '\n') return HF_ERROR;
        p += 2;
    }
    size_t total = 0; /* trailer-section CRLF */
    for (;;) {
        size_t t = ref_find_cr(in, n, p), len = t - p;
        bool whole = t < n;
        total += len + whole;
        if (len + whole > REF_LINE_MAX || total > TG_HTTP_MAX_HEAD) return HF_ERROR;
        if (len == 0 && whole) { /* the final CRLF */
            if (t + 1 == n) return HF_BODY_MORE;
            if (in[t + 1] != '\n') return HF_ERROR;
            *pos = t + 2;
            return HF_DONE;
        }
        int ok = ref_field_line(in + p, len);
        if (ok < 0 || (whole && ok == 0)) return HF_ERROR;
        if (!whole || t + 1 == n) return HF_BODY_MORE;
        if (in[t + 1] != '\n') return HF_ERROR;
        p = t + 2;
    }
}

/* The request line ends in " HTTP/" DIGIT "." DIGIT. */
static bool ref_ends_in_version(const uint8_t *l, size_t n)
{
    if (n < 9) return false;
    const uint8_t *t = l + n - 9;
    return memcmp(t, " HTTP/", 6) == 0 && ref_digit(t[6]) && t[7] == '.' && ref_digit(t[8]);
}

/* Reads a head from in[pos]: its length (> 0), 0 when the input ends first, or a refusal. */
static long ref_read_head(const struct hf_opts *o, const uint8_t *in, size_t n, size_t pos,
                          size_t (*lines)[2], size_t *nl, struct hf_rec *r)
{
    bool request = o->kind == TG_HTTP_REQUEST;
    *nl = 0;
    for (size_t i = pos;;) {
        if (i == n) return 0;
        size_t t = i;
        while (t < n && in[t] != '\r' && in[t] != '\n')
            t++;
        if (request && *nl == 0 && t - i > TG_HTTP_MAX_REQUEST_LINE) return TG_HTTP_URI_TOO_LONG;
        if (t - pos > TG_HTTP_MAX_HEAD) return TG_HTTP_HEAD_TOO_LARGE;
        if (t == n) return 0;
        if (in[t] == '\n') return TG_HTTP_MALFORMED; /* a bare LF (RFC 9112 2.2: strict) */
        if (request && *nl == 0 && !ref_ends_in_version(in + i, t - i))
            return TG_HTTP_MALFORMED; /* no version: refused at its CR */
        if (t + 1 == n) return 0;
        if (in[t + 1] != '\n') return TG_HTTP_MALFORMED; /* a CR alone */
        if (t == i) {                                    /* the empty line */
            if (*nl == 0) return TG_HTTP_MALFORMED;
            if (t + 2 - pos > TG_HTTP_MAX_HEAD) return TG_HTTP_HEAD_TOO_LARGE;
            return (long)(t + 2 - pos);
        }
        if (++*nl > TG_HTTP_MAX_HEADERS + 1) return TG_HTTP_TOO_MANY_HEADERS;
        lines[*nl - 1][0] = i;
        lines[*nl - 1][1] = t - i;
        i = t + 2;
    }
}

static void ref_run(const struct hf_opts *o, const uint8_t *in, size_t n, struct hf_run *run)
{
    size_t(*lines)[2] = malloc((TG_HTTP_MAX_HEADERS + 2) * sizeof *lines);
    struct hf_head *h = malloc(sizeof *h);
    CHECK(lines != NULL && h != NULL);
    size_t pos = 0;
    for (;;) {
        if (o->kind == TG_HTTP_REQUEST)
            while (pos < n && (in[pos] == '\r' || in[pos] == '\n'))
                pos++;
        if (pos == n || run->n == HF_MAX_MSGS) break;
        struct hf_rec *r = hf_new_rec(run, pos);
        size_t nl;
        long hl = ref_read_head(o, in, n, pos, lines, &nl, r);
        if (hl == 0) break;
        if (hl < 0) {
            r->state = HF_ERROR;
            r->res = (int)hl;
            break;
        }
        r->hlen = (size_t)hl;
        int rc = ref_parse_head(o, in, (const size_t(*)[2])lines, nl, h, &r->alt);
        if (rc) {
            r->state = HF_ERROR;
            r->res = rc;
            break;
        }
        hf_describe(&r->desc, h);
        pos += (size_t)hl;
        r->state = HF_BODY_MORE;
        if (h->done) {
            r->state = HF_DONE;
        } else if (h->until_close) {
            hf_put(&r->body, in + pos, n - pos);
            pos = n;
            r->state = HF_DONE;
        } else if (h->chunked) {
            r->state = ref_chunked(in, n, &pos, r);
        } else {
            size_t take = (size_t)h->cl < n - pos ? (size_t)h->cl : n - pos;
            hf_put(&r->body, in + pos, take);
            pos += take;
            if (take == (size_t)h->cl) r->state = HF_DONE;
        }
        if (r->state == HF_DONE) r->end = pos;
        if (r->state == HF_ERROR) r->res = TG_HTTP_BAD_CHUNK;
        if (o->kind == TG_HTTP_REPLY && h->status >= 200 && !h->done) {
            /* the body, whole, through the same usage scanner */
            const uint8_t *ct = NULL;
            size_t ctlen = 0;
            for (size_t i = 0; i < h->nh && ct == NULL; i++)
                if (ref_is((const uint8_t *)h->h[i].name, h->h[i].nlen, "content-type")) {
                    ct = (const uint8_t *)h->h[i].value;
                    ctlen = h->h[i].vlen;
                }
            bool sse = o->sse || hf_sse_type(ct, ctlen);
            struct tg_scan us;
            tg_scan_init(&us, sse, sse && o->strip, sse && o->strip ? hf_on_emit : NULL, r);
            tg_scan_feed(&us, r->body.p, r->body.len);
            tg_scan_finish(&us);
            hf_describe_usage(&r->usage, &us);
            tg_scan_deinit(&us);
        }
        if (r->state != HF_DONE) break;
    }
    free(h);
    free(lines);
}

/* ---- comparing runs ---- */

static bool hf_rec_same(const struct hf_rec *a, const struct hf_rec *b, bool any_refusal)
{
    if (a->state != b->state || a->start != b->start || a->end != b->end) return false;
    if (a->state == HF_ERROR && a->res != b->res &&
        !(any_refusal || (b->alt != 0 && a->res == b->alt)))
        return false;
    /* the head's length is known once the scanner found it: a refused head may
     * be refused by the scanner (no length) or by the parser */
    if (a->state != HF_ERROR && a->hlen != b->hlen) return false;
    return hf_buf_eq(&a->desc, &b->desc) && hf_buf_eq(&a->body, &b->body) &&
           hf_buf_eq(&a->usage, &b->usage) && hf_buf_eq(&a->emitted, &b->emitted);
}

static void hf_mismatch(const char *what, const struct hf_run *a, const char *la,
                        const struct hf_run *b, const char *lb)
{
    fprintf(stderr, "%s: %s\n", hf_driver, what);
    hf_print_run(la, a);
    hf_print_run(lb, b);
    hf_fail(__FILE__, __LINE__, what);
}

/* Two runs of the codec: the same, exactly. */
static void hf_same_runs(const struct hf_run *a, const struct hf_run *b, const char *split)
{
    bool same = a->n == b->n;
    for (size_t i = 0; same && i < a->n; i++)
        same = hf_rec_same(&a->r[i], &b->r[i], false) && a->r[i].hlen == b->r[i].hlen;
    if (!same) hf_mismatch(split, a, "whole", b, split);
}

/* The codec and the reference: the same, but for a refusal whose code is a
 * judgement call and for the known codec defects (TODO-...). */
static void hf_agree(const struct hf_opts *o, const struct hf_run *codec, const struct hf_run *ref)
{
    size_t n = codec->n > ref->n ? codec->n : ref->n;
    for (size_t i = 0; i < n; i++) {
        if (i < ref->n && i < codec->n &&
            hf_rec_same(&codec->r[i], &ref->r[i], o->kind == TG_HTTP_REPLY))
            continue;
        if (i < ref->n && ref->r[i].todo) return;
        hf_mismatch("the codec and the reference read the stream differently", codec, "codec",
                    ref, "reference");
    }
}

/* Every check on one input. */
HF void hf_check(const struct hf_opts *o, const uint8_t *in, size_t n, uint64_t seed)
{
    struct hf_run whole = {0}, other = {0}, ref = {0};
    hf_codec_run(o, in, n, 0, 0, true, &whole);
    ref_run(o, in, n, &ref);
    hf_agree(o, &whole, &ref);
    hf_free_run(&ref);
    if (n <= 8192) {
        hf_codec_run(o, in, n, 1, 0, false, &other);
        hf_same_runs(&whole, &other, "one byte at a time");
        hf_free_run(&other);
    }
    for (int k = 0; k < 3; k++) {
        hf_codec_run(o, in, n, 2 + (int)((seed + (uint64_t)k) % 4), seed + (uint64_t)k, false,
                     &other);
        hf_same_runs(&whole, &other, "pseudo-random pieces");
        hf_free_run(&other);
    }
    hf_free_run(&whole);
}

/* A seed for the splits from the mode byte and the first bytes of the input. */
HF uint64_t hf_seed(unsigned bits, const uint8_t *in, size_t n)
{
    uint64_t seed = bits;
    for (size_t i = 0; i < n && i < 64; i++)
        seed = seed * 31 + in[i];
    return seed;
}

#endif
