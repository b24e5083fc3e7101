/* Tests of the small writers on every request's path: integers and JSON strings. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
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
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_int_matches_printf),
        cmocka_unit_test(test_jsonw_str_escapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
