/* Request paths in normal form (RFC 3986): one checking pass, a rewrite only when needed. */
#include <stdint.h>
#include <string.h>
#include "tollgate/http_path.h"

/* How it works. A first pass reads every byte once, with one table lookup
 * each (eight at a time where it can, see chunk_ok): it refuses what the rules
 * refuse and notes where the first segment starts that the normal form would
 * change (a '%' to decode or to put in upper case, an empty segment before a
 * '/', a "." or ".." segment). When there is none, which is what a gateway
 * sees nearly always, the answer is 0 and nothing is written. Otherwise the
 * path from that segment on is rewritten: the bytes before it are already in
 * normal form and are copied as they are (not at all in place), and the rest
 * is decoded segment by segment into `out`, where a "." segment is dropped
 * and a ".." segment drops itself and the segment before it. The writing
 * position never passes the reading position, which is what makes
 * normalising in place safe.
 *
 * What this does not decide: ';' is a sub-delim, so "/a/..;/b" is the
 * segments "a", "..;", "b" here, as RFC 3986 reads it; a server that strips
 * path parameters before resolving dot segments (Tomcat and some Java
 * frameworks do) reads it as "/b". "%25" stays encoded, so a server that
 * decodes twice may find a "%2e" in "/a/%252e". The normal form keeps the
 * case of letters and a trailing '/', which servers may or may not ignore. */

/* Byte classes, one table for both checks. */
enum {
    C_PLAIN = 1,  /* a pchar other than '%': unreserved, sub-delims, ':', '@' */
    C_UNRES = 2,  /* unreserved: decoded when it arrives percent-encoded */
    C_QUERY = 4,  /* allowed raw in a query: C_PLAIN, '/', '?' */
    C_HEX = 8,    /* a hex digit */
    C_LOWER = 16, /* a lower-case hex digit: 'a'-'f' */
    C_PATH = 32   /* C_PLAIN or '/': what eight bytes at a time may hold */
};

#define PU (C_PLAIN | C_UNRES | C_QUERY | C_PATH)
#define PS (C_PLAIN | C_QUERY | C_PATH)
static const unsigned char cls[256] = {
    ['a' ... 'f'] = PU | C_HEX | C_LOWER,
    ['g' ... 'z'] = PU,
    ['A' ... 'F'] = PU | C_HEX,
    ['G' ... 'Z'] = PU,
    ['0' ... '9'] = PU | C_HEX,
    ['-'] = PU,
    ['.'] = PU,
    ['_'] = PU,
    ['~'] = PU,
    ['!'] = PS,
    ['$'] = PS,
    ['&'] = PS,
    ['\''] = PS,
    ['('] = PS,
    [')'] = PS,
    ['*'] = PS,
    ['+'] = PS,
    [','] = PS,
    [';'] = PS,
    ['='] = PS,
    [':'] = PS,
    ['@'] = PS,
    ['/'] = C_QUERY | C_PATH,
    ['?'] = C_QUERY,
};

static const char r_start[] = "the request path does not start with '/'";
static const char r_byte[] =
    "the request path holds a character that is not allowed in it unencoded";
static const char r_pct[] = "the request path holds a '%' that is not followed by two hex digits";
static const char r_slash[] = "the request path holds an encoded '/' or '\\'";
static const char r_ctl[] = "the request path holds an encoded control character";

/* The value of a hex digit (one the table marks C_HEX). */
static inline unsigned hexval(unsigned char c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/* The hex digit in upper case. */
static inline char hexup(unsigned char c)
{
    return (char)((cls[c] & C_LOWER) ? c - ('a' - 'A') : c);
}

/* True when the segment that starts at p[s] (right after a '/') is one the
 * normal form drops: empty with a '/' after it, "." or "..". */
static inline bool dropped_segment(const unsigned char *p, size_t s, size_t len)
{
    if (s == len) return false; /* a trailing '/' */
    if (p[s] == '/') return true;
    if (p[s] != '.') return false;
    if (s + 1 == len || p[s + 1] == '/') return true;
    return p[s + 1] == '.' && (s + 2 == len || p[s + 2] == '/');
}

/* Eight bytes at a time: x holds p[0..8) and y the byte after each, as
 * loaded from p + 1, or x >> 8 (a zero byte after the last) when p[7] ends
 * the path. True when all eight are plain or '/' and no '/' among them is
 * followed by '.' or '/': nothing in them refuses the path or changes it.
 * (A segment like ".well-known" fails this too and is then judged byte by
 * byte.) */
#define ONES 0x0101010101010101ULL
#define LOW7 0x7F7F7F7F7F7F7F7FULL
static inline bool chunk_ok(const unsigned char *p, uint64_t x, uint64_t y)
{
    if (!(cls[p[0]] & cls[p[1]] & cls[p[2]] & cls[p[3]] & cls[p[4]] & cls[p[5]] & cls[p[6]] &
          cls[p[7]] & C_PATH))
        return false;
    uint64_t a = x ^ (ONES * '/');                   /* zero where x is '/' */
    uint64_t b = (y | ONES) ^ (ONES * '/');          /* zero where y is '.' or '/' */
    uint64_t az = ~(((a & LOW7) + LOW7) | a | LOW7); /* 0x80 exactly at the zero bytes */
    uint64_t bz = ~(((b & LOW7) + LOW7) | b | LOW7);
    return (az & bz) == 0;
}

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* The bytes after x's as a word: x's bytes moved down one place in memory order. */
static inline uint64_t next_bytes(uint64_t x)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return x >> 8;
#else
    return x << 8;
#endif
}

/* Rewrites p[from..len) into out[from..), `out[0..from)` holding the normal
 * form of the path before it, ending with '/'. The path was checked. Returns
 * the length of the normal form. */
static size_t rewrite(const unsigned char *p, size_t len, size_t from, char *out)
{
    size_t r = from, w = from;
    /* At the top of the loop p[r] starts a segment and out[0..w) ends with '/'. */
    while (r < len) {
        if (p[r] == '/') { /* an empty segment: runs of '/' collapse */
            r++;
            continue;
        }
        size_t s = w;
        while (r < len && p[r] != '/') {
            if (p[r] != '%') {
                out[w++] = (char)p[r++];
                continue;
            }
            unsigned char h = p[r + 1], l = p[r + 2]; /* read before out[w] is written */
            unsigned char v = (unsigned char)(hexval(h) << 4 | hexval(l));
            r += 3;
            if (cls[v] & C_UNRES) {
                out[w++] = (char)v;
            } else {
                out[w] = '%';
                out[w + 1] = hexup(h);
                out[w + 2] = hexup(l);
                w += 3;
            }
        }
        size_t n = w - s;
        if (n == 1 && out[s] == '.') {
            w = s;
        } else if (n == 2 && out[s] == '.' && out[s + 1] == '.') {
            w = s;
            if (w > 1) { /* back over the previous segment, to just after its '/' */
                w--;
                while (out[w - 1] != '/')
                    w--;
            }
        } else if (r < len) {
            out[w++] = '/';
        }
        if (r < len) r++; /* the '/' that ended the segment */
    }
    return w;
}

ssize_t tg_http_path_normalize(const char *in, size_t len, char *out, const char **why)
{
    const unsigned char *p = (const unsigned char *)in;
    if (len == 0 || p[0] != '/') {
        *why = r_start;
        return -1;
    }
    size_t from = 0; /* 0: nothing to change yet; else where the rewrite starts */
    size_t i = 0;
    while (i < len) {
        while (len - i >= 9 && chunk_ok(p + i, load8(p + i), load8(p + i + 1)))
            i += 8;
        if (len - i <= 8 && len >= 8) { /* the last eight, overlapping what was judged */
            uint64_t x = load8(p + len - 8);
            if (chunk_ok(p + len - 8, x, next_bytes(x))) break;
        }
        /* byte by byte up to the next eight */
        size_t stop = len - i > 8 ? i + 8 : len;
        while (i < stop) {
            unsigned char c = p[i];
            if (cls[c] & C_PLAIN) {
                i++;
            } else if (c == '/') {
                i++;
                if (!from && dropped_segment(p, i, len)) from = i;
            } else if (c == '%') {
                if (len - i < 3 || !(cls[p[i + 1]] & cls[p[i + 2]] & C_HEX)) {
                    *why = r_pct;
                    return -1;
                }
                unsigned v = hexval(p[i + 1]) << 4 | hexval(p[i + 2]);
                if (v < 0x20 || v == 0x7f) {
                    *why = r_ctl;
                    return -1;
                }
                if (v == '/' || v == '\\') {
                    *why = r_slash;
                    return -1;
                }
                if (!from && ((cls[v] & C_UNRES) || ((cls[p[i + 1]] | cls[p[i + 2]]) & C_LOWER))) {
                    from = i; /* the rewrite starts with this segment */
                    while (p[from - 1] != '/')
                        from--;
                }
                i += 3;
            } else {
                *why = r_byte;
                return -1;
            }
        }
    }
    if (!from) return 0;
    if (out != in) memcpy(out, in, from);
    return (ssize_t)rewrite(p, len, from, out);
}

bool tg_http_query_valid(const char *q, size_t len)
{
    const unsigned char *p = (const unsigned char *)q;
    for (size_t i = 0; i < len;) {
        if (cls[p[i]] & C_QUERY) {
            i++;
        } else if (p[i] == '%' && len - i >= 3 && (cls[p[i + 1]] & cls[p[i + 2]] & C_HEX)) {
            i += 3;
        } else {
            return false;
        }
    }
    return true;
}
