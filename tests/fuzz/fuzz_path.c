/* Fuzzes path normalisation and the query check against plain references (decode, split, stack). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/http_path.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const uint8_t *in, size_t len)
{
    fprintf(stderr, "fuzz_path: %s for [", what);
    for (size_t i = 0; i < len; i++)
        fprintf(stderr, in[i] >= 0x20 && in[i] < 0x7f ? "%c" : "\\x%02x", in[i]);
    fprintf(stderr, "]\n");
    abort();
}

/* ---- the reference, written from RFC 3986 without the code's tables ---- */

static bool ref_unreserved(unsigned c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* pchar without pct-encoded: unreserved, sub-delims, ':', '@' */
static bool ref_pchar(unsigned c)
{
    return ref_unreserved(c) || (c != 0 && strchr("!$&'()*+,;=:@", (int)c) != NULL);
}

static int ref_hex(unsigned c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* The normal form of in[0..len) into ref (room for len bytes), or -1:
 * decode the whole path first, then split it into segments and resolve them
 * with a stack; the last segment says whether a '/' ends the result. */
static long reference(const uint8_t *in, size_t len, char *ref)
{
    static const char up[] = "0123456789ABCDEF";
    if (len == 0 || in[0] != '/') return -1;
    char *d = malloc(len);
    size_t dl = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned c = in[i];
        if (c == '/' || ref_pchar(c)) {
            d[dl++] = (char)c;
            continue;
        }
        if (c != '%' || i + 2 >= len || ref_hex(in[i + 1]) < 0 || ref_hex(in[i + 2]) < 0) {
            free(d);
            return -1;
        }
        unsigned v = (unsigned)(ref_hex(in[i + 1]) * 16 + ref_hex(in[i + 2]));
        if (v < 0x20 || v == 0x7f || v == '/' || v == '\\') {
            free(d);
            return -1;
        }
        if (ref_unreserved(v)) {
            d[dl++] = (char)v;
        } else {
            d[dl++] = '%';
            d[dl++] = up[v >> 4];
            d[dl++] = up[v & 15];
        }
        i += 2;
    }
    /* d is "/" seg "/" seg ...: a stack of the segments that stay */
    size_t *off = malloc(dl * sizeof *off), *sl = malloc(dl * sizeof *sl), ns = 0;
    bool trailing = false;
    for (size_t k = 1;; k++) {
        size_t s = k;
        while (k < dl && d[k] != '/')
            k++;
        size_t n = k - s;
        if (n == 0 || (n == 1 && d[s] == '.')) {
            trailing = true;
        } else if (n == 2 && d[s] == '.' && d[s + 1] == '.') {
            if (ns) ns--;
            trailing = true;
        } else {
            off[ns] = s;
            sl[ns++] = n;
            trailing = false;
        }
        if (k >= dl) break;
    }
    size_t w = 0;
    ref[w++] = '/';
    for (size_t k = 0; k < ns; k++) {
        memcpy(ref + w, d + off[k], sl[k]);
        w += sl[k];
        if (k + 1 < ns || trailing) ref[w++] = '/';
    }
    free(off);
    free(sl);
    free(d);
    return (long)w;
}

static bool ref_query_valid(const uint8_t *q, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (q[i] == '/' || q[i] == '?' || ref_pchar(q[i])) continue;
        if (q[i] != '%' || i + 2 >= len || ref_hex(q[i + 1]) < 0 || ref_hex(q[i + 2]) < 0)
            return false;
        i += 2;
    }
    return true;
}

/* ---- properties of a normal form, checked on their own ---- */

static void check_normal(const char *p, size_t n, const uint8_t *in, size_t len)
{
    if (n == 0 || p[0] != '/') fail("result does not start with '/'", in, len);
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)p[i];
        if (c == '/' || ref_pchar(c)) continue;
        if (c != '%' || i + 2 >= n) fail("result holds a byte outside pchar", in, len);
        unsigned char h = (unsigned char)p[i + 1], l = (unsigned char)p[i + 2];
        if (ref_hex(h) < 0 || ref_hex(l) < 0 || (h >= 'a' && h <= 'f') || (l >= 'a' && l <= 'f'))
            fail("result holds a malformed or lower-case encoding", in, len);
        unsigned v = (unsigned)(ref_hex(h) * 16 + ref_hex(l));
        if (ref_unreserved(v) || v < 0x20 || v == 0x7f || v == '/' || v == '\\')
            fail("result holds an encoding it should have decoded or refused", in, len);
        i += 2;
    }
    for (size_t s = 1; s <= n; s++) { /* s: start of a segment */
        size_t e = s;
        while (e < n && p[e] != '/')
            e++;
        size_t sn = e - s;
        if (sn == 0 && e < n) fail("result has an empty segment", in, len);
        if ((sn == 1 && p[s] == '.') || (sn == 2 && p[s] == '.' && p[s + 1] == '.'))
            fail("result has a dot segment", in, len);
        s = e;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t room = size ? size : 1;
    char *out = malloc(room), *ref = malloc(room), *again = malloc(room);
    memset(out, 0xA5, room);
    const char *why = NULL;
    ssize_t r = tg_http_path_normalize((const char *)data, size, out, &why);
    long rl = reference(data, size, ref);

    if ((r < 0) != (rl < 0))
        fail(r < 0 ? "refused, reference accepts" : "accepted, reference refuses", data, size);
    if (r < 0) {
        if (!why || !why[0]) fail("refused without a reason", data, size);
    } else {
        if ((size_t)r > size) fail("result longer than the input", data, size);
        const char *res = r == 0 ? (const char *)data : out;
        size_t n = r == 0 ? size : (size_t)r;
        if (r > 0 && n == size && memcmp(out, data, size) == 0)
            fail("reported changed, but is the input", data, size);
        if ((long)n != rl || memcmp(res, ref, n) != 0)
            fail("differs from the reference", data, size);
        check_normal(res, n, data, size);
        const char *why2 = NULL;
        if (tg_http_path_normalize(res, n, again, &why2) != 0) fail("not idempotent", data, size);
    }
    if (r <= 0)
        for (size_t i = 0; i < size; i++)
            if ((unsigned char)out[i] != 0xA5) fail("out written on 0 or -1", data, size);

    /* in place: the same answer; the input left alone unless rewritten */
    char *buf = malloc(room);
    memcpy(buf, data, size);
    const char *why3 = NULL;
    ssize_t ri = tg_http_path_normalize(buf, size, buf, &why3);
    if (ri != r) fail("in place gives another result", data, size);
    if (r > 0 && memcmp(buf, out, (size_t)r) != 0) fail("in place gives another path", data, size);
    if (r <= 0 && memcmp(buf, data, size) != 0)
        fail("in place changed a kept or refused path", data, size);
    if (r < 0 && why3 != why) fail("in place gives another reason", data, size);

    if (tg_http_query_valid((const char *)data, size) != ref_query_valid(data, size))
        fail("query check differs from the reference", data, size);

    free(buf);
    free(again);
    free(ref);
    free(out);
    return 0;
}
