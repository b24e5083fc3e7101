/* The cost files' JSON reader: the walkers' state, their hot helpers inline, the strict check. */
#ifndef TOLLGATE_COST_JSON_H
#define TOLLGATE_COST_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* For the small helpers of the JSON walk, called per member and per byte run. */
#define HOT_INLINE static inline __attribute__((always_inline))

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
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(b, _mm_set1_epi8(0x79)),
                                                    _mm_cmpeq_epi8(x, _mm_set1_epi8('"'))));
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

long hex4(const char *s, size_t n);

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

struct jit {
    const char *p, *e;
};

static inline bool jopen(struct jit *it, const char *p, const char *e, char open)
{
    p = skip_ws(p, e);
    if (p >= e || *p != open) return false;
    it->p = p + 1;
    it->e = e;
    return true;
}

/* Next member of an object: its key (as a key id) and value span. */
bool jmember(struct jit *it, enum key *key, const char **v, const char **ve);
bool jelement(struct jit *it, const char **v, const char **ve);
/* p at a value: returns just past it, or NULL if it does not end before e. */
const char *jskip(const char *p, const char *e);

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

/* Next member: its key; w->p is left at its value. */
bool jw_member(struct jw *w, enum key *key);
bool jw_element(struct jw *w);

/* Skips the value at w->p; its span in *v, *ve. */
static inline bool jw_skip(struct jw *w, const char **v, const char **ve)
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

/* Code points of the JSON string [v, ve) (quotes included), escapes decoded. */
int64_t jstr_chars(const char *v, const char *ve);

/* A value of the body: [v, ve), v == NULL when absent. */
struct span {
    const char *v, *ve;
};

/* The members of the top-level object that the estimate reads. */
struct body {
    struct span model, stream, stream_options, messages, prompt, input, max_completion_tokens,
        max_tokens, n, seconds, size;
};

/* The whole of body[0..len) is one JSON value, exactly as jansson's
 * json_loadb(JSON_DECODE_ANY) accepts it (white space around it allowed). With
 * `b`, the members of a top-level object that the estimate reads are noted
 * there (a repeated key: the last one counts, as in jansson). */
bool json_valid(const char *body, size_t len, struct body *b);

#endif
