/* The cost model: request estimates, usage read from replies (JSON and SSE), settling. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include "tollgate/cost.h"

#define MAX_N 128
#define MAX_TOKENS_PARAM 2147483647LL
#define MAX_VIDEO_SECONDS 3600
#define MAX_VIDEO_SIDE 8192
/* Usage numbers from a reply are clamped to this, so that micro-units never overflow. */
#define MAX_USAGE_TOKENS 1000000000000LL
/* SSE: a pending event larger than this is passed through unparsed. */
#define SSE_MAX_EVENT (1024 * 1024)
/* JSON mode past TG_SCAN_MAX_JSON: the last bytes kept to find `usage` in. */
#define JSON_TAIL (64 * 1024)

enum { NL_MID, NL_START, NL_CR };

/* For the small helpers of the JSON walk, called per member and per byte run. */
#define HOT_INLINE static inline __attribute__((always_inline))

static const char bad_json_msg[] =
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)";

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a <= 0 ? 0 : (a + b - 1) / b;
}

/* micro-units of `usec` micro-seconds of video at w x h */
static int64_t video_micro(int64_t usec, int w, int h)
{
    return ceil_div(usec * w * h, TG_VIDEO_REF_PIXELS);
}

/* "WxH", each side 1..MAX_VIDEO_SIDE, nothing else. */
static bool parse_size(const char *s, size_t n, int *w, int *h)
{
    int v[2] = {0, 0};
    size_t i = 0;
    for (int k = 0; k < 2; k++) {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 6)
            v[k] = v[k] * 10 + (s[i++] - '0');
        if (i == start || v[k] < 1 || v[k] > MAX_VIDEO_SIDE) return false;
        if (k == 0) {
            if (i >= n || (s[i] != 'x' && s[i] != 'X')) return false;
            i++;
        }
    }
    if (i != n) return false;
    *w = v[0];
    *h = v[1];
    return true;
}

/* A plain decimal ("8", "4.5") in [0, MAX_VIDEO_SECONDS]. */
static bool parse_seconds(const char *s, size_t n, double *out)
{
    char tmp[32];
    size_t digits = 0, dots = 0;
    if (n == 0 || n >= sizeof tmp) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else if (s[i] == '.' && dots++ == 0)
            ;
        else
            return false;
    }
    if (digits == 0) return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    double d = strtod(tmp, NULL);
    if (!(d >= 0 && d <= MAX_VIDEO_SECONDS)) return false;
    *out = d;
    return true;
}

HOT_INLINE const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* ---- a small JSON reader: no allocation, walks the bytes ---- */

/* Bytes are looked at 16 at a time where SSE2 is there (every x86-64): the
 * loops below stop only at the bytes that matter, and finish byte by byte
 * within the last 16 bytes of the span (nothing is read past its end). */
#define BLK 16

#ifdef __SSE2__
typedef __m128i blk_t;
static inline blk_t blk_load(const char *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}
static inline unsigned blk_eq(blk_t x, char c)
{
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8(c)));
}
/* bytes < 0x20 or >= 0x80 */
static inline unsigned blk_ctl_or_high(blk_t x)
{
    return (unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)));
}
/* UTF-8 continuation bytes (0x80..0xBF) */
static inline unsigned blk_cont(blk_t x)
{
    return (unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(x, _mm_set1_epi8(-64)));
}
/* '"', '[', ']', '{', '}' (and a few others: Y _ y DEL, which the caller passes over) */
static inline unsigned blk_struct(blk_t x)
{
    blk_t b = _mm_and_si128(_mm_or_si128(x, _mm_set1_epi8(0x20)), _mm_set1_epi8((char)0xF9));
    return (unsigned)_mm_movemask_epi8(
        _mm_or_si128(_mm_cmpeq_epi8(b, _mm_set1_epi8(0x79)), _mm_cmpeq_epi8(x, _mm_set1_epi8('"'))));
}
#endif

/* The first '"' or '\\' in [p, e), or e. */
static inline const char *find_quote_bs(const char *p, const char *e)
{
#ifdef __SSE2__
    while (e - p >= BLK) {
        blk_t x = blk_load(p);
        unsigned m = blk_eq(x, '"') | blk_eq(x, '\\');
        if (m) return p + __builtin_ctz(m);
        p += BLK;
    }
#endif
    while (p < e && *p != '"' && *p != '\\')
        p++;
    return p;
}

/* p at an opening quote: returns just past the closing one, or NULL. A quote
 * is escaped when an odd run of backslashes precedes it; read left to right,
 * that is: a backslash takes the byte after it along. *esc tells whether the
 * string holds a backslash. */
static inline const char *jstr_end_esc(const char *p, const char *e, bool *esc)
{
    p++;
    for (;;) {
        p = find_quote_bs(p, e);
        if (p >= e) return NULL;
        if (*p == '"') return p + 1;
        *esc = true;
        if (e - p <= 2) return NULL; /* nothing left after the escaped byte */
        p += 2;
    }
}

static inline const char *jstr_end(const char *p, const char *e)
{
    bool esc;
    return jstr_end_esc(p, e, &esc);
}

/* What a byte means to jskip: 1 quote, 2 opens, 3 closes, 4 ends a scalar. */
static const unsigned char jclass[256] = {
    ['"'] = 1, ['{'] = 2,  ['['] = 2,  ['}'] = 3,  [']'] = 3, [','] = 4,
    [' '] = 4, ['\t'] = 4, ['\n'] = 4, ['\r'] = 4, [':'] = 4,
};

/* The next byte of class 1..3 in [p, e), or e. */
static inline const char *find_struct(const char *p, const char *e)
{
#ifdef __SSE2__
    while (e - p >= BLK) {
        unsigned m = blk_struct(blk_load(p));
        while (m) {
            const char *q = p + __builtin_ctz(m);
            if (jclass[(unsigned char)*q] != 0) return q;
            m &= m - 1;
        }
        p += BLK;
    }
#endif
    while (p < e && (jclass[(unsigned char)*p] == 0 || jclass[(unsigned char)*p] == 4))
        p++;
    return p;
}

/* p at a value: returns just past it, or NULL if it does not end before e. */
static const char *jskip(const char *p, const char *e)
{
    if (p >= e) return NULL;
    if (*p == '"') return jstr_end(p, e);
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        for (;;) {
            p = find_struct(p, e);
            if (p >= e) return NULL;
            switch (jclass[(unsigned char)*p]) {
            case 1:
                p = jstr_end(p, e);
                if (!p) return NULL;
                continue;
            case 2:
                depth++;
                break;
            default:
                if (--depth == 0) return p + 1;
                break;
            }
            p++;
        }
    }
    const char *s = p;
    while (p < e && jclass[(unsigned char)*p] == 0)
        p++;
    return p > s ? p : NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long hex4(const char *s, size_t n)
{
    long v = 0;
    if (n < 4) return -1;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/* ---- member names the cost model reads ---- */

enum key {
    K_OTHER,
    K_N,
    K_TEXT,
    K_SIZE,
    K_MODEL,
    K_INPUT,
    K_DELTA,
    K_USAGE,
    K_STREAM,
    K_PROMPT,
    K_SECONDS,
    K_CONTENT,
    K_REFUSAL,
    K_MESSAGE,
    K_CHOICES,
    K_MESSAGES,
    K_FUNCTION,
    K_RESPONSE,
    K_ARGUMENTS,
    K_MAX_TOKENS,
    K_TOOL_CALLS,
    K_INPUT_TOKENS,
    K_TOTAL_TOKENS,
    K_PROMPT_TOKENS,
    K_INCLUDE_USAGE,
    K_OUTPUT_TOKENS,
    K_STREAM_OPTIONS,
    K_COMPLETION_TOKENS,
    K_REASONING_CONTENT,
    K_MAX_COMPLETION_TOKENS,
};

#define KEY_MAX_LEN 21 /* max_completion_tokens */

/* The name s[0..n) (escapes already decoded) as a key id. */
HOT_INLINE enum key key_of_name(const char *s, size_t n)
{
#define IS(lit) (memcmp(s, lit, sizeof lit - 1) == 0)
    switch (n) {
    case 1:
        return s[0] == 'n' ? K_N : K_OTHER;
    case 4:
        return IS("text") ? K_TEXT : IS("size") ? K_SIZE : K_OTHER;
    case 5:
        return IS("model")   ? K_MODEL
               : IS("input") ? K_INPUT
               : IS("delta") ? K_DELTA
               : IS("usage") ? K_USAGE
                             : K_OTHER;
    case 6:
        return IS("stream") ? K_STREAM : IS("prompt") ? K_PROMPT : K_OTHER;
    case 7:
        return IS("seconds")   ? K_SECONDS
               : IS("content") ? K_CONTENT
               : IS("refusal") ? K_REFUSAL
               : IS("message") ? K_MESSAGE
               : IS("choices") ? K_CHOICES
                               : K_OTHER;
    case 8:
        return IS("messages")   ? K_MESSAGES
               : IS("function") ? K_FUNCTION
               : IS("response") ? K_RESPONSE
                                : K_OTHER;
    case 9:
        return IS("arguments") ? K_ARGUMENTS : K_OTHER;
    case 10:
        return IS("max_tokens") ? K_MAX_TOKENS : IS("tool_calls") ? K_TOOL_CALLS : K_OTHER;
    case 12:
        return IS("input_tokens") ? K_INPUT_TOKENS : IS("total_tokens") ? K_TOTAL_TOKENS : K_OTHER;
    case 13:
        return IS("prompt_tokens")   ? K_PROMPT_TOKENS
               : IS("include_usage") ? K_INCLUDE_USAGE
               : IS("output_tokens") ? K_OUTPUT_TOKENS
                                     : K_OTHER;
    case 14:
        return IS("stream_options") ? K_STREAM_OPTIONS : K_OTHER;
    case 17:
        return IS("completion_tokens")   ? K_COMPLETION_TOKENS
               : IS("reasoning_content") ? K_REASONING_CONTENT
                                         : K_OTHER;
    case 21:
        return IS("max_completion_tokens") ? K_MAX_COMPLETION_TOKENS : K_OTHER;
    }
    return K_OTHER;
#undef IS
}

/* A key with a backslash in it, decoded: a key whose escapes
 * do not decode (a bad escape, or a \\u escape beyond ASCII, which no name
 * here holds) is K_OTHER. */
static enum key key_of_escaped(const char *k, size_t kl)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    char buf[KEY_MAX_LEN];
    size_t i = 0, j = 0;
    while (i < kl) {
        long c = (unsigned char)k[i++];
        if (c == '\\') {
            if (i >= kl) return K_OTHER;
            char e = k[i++];
            const char *f = e == 'u' ? NULL : memchr(from, e, sizeof from - 1);
            if (e == 'u') {
                c = hex4(k + i, kl - i);
                if (c < 0 || c > 0x7f) return K_OTHER;
                i += 4;
            } else if (f) {
                c = to[f - from];
            } else {
                return K_OTHER;
            }
        }
        if (j >= KEY_MAX_LEN) return K_OTHER;
        buf[j++] = (char)c;
    }
    return key_of_name(buf, j);
}

/* A key (raw bytes between its quotes; esc: it holds a backslash) as a key
 * id, once its escapes are decoded. */
static inline enum key key_of(const char *k, size_t kl, bool esc)
{
    if (esc) return key_of_escaped(k, kl);
    return kl <= KEY_MAX_LEN ? key_of_name(k, kl) : K_OTHER;
}

struct jit {
    const char *p, *e;
};

static bool jopen(struct jit *it, const char *p, const char *e, char open)
{
    p = skip_ws(p, e);
    if (p >= e || *p != open) return false;
    it->p = p + 1;
    it->e = e;
    return true;
}

/* Next member of an object: its key (as a key id) and value span. */
static bool jmember(struct jit *it, enum key *key, const char **v, const char **ve)
{
    const char *e = it->e, *p = skip_ws(it->p, e);
    bool esc = false;
    if (p < e && *p == ',') p = skip_ws(p + 1, e);
    if (p >= e || *p != '"') return false;
    const char *kend = jstr_end_esc(p, e, &esc);
    if (!kend) return false;
    const char *k = p + 1;
    size_t kl = (size_t)(kend - 1 - k);
    p = skip_ws(kend, e);
    if (p >= e || *p != ':') return false;
    p = skip_ws(p + 1, e);
    const char *end = jskip(p, e);
    if (!end) return false;
    *key = key_of(k, kl, esc);
    *v = p;
    *ve = end;
    it->p = end;
    return true;
}

static bool jelement(struct jit *it, const char **v, const char **ve)
{
    const char *e = it->e, *p = skip_ws(it->p, e);
    if (p < e && *p == ',') p = skip_ws(p + 1, e);
    if (p >= e || *p == ']') return false;
    const char *end = jskip(p, e);
    if (!end) return false;
    *v = p;
    *ve = end;
    it->p = end;
    return true;
}

/* ---- the same reading in one pass ----
 * The reader above finds the end of a value (jskip) before it walks into it,
 * so nested text is gone over once per level. The walker below goes into the
 * values it reads as it meets them and skips the others with jskip, but only
 * accepts containers of a strict shape (members "key": value separated by
 * commas, the matching closing bracket): on those, jskip would have found the
 * same ends and the reader above the same members, so the result is the same.
 * On anything else it gives up, and the caller reads the input again the slow
 * way, from a fresh copy of what it had. */

struct jw {
    const char *p, *e;
    bool first, bad;
};

/* p at the opening bracket of the container to walk. */
HOT_INLINE void jw_open(struct jw *w, const char *p, const char *e)
{
    w->p = p + 1;
    w->e = e;
    w->first = true;
    w->bad = false;
}

/* Past the comma before the next item, or past the closing bracket `close`
 * (returns false, w->bad unset). */
HOT_INLINE bool jw_next(struct jw *w, char close)
{
    const char *p = skip_ws(w->p, w->e);
    if (p < w->e && *p == close) {
        w->p = p + 1;
        return false;
    }
    if (!w->first) {
        if (p >= w->e || *p != ',') goto bad;
        p = skip_ws(p + 1, w->e);
    }
    w->first = false;
    w->p = p;
    return true;
bad:
    w->bad = true;
    return false;
}

/* Next member: its key; w->p is left at its value. */
static bool jw_member(struct jw *w, enum key *key)
{
    bool esc = false;
    if (!jw_next(w, '}')) return false;
    const char *p = w->p, *e = w->e;
    if (p >= e || *p != '"') goto bad;
    const char *kend = jstr_end_esc(p, e, &esc);
    if (!kend) goto bad;
    *key = key_of(p + 1, (size_t)(kend - 2 - p), esc);
    p = skip_ws(kend, e);
    if (p >= e || *p != ':') goto bad;
    p = skip_ws(p + 1, e);
    if (p >= e || *p == '}' || *p == ']') goto bad; /* as jskip would not take it */
    w->p = p;
    return true;
bad:
    w->bad = true;
    return false;
}

static bool jw_element(struct jw *w)
{
    if (!jw_next(w, ']')) return false;
    if (w->p >= w->e) {
        w->bad = true;
        return false;
    }
    return true;
}

/* Skips the value at w->p; its span in *v, *ve. */
static bool jw_skip(struct jw *w, const char **v, const char **ve)
{
    const char *end = jskip(w->p, w->e);
    if (!end) {
        w->bad = true;
        return false;
    }
    *v = w->p;
    *ve = end;
    w->p = end;
    return true;
}


static inline unsigned bit_count(unsigned m)
{
    unsigned n = 0;
    for (; m; m &= m - 1)
        n++;
    return n;
}

/* Code points of the JSON string [v, ve) (quotes included), escapes decoded. */
static int64_t jstr_chars(const char *v, const char *ve)
{
    if (ve - v < 2 || *v != '"') return 0;
    const char *s = v + 1;
    size_t n = (size_t)(ve - v - 2), i = 0;
    int64_t c = 0;
    while (i < n) {
#ifdef __SSE2__
        if (n >= BLK) {
            /* the last block overlaps the one before: its first `skip` bytes are counted */
            size_t at = n - i >= BLK ? i : n - BLK;
            unsigned skip = (unsigned)(i - at), keep = (0xFFFFu << skip) & 0xFFFFu;
            blk_t x = blk_load(s + at);
            unsigned bs = blk_eq(x, '\\') & keep, cont = blk_cont(x) & keep;
            if (!bs) {
                c += BLK - skip - (cont ? bit_count(cont) : 0);
                i = at + BLK;
                continue;
            }
            unsigned k = (unsigned)__builtin_ctz(bs);
            c += k - skip - (cont ? bit_count(cont & ((1u << k) - 1)) : 0);
            i = at + k;
        }
#endif
        if (s[i] != '\\') {
            c += ((unsigned char)s[i] & 0xC0) != 0x80;
            i++;
            continue;
        }
        c++;
        if (i + 1 < n && s[i + 1] == 'u') {
            long hi = hex4(s + i + 2, n - i - 2);
            i += 6;
            if (hi >= 0xD800 && hi <= 0xDBFF && i + 1 < n && s[i] == '\\' && s[i + 1] == 'u') {
                long lo = hex4(s + i + 2, n - i - 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) i += 6;
            }
        } else {
            i += 2;
        }
    }
    return c;
}

/* A non-negative integer (a fraction is ignored), clamped to MAX_USAGE_TOKENS. */
static bool jint(const char *v, const char *ve, int64_t *out)
{
    int64_t x = 0;
    bool neg = v < ve && *v == '-';
    v += neg;
    if (v >= ve || *v < '0' || *v > '9') return false;
    for (; v < ve && *v >= '0' && *v <= '9'; v++) {
        x = x * 10 + (*v - '0');
        if (x > MAX_USAGE_TOKENS) x = MAX_USAGE_TOKENS;
    }
    if (neg && x != 0) return false;
    *out = x;
    return true;
}

static bool jis_string(const char *v, const char *ve)
{
    return ve - v >= 2 && *v == '"';
}

/* A value of the body: [v, ve), v == NULL when absent. */
struct span {
    const char *v, *ve;
};

/* The members of the top-level object that the estimate reads. */
struct body {
    struct span model, stream, stream_options, messages, prompt, input, max_completion_tokens,
        max_tokens, n, seconds, size;
};

/* Where the member `k` of the top-level object goes, or NULL if unread. */
static struct span *body_slot(struct body *b, enum key k)
{
    switch (k) {
    case K_MODEL:
        return &b->model;
    case K_STREAM:
        return &b->stream;
    case K_STREAM_OPTIONS:
        return &b->stream_options;
    case K_MESSAGES:
        return &b->messages;
    case K_PROMPT:
        return &b->prompt;
    case K_INPUT:
        return &b->input;
    case K_MAX_COMPLETION_TOKENS:
        return &b->max_completion_tokens;
    case K_MAX_TOKENS:
        return &b->max_tokens;
    case K_N:
        return &b->n;
    case K_SECONDS:
        return &b->seconds;
    case K_SIZE:
        return &b->size;
    default:
        return NULL;
    }
}

/* ---- strict JSON check: exactly what jansson's json_loadb(JSON_DECODE_ANY) accepts ---- */

/* jansson's JSON_PARSER_MAX_DEPTH, which it counts per value: a value inside
 * N containers is at depth N + 1. */
#define JSON_MAX_DEPTH 2048

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *e)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(e - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000) || v > 0x10FFFF ||
        (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    return n;
}

struct jcheck {
    const unsigned char *p, *e;
    bool esc; /* check_string saw a backslash */
};

static void check_ws(struct jcheck *c)
{
    while (c->p < c->e && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* c->p at '"'. UTF-8 is checked; \u0000 and unpaired surrogates are refused. */
static bool check_string(struct jcheck *c)
{
    const unsigned char *p = c->p + 1, *e = c->e;
    for (;;) {
#ifdef __SSE2__
        while (e - p >= BLK) {
            blk_t x = blk_load((const char *)p);
            unsigned m = blk_eq(x, '"') | blk_eq(x, '\\') | blk_ctl_or_high(x);
            if (m) {
                p += __builtin_ctz(m);
                break;
            }
            p += BLK;
        }
#endif
        if (p >= e) return false;
        unsigned ch = *p;
        if (ch == '"') {
            c->p = p + 1;
            return true;
        }
        if (ch < 0x20) return false;
        if (ch >= 0x80) {
            size_t n = utf8_seq(p, e);
            if (n == 0) return false;
            p += n;
            continue;
        }
        if (ch != '\\') {
            p++;
            continue;
        }
        c->esc = true;
        if (e - p < 2) return false;
        switch (p[1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            p += 2;
            break;
        case 'u': {
            long u = hex4((const char *)p + 2, (size_t)(e - p - 2));
            if (u <= 0 || (u >= 0xDC00 && u <= 0xDFFF)) return false;
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u') return false;
                long lo = hex4((const char *)p + 2, (size_t)(e - p - 2));
                if (lo < 0xDC00 || lo > 0xDFFF) return false;
                p += 6;
            }
            break;
        }
        default:
            return false;
        }
    }
    return false;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* An integer must fit in int64, a real must not overflow a double (jansson's limits). */
static bool check_number(struct jcheck *c)
{
    const unsigned char *p = c->p, *e = c->e, *start = p, *digits;
    bool neg = false, real = false;
    long exp = 0;
    if (p < e && *p == '-') {
        neg = true;
        p++;
    }
    if (p >= e || !is_digit(*p)) return false;
    digits = p;
    if (*p == '0') {
        p++;
        if (p < e && is_digit(*p)) return false;
    } else {
        while (p < e && is_digit(*p))
            p++;
    }
    size_t intdigits = (size_t)(p - digits);
    if (p < e && *p == '.') {
        p++;
        if (p >= e || !is_digit(*p)) return false;
        while (p < e && is_digit(*p))
            p++;
        real = true;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        bool eneg = false;
        p++;
        if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= e || !is_digit(*p)) return false;
        for (; p < e && is_digit(*p); p++)
            if (exp < 100000) exp = exp * 10 + (*p - '0');
        if (eneg) exp = -exp;
        real = true;
    }
    c->p = p;
    if (!real) {
        if (intdigits != 19) return intdigits < 19;
        return memcmp(digits, neg ? "9223372036854775808" : "9223372036854775807", 19) <= 0;
    }
    if ((long)intdigits + exp <= 300) return true;
    /* large enough that it may overflow: ask strtod, as jansson does */
    size_t len = (size_t)(p - start);
    char small[64], *tmp = len < sizeof small ? small : malloc(len + 1);
    if (!tmp) return false;
    memcpy(tmp, start, len);
    tmp[len] = '\0';
    errno = 0;
    double d = strtod(tmp, NULL);
    bool ok = !((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE);
    if (tmp != small) free(tmp);
    return ok;
}

static bool check_scalar(struct jcheck *c)
{
    static const struct {
        const char *text;
        size_t len;
    } literal[] = {{"true", 4}, {"false", 5}, {"null", 4}};
    if (*c->p == '"') return check_string(c);
    for (size_t i = 0; i < TG_ARRAY_LEN(literal); i++) {
        if (*c->p == literal[i].text[0]) {
            if ((size_t)(c->e - c->p) < literal[i].len ||
                memcmp(c->p, literal[i].text, literal[i].len) != 0)
                return false;
            c->p += literal[i].len;
            return true;
        }
    }
    return check_number(c);
}

/* The whole of body[0..len) is one JSON value (white space around it allowed).
 * Iterative: the open containers are a bit stack (1 = object). With `b`, the
 * members of a top-level object that the estimate reads are noted there as
 * they go by (a repeated key: the last one counts, as in jansson). */
static bool json_valid(const char *body, size_t len, struct body *b)
{
    uint8_t objects[JSON_MAX_DEPTH / 8 + 1];
    struct jcheck c = {(const unsigned char *)body, (const unsigned char *)body + len, false};
    enum { VALUE, KEY, AFTER } st = VALUE;
    int depth = 0; /* open containers; a value is at depth + 1 */
    struct span *slot = NULL; /* the top-level member being read, if noted */
    if (b) memset(b, 0, sizeof *b);
    if (!body) return false;
    for (;;) {
        check_ws(&c);
        if (c.p >= c.e) return st == AFTER && depth == 0;
        if (st == VALUE) {
            if (depth + 1 > JSON_MAX_DEPTH) return false;
            unsigned char ch = *c.p;
            if (slot && depth == 1) slot->v = (const char *)c.p;
            if (ch != '{' && ch != '[') {
                if (!check_scalar(&c)) return false;
                st = AFTER;
                if (slot && depth == 1) {
                    slot->ve = (const char *)c.p;
                    slot = NULL;
                }
                continue;
            }
            c.p++;
            check_ws(&c);
            if (c.p < c.e && *c.p == (ch == '{' ? '}' : ']')) {
                c.p++;
                st = AFTER;
                if (slot && depth == 1) {
                    slot->ve = (const char *)c.p;
                    slot = NULL;
                }
                continue;
            }
            if (ch == '{')
                objects[depth / 8] |= (uint8_t)(1u << (depth % 8));
            else
                objects[depth / 8] &= (uint8_t) ~(1u << (depth % 8));
            depth++;
            st = ch == '{' ? KEY : VALUE;
        } else if (st == KEY) {
            const unsigned char *k = c.p;
            c.esc = false;
            if (*c.p != '"' || !check_string(&c)) return false;
            if (b && depth == 1)
                slot = body_slot(b, key_of((const char *)k + 1, (size_t)(c.p - k - 2), c.esc));
            check_ws(&c);
            if (c.p >= c.e || *c.p != ':') return false;
            c.p++;
            st = VALUE;
        } else {
            if (depth == 0) return false; /* something after the value */
            bool obj = objects[(depth - 1) / 8] & (1u << ((depth - 1) % 8));
            if (*c.p == ',') {
                c.p++;
                st = obj ? KEY : VALUE;
            } else if (*c.p == (obj ? '}' : ']')) {
                c.p++;
                depth--;
                if (slot && depth == 1) {
                    slot->ve = (const char *)c.p;
                    slot = NULL;
                }
            } else {
                return false;
            }
        }
    }
}

/* ---- request side: the body was validated first, so the reader walks valid JSON ---- */

enum jtype { J_OBJECT, J_ARRAY, J_STRING, J_INTEGER, J_REAL, J_TRUE, J_FALSE, J_NULL };

static enum jtype jtype_of(struct span s)
{
    switch (*s.v) {
    case '{':
        return J_OBJECT;
    case '[':
        return J_ARRAY;
    case '"':
        return J_STRING;
    case 't':
        return J_TRUE;
    case 'f':
        return J_FALSE;
    case 'n':
        return J_NULL;
    }
    for (const char *p = s.v; p < s.ve; p++)
        if (*p == '.' || *p == 'e' || *p == 'E') return J_REAL;
    return J_INTEGER;
}

static const char *type_name(struct span s)
{
    static const char *const names[] = {"an object",        "an array",  "a string",  "an integer",
                                        "a decimal number", "a boolean", "a boolean", "null"};
    return names[jtype_of(s)];
}

static bool is_null(struct span s)
{
    return !s.v || jtype_of(s) == J_NULL;
}

/* The last member `key` of the object s (a repeated key: the last one counts, as in jansson). */
static struct span find(struct span s, enum key key)
{
    struct span r = {NULL, NULL};
    struct jit it;
    const char *v, *ve;
    enum key k;
    if (!s.v || !jopen(&it, s.v, s.ve, '{')) return r;
    while (jmember(&it, &k, &v, &ve)) {
        if (k == key) {
            r.v = v;
            r.ve = ve;
        }
    }
    return r;
}

static size_t utf8_put(char *out, uint32_t u)
{
    if (u < 0x80) {
        out[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        out[0] = (char)(0xC0 | (u >> 6));
        out[1] = (char)(0x80 | (u & 0x3F));
        return 2;
    }
    if (u < 0x10000) {
        out[0] = (char)(0xE0 | (u >> 12));
        out[1] = (char)(0x80 | ((u >> 6) & 0x3F));
        out[2] = (char)(0x80 | (u & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (u >> 18));
    out[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((u >> 6) & 0x3F));
    out[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* Decodes the (valid) JSON string s into out, whole characters only, at most
 * cap bytes. Returns the length; *whole is false if the string did not fit. */
static size_t jstr_decode(struct span s, char *out, size_t cap, bool *whole)
{
    static const char esc_from[] = "\"\\/bfnrt", esc_to[] = "\"\\/\b\f\n\r\t";
    const char *p = s.v + 1, *e = s.ve - 1;
    size_t n = 0;
    if ((size_t)(e - p) <= cap && find_quote_bs(p, e) == e) {
        /* no escape and it fits: the bytes as they are (a valid string holds no '"') */
        memcpy(out, p, (size_t)(e - p));
        *whole = true;
        return (size_t)(e - p);
    }
    while (p < e) {
        char tmp[4];
        size_t tl;
        unsigned char c = (unsigned char)*p;
        if (c == '\\' && e - p >= 6 && p[1] == 'u') {
            long u = hex4(p + 2, (size_t)(e - p - 2));
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF && e - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                long lo = hex4(p + 2, (size_t)(e - p - 2));
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            tl = utf8_put(tmp, u < 0 ? 0xFFFD : (uint32_t)u);
        } else if (c == '\\' && e - p >= 2) {
            const char *f = memchr(esc_from, p[1], sizeof esc_from - 1);
            tmp[0] = f ? esc_to[f - esc_from] : p[1];
            tl = 1;
            p += 2;
        } else {
            tl = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if (tl > (size_t)(e - p)) tl = (size_t)(e - p);
            memcpy(tmp, p, tl);
            p += tl;
        }
        if (n + tl > cap) {
            *whole = false;
            return n;
        }
        memcpy(out + n, tmp, tl);
        n += tl;
    }
    *whole = true;
    return n;
}

/* The value of a (valid) number. */
static double jnumber(struct span s)
{
    char small[64], *tmp;
    size_t len = (size_t)(s.ve - s.v);
    tmp = len < sizeof small ? small : malloc(len + 1);
    if (!tmp) return NAN;
    memcpy(tmp, s.v, len);
    tmp[len] = '\0';
    double d = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    return d;
}

/* The value of a (valid, so int64) integer. */
static int64_t jinteger(struct span s)
{
    const char *p = s.v;
    bool neg = *p == '-';
    uint64_t x = 0;
    for (p += neg; p < s.ve; p++)
        x = x * 10 + (uint64_t)(*p - '0');
    return neg ? (int64_t)(0 - x) : (int64_t)x;
}

static int bad_type(char err[TG_ERR_LEN], const char *param, const char *expected, struct span got)
{
    snprintf(err, TG_ERR_LEN, "Invalid type for '%s': expected %s, but got %s instead.", param,
             expected, type_name(got));
    return -1;
}

/* An integer parameter in [lo, hi]; decimals with an integral value are
 * accepted. Returns 1 if set, 0 if absent or null, -1 with err. */
static int int_param(struct span v, const char *key, int64_t lo, int64_t hi, int64_t *out,
                     char err[TG_ERR_LEN])
{
    int64_t x;
    if (is_null(v)) return 0;
    enum jtype t = jtype_of(v);
    double d = t == J_REAL ? jnumber(v) : 0;
    if (t == J_INTEGER)
        x = jinteger(v);
    else if (t == J_REAL && d == floor(d) && fabs(d) < 9e18)
        x = (int64_t)d;
    else
        return bad_type(err, key, "an integer", v);
    if (x < lo) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid '%s': integer below minimum value. Expected a value >= %lld, but got "
                 "%lld instead.",
                 key, (long long)lo, (long long)x);
        return -1;
    }
    if (x > hi) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid '%s': integer above maximum value. Expected a value <= %lld, but got "
                 "%lld instead.",
                 key, (long long)hi, (long long)x);
        return -1;
    }
    *out = x;
    return 1;
}

struct prompt {
    int64_t chars;  /* text, to be divided by chars_per_token */
    int64_t tokens; /* token ids given directly */
};

static void add_text(struct prompt *pr, struct span s)
{
    pr->chars += jstr_chars(s.v, s.ve);
}

/* A message's content: a string, null, or an array of parts whose `text` counts. */
/* Adds the text of a content value (a string, or an array of parts); returns
 * -1, writing nothing, when it is neither: the caller names the parameter
 * (formatted only then, not for every message). */
static int count_content(struct span content, struct prompt *pr)
{
    struct jit it;
    struct span part;
    if (is_null(content)) return 0;
    enum jtype t = jtype_of(content);
    if (t == J_STRING) {
        add_text(pr, content);
        return 0;
    }
    if (t != J_ARRAY) return -1;
    jopen(&it, content.v, content.ve, '[');
    while (jelement(&it, &part.v, &part.ve)) {
        struct span text = *part.v == '{' ? find(part, K_TEXT) : (struct span){NULL, NULL};
        if (text.v && jtype_of(text) == J_STRING) add_text(pr, text);
    }
    return 0;
}

/* The messages walked once (the body is valid, so the walker takes it; if it
 * ever did not, they are counted again the slow way). */
static int count_messages(struct span msgs, struct prompt *pr, char err[TG_ERR_LEN])
{
    struct jit it;
    struct jw arr, obj;
    struct span m;
    struct prompt was = *pr;
    enum key k;
    const char *v, *ve;
    char param[48];
    if (jtype_of(msgs) != J_ARRAY) return bad_type(err, "messages", "an array", msgs);
    jw_open(&arr, msgs.v, msgs.ve);
    for (size_t i = 0; jw_element(&arr); i++) {
        if (*arr.p != '{') {
            if (!jw_skip(&arr, &m.v, &m.ve)) break;
            snprintf(param, sizeof param, "messages[%zu]", i);
            return bad_type(err, param, "an object", m);
        }
        struct span content = {NULL, NULL};
        jw_open(&obj, arr.p, arr.e);
        while (jw_member(&obj, &k)) {
            if (!jw_skip(&obj, &v, &ve)) break;
            if (k == K_CONTENT) {
                content.v = v;
                content.ve = ve;
            }
        }
        if (obj.bad) {
            arr.bad = true;
            break;
        }
        arr.p = obj.p;
        if (count_content(content, pr) < 0) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            return bad_type(err, param, "a string or an array", content);
        }
    }
    if (!arr.bad) return 0;
    *pr = was;
    jopen(&it, msgs.v, msgs.ve, '[');
    for (size_t i = 0; jelement(&it, &m.v, &m.ve); i++) {
        if (jtype_of(m) != J_OBJECT) {
            snprintf(param, sizeof param, "messages[%zu]", i);
            return bad_type(err, param, "an object", m);
        }
        struct span content = find(m, K_CONTENT);
        if (count_content(content, pr) < 0) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            return bad_type(err, param, "a string or an array", content);
        }
    }
    return 0;
}

/* `prompt` or `input`: a string, or an array of strings, token ids, token-id
 * arrays, or (Responses-style) message items. */
static int count_inputs(struct span v, const char *name, struct prompt *pr, char err[TG_ERR_LEN])
{
    struct jit it, tokens;
    struct span el, tok;
    char param[48];
    enum jtype t = jtype_of(v);
    if (t == J_STRING) {
        add_text(pr, v);
        return 0;
    }
    if (t != J_ARRAY) return bad_type(err, name, "a string or an array", v);
    jopen(&it, v.v, v.ve, '[');
    for (size_t i = 0; jelement(&it, &el.v, &el.ve); i++) {
        switch (jtype_of(el)) {
        case J_STRING:
            add_text(pr, el);
            break;
        case J_INTEGER:
            pr->tokens++;
            break;
        case J_ARRAY:
            jopen(&tokens, el.v, el.ve, '[');
            for (size_t j = 0; jelement(&tokens, &tok.v, &tok.ve); j++) {
                if (jtype_of(tok) != J_INTEGER) {
                    snprintf(param, sizeof param, "%s[%zu][%zu]", name, i, j);
                    return bad_type(err, param, "an integer", tok);
                }
                pr->tokens++;
            }
            break;
        case J_OBJECT: {
            struct span text = find(el, K_TEXT), content = find(el, K_CONTENT);
            if (text.v && jtype_of(text) == J_STRING) add_text(pr, text);
            if (count_content(content, pr) < 0) {
                snprintf(param, sizeof param, "%s[%zu]", name, i);
                return bad_type(err, param, "a string or an array", content);
            }
            break;
        }
        default:
            snprintf(param, sizeof param, "%s[%zu]", name, i);
            return bad_type(err, param, "a string, an integer or an array", el);
        }
    }
    return 0;
}

static void copy_model(struct tg_request_info *info, const char *s, size_t n)
{
    if (n > TG_MODEL_LEN - 1) {
        n = TG_MODEL_LEN - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(info->model, s, n);
    info->model[n] = '\0';
}

static void common_info(const struct body *b, struct tg_request_info *info)
{
    bool whole;
    if (b->model.v && jtype_of(b->model) == J_STRING)
        info->model[jstr_decode(b->model, info->model, TG_MODEL_LEN - 1, &whole)] = '\0';
    info->stream = b->stream.v && jtype_of(b->stream) == J_TRUE;
    struct span iu = find(b->stream_options, K_INCLUDE_USAGE);
    info->client_wants_usage = iu.v && jtype_of(iu) == J_TRUE;
}

static int estimate_tokens(const struct body *b, int cpt, int default_max, struct tg_cost *out,
                           struct tg_request_info *info, char err[TG_ERR_LEN])
{
    struct prompt pr = {0, 0};
    bool msgs = !is_null(b->messages), prompt = !is_null(b->prompt), input = !is_null(b->input);
    int64_t max = default_max > 0 ? default_max : 0, n = 1;
    int rc;

    if (msgs && count_messages(b->messages, &pr, err) < 0) return -1;
    if (prompt && count_inputs(b->prompt, "prompt", &pr, err) < 0) return -1;
    if (input && count_inputs(b->input, "input", &pr, err) < 0) return -1;
    int64_t tokens = ceil_div(pr.chars, cpt) + pr.tokens;
    info->prompt_tokens_est = tokens;

    if (!(input && !msgs && !prompt)) {
        rc = int_param(b->max_completion_tokens, "max_completion_tokens", 1, MAX_TOKENS_PARAM, &max,
                       err);
        if (rc < 0) return -1;
        if (rc == 0 && int_param(b->max_tokens, "max_tokens", 1, MAX_TOKENS_PARAM, &max, err) < 0)
            return -1;
        if (int_param(b->n, "n", 1, MAX_N, &n, err) < 0) return -1;
        tokens += max * n;
    }
    out->u[TG_UNIT_TOKENS] = tokens * TG_MICRO;
    return 0;
}

struct video_req {
    double seconds;
    int width, height;
};

static int video_seconds_param(bool is_string, const char *s, size_t n, double num,
                               struct video_req *vr, char err[TG_ERR_LEN])
{
    double d = num;
    if ((is_string && !parse_seconds(s, n, &d)) || !(d > 0 && d <= MAX_VIDEO_SECONDS)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid value for 'seconds': expected a positive number of seconds, at most %d.",
                 MAX_VIDEO_SECONDS);
        return -1;
    }
    vr->seconds = d;
    return 0;
}

static int video_size_param(const char *s, size_t n, struct video_req *vr, char err[TG_ERR_LEN])
{
    if (!parse_size(s, n, &vr->width, &vr->height)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid value for 'size': expected WIDTHxHEIGHT with each side from 1 to %d, "
                 "like '1280x720'.",
                 MAX_VIDEO_SIDE);
        return -1;
    }
    return 0;
}

static int video_json(const struct body *b, struct video_req *vr, char err[TG_ERR_LEN])
{
    char buf[32];
    bool whole;
    size_t n;
    if (!is_null(b->seconds)) {
        enum jtype t = jtype_of(b->seconds);
        if (t == J_STRING) {
            n = jstr_decode(b->seconds, buf, sizeof buf - 1, &whole);
            if (video_seconds_param(true, whole ? buf : "", whole ? n : 0, 0, vr, err) < 0)
                return -1;
        } else if (t == J_INTEGER || t == J_REAL) {
            if (video_seconds_param(false, NULL, 0, jnumber(b->seconds), vr, err) < 0) return -1;
        } else {
            return bad_type(err, "seconds", "a string or a number", b->seconds);
        }
    }
    if (!is_null(b->size)) {
        if (jtype_of(b->size) != J_STRING) return bad_type(err, "size", "a string", b->size);
        n = jstr_decode(b->size, buf, sizeof buf - 1, &whole);
        if (video_size_param(whole ? buf : "", whole ? n : 0, vr, err) < 0) return -1;
    }
    return 0;
}

/* multipart/form-data (what OpenAI's SDKs send to /v1/videos): reads the
 * `model`, `seconds` and `size` fields. */
static int video_multipart(const char *body, size_t len, struct video_req *vr,
                           struct tg_request_info *info, char err[TG_ERR_LEN])
{
    const char *end = body + len;
    const char *eol = memchr(body, '\r', len);
    char delim[80];
    if (!eol || eol + 1 >= end || eol[1] != '\n' || eol - body < 3 ||
        (size_t)(eol - body) + 2 >= sizeof delim)
        goto bad;
    size_t blen = (size_t)(eol - body); /* "--boundary" */
    delim[0] = '\r';
    delim[1] = '\n';
    memcpy(delim + 2, body, blen);
    size_t dlen = blen + 2;
    const char *p = eol + 2;
    for (;;) {
        const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!hend) goto bad;
        const char *name = NULL;
        size_t nlen = 0;
        for (const char *q = p; q + 6 <= hend; q++) {
            if (memcmp(q, "name=\"", 6) == 0 && q > p && (q[-1] == ' ' || q[-1] == ';')) {
                const char *ne = memchr(q + 6, '"', (size_t)(hend - q - 6));
                if (!ne) goto bad;
                name = q + 6;
                nlen = (size_t)(ne - name);
                break;
            }
        }
        const char *v = hend + 4;
        const char *ve = memmem(v, (size_t)(end - v), delim, dlen);
        if (!ve) goto bad;
        size_t vlen = (size_t)(ve - v);
        if (name && nlen == 7 && memcmp(name, "seconds", 7) == 0) {
            if (video_seconds_param(true, v, vlen, 0, vr, err) < 0) return -1;
        } else if (name && nlen == 4 && memcmp(name, "size", 4) == 0) {
            if (video_size_param(v, vlen, vr, err) < 0) return -1;
        } else if (name && nlen == 5 && memcmp(name, "model", 5) == 0) {
            copy_model(info, v, vlen);
        }
        p = ve + dlen;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') return 0;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') goto bad;
        p += 2;
    }
bad:
    snprintf(err, TG_ERR_LEN, "We could not parse the multipart/form-data body of your request.");
    return -1;
}

int tg_cost_estimate(enum tg_cost_model model, int chars_per_token, int default_max_tokens,
                     const char *body, size_t len, struct tg_cost *out,
                     struct tg_request_info *info, char err[TG_ERR_LEN])
{
    struct body b;
    struct video_req vr = {TG_VIDEO_DEFAULT_SECONDS, TG_VIDEO_DEFAULT_WIDTH,
                           TG_VIDEO_DEFAULT_HEIGHT};
    int cpt = chars_per_token > 0 ? chars_per_token : 1;
    int rc = -1;
    const char *end = body ? body + len : NULL;
    const char *first = body ? skip_ws(body, end) : NULL;

    memset(out, 0, sizeof *out);
    memset(info, 0, sizeof *info);
    err[0] = '\0';
    out->u[TG_UNIT_REQUESTS] = TG_MICRO;

    if (model == TG_COST_VIDEO && first && end - first >= 2 && first[0] == '-' && first[1] == '-') {
        if (video_multipart(first, (size_t)(end - first), &vr, info, err) < 0) goto out;
        goto video;
    }
    if (model == TG_COST_REQUESTS) {
        /* no body needed: read model and stream when it is a JSON object */
        if (first && first < end && *first == '{' && json_valid(body, len, &b))
            common_info(&b, info);
        rc = 0;
        goto out;
    }
    if (!json_valid(body, len, &b)) {
        snprintf(err, TG_ERR_LEN, "%s", bad_json_msg);
        goto out;
    }
    if (*first != '{') {
        snprintf(err, TG_ERR_LEN,
                 "Invalid request body: expected a JSON object, but got %s instead.",
                 type_name((struct span){first, end}));
        goto out;
    }
    common_info(&b, info);
    if (model == TG_COST_TOKENS) {
        rc = estimate_tokens(&b, cpt, default_max_tokens, out, info, err);
        goto out;
    }
    if (video_json(&b, &vr, err) < 0) goto out;
video:
    /* a started second is charged whole */
    info->video_seconds = (int64_t)ceil(vr.seconds);
    info->width = vr.width;
    info->height = vr.height;
    out->u[TG_UNIT_VIDEO_SECONDS] =
        video_micro(info->video_seconds * TG_MICRO, info->width, info->height);
    rc = 0;
out:
    if (rc < 0) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- what a reply says ---- */

/* usage {prompt_tokens|input_tokens, completion_tokens|output_tokens, total_tokens} */
static void read_usage(struct tg_usage *u, const char *v, const char *ve)
{
    struct jit it;
    const char *mv, *mve;
    enum key k;
    int64_t p = 0, c = 0, t = -1, x;
    if (!jopen(&it, v, ve, '{')) return;
    while (jmember(&it, &k, &mv, &mve)) {
        if (!jint(mv, mve, &x)) continue;
        if (k == K_PROMPT_TOKENS || k == K_INPUT_TOKENS)
            p = x;
        else if (k == K_COMPLETION_TOKENS || k == K_OUTPUT_TOKENS)
            c = x;
        else if (k == K_TOTAL_TOKENS)
            t = x;
    }
    u->prompt_tokens = p;
    u->completion_tokens = c;
    u->total_tokens = t >= 0 ? t : p + c;
    u->have_tokens = true;
}

/* Generated text of a message or delta: content, reasoning, refusal, tool call arguments. */
static int64_t message_chars(const char *v, const char *ve)
{
    struct jit it, arr, fn;
    const char *mv, *mve, *ev, *eve, *fv, *fve;
    enum key k;
    int64_t c = 0;
    if (!jopen(&it, v, ve, '{')) return 0;
    while (jmember(&it, &k, &mv, &mve)) {
        if (k == K_CONTENT || k == K_REASONING_CONTENT || k == K_REFUSAL) {
            c += jstr_chars(mv, mve);
        } else if (k == K_TOOL_CALLS && jopen(&arr, mv, mve, '[')) {
            while (jelement(&arr, &ev, &eve)) {
                if (!jopen(&fn, ev, eve, '{')) continue;
                while (jmember(&fn, &k, &fv, &fve)) {
                    struct jit args;
                    const char *av, *ave;
                    enum key ak;
                    if (k != K_FUNCTION || !jopen(&args, fv, fve, '{')) continue;
                    while (jmember(&args, &ak, &av, &ave))
                        if (ak == K_ARGUMENTS) c += jstr_chars(av, ave);
                }
            }
        }
    }
    return c;
}

/* choices[]: adds their generated text; returns how many there were. */
static size_t read_choices(struct tg_usage *u, const char *v, const char *ve)
{
    struct jit arr, it;
    const char *ev, *eve, *mv, *mve;
    enum key k;
    size_t n = 0;
    if (!jopen(&arr, v, ve, '[')) return 0;
    while (jelement(&arr, &ev, &eve)) {
        n++;
        if (!jopen(&it, ev, eve, '{')) continue;
        while (jmember(&it, &k, &mv, &mve)) {
            if (k == K_DELTA || k == K_MESSAGE)
                u->content_chars += message_chars(mv, mve);
            else if (k == K_TEXT)
                u->content_chars += jstr_chars(mv, mve);
        }
    }
    return n;
}

/* read_object, member by member as each value's end is found. */
static bool read_object_lax(struct tg_usage *u, const char *p, const char *e, bool video)
{
    struct jit it, sub;
    const char *v, *ve, *sv, *sve;
    enum key k, sk;
    bool choices_empty = false, have_usage = false, have_sec = false;
    double sec = 0;
    int w = 0, h = 0;
    if (!jopen(&it, p, e, '{')) return false;
    while (jmember(&it, &k, &v, &ve)) {
        if (k == K_CHOICES) {
            choices_empty = *v == '[' && read_choices(u, v, ve) == 0;
        } else if (k == K_USAGE) {
            if (*v == '{') {
                read_usage(u, v, ve);
                have_usage = true;
            }
        } else if (k == K_RESPONSE && jopen(&sub, v, ve, '{')) {
            while (jmember(&sub, &sk, &sv, &sve))
                if (sk == K_USAGE && *sv == '{') read_usage(u, sv, sve);
        } else if (video && k == K_SECONDS) {
            if (jis_string(v, ve))
                have_sec = parse_seconds(v + 1, (size_t)(ve - v - 2), &sec);
            else
                have_sec = parse_seconds(v, (size_t)(ve - v), &sec);
        } else if (video && k == K_SIZE && jis_string(v, ve)) {
            if (!parse_size(v + 1, (size_t)(ve - v - 2), &w, &h)) w = h = 0;
        }
    }
    if (have_sec) {
        u->have_video = true;
        u->video_seconds = sec;
        u->width = w;
        u->height = h;
    }
    return choices_empty && have_usage;
}

/* ---- reply objects in one pass (the walker is above, by jelement) ---- */

static bool jw_usage(struct tg_usage *u, struct jw *up)
{
    struct jw w;
    enum key k;
    const char *v, *ve;
    int64_t p = 0, c = 0, t = -1, x;
    jw_open(&w, up->p, up->e);
    while (jw_member(&w, &k)) {
        if (!jw_skip(&w, &v, &ve)) return false;
        if (!jint(v, ve, &x)) continue;
        if (k == K_PROMPT_TOKENS || k == K_INPUT_TOKENS)
            p = x;
        else if (k == K_COMPLETION_TOKENS || k == K_OUTPUT_TOKENS)
            c = x;
        else if (k == K_TOTAL_TOKENS)
            t = x;
    }
    if (w.bad) return false;
    up->p = w.p;
    u->prompt_tokens = p;
    u->completion_tokens = c;
    u->total_tokens = t >= 0 ? t : p + c;
    u->have_tokens = true;
    return true;
}

/* tool_calls[]: the text of function.arguments */
static bool jw_tool_calls(int64_t *c, struct jw *up)
{
    struct jw arr, fn, args;
    enum key k;
    const char *v, *ve;
    jw_open(&arr, up->p, up->e);
    while (jw_element(&arr)) {
        if (*arr.p != '{') {
            if (!jw_skip(&arr, &v, &ve)) return false;
            continue;
        }
        jw_open(&fn, arr.p, arr.e);
        while (jw_member(&fn, &k)) {
            if (k != K_FUNCTION || *fn.p != '{') {
                if (!jw_skip(&fn, &v, &ve)) return false;
                continue;
            }
            jw_open(&args, fn.p, fn.e);
            while (jw_member(&args, &k)) {
                if (!jw_skip(&args, &v, &ve)) return false;
                if (k == K_ARGUMENTS) *c += jstr_chars(v, ve);
            }
            if (args.bad) return false;
            fn.p = args.p;
        }
        if (fn.bad) return false;
        arr.p = fn.p;
    }
    if (arr.bad) return false;
    up->p = arr.p;
    return true;
}

/* As message_chars, the value at up->p being an object. */
static bool jw_message(int64_t *c, struct jw *up)
{
    struct jw w;
    enum key k;
    const char *v, *ve;
    jw_open(&w, up->p, up->e);
    while (jw_member(&w, &k)) {
        if (k == K_TOOL_CALLS && *w.p == '[') {
            if (!jw_tool_calls(c, &w)) return false;
            continue;
        }
        if (!jw_skip(&w, &v, &ve)) return false;
        if (k == K_CONTENT || k == K_REASONING_CONTENT || k == K_REFUSAL) *c += jstr_chars(v, ve);
    }
    if (w.bad) return false;
    up->p = w.p;
    return true;
}

/* As read_choices, the value at up->p being an array. */
static bool jw_choices(struct tg_usage *u, struct jw *up, size_t *n)
{
    struct jw arr, it;
    enum key k;
    const char *v, *ve;
    *n = 0;
    jw_open(&arr, up->p, up->e);
    while (jw_element(&arr)) {
        ++*n;
        if (*arr.p != '{') {
            if (!jw_skip(&arr, &v, &ve)) return false;
            continue;
        }
        jw_open(&it, arr.p, arr.e);
        while (jw_member(&it, &k)) {
            if ((k == K_DELTA || k == K_MESSAGE) && *it.p == '{') {
                if (!jw_message(&u->content_chars, &it)) return false;
                continue;
            }
            if (!jw_skip(&it, &v, &ve)) return false;
            if (k == K_TEXT) u->content_chars += jstr_chars(v, ve);
        }
        if (it.bad) return false;
        arr.p = it.p;
    }
    if (arr.bad) return false;
    up->p = arr.p;
    return true;
}

/* read_object in one pass: false if it gave up (u is then half written). */
static bool jw_object(struct tg_usage *u, const char *p, const char *e, bool video, bool *drop)
{
    struct jw w, sub;
    enum key k, sk;
    const char *v, *ve;
    bool choices_empty = false, have_usage = false, have_sec = false;
    double sec = 0;
    int wd = 0, ht = 0;
    size_t n;
    jw_open(&w, p, e);
    while (jw_member(&w, &k)) {
        if (k == K_CHOICES && *w.p == '[') {
            if (!jw_choices(u, &w, &n)) return false;
            choices_empty = n == 0;
            continue;
        }
        if (k == K_USAGE && *w.p == '{') {
            if (!jw_usage(u, &w)) return false;
            have_usage = true;
            continue;
        }
        if (k == K_RESPONSE && *w.p == '{') {
            jw_open(&sub, w.p, w.e);
            while (jw_member(&sub, &sk)) {
                if (sk == K_USAGE && *sub.p == '{') {
                    if (!jw_usage(u, &sub)) return false;
                } else if (!jw_skip(&sub, &v, &ve)) {
                    return false;
                }
            }
            if (sub.bad) return false;
            w.p = sub.p;
            continue;
        }
        if (!jw_skip(&w, &v, &ve)) return false;
        if (k == K_CHOICES) {
            choices_empty = false;
        } else if (video && k == K_SECONDS) {
            if (jis_string(v, ve))
                have_sec = parse_seconds(v + 1, (size_t)(ve - v - 2), &sec);
            else
                have_sec = parse_seconds(v, (size_t)(ve - v), &sec);
        } else if (video && k == K_SIZE && jis_string(v, ve)) {
            if (!parse_size(v + 1, (size_t)(ve - v - 2), &wd, &ht)) wd = ht = 0;
        }
    }
    if (w.bad) return false;
    if (have_sec) {
        u->have_video = true;
        u->video_seconds = sec;
        u->width = wd;
        u->height = ht;
    }
    *drop = choices_empty && have_usage;
    return true;
}

/* One JSON object of a reply (the whole body, or an SSE payload). Returns true
 * when it carries usage and an empty `choices` (the usage-only chunk). */
static bool read_object(struct tg_usage *u, const char *p, const char *e, bool video)
{
    const char *q = skip_ws(p, e);
    struct tg_usage was;
    bool drop;
    if (q >= e || *q != '{') return false;
    was = *u;
    if (jw_object(u, q, e, video, &drop)) return drop;
    *u = was;
    return read_object_lax(u, q, e, video);
}

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

/* ---- settling ---- */

void tg_cost_actual(enum tg_cost_model model, int chars_per_token,
                    const struct tg_request_info *info, const struct tg_usage *usage,
                    struct tg_cost *out)
{
    int cpt = chars_per_token > 0 ? chars_per_token : 1;
    memset(out, 0, sizeof *out);
    out->u[TG_UNIT_REQUESTS] = TG_MICRO;
    if (model == TG_COST_TOKENS) {
        int64_t t;
        if (usage->have_tokens) {
            t = usage->total_tokens;
            if (t <= 0) t = usage->prompt_tokens + usage->completion_tokens;
        } else {
            t = info->prompt_tokens_est + ceil_div(usage->content_chars, cpt);
        }
        if (t < 0) t = 0;
        if (t > MAX_USAGE_TOKENS) t = MAX_USAGE_TOKENS;
        out->u[TG_UNIT_TOKENS] = t * TG_MICRO;
    } else if (model == TG_COST_VIDEO) {
        double sec = info->video_seconds;
        int w = info->width, h = info->height;
        if (usage->have_video) {
            sec = usage->video_seconds;
            if (usage->width > 0 && usage->height > 0) {
                w = usage->width;
                h = usage->height;
            }
        }
        if (w <= 0 || h <= 0 || w > MAX_VIDEO_SIDE || h > MAX_VIDEO_SIDE) {
            w = TG_VIDEO_DEFAULT_WIDTH;
            h = TG_VIDEO_DEFAULT_HEIGHT;
        }
        if (!(sec >= 0)) sec = 0;
        if (sec > MAX_VIDEO_SECONDS) sec = MAX_VIDEO_SECONDS;
        /* A started second counts whole, as in the estimate: a settle must not
         * refund the estimate's own rounding. */
        out->u[TG_UNIT_VIDEO_SECONDS] = video_micro((int64_t)ceil(sec) * TG_MICRO, w, h);
    }
}

/* ---- asking the upstream for usage ---- */

static char *splice(const char *body, size_t len, size_t at, size_t cut, const char *ins,
                    size_t inslen, size_t *outlen)
{
    char *out = malloc(len - cut + inslen + 1);
    if (!out) return NULL;
    memcpy(out, body, at);
    memcpy(out + at, ins, inslen);
    memcpy(out + at + inslen, body + at + cut, len - at - cut);
    *outlen = len - cut + inslen;
    out[*outlen] = '\0';
    return out;
}

/* The work of tg_cost_request_usage on a valid body. */
static char *request_usage(const char *body, size_t len, size_t *outlen)
{
    static const char member[] = "\"stream_options\":{\"include_usage\":true},";
    static const char obj[] = "{\"include_usage\":true}";
    const char *end = body + len, *open = skip_ws(body, end);
    if (open >= end || *open != '{') return NULL;
    struct span top = {open, end};
    struct span so = find(top, K_STREAM_OPTIONS);
    if (!so.v) {
        /* insert after the '{'; no comma when the object is empty */
        const char *next = skip_ws(open + 1, end);
        size_t n = sizeof member - (*next == '}' ? 2 : 1);
        return splice(body, len, (size_t)(open + 1 - body), 0, member, n, outlen);
    }
    size_t at = (size_t)(so.v - body), cut = (size_t)(so.ve - so.v);
    if (jtype_of(so) != J_OBJECT || *skip_ws(so.v + 1, so.ve) == '}')
        return splice(body, len, at, cut, obj, sizeof obj - 1, outlen);
    struct span iu = find(so, K_INCLUDE_USAGE);
    if (iu.v)
        return splice(body, len, (size_t)(iu.v - body), (size_t)(iu.ve - iu.v), "true", 4, outlen);
    return splice(body, len, at + 1, 0, "\"include_usage\":true,", 21, outlen);
}

char *tg_cost_request_usage(const char *body, size_t len, size_t *outlen)
{
    if (!json_valid(body, len, NULL)) return NULL;
    return request_usage(body, len, outlen);
}

char *tg_cost_request_usage_valid(const char *body, size_t len, size_t *outlen)
{
    if (!body || len == 0) return NULL;
    return request_usage(body, len, outlen);
}
