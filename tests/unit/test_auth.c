/* Unit tests of src/auth.c: key digests, the key table and Bearer lookup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "tollgate/auth.h"

static void hash_hex(const char *key, char out[72])
{
    uint8_t d[32];
    tg_auth_hash(key, strlen(key), d);
    tg_auth_format(d, out);
}

static void test_hash_known_vectors(void **state)
{
    char hex[72];
    hash_hex("", hex);
    assert_string_equal(hex,
                        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hash_hex("abc", hex);
    assert_string_equal(hex,
                        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hash_hex("test", hex);
    assert_string_equal(hex,
                        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    hash_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", hex);
    assert_string_equal(hex,
                        "sha256:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_parse_and_format(void **state)
{
    uint8_t d[32], e[32];
    char hex[72];
    assert_int_equal(
        tg_auth_parse("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", d),
        0);
    tg_auth_hash("abc", 3, e);
    assert_memory_equal(d, e, 32);
    tg_auth_format(d, hex);
    assert_int_equal(strlen(hex), 71);
    assert_int_equal(tg_auth_parse(hex, e), 0);
    assert_memory_equal(d, e, 32);

    /* 63 digits, 65 digits, a non-hex digit, no prefix, wrong prefix: all refused, out untouched */
    memset(e, 0x5a, sizeof(e));
    const char *bad[] = {
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0",
        "sha256:ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha256:",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(tg_auth_parse(bad[i], e), -1);
        for (size_t j = 0; j < 32; j++)
            assert_int_equal(e[j], 0x5a);
    }
}

static void test_insert_grows_and_refuses_duplicates(void **state)
{
    struct tg_config cfg = {0};
    struct tg_tenant tenants[2] = {{.name = "a"}, {.name = "b", .index = 1}};
    char key[32];
    uint8_t d[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "sk-%d", i);
        tg_auth_hash(key, strlen(key), d);
        assert_int_equal(tg_auth_insert(&cfg, d, &tenants[i % 2], i % 3 == 0, TG_PRIO_INTERACTIVE), 0);
        assert_true(cfg.nkeys * 2 <= cfg.keys_cap); /* load factor at most 0.5 */
    }
    assert_int_equal(cfg.nkeys, 1000);
    assert_int_equal(cfg.nplain_keys, 334);
    assert_int_equal(cfg.keys_cap & (cfg.keys_cap - 1), 0);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "sk-%d", i);
        tg_auth_hash(key, strlen(key), d);
        const struct tg_key *k = tg_auth_find(&cfg, d);
        assert_non_null(k);
        assert_ptr_equal(k->tenant, &tenants[i % 2]);
        assert_int_equal(k->was_plain, i % 3 == 0);
        assert_int_equal(tg_auth_insert(&cfg, d, &tenants[1], false, TG_PRIO_INTERACTIVE), -1);
    }
    assert_int_equal(cfg.nkeys, 1000);
    tg_auth_hash("sk-unknown", 10, d);
    assert_null(tg_auth_find(&cfg, d));
    free(cfg.keys);
}

static const char lookup_yaml[] =
    "tenants:\n"
    "  - name: acme\n"
    "    keys: [\"sk-acme-plain\", "
    "\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\n"
    "  - name: globex\n"
    "    keys: [\"sk-globex\"]\n";

static const struct tg_tenant *lookup(const struct tg_config *cfg, const char *header)
{
    return tg_auth_lookup(cfg, header, strlen(header), NULL);
}

static void test_lookup(void **state)
{
    char err[TG_ERR_LEN];
    struct tg_config *cfg = tg_config_load_string("t.yaml", lookup_yaml, strlen(lookup_yaml), err);
    assert_non_null(cfg);
    assert_int_equal(cfg->nkeys, 3);
    assert_int_equal(cfg->nplain_keys, 2);

    uint8_t digest[32], expect[32];
    const struct tg_tenant *t = tg_auth_lookup(cfg, "Bearer sk-acme-plain", 20, digest);
    assert_non_null(t);
    assert_string_equal(t->name, "acme");
    tg_auth_hash("sk-acme-plain", 13, expect);
    assert_memory_equal(digest, expect, 32);

    /* the key "test", configured only as its digest */
    t = lookup(cfg, "Bearer test");
    assert_non_null(t);
    assert_string_equal(t->name, "acme");
    t = lookup(cfg, "Bearer sk-globex");
    assert_non_null(t);
    assert_string_equal(t->name, "globex");

    const char *same[] = {"bearer sk-globex",     "BEARER sk-globex",  "Bearer    sk-globex",
                          "  Bearer sk-globex  ", "Bearer\tsk-globex", "bEaReR \t sk-globex\t"};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        t = lookup(cfg, same[i]);
        assert_non_null(t);
        assert_string_equal(t->name, "globex");
    }
    const char *refused[] = {
        "",
        "Bearer",
        "Bearer ",
        "Bearersk-globex",
        "Basic sk-globex",
        "sk-globex",
        "Bearer sk-globex extra",
        "Bearer sk-globe",
        "Bearer sk-globex2",
        "Bearer sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        memset(digest, 0x5a, sizeof(digest));
        assert_null(tg_auth_lookup(cfg, refused[i], strlen(refused[i]), digest));
        assert_int_equal(digest[0], 0x5a);
    }
    assert_null(tg_auth_lookup(cfg, NULL, 0, NULL));
    /* the length bounds the header: a longer buffer is not read past it */
    t = tg_auth_lookup(cfg, "Bearer sk-globexXYZ", 16, NULL);
    assert_non_null(t);
    assert_string_equal(t->name, "globex");
    tg_config_unref(cfg);
}

static void test_lookup_without_keys(void **state)
{
    char err[TG_ERR_LEN];
    const char yaml[] = "tenants: [{name: a}]\n";
    struct tg_config *cfg = tg_config_load_string("t.yaml", yaml, strlen(yaml), err);
    assert_non_null(cfg);
    assert_null(lookup(cfg, "Bearer anything"));
    tg_config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_known_vectors),
        cmocka_unit_test(test_parse_and_format),
        cmocka_unit_test(test_insert_grows_and_refuses_duplicates),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_lookup_without_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
