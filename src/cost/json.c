/* The cost model's JSON reader: walks the bytes without allocating; the strict JSON check. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/common.h"
#include "json.h"

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
const char *jskip(const char *p, const char *e)
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

long hex4(const char *s, size_t n)
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

/* Next member of an object: its key (as a key id) and value span. */
bool jmember(struct jit *it, enum key *key, const char **v, const char **ve)
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

bool jelement(struct jit *it, const char **v, const char **ve)
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

/* ---- the same reading in one pass (json.h says how it relates to the reader above) ---- */

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
bool jw_member(struct jw *w, enum key *key)
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

bool jw_element(struct jw *w)
{
    if (!jw_next(w, ']')) return false;
    if (w->p >= w->e) {
        w->bad = true;
        return false;
    }
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
int64_t jstr_chars(const char *v, const char *ve)
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
bool json_valid(const char *body, size_t len, struct body *b)
{
    uint8_t objects[JSON_MAX_DEPTH / 8 + 1];
    struct jcheck c = {(const unsigned char *)body, (const unsigned char *)body + len, false};
    enum { VALUE, KEY, AFTER } st = VALUE;
    int depth = 0;            /* open containers; a value is at depth + 1 */
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
