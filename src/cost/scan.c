/* The reply scanner: a body fed in pieces, JSON kept or SSE read event by event, for usage. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/cost.h"
#include "json.h"
#include "reply.h"

/* SSE: a pending event larger than this is passed through unparsed. */
#define SSE_MAX_EVENT (1024 * 1024)
/* JSON mode past TG_SCAN_MAX_JSON: the last bytes kept to find `usage` in. */
#define JSON_TAIL (64 * 1024)

enum { NL_MID, NL_START, NL_CR };

/* ---- the scanner ---- */

void tg_scan_init(struct tg_scan *s, bool sse, bool strip_usage, tg_scan_emit_fn emit, void *arg)
{
    memset(s, 0, sizeof *s);
    s->sse = sse;
    s->strip_usage = sse && strip_usage;
    s->emit = emit;
    s->emit_arg = arg;
    s->nl = NL_START;
}

void tg_scan_deinit(struct tg_scan *s)
{
    free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}

static bool reserve(struct tg_scan *s, size_t need)
{
    if (need <= s->cap) return true;
    size_t cap = s->cap ? s->cap * 2 : need;
    if (cap < need) cap = need;
    char *b = realloc(s->buf, cap);
    if (!b) return false;
    s->buf = b;
    s->cap = cap;
    return true;
}

static void json_feed(struct tg_scan *s, const char *data, size_t len)
{
    if (!s->overflow) {
        if (s->len + len <= TG_SCAN_MAX_JSON && reserve(s, s->len + len)) {
            memcpy(s->buf + s->len, data, len);
            s->len += len;
            return;
        }
        s->overflow = true;
        /* from now on keep only the tail, where `usage` is */
        size_t keep = s->len < JSON_TAIL ? s->len : JSON_TAIL;
        if (keep > 0) memmove(s->buf, s->buf + s->len - keep, keep);
        s->len = keep;
        char *b = realloc(s->buf, 2 * JSON_TAIL);
        if (!b) {
            free(s->buf);
            s->len = 0;
        }
        s->buf = b;
        s->cap = b ? 2 * JSON_TAIL : 0;
    }
    if (!s->buf) return;
    if (len >= JSON_TAIL) {
        memcpy(s->buf, data + len - JSON_TAIL, JSON_TAIL);
        s->len = JSON_TAIL;
        return;
    }
    if (s->len + len > s->cap) {
        size_t keep = s->len < JSON_TAIL ? s->len : JSON_TAIL;
        memmove(s->buf, s->buf + s->len - keep, keep);
        s->len = keep;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
}

/* After an overflow: the last `"usage": {...}` member in the kept tail. */
static void json_tail_usage(struct tg_scan *s)
{
    /* exactly the last JSON_TAIL bytes, however the body was split */
    const char *e = s->buf + s->len, *b = s->len > JSON_TAIL ? e - JSON_TAIL : s->buf;
    const char *p = b, *found = NULL, *fend = NULL;
    while (p < e && (p = memmem(p, (size_t)(e - p), "\"usage\"", 7)) != NULL) {
        size_t bs = 0;
        while (p - bs > b && p[-1 - (ptrdiff_t)bs] == '\\')
            bs++;
        const char *q = skip_ws(p + 7, e);
        if (bs % 2 == 0 && q < e && *q == ':') {
            q = skip_ws(q + 1, e);
            const char *qe = q < e && *q == '{' ? jskip(q, e) : NULL;
            if (qe) {
                found = q;
                fend = qe;
            }
        }
        p += 7;
    }
    if (found) read_usage(&s->usage, found, fend);
}

static void emit_out(struct tg_scan *s, const char *p, size_t n)
{
    if (s->strip_usage && s->emit && n > 0) s->emit(s->emit_arg, p, n);
}

/* The payload of one event: data lines joined by '\n'. Returns true if the
 * event is to be dropped. */
static bool sse_event(struct tg_scan *s, const char *ev, size_t n)
{
    const char *e = ev + n, *p = ev, *first = NULL;
    size_t first_len = 0, ndata = 0;
    char *joined = NULL;
    bool drop = false;

    for (int pass = 0; pass < 2; pass++) {
        size_t jl = 0;
        for (p = ev; p < e;) {
            const char *nl = memchr(p, '\n', (size_t)(e - p));
            const char *le = nl ? nl : e, *next = nl ? nl + 1 : e;
            if (le > p && le[-1] == '\r') le--;
            if (le == p || *p == ':' || le - p < 4 || memcmp(p, "data", 4) != 0 ||
                (le - p > 4 && p[4] != ':')) {
                p = next;
                continue;
            }
            const char *val = p + 4 < le ? p + 5 : le;
            if (val < le && *val == ' ') val++;
            if (pass == 0) {
                if (ndata++ == 0) {
                    first = val;
                    first_len = (size_t)(le - val);
                }
            } else {
                if (jl > 0) joined[jl++] = '\n';
                memcpy(joined + jl, val, (size_t)(le - val));
                jl += (size_t)(le - val);
            }
            p = next;
        }
        if (pass == 0) {
            if (ndata < 2) break;
            joined = malloc(n);
            if (!joined) return false;
        } else {
            first = joined;
            first_len = jl;
        }
    }
    if (ndata == 0 || (first_len == 6 && memcmp(first, "[DONE]", 6) == 0)) goto out;
    drop = read_object(&s->usage, first, first + first_len, false) && s->strip_usage;
out:
    free(joined);
    return drop;
}

/* Scans for the end of the current event (a blank line). Returns the length
 * up to and including it, or 0 if it is not in p[0..n). */
static size_t event_end(struct tg_scan *s, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s->nl == NL_MID) {
            const char *q = memchr(p + i, '\n', n - i);
            if (!q) return 0;
            i = (size_t)(q - p) + 1;
            s->nl = NL_START;
            continue;
        }
        char c = p[i++];
        if (c == '\n') {
            s->nl = NL_START; /* a new event begins */
            return i;
        }
        s->nl = (c == '\r' && s->nl == NL_START) ? NL_CR : NL_MID;
    }
    return 0;
}

static void sse_feed(struct tg_scan *s, const char *data, size_t len)
{
    const char *p = data, *run = data; /* run: bytes of `data` to emit, not yet emitted */
    size_t n = len;
    if (!s->strip_usage && s->emit) s->emit(s->emit_arg, data, len);
    while (n > 0) {
        size_t end = event_end(s, p, n);
        if (end == 0) {
            if (!s->passthrough && s->len + n > SSE_MAX_EVENT) {
                emit_out(s, s->buf, s->len);
                s->len = 0;
                s->passthrough = s->overflow = true;
            }
            if (!s->passthrough) {
                if (reserve(s, s->len + n)) {
                    memcpy(s->buf + s->len, p, n);
                    s->len += n;
                    emit_out(s, run, (size_t)(p - run));
                    return;
                }
                emit_out(s, s->buf, s->len);
                s->len = 0;
                s->passthrough = s->overflow = true;
            }
            break;
        }
        if (s->passthrough) {
            s->passthrough = false;
        } else if (s->len == 0 && end > SSE_MAX_EVENT) {
            s->overflow = true; /* as if it had come in pieces: passed on unread */
        } else if (s->len == 0) {
            if (sse_event(s, p, end)) {
                emit_out(s, run, (size_t)(p - run));
                run = p + end;
            }
        } else if (s->len + end <= SSE_MAX_EVENT && reserve(s, s->len + end)) {
            memcpy(s->buf + s->len, p, end);
            s->len += end;
            if (!sse_event(s, s->buf, s->len)) emit_out(s, s->buf, s->len);
            s->len = 0;
            run = p + end;
        } else {
            emit_out(s, s->buf, s->len);
            s->len = 0;
            s->overflow = true;
        }
        p += end;
        n -= end;
    }
    emit_out(s, run, (size_t)(data + len - run));
}

void tg_scan_feed(struct tg_scan *s, const char *data, size_t len)
{
    if (len == 0) return;
    if (s->sse) {
        sse_feed(s, data, len);
        return;
    }
    if (s->emit) s->emit(s->emit_arg, data, len);
    json_feed(s, data, len);
}

void tg_scan_finish(struct tg_scan *s)
{
    if (s->sse) {
        if (s->len > 0) {
            (void)sse_event(s, s->buf, s->len);
            emit_out(s, s->buf, s->len);
        }
        s->len = 0;
        s->passthrough = false;
        s->nl = NL_START;
        return;
    }
    if (s->overflow) {
        if (s->buf) json_tail_usage(s);
        return;
    }
    if (s->len > 0) {
        struct tg_usage *u = &s->usage;
        (void)read_object(u, s->buf, s->buf + s->len, true);
    }
}
