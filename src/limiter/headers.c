/* What a check tells the client: the rate-limit headers and the OpenAI-shaped error body. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/limiter.h"

/* snprintf appender into the caller's buffer: truncates at cap-1, stays NUL terminated. */
struct out {
    char *p;
    size_t cap, len;
};

static void out_init(struct out *o, char *p, size_t cap)
{
    o->p = p;
    o->cap = cap;
    o->len = 0;
    if (cap) p[0] = '\0';
}

/* True when `fmt` uses only %s, %lld and %%: the fast path below handles those. */
static bool simple_format(const char *fmt)
{
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') continue;
        if (f[1] == 's' || f[1] == '%')
            f++;
        else if (f[1] == 'l' && f[2] == 'l' && f[3] == 'd')
            f += 3;
        else
            return false;
    }
    return true;
}

static void put_bytes(struct out *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) n = o->cap - o->len - 1;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* Appends formatted text. Headers are formatted on every request, so the
 * common conversions avoid vsnprintf. */
TG_PRINTF(2, 3) static void put(struct out *o, const char *fmt, ...)
{
    if (o->len + 1 >= o->cap) return;
    va_list ap;
    va_start(ap, fmt);
    if (!simple_format(fmt)) {
        int k = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        o->len += (size_t)k;
        if (o->len > o->cap - 1) o->len = o->cap - 1;
        return;
    }
    for (const char *f = fmt; *f && o->len + 1 < o->cap;) {
        const char *pct = strchr(f, '%');
        size_t lit = pct ? (size_t)(pct - f) : strlen(f);
        put_bytes(o, f, lit);
        if (pct == NULL) break;
        f = pct + 1;
        if (*f == '%') {
            put_bytes(o, "%", 1);
            f++;
        } else if (*f == 's') {
            const char *sv = va_arg(ap, const char *);
            put_bytes(o, sv, strlen(sv));
            f++;
        } else {
            char digits[24];
            size_t nd;
            const char *d = tg_fmt_int(digits, va_arg(ap, long long), &nd);
            put_bytes(o, d, nd);
            f += 3;
        }
    }
    va_end(ap);
    o->p[o->len] = '\0';
}

static void put_char(struct out *o, char c)
{
    if (o->len + 1 >= o->cap) return;
    o->p[o->len++] = c;
    o->p[o->len] = '\0';
}

static void put_str(struct out *o, const char *s)
{
    if (o->len + 1 < o->cap) {
        put_bytes(o, s, strlen(s));
        o->p[o->len] = '\0';
    }
}

static void put_int(struct out *o, long long v)
{
    char d[24];
    size_t n;
    const char *p = tg_fmt_int(d, v, &n);
    if (o->len + 1 < o->cap) {
        put_bytes(o, p, n);
        o->p[o->len] = '\0';
    }
}

/* The inside of a JSON string. */
static void put_json(struct out *o, const char *s)
{
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            put_char(o, '\\');
            put_char(o, (char)c);
        } else if (c < 0x20) {
            put(o, "\\u%04x", c);
        } else {
            put_char(o, (char)c);
        }
    }
}

static long long whole_units(int64_t u)
{
    return u > 0 ? (long long)(u / TG_MICRO) : 0;
}

/* Units for prose: whole, or with two decimals (floored) for fractional video seconds. */
static void put_units(struct out *o, int64_t u, enum tg_unit unit)
{
    if (u < 0) u = 0;
    if (unit == TG_UNIT_VIDEO_SECONDS && u % TG_MICRO >= TG_MICRO / 100)
        put(o, "%lld.%02lld", (long long)(u / TG_MICRO), (long long)(u % TG_MICRO / 10000));
    else
        put(o, "%lld", (long long)(u / TG_MICRO));
}

size_t tg_limiter_format_duration(int64_t ms, char *out, size_t cap)
{
    struct out o;
    out_init(&o, out, cap);
    if (ms <= 0) {
        put(&o, "0s");
        return o.len;
    }
    if (ms < 1000) {
        put_int(&o, ms);
        put_str(&o, "ms");
        return o.len;
    }
    long long h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, f = ms % 1000;
    if (h) {
        put_int(&o, h);
        put_str(&o, "h");
    }
    if (h || m) {
        put_int(&o, m);
        put_str(&o, "m");
    }
    put_int(&o, s);
    if (f != 0) {
        char frac[5] = {'.', (char)('0' + f / 100), (char)('0' + f / 10 % 10), (char)('0' + f % 10),
                        0};
        for (int i = 3; i > 1 && frac[i] == '0'; i--)
            frac[i] = '\0';
        put_str(&o, frac);
    }
    put_str(&o, "s");
    return o.len;
}

static const char *const unit_header[TG_UNIT_COUNT] = {"requests", "tokens", "video-seconds"};
static const char *const unit_prose[TG_UNIT_COUNT] = {"requests", "tokens", "video seconds"};

static void put_period(struct out *o, int64_t per_ms)
{
    switch (per_ms) {
    case 1000:
        put(o, "second");
        break;
    case 60000:
        put(o, "minute");
        break;
    case 3600000:
        put(o, "hour");
        break;
    case 86400000:
        put(o, "day");
        break;
    default: {
        char d[32];
        tg_limiter_format_duration(per_ms, d, sizeof(d));
        put(o, "%s", d);
    }
    }
}

/* Fraction of the bucket left; the tightest bucket has the least. */
static double fraction_left(const struct tg_bucket_state *s)
{
    return s->limit_u > 0 ? (double)s->remaining_u / (double)s->limit_u : 0;
}

static long long ceil_seconds(int64_t ms)
{
    return ms > 0 ? (long long)((ms + 999) / 1000) : 0;
}

/* An unchecked writer for text whose size is bounded beforehand. */
struct wr {
    char *p;
};

static inline void wr_n(struct wr *w, const char *s, size_t n)
{
    memcpy(w->p, s, n);
    w->p += n;
}
#define wr_lit(w, lit) wr_n((w), (lit), sizeof(lit) - 1)

static inline void wr_int(struct wr *w, long long v)
{
    char d[24];
    size_t n;
    const char *p = tg_fmt_int(d, v, &n);
    wr_n(w, p, n);
}

/* An HTTP structured-field String (RFC 8941): printable ASCII, \\ and "
 * escaped, anything else '?'. At most 2 * strlen + 2 bytes. */
static void wr_sf_string(struct wr *w, const char *s)
{
    *w->p++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') *w->p++ = '\\';
        *w->p++ = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    *w->p++ = '"';
}

/* The headers' size is at most the fixed part (three units' lines, the
 * RateLimit and Retry-After lines: under 700 bytes) plus, per limit, its
 * RateLimit-Policy item (under 50 bytes and its name, escaped) and its name
 * again in RateLimit. A number takes at most 20 bytes, a duration 32. */
#define HEADERS_FIXED_MAX 1024
#define HEADERS_PER_LIMIT 80

size_t tg_limiter_format_headers(const struct tg_limit_req *req, const struct tg_limit_result *res,
                                 char *out, size_t cap)
{
    if (cap > 0) out[0] = '\0';
    if (res->status != TG_LIMIT_ALLOWED && res->status != TG_LIMIT_DENIED &&
        res->status != TG_LIMIT_NO_CREDIT)
        return 0;
    size_t n = req->n < res->n ? req->n : res->n;
    /* Formatted on every reply: into a buffer that surely holds it, without a
     * bound check per piece, then copied (cut at cap - 1 as documented). */
    size_t bound = HEADERS_FIXED_MAX;
    for (size_t i = 0; i < n; i++)
        bound += HEADERS_PER_LIMIT + 4 * strlen(req->b[i].limit->name) + 4;
    char local[4096];
    char *buf = bound <= sizeof(local) ? local : malloc(bound);
    if (buf == NULL) return 0;
    struct wr w = {buf};
    char dur[32];
    int tightest = -1;
    for (int u = 0; u < TG_UNIT_COUNT; u++) {
        int t = -1;
        for (size_t i = 0; i < n; i++) {
            if ((int)req->b[i].limit->unit != u) continue;
            if (t < 0 || fraction_left(&res->b[i]) < fraction_left(&res->b[t])) t = (int)i;
        }
        if (t < 0) continue;
        if (tightest < 0 || fraction_left(&res->b[t]) < fraction_left(&res->b[tightest]))
            tightest = t;
        const struct tg_bucket_state *s = &res->b[t];
        size_t dlen = tg_limiter_format_duration(s->reset_ms, dur, sizeof(dur));
        const char *uh = unit_header[u];
        size_t uhl = strlen(uh);
        wr_lit(&w, "x-ratelimit-limit-");
        wr_n(&w, uh, uhl);
        wr_lit(&w, ": ");
        wr_int(&w, whole_units(s->limit_u));
        wr_lit(&w, "\r\nx-ratelimit-remaining-");
        wr_n(&w, uh, uhl);
        wr_lit(&w, ": ");
        wr_int(&w, whole_units(s->remaining_u));
        wr_lit(&w, "\r\nx-ratelimit-reset-");
        wr_n(&w, uh, uhl);
        wr_lit(&w, ": ");
        wr_n(&w, dur, dlen);
        wr_lit(&w, "\r\n");
    }
    if (n > 0) {
        wr_lit(&w, "RateLimit-Policy: ");
        for (size_t i = 0; i < n; i++) {
            const struct tg_limit *l = req->b[i].limit;
            if (i) wr_lit(&w, ", ");
            wr_sf_string(&w, l->name);
            wr_lit(&w, ";q=");
            wr_int(&w, whole_units(res->b[i].limit_u));
            wr_lit(&w, ";w=");
            wr_int(&w, ceil_seconds(l->per_ms));
        }
        wr_lit(&w, "\r\n");
        int shown = res->status == TG_LIMIT_DENIED && res->denied >= 0 && (size_t)res->denied < n
                        ? res->denied
                        : tightest;
        wr_lit(&w, "RateLimit: ");
        wr_sf_string(&w, req->b[shown].limit->name);
        wr_lit(&w, ";r=");
        wr_int(&w, whole_units(res->b[shown].remaining_u));
        wr_lit(&w, ";t=");
        wr_int(&w, ceil_seconds(res->b[shown].reset_ms));
        wr_lit(&w, "\r\n");
        if (res->status == TG_LIMIT_DENIED && res->paid_by == TG_PAID_NONE) {
            long long secs = ceil_seconds(res->retry_ms);
            wr_lit(&w, "Retry-After: ");
            wr_int(&w, secs > 0 ? secs : 1);
            wr_lit(&w, "\r\nretry-after-ms: ");
            wr_int(&w, (long long)res->retry_ms);
            wr_lit(&w, "\r\n");
        }
    }
    if (req->credit.enabled && res->status == TG_LIMIT_ALLOWED) {
        wr_lit(&w, "x-tollgate-paid-by: ");
        if (res->paid_by == TG_PAID_CREDITS)
            wr_lit(&w, "credits");
        else
            wr_lit(&w, "rate_limit");
        wr_lit(&w, "\r\n");
    }
    if (req->credit.mode != TG_CREDITS_OFF && res->credits_known) {
        char amount[TG_AMOUNT_LEN];
        size_t an = tg_ledger_format_amount(res->balance, amount);
        wr_lit(&w, "x-tollgate-credits-balance: ");
        wr_n(&w, amount, an);
        wr_lit(&w, "\r\n");
    }
    size_t len = (size_t)(w.p - buf);
    if (cap == 0) {
        len = 0;
    } else {
        if (len > cap - 1) len = cap - 1;
        memcpy(out, buf, len);
        out[len] = '\0';
    }
    if (buf != local) free(buf);
    return len;
}

/* "tokens per minute (tpm) for tenant acme" */
static void put_limit_prose(struct out *o, const struct tg_limit_req *req, const struct tg_limit *l)
{
    put(o, "%s per ", unit_prose[l->unit < TG_UNIT_COUNT ? l->unit : 0]);
    put_period(o, l->per_ms);
    put(o, " (");
    put_json(o, l->name);
    put(o, ") for tenant ");
    put_json(o, req->tenant);
}

size_t tg_limiter_format_error(const struct tg_limit_req *req, const struct tg_limit_result *res,
                               char *out, size_t cap)
{
    struct out o;
    out_init(&o, out, cap);
    int d = res->denied;
    bool have = d >= 0 && (size_t)d < req->n && (size_t)d < res->n;
    if (res->status == TG_LIMIT_NO_CREDIT) {
        char need[TG_AMOUNT_LEN], left[TG_AMOUNT_LEN];
        tg_ledger_format_amount(req->credit.price, need);
        tg_ledger_format_amount(res->balance, left);
        put(&o, "{\"error\":{\"message\":\"You exceeded your current quota: tenant ");
        put_json(&o, req->tenant);
        put(&o, " has %s credits left and this request needs %s. Add credits to continue.\","
                "\"type\":\"insufficient_quota\",\"param\":null,"
                "\"code\":\"insufficient_quota\"}}",
            res->credits_known ? left : "too few", need);
        return o.len;
    }
    if (res->status == TG_LIMIT_ERROR ||
        ((res->status == TG_LIMIT_DENIED || res->status == TG_LIMIT_TOO_LARGE) && !have)) {
        put(&o, "{\"error\":{\"message\":\"The rate limiter is unavailable; please try again "
                "later.\",\"type\":\"server_error\",\"param\":null,"
                "\"code\":\"rate_limiter_unavailable\"}}");
        return o.len;
    }
    if (res->status != TG_LIMIT_DENIED && res->status != TG_LIMIT_TOO_LARGE) return 0;
    const struct tg_limit *l = req->b[d].limit;
    const struct tg_bucket_state *s = &res->b[d];
    bool too_large = res->status == TG_LIMIT_TOO_LARGE;
    put(&o, "{\"error\":{\"message\":\"%s",
        too_large ? "Request too large for " : "Rate limit reached for ");
    put_limit_prose(&o, req, l);
    put(&o, ": limit ");
    put_units(&o, s->limit_u, l->unit);
    if (!too_large) {
        put(&o, ", remaining ");
        put_units(&o, s->remaining_u, l->unit);
    }
    put(&o, ", requested ");
    put_units(&o, req->b[d].cost_u, l->unit);
    if (too_large) {
        put(&o, ". A request must not cost more than the limit.\","
                "\"type\":\"invalid_request_error\",\"param\":null,"
                "\"code\":\"limit_exceeds_capacity\"}}");
    } else {
        char dur[32];
        tg_limiter_format_duration(res->retry_ms, dur, sizeof(dur));
        put(&o,
            ". Please try again in %s.\",\"type\":\"%s\",\"param\":null,"
            "\"code\":\"rate_limit_exceeded\"}}",
            dur, tg_unit_name(l->unit));
    }
    return o.len;
}
