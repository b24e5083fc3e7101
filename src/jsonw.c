/* Writing JSON text into buffers the caller sized: one string escaper for every JSON the gateway
 * writes. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "tollgate/jsonw.h"

static const char hexdig[] = "0123456789abcdef";

static char *put_lit(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}
#define PUT(p, lit) ((p) = put_lit((p), (lit), sizeof(lit) - 1))

/* Length of the well-formed UTF-8 sequence at s (Unicode table 3-7), or 0;
 * *bad gets how many bytes form the maximal invalid subpart to replace. */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c == 0xE0)
        need = 2, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC)
        need = 2;
    else if (c == 0xED)
        need = 2, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF)
        need = 2;
    else if (c == 0xF0)
        need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        need = 3;
    else if (c == 0xF4)
        need = 3, hi = 0x8F;
    else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

/* True if any of the eight bytes of x needs more than a copy: a control
 * byte, '"', '\\', or a byte of a multi-byte sequence (to be checked). */
static bool word_needs_care(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    uint64_t ctrl = (x - ones * 0x20) & ~x;                /* high bit: some byte < 0x20 */
    uint64_t zq = (q - ones) & ~q, zb = (b - ones) & ~b; /* high bit: byte == '"', '\\' */
    return ((ctrl | zq | zb | x) & high) != 0; /* x: a byte >= 0x80 */
}

char *tg_jsonw_str(char *p, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    *p++ = '"';
    size_t i = 0;
    for (uint64_t x; i + 8 <= n; i += 8) { /* plain ASCII, eight bytes at a time */
        memcpy(&x, s + i, 8);
        if (word_needs_care(x)) break;
        memcpy(p, &x, 8);
        p += 8;
    }
    while (i < n) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') { /* a run of plain bytes at once */
            size_t j = i + 1;
            while (j < n && s[j] >= 0x20 && s[j] < 0x80 && s[j] != '"' && s[j] != '\\')
                j++;
            p = put_lit(p, (const char *)s + i, j - i);
            i = j;
        } else if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
            i++;
        } else if (c < 0x20) {
            PUT(p, "\\u00");
            *p++ = hexdig[c >> 4];
            *p++ = hexdig[c & 15];
            i++;
        } else {
            size_t bad;
            size_t k = utf8_seq(s + i, n - i, &bad);
            if (k) {
                p = put_lit(p, (const char *)s + i, k);
                i += k;
            } else {
                PUT(p, "\xEF\xBF\xBD");
                i += bad;
            }
        }
    }
    *p++ = '"';
    return p;
}
