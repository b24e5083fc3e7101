/* Tests of the small writers on every request's path: integers and JSON strings. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "tollgate/buf.h"
#include "tollgate/common.h"
#include "tollgate/jsonw.h"

static void check_int(long long v)
{
    char buf[24], want[32];
    size_t n;
    const char *p = tg_fmt_int(buf, v, &n);
    int wn = snprintf(want, sizeof(want), "%lld", v);
    if ((size_t)wn != n || memcmp(p, want, n) != 0)
        fail_msg("tg_fmt_int(%s) gave %.*s", want, (int)n, p);
}

static void test_fmt_int_matches_printf(void **state)
{
    (void)state;
    static const long long edges[] = {0,         1,          9,         10,        11,
                                      99,        100,        101,       999,       1000,
                                      -1,        -9,         -10,       -99,       -100,
                                      LLONG_MAX, LLONG_MIN,  LLONG_MIN + 1,        4294967296LL,
                                      1000000,   999999999999999999LL};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        check_int(edges[i]);
    long long v = 1;
    for (int i = 0; i < 19; i++) { /* every length, and its neighbours */
        check_int(v);
        check_int(v - 1);
        check_int(v + 1);
        check_int(-v);
        if (i < 18) v *= 10;
    }
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        check_int((long long)x);
        check_int((long long)(x >> (x % 64)));
    }
}

static void check_str(const char *in, size_t n, const char *want)
{
    char out[TG_JSONW_STR_MAX(64)];
    assert_true(n <= 64);
    char *end = tg_jsonw_str(out, in, n);
    size_t len = (size_t)(end - out);
    if (len != strlen(want) || memcmp(out, want, len) != 0)
        fail_msg("tg_jsonw_str gave %.*s, want %s", (int)len, out, want);
}

static void test_jsonw_str_escapes(void **state)
{
    (void)state;
    check_str("", 0, "\"\"");
    check_str("plain text", 10, "\"plain text\"");
    check_str("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    check_str("\"", 1, "\"\\\"\"");
    check_str("x\ny\t\x01", 5, "\"x\\u000ay\\u0009\\u0001\"");
    check_str("caf\xc3\xa9!", 6, "\"caf\xc3\xa9!\"");
    check_str("a\xc3", 2, "\"a\xEF\xBF\xBD\"");             /* cut sequence */
    check_str("\xff" "ab", 3, "\"\xEF\xBF\xBD" "ab\"");      /* invalid byte, then a run */
    check_str("\xed\xa0\x80z", 4, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz\""); /* surrogate */
    check_str("ab\0cd", 5, "\"ab\\u0000cd\"");
    check_str("0123456789abcdef", 16, "\"0123456789abcdef\""); /* whole words */
    check_str("01234567\"9abcdef\\", 17, "\"01234567\\\"9abcdef\\\\\"");
    check_str("0123456\x1f" "89ab", 12, "\"0123456\\u001f89ab\"");
    check_str("0123456\x7f" "89ab", 12, "\"0123456\x7f" "89ab\"");
    check_str("012345678901234\xc3\xa9", 17, "\"012345678901234\xc3\xa9\"");
}

/* Strings long enough for the eight-byte path, with every kind of byte at
 * every position: the result is the concatenation of the results for pieces
 * shorter than eight bytes (which go byte by byte), cut before ASCII bytes
 * (where no UTF-8 sequence can be cut). */
static void test_jsonw_str_words_agree_with_bytes(void **state)
{
    (void)state;
    static const unsigned char kinds[] = {'a', 'Z', ' ', '~', 0x7f, '"', '\\', 0, 0x1f, '\n',
                                          0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0xff, 0x80};
    uint64_t x = 1234567;
    for (int round = 0; round < 20000; round++) {
        unsigned char in[48];
        size_t n = 8 + (size_t)(round % 40);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            in[i] = (x % 4) ? (unsigned char)('a' + x % 26) : kinds[(x >> 8) % sizeof(kinds)];
        }
        char whole[TG_JSONW_STR_MAX(48)], parts[TG_JSONW_STR_MAX(48)], piece[TG_JSONW_STR_MAX(8)];
        size_t wlen = (size_t)(tg_jsonw_str(whole, (const char *)in, n) - whole);
        size_t plen = 0, start = 0;
        bool cut = true;
        parts[plen++] = '"';
        for (size_t i = 1; i <= n && cut; i++) {
            if (i == n || (in[i] < 0x80 && (i - start == 7 || (x >> (i % 64)) & 1))) {
                size_t k = (size_t)(tg_jsonw_str(piece, (const char *)in + start, i - start) - piece);
                memcpy(parts + plen, piece + 1, k - 2); /* without its quotes */
                plen += k - 2;
                start = i;
            } else if (i - start == 7) {
                cut = false; /* seven bytes and no place to cut: another round */
            }
        }
        parts[plen++] = '"';
        if (!cut) continue;
        if (wlen != plen || memcmp(whole, parts, wlen) != 0)
            fail_msg("round %d: words and bytes disagree on %zu bytes", round, n);
    }
}

/* Growing doubles from the first size until the need fits; a failure changes nothing. */
static void test_grow_and_buf(void **state)
{
    (void)state;
    int *a = NULL;
    size_t cap = 0;
    assert_true(tg_grow(&a, &cap, 1, sizeof(*a), 16));
    assert_int_equal(cap, 16);
    a[15] = 7;
    assert_true(tg_grow(&a, &cap, 16, sizeof(*a), 16)); /* already fits */
    assert_int_equal(cap, 16);
    assert_true(tg_grow(&a, &cap, 100, sizeof(*a), 16));
    assert_int_equal(cap, 128);
    assert_int_equal(a[15], 7);
    int *keep = a;
    assert_false(tg_grow(&a, &cap, SIZE_MAX / 2, sizeof(*a), 16)); /* would overflow */
    assert_ptr_equal(a, keep);
    assert_int_equal(cap, 128);
    free(a);

    struct tg_buf b = {0};
    for (int i = 0; i < 1000; i++)
        assert_true(tg_buf_append(&b, "abc", 3, 64));
    assert_int_equal(b.len, 3000);
    assert_int_equal(b.cap, 4096);
    assert_memory_equal(b.p + 2997, "abc", 3);
    assert_false(tg_buf_reserve(&b, SIZE_MAX - 10, 64));
    assert_int_equal(b.len, 3000);
    tg_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.cap, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_int_matches_printf),
        cmocka_unit_test(test_grow_and_buf),
        cmocka_unit_test(test_jsonw_str_escapes),
        cmocka_unit_test(test_jsonw_str_words_agree_with_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
