/* Tests of src/ledger/: prices in micro-credits, amounts as decimal strings, idempotency keys,
 * the event JSON, and the local store's balances (holds, settles, operators' changes with their
 * Idempotency-Key, the replay at start, torn lines, tg_ledger_verify_file). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include "tollgate/ledger.h"

#define U TG_MICRO           /* one unit of cost, in micro-units */
#define C TG_CREDIT_MICRO    /* one credit, in micro-credits */
#define PICO 1000000000000LL /* one credit per unit, in pico-credits */
#define HASH_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define HASH_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define HASH_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define HOLD_1 "00000000000000000000000000000001"
#define HOLD_2 "00000000000000000000000000000002"
#define HOLD_9 "00000000000000000000000000000009"

/* ---- prices ---- */

static struct tg_cost cost_of(int64_t requests_u, int64_t tokens_u, int64_t video_u)
{
    return (struct tg_cost){.u = {[TG_UNIT_REQUESTS] = requests_u,
                                  [TG_UNIT_TOKENS] = tokens_u,
                                  [TG_UNIT_VIDEO_SECONDS] = video_u}};
}

static void test_price_first_match_wins(void **state)
{
    char *mini[] = {"gpt-4o-mini*"};
    char *four[] = {"gpt-4o*", "o1"};
    struct tg_price prices[] = {
        /* tokens: gpt-4o-mini* at 0.000001, other gpt-4o* and o1 at 0.000002, else 0.000003 */
        {.unit = TG_UNIT_TOKENS, .pico = 1000000, .models = mini, .nmodels = 1},
        {.unit = TG_UNIT_TOKENS, .pico = 2000000, .models = four, .nmodels = 2},
        {.unit = TG_UNIT_TOKENS, .pico = 3000000},
        /* never reached: the entry above matches every model */
        {.unit = TG_UNIT_TOKENS, .pico = 99 * PICO},
        /* video seconds: 0.5 credits each, for every model */
        {.unit = TG_UNIT_VIDEO_SECONDS, .pico = PICO / 2},
        /* requests have no entry: free */
    };
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.credits.prices = prices;
    cfg.credits.nprices = sizeof(prices) / sizeof(prices[0]);

    struct tg_cost c = cost_of(1 * U, 1000 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "gpt-4o-mini-2024"), 1000);
    assert_int_equal(tg_ledger_price(&cfg, &c, "gpt-4o"), 2000);
    assert_int_equal(tg_ledger_price(&cfg, &c, "gpt-4o-2024-08-06"), 2000);
    assert_int_equal(tg_ledger_price(&cfg, &c, "o1"), 2000); /* the second pattern of the list */
    assert_int_equal(tg_ledger_price(&cfg, &c, "o1-preview"), 3000); /* a glob, not a prefix */
    assert_int_equal(tg_ledger_price(&cfg, &c, "claude"), 3000);
    assert_int_equal(tg_ledger_price(&cfg, &c, ""), 3000);
    assert_int_equal(tg_ledger_price(&cfg, &c, NULL), 3000);

    /* the units add up: 1000 tokens of gpt-4o + 4 video seconds */
    c = cost_of(1 * U, 1000 * U, 4 * U);
    assert_int_equal(tg_ledger_price(&cfg, &c, "gpt-4o"), 2000 + 2 * C);
    /* only requests: no entry, free */
    c = cost_of(5 * U, 0, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "gpt-4o"), 0);

    /* no prices at all: everything is free */
    struct tg_config none;
    memset(&none, 0, sizeof(none));
    c = cost_of(1 * U, 1000 * U, 4 * U);
    assert_int_equal(tg_ledger_price(&none, &c, "gpt-4o"), 0);
}

static void test_price_rounds_up_and_clamps(void **state)
{
    struct tg_price prices[] = {
        {.unit = TG_UNIT_TOKENS, .pico = 2000000},  /* 0.000002 */
        {.unit = TG_UNIT_REQUESTS, .pico = 100000}, /* 0.0000001 */
    };
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.credits.prices = prices;
    cfg.credits.nprices = 2;

    struct tg_cost c = cost_of(0, 103 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 206); /* exact */
    c = cost_of(1 * U, 0, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 1); /* 0.1 micro-credits: rounded up */
    c = cost_of(10 * U, 0, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 1); /* exactly 1 */
    c = cost_of(11 * U, 0, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 2); /* 1.1 */
    /* the sum is rounded once, not each unit: 103 tokens + 1 request = 206.1 -> 207 */
    c = cost_of(1 * U, 103 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 207);
    /* a fraction of a token (micro-units): 1 micro-token at 0.000002 = 2e-6 micro -> 1 */
    c = cost_of(0, 1, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 1);
    c = cost_of(0, 0, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 0);
    c = cost_of(-5 * U, -5 * U, 0); /* negative costs are not charged */
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 0);

    /* a price of 0 costs nothing */
    prices[0].pico = 0;
    c = cost_of(0, 1000000 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), 0);

    /* 1e12 tokens at the highest price (1000000 credits per unit): 1e18 credits, clamped at
     * 9e9 credits */
    prices[0].pico = 1000000 * PICO;
    c = cost_of(0, 1000000000000LL * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), TG_AMOUNT_MAX_MICRO);
    c = cost_of(INT64_MAX, INT64_MAX, INT64_MAX);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), TG_AMOUNT_MAX_MICRO);
    /* at and just under the clamp: 9000 tokens at 1000000 credits = 9e9 credits = the maximum */
    c = cost_of(0, 9000 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), TG_AMOUNT_MAX_MICRO);
    c = cost_of(0, 9001 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), TG_AMOUNT_MAX_MICRO);
    c = cost_of(0, 8999 * U, 0);
    assert_int_equal(tg_ledger_price(&cfg, &c, "m"), TG_AMOUNT_MAX_MICRO - 1000000LL * C);
}

/* ---- amounts ---- */

static void assert_format(int64_t micro, const char *expected)
{
    char out[TG_AMOUNT_LEN];
    memset(out, 'x', sizeof(out));
    size_t n = tg_ledger_format_amount(micro, out);
    assert_string_equal(out, expected);
    assert_int_equal(n, strlen(expected));
}

static void test_format_amount(void **state)
{
    assert_format(0, "0.000000");
    assert_format(1, "0.000001");
    assert_format(-1, "-0.000001");
    assert_format(-17000, "-0.017000");
    assert_format(100500000, "100.500000");
    assert_format(999999, "0.999999");
    assert_format(1000000, "1.000000");
    assert_format(-3000000, "-3.000000");
    assert_format(TG_AMOUNT_MAX_MICRO, "9000000000.000000");
    assert_format(-TG_AMOUNT_MAX_MICRO, "-9000000000.000000");
    assert_format(INT64_MAX, "9223372036854.775807");
    assert_format(INT64_MIN, "-9223372036854.775808"); /* fits TG_AMOUNT_LEN */
}

static void assert_parses(const char *s, int64_t expected)
{
    int64_t v = 12345;
    const char *why = NULL;
    if (tg_ledger_parse_amount(s, strlen(s), &v, &why) != 0)
        fail_msg("\"%s\" rejected: %s", s, why ? why : "(no reason)");
    assert_int_equal(v, expected);
}

static void assert_rejected_n(const char *s, size_t n, const char *reason_part)
{
    int64_t v = 12345;
    const char *why = NULL;
    if (tg_ledger_parse_amount(s, n, &v, &why) == 0)
        fail_msg("\"%.*s\" parsed as %lld", (int)n, s, (long long)v);
    assert_non_null(why);
    if (reason_part && !strstr(why, reason_part))
        fail_msg("\"%.*s\": reason \"%s\" lacks \"%s\"", (int)n, s, why, reason_part);
}

static void assert_rejected(const char *s, const char *reason_part)
{
    assert_rejected_n(s, strlen(s), reason_part);
}

static void test_parse_amount(void **state)
{
    assert_parses("100.5", 100500000);
    assert_parses("-3", -3000000);
    assert_parses("+2", 2000000);
    assert_parses("0.000001", 1);
    assert_parses("-0.017", -17000);
    assert_parses("0", 0);
    assert_parses("-0", 0);
    assert_parses("007.10", 7100000);
    assert_parses("1.000000", 1000000);
    assert_parses("9000000000", TG_AMOUNT_MAX_MICRO);
    assert_parses("-9000000000.000000", -TG_AMOUNT_MAX_MICRO);
    /* the length counts, not a NUL: "12" of "123" */
    int64_t v = 0;
    const char *why = NULL;
    assert_int_equal(tg_ledger_parse_amount("123", 2, &v, &why), 0);
    assert_int_equal(v, 12000000);

    const char *shape = "must be a decimal string";
    assert_rejected("", shape);
    assert_rejected(".", shape);
    assert_rejected("1.", shape);
    assert_rejected("-", shape);
    assert_rejected("+", shape);
    assert_rejected("+-1", shape);
    assert_rejected("1e5", shape);
    assert_rejected("abc", shape);
    assert_rejected(" 1", shape);
    assert_rejected("1 ", shape);
    assert_rejected("1,5", shape);
    assert_rejected("1.2.3", shape);
    assert_rejected("0x10", shape);
    assert_rejected_n("1\0", 2, shape); /* a NUL inside the length */
    assert_rejected("1.0000001", "more than 6 decimals");
    assert_rejected("0.0000000", "more than 6 decimals");
    assert_rejected("9000000000.000001", "too large");
    assert_rejected("-9000000000.000001", "too large");
    assert_rejected("1000000000001", "too large");
    assert_rejected("9223372036854.775807", "too large");
    assert_rejected("99999999999999999999999999999999", "too large");
    assert_rejected("-99999999999999999999999999999999", "too large");
}

static void test_amount_round_trip(void **state)
{
    const int64_t values[] = {0,
                              1,
                              -1,
                              17000,
                              -17000,
                              100500000,
                              1234567891,
                              -987654321,
                              999999,
                              1000000,
                              -1000001,
                              TG_AMOUNT_MAX_MICRO,
                              -TG_AMOUNT_MAX_MICRO,
                              TG_AMOUNT_MAX_MICRO - 1};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char s[TG_AMOUNT_LEN];
        size_t n = tg_ledger_format_amount(values[i], s);
        int64_t back = values[i] + 1;
        const char *why = NULL;
        if (tg_ledger_parse_amount(s, n, &back, &why) != 0) fail_msg("%s: %s", s, why);
        assert_int_equal(back, values[i]);
    }
}

/* ---- idempotency keys ---- */

static void test_idem_valid(void **state)
{
    char key[TG_IDEM_KEY_MAX + 2];
    memset(key, 'k', sizeof(key));
    assert_false(tg_ledger_idem_valid(key, 0));
    assert_true(tg_ledger_idem_valid(key, 1));
    assert_true(tg_ledger_idem_valid(key, TG_IDEM_KEY_MAX));
    assert_int_equal(TG_IDEM_KEY_MAX, 128);
    assert_false(tg_ledger_idem_valid(key, TG_IDEM_KEY_MAX + 1));

    const char *ok = "AZaz09._:-";
    assert_true(tg_ledger_idem_valid(ok, strlen(ok)));
    const char *uuid = "3f2b8c1e-9d4a-4f6b-8e2a-1c7d5b9e0a3f";
    assert_true(tg_ledger_idem_valid(uuid, strlen(uuid)));
    const char *mixed = "topup:2026-01-01_acme.1";
    assert_true(tg_ledger_idem_valid(mixed, strlen(mixed)));
    /* every other byte is refused, alone and in the middle of a good key */
    for (int c = 0; c < 256; c++) {
        bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '_' || c == ':' || c == '-';
        char one[1] = {(char)c}, mid[3] = {'a', (char)c, 'b'};
        if (tg_ledger_idem_valid(one, 1) != allowed) fail_msg("byte 0x%02x alone", c);
        if (tg_ledger_idem_valid(mid, 3) != allowed) fail_msg("byte 0x%02x inside a key", c);
    }
    assert_false(tg_ledger_idem_valid("a b", 3));
    assert_false(tg_ledger_idem_valid("a/b", 3));
    assert_false(tg_ledger_idem_valid("caf\xc3\xa9", 5));
}

/* ---- the event JSON ---- */

static void test_event_json(void **state)
{
    char out[TG_LEDGER_EVENT_MAX];
    struct tg_ledger_event e = {.seq = 7,
                                .ts_ms = 1767225600123LL,
                                .delta = -17000,
                                .balance = 100500000,
                                .held = 17000,
                                .tenant = "acme",
                                .reason = TG_LEDGER_HOLD,
                                .idem = "",
                                .request_id = NULL,
                                .note = ""};
    const char *expected =
        "{\"seq\":7,\"ts\":1767225600123,\"tenant\":\"acme\",\"delta\":\"-0.017000\","
        "\"balance\":\"100.500000\",\"held\":\"0.017000\",\"reason\":\"hold\","
        "\"idempotency_key\":null,\"request_id\":null,\"note\":null}";
    size_t n = tg_ledger_event_json(&e, out, sizeof(out));
    assert_string_equal(out, expected);
    assert_int_equal(n, strlen(expected));

    /* every string set; the note has a quote, a newline and a backslash */
    e = (struct tg_ledger_event){.seq = 1,
                                 .ts_ms = 0,
                                 .delta = 250000000,
                                 .balance = 250000000,
                                 .held = 0,
                                 .tenant = "acme",
                                 .reason = TG_LEDGER_TOPUP,
                                 .idem = "k-1",
                                 .request_id = "0123456789abcdef0123456789abcdef",
                                 .note = "say \"hi\"\nbye\\"};
    expected = "{\"seq\":1,\"ts\":0,\"tenant\":\"acme\",\"delta\":\"250.000000\","
               "\"balance\":\"250.000000\",\"held\":\"0.000000\",\"reason\":\"topup\","
               "\"idempotency_key\":\"k-1\",\"request_id\":\"0123456789abcdef0123456789abcdef\","
               "\"note\":\"say \\\"hi\\\"\\u000abye\\\\\"}";
    n = tg_ledger_event_json(&e, out, sizeof(out));
    assert_string_equal(out, expected);
    assert_int_equal(n, strlen(expected));
    /* and a JSON reader gets the note back */
    json_error_t jerr;
    json_t *j = json_loadb(out, n, 0, &jerr);
    if (!j) fail_msg("not JSON: %s: %s", jerr.text, out);
    assert_string_equal(json_string_value(json_object_get(j, "note")), "say \"hi\"\nbye\\");
    assert_string_equal(json_string_value(json_object_get(j, "delta")), "250.000000");
    json_decref(j);

    /* a note longer than TG_NOTE_MAX is cut to it */
    char note[TG_NOTE_MAX + 50];
    memset(note, 'n', sizeof(note) - 1);
    note[sizeof(note) - 1] = '\0';
    e.note = note;
    n = tg_ledger_event_json(&e, out, sizeof(out));
    j = json_loadb(out, n, 0, &jerr);
    assert_non_null(j);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "note"))), TG_NOTE_MAX);
    json_decref(j);

    /* the worst case fits TG_LEDGER_EVENT_MAX: every string at its longest, all escaped */
    char tenant[129], idem[TG_IDEM_KEY_MAX + 1], rid[129], big[TG_NOTE_MAX + 1];
    memset(tenant, '\x01', 128);
    tenant[128] = '\0';
    memset(idem, '\x01', TG_IDEM_KEY_MAX);
    idem[TG_IDEM_KEY_MAX] = '\0';
    memset(rid, '\x01', 128);
    rid[128] = '\0';
    memset(big, '\x01', TG_NOTE_MAX);
    big[TG_NOTE_MAX] = '\0';
    e = (struct tg_ledger_event){.seq = INT64_MIN,
                                 .ts_ms = INT64_MIN,
                                 .delta = INT64_MIN,
                                 .balance = INT64_MIN,
                                 .held = INT64_MIN,
                                 .tenant = tenant,
                                 .reason = TG_LEDGER_EXPIRED,
                                 .idem = idem,
                                 .request_id = rid,
                                 .note = big};
    n = tg_ledger_event_json(&e, out, sizeof(out));
    assert_true(n > 0 && n < sizeof(out));
    assert_int_equal(strlen(out), n);

    /* too small a buffer: 0, nothing promised */
    assert_int_equal(tg_ledger_event_json(&e, out, TG_LEDGER_EVENT_MAX - 1), 0);
}

/* ---- the local store ---- */

struct tmp {
    char dir[64];
    char path[128];
};

static void tmp_make(struct tmp *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/tg_ledger_XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof(t->path), "%s/ledger.jsonl", t->dir);
}

static void tmp_remove(struct tmp *t)
{
    unlink(t->path);
    rmdir(t->dir);
}

static struct tg_ledger_store *must_open(const char *path)
{
    char err[TG_ERR_LEN] = "";
    struct tg_ledger_store *st = tg_ledger_store_open(path, err);
    if (!st) fail_msg("%s", err);
    return st;
}

static void assert_account(struct tg_ledger_store *st, const char *tenant, int64_t balance,
                           int64_t held, int64_t seq)
{
    int64_t b = -1, h = -1, s = -1;
    assert_true(tg_ledger_store_get(st, tenant, &b, &h, &s));
    assert_int_equal(b, balance);
    assert_int_equal(h, held);
    assert_int_equal(s, seq);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap + 1);
            assert_non_null(buf);
        }
        size_t n = fread(buf + *len, 1, cap - *len, f);
        if (n == 0) break;
        *len += n;
    }
    fclose(f);
    buf[*len] = '\0';
    return buf;
}

static void write_all(const char *path, const char *buf, size_t len, const char *mode)
{
    FILE *f = fopen(path, mode);
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

/* tg_ledger_verify_file, its report shown only when there are problems. */
static int verify_quiet(const char *path)
{
    char *text = NULL;
    size_t n = 0;
    FILE *mem = open_memstream(&text, &n);
    assert_non_null(mem);
    int problems = tg_ledger_verify_file(path, mem);
    assert_int_equal(fclose(mem), 0);
    if (problems) fprintf(stderr, "%s", text);
    free(text);
    return problems;
}

/* What tg_ledger_store_events handed out. */
struct seen {
    size_t n;
    struct {
        int64_t seq, delta, balance, held, ts;
        char reason[32], idem[TG_IDEM_KEY_MAX + 1], rid[64], note[TG_NOTE_MAX + 1];
        char json[TG_LEDGER_EVENT_MAX];
    } e[32];
};

static void collect(void *arg, const struct tg_ledger_event *e)
{
    struct seen *s = arg;
    assert_true(s->n < sizeof(s->e) / sizeof(s->e[0]));
    assert_string_equal(e->tenant, "acme");
    s->e[s->n].seq = e->seq;
    s->e[s->n].delta = e->delta;
    s->e[s->n].balance = e->balance;
    s->e[s->n].held = e->held;
    s->e[s->n].ts = e->ts_ms;
    snprintf(s->e[s->n].reason, sizeof(s->e[s->n].reason), "%s", e->reason ? e->reason : "");
    snprintf(s->e[s->n].idem, sizeof(s->e[s->n].idem), "%s", e->idem ? e->idem : "");
    snprintf(s->e[s->n].rid, sizeof(s->e[s->n].rid), "%s", e->request_id ? e->request_id : "");
    snprintf(s->e[s->n].note, sizeof(s->e[s->n].note), "%s", e->note ? e->note : "");
    assert_true(tg_ledger_event_json(e, s->e[s->n].json, sizeof(s->e[s->n].json)) > 0);
    s->n++;
}

static void all_events(struct tg_ledger_store *st, struct seen *s)
{
    memset(s, 0, sizeof(*s));
    tg_ledger_store_events(st, "acme", 0, 1000, collect, s);
}

static void test_store_change_idempotent(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    int64_t b = -1, h = -1, s = -1;
    assert_false(tg_ledger_store_get(st, "acme", &b, &h, &s));
    assert_int_equal(b, 0);
    assert_int_equal(h, 0);
    assert_int_equal(s, 0);

    const char *note = "first \"top-up\"\nof the month";
    struct tg_ledger_event ev;
    assert_int_equal(tg_ledger_store_change(st, "acme", 100 * C, note, "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(ev.seq, 1);
    assert_int_equal(ev.delta, 100 * C);
    assert_int_equal(ev.balance, 100 * C);
    assert_int_equal(ev.held, 0);
    assert_string_equal(ev.tenant, "acme");
    assert_string_equal(ev.reason, TG_LEDGER_TOPUP);
    assert_string_equal(ev.idem, "k1");
    assert_string_equal(ev.note, note);
    int64_t first_ts = ev.ts_ms;
    assert_true(first_ts > 0);
    assert_account(st, "acme", 100 * C, 0, 1);

    assert_int_equal(tg_ledger_store_change(st, "acme", 5 * C, "second", "k2", HASH_B, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(ev.seq, 2);
    assert_int_equal(ev.balance, 105 * C);
    assert_account(st, "acme", 105 * C, 0, 2);

    /* the same key and body again: nothing applied, the FIRST event handed back */
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(tg_ledger_store_change(st, "acme", 100 * C, note, "k1", HASH_A, &ev),
                     TG_CHANGE_REPEATED);
    assert_int_equal(ev.seq, 1);
    assert_int_equal(ev.delta, 100 * C);
    assert_int_equal(ev.balance, 100 * C); /* the balance then, not now */
    assert_int_equal(ev.ts_ms, first_ts);
    assert_string_equal(ev.reason, TG_LEDGER_TOPUP);
    assert_string_equal(ev.idem, "k1");
    assert_string_equal(ev.note, note); /* read back from the file, unescaped */
    assert_account(st, "acme", 105 * C, 0, 2);

    /* the same key with another body: a conflict, nothing applied */
    assert_int_equal(tg_ledger_store_change(st, "acme", 7 * C, "other", "k1", HASH_B, &ev),
                     TG_CHANGE_CONFLICT);
    assert_account(st, "acme", 105 * C, 0, 2);
    assert_int_equal(tg_ledger_store_change(st, "acme", 100 * C, note, "k2", HASH_A, &ev),
                     TG_CHANGE_CONFLICT);
    assert_account(st, "acme", 105 * C, 0, 2);

    /* taking away more than the balance: short, nothing applied */
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(
        tg_ledger_store_change(st, "acme", -105 * C - 1, "too much", "k3", HASH_C, &ev),
        TG_CHANGE_SHORT);
    assert_int_equal(ev.balance, 105 * C);
    assert_account(st, "acme", 105 * C, 0, 2);
    /* exactly the balance: an adjustment down to 0 */
    assert_int_equal(tg_ledger_store_change(st, "acme", -105 * C, "all of it", "k4", HASH_C, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(ev.seq, 3);
    assert_int_equal(ev.delta, -105 * C);
    assert_int_equal(ev.balance, 0);
    assert_string_equal(ev.reason, TG_LEDGER_ADJUSTMENT);
    assert_account(st, "acme", 0, 0, 3);
    /* once at 0, any negative change is short */
    assert_int_equal(tg_ledger_store_change(st, "acme", -1, "", "k5", HASH_C, &ev),
                     TG_CHANGE_SHORT);
    assert_account(st, "acme", 0, 0, 3);

    /* another tenant has a balance of its own */
    assert_int_equal(tg_ledger_store_change(st, "beta", 3 * C, "", "b1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(ev.seq, 1);
    assert_account(st, "beta", 3 * C, 0, 1);
    assert_account(st, "acme", 0, 0, 3);

    /* the keys outlive a restart */
    tg_ledger_store_close(st);
    st = must_open(t.path);
    assert_account(st, "acme", 0, 0, 3);
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(tg_ledger_store_change(st, "acme", 100 * C, note, "k1", HASH_A, &ev),
                     TG_CHANGE_REPEATED);
    assert_int_equal(ev.seq, 1);
    assert_int_equal(ev.balance, 100 * C);
    assert_string_equal(ev.note, note);
    assert_int_equal(tg_ledger_store_change(st, "acme", -105 * C, "all of it", "k4", HASH_C, &ev),
                     TG_CHANGE_REPEATED);
    assert_int_equal(ev.seq, 3);
    assert_string_equal(ev.reason, TG_LEDGER_ADJUSTMENT);
    assert_int_equal(tg_ledger_store_change(st, "acme", 1, "", "k1", HASH_C, &ev),
                     TG_CHANGE_CONFLICT);
    assert_account(st, "acme", 0, 0, 3);
    tg_ledger_store_close(st);

    assert_int_equal(verify_quiet(t.path), 0);
    tmp_remove(&t);
}

static void test_store_hold_and_settle(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    struct tg_ledger_event ev;
    assert_int_equal(tg_ledger_store_change(st, "acme", 2 * C, "", "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);

    /* covered: the price moves from the balance to held */
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_1, "rid-1", 300000, &ev), 1);
    assert_int_equal(ev.seq, 2);
    assert_int_equal(ev.delta, -300000);
    assert_int_equal(ev.balance, 1700000);
    assert_int_equal(ev.held, 300000);
    assert_string_equal(ev.reason, TG_LEDGER_HOLD);
    assert_string_equal(ev.request_id, "rid-1");
    assert_string_equal(ev.tenant, "acme");
    assert_account(st, "acme", 1700000, 300000, 2);

    /* short: 0, the balance reported, nothing changed */
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_2, "rid-2", 1700001, &ev), 0);
    assert_int_equal(ev.balance, 1700000);
    assert_account(st, "acme", 1700000, 300000, 2);

    /* exactly the balance is covered */
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_2, "rid-2", 1700000, &ev), 1);
    assert_int_equal(ev.seq, 3);
    assert_int_equal(ev.balance, 0);
    assert_int_equal(ev.held, 2000000);
    assert_account(st, "acme", 0, 2000000, 3);
    /* and nothing more, not even 1 */
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_9, "rid-9", 1, &ev), 0);
    assert_account(st, "acme", 0, 2000000, 3);

    /* a settle below the hold refunds the difference */
    tg_ledger_store_settle(st, "acme", HOLD_1, "rid-1", 100000);
    assert_account(st, "acme", 200000, 1700000, 4);
    /* one above it charges the difference (even past the balance) */
    tg_ledger_store_settle(st, "acme", HOLD_2, "rid-2", 1800000);
    assert_account(st, "acme", 100000, 0, 5);
    /* an unknown hold is charged in full */
    tg_ledger_store_settle(st, "acme", HOLD_9, "rid-9", 40000);
    assert_account(st, "acme", 60000, 0, 6);

    struct seen s;
    all_events(st, &s);
    assert_int_equal(s.n, 6);
    const struct {
        const char *reason;
        int64_t delta, balance, held;
        const char *rid;
    } want[] = {
        {TG_LEDGER_TOPUP, 2 * C, 2 * C, 0, ""},
        {TG_LEDGER_HOLD, -300000, 1700000, 300000, "rid-1"},
        {TG_LEDGER_HOLD, -1700000, 0, 2000000, "rid-2"},
        {TG_LEDGER_SETTLE, 200000, 200000, 1700000, "rid-1"},
        {TG_LEDGER_SETTLE, -100000, 100000, 0, "rid-2"},
        {TG_LEDGER_SETTLE, -40000, 60000, 0, "rid-9"},
    };
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(s.e[i].seq, (int64_t)i + 1);
        assert_string_equal(s.e[i].reason, want[i].reason);
        assert_int_equal(s.e[i].delta, want[i].delta);
        assert_int_equal(s.e[i].balance, want[i].balance);
        assert_int_equal(s.e[i].held, want[i].held);
        assert_string_equal(s.e[i].rid, want[i].rid);
    }
    /* a settled hold is forgotten: settling it again is a settle of an unknown hold */
    tg_ledger_store_settle(st, "acme", HOLD_1, "rid-1", 10000);
    assert_account(st, "acme", 50000, 0, 7);
    tg_ledger_store_close(st);
    assert_int_equal(verify_quiet(t.path), 0);

    /* the replay ends where the store was */
    st = must_open(t.path);
    assert_account(st, "acme", 50000, 0, 7);
    tg_ledger_store_close(st);
    tmp_remove(&t);
}

static void test_store_events_paging(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    struct tg_ledger_event ev;
    for (int i = 1; i <= 5; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(tg_ledger_store_change(st, "acme", i * C, "", key, HASH_A, &ev),
                         TG_CHANGE_APPLIED);
    }
    assert_int_equal(tg_ledger_store_change(st, "beta", C, "", "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    struct seen s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(tg_ledger_store_events(st, "acme", 0, 2, collect, &s), 2);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.e[0].seq, 1);
    assert_int_equal(s.e[1].seq, 2);
    assert_int_equal(s.e[1].balance, 3 * C);
    assert_string_equal(s.e[1].idem, "k2");
    memset(&s, 0, sizeof(s));
    assert_int_equal(tg_ledger_store_events(st, "acme", 2, 2, collect, &s), 2);
    assert_int_equal(s.e[0].seq, 3);
    assert_int_equal(s.e[1].seq, 4);
    assert_int_equal(s.e[1].delta, 4 * C);
    memset(&s, 0, sizeof(s));
    assert_int_equal(tg_ledger_store_events(st, "acme", 4, 100, collect, &s), 1);
    assert_int_equal(s.e[0].seq, 5);
    assert_int_equal(s.e[0].balance, 15 * C);
    memset(&s, 0, sizeof(s));
    assert_int_equal(tg_ledger_store_events(st, "acme", 5, 100, collect, &s), 0);
    assert_int_equal(tg_ledger_store_events(st, "acme", 1000, 100, collect, &s), 0);
    assert_int_equal(tg_ledger_store_events(st, "acme", 0, 0, collect, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(tg_ledger_store_events(st, "nobody", 0, 100, collect, &s), 0);
    assert_int_equal(tg_ledger_store_events(st, "acme", -3, 100, collect, &s), 5);
    assert_int_equal(s.e[0].seq, 1);
    tg_ledger_store_close(st);
    tmp_remove(&t);
}

static void test_store_replay(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    struct tg_ledger_event ev;
    assert_int_equal(
        tg_ledger_store_change(st, "acme", 10 * C, "a \"quoted\"\nnote", "k1", HASH_A, &ev),
        TG_CHANGE_APPLIED);
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_1, "rid-1", 2 * C, &ev), 1);
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_2, "rid-2", 3 * C, &ev), 1);
    tg_ledger_store_settle(st, "acme", HOLD_1, "rid-1", C + 1);
    tg_ledger_store_settle(st, "acme", HOLD_2, "rid-2", 4 * C);
    assert_int_equal(tg_ledger_store_change(st, "acme", -C, "", "k2", HASH_B, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(tg_ledger_store_change(st, "beta", 7, "", "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    int64_t bal = 10 * C - (C + 1) - 4 * C - C;
    assert_account(st, "acme", bal, 0, 6);
    struct seen before, after;
    all_events(st, &before);
    assert_int_equal(before.n, 6);
    tg_ledger_store_close(st);

    st = must_open(t.path);
    assert_account(st, "acme", bal, 0, 6);
    assert_account(st, "beta", 7, 0, 1);
    all_events(st, &after);
    assert_int_equal(after.n, 6);
    for (size_t i = 0; i < 6; i++)
        assert_string_equal(after.e[i].json, before.e[i].json);
    assert_string_equal(after.e[0].note, "a \"quoted\"\nnote");
    /* the next event follows on */
    assert_int_equal(tg_ledger_store_change(st, "acme", C, "", "k3", HASH_C, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(ev.seq, 7);
    assert_int_equal(ev.balance, bal + C);
    tg_ledger_store_close(st);

    st = must_open(t.path);
    assert_account(st, "acme", bal + C, 0, 7);
    tg_ledger_store_close(st);
    assert_int_equal(verify_quiet(t.path), 0);
    tmp_remove(&t);
}

static void test_store_open_hold_expires(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    struct tg_ledger_event ev;
    assert_int_equal(tg_ledger_store_change(st, "acme", C, "", "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_1, "rid-1", 400000, &ev), 1);
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_2, "rid-2", 100000, &ev), 1);
    tg_ledger_store_settle(st, "acme", HOLD_2, "rid-2", 50000); /* this one is settled */
    assert_account(st, "acme", 550000, 400000, 4);
    tg_ledger_store_close(st); /* HOLD_1 left open: its process died */

    st = must_open(t.path);
    assert_account(st, "acme", 950000, 0, 5);
    struct seen s;
    all_events(st, &s);
    assert_int_equal(s.n, 5);
    assert_string_equal(s.e[4].reason, TG_LEDGER_EXPIRED);
    assert_int_equal(s.e[4].delta, 400000);
    assert_int_equal(s.e[4].balance, 950000);
    assert_int_equal(s.e[4].held, 0);
    assert_string_equal(s.e[4].rid, "rid-1");
    tg_ledger_store_close(st);

    /* refunded once: the next start has nothing left to expire */
    st = must_open(t.path);
    assert_account(st, "acme", 950000, 0, 5);
    tg_ledger_store_close(st);
    assert_int_equal(verify_quiet(t.path), 0);
    tmp_remove(&t);
}

static void test_store_torn_line(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    struct tg_ledger_event ev;
    assert_int_equal(tg_ledger_store_change(st, "acme", 5 * C, "", "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(tg_ledger_store_change(st, "acme", 2 * C, "", "k2", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    tg_ledger_store_close(st);
    off_t good = file_size(t.path);

    /* a crash in the middle of the third line */
    const char *torn = "{\"seq\":3,\"ts\":1,\"tenant\":\"acme\",\"delta\":\"9.000000\",\"bal";
    write_all(t.path, torn, strlen(torn), "ab");
    assert_int_equal(file_size(t.path), good + (off_t)strlen(torn));
    char *out = NULL;
    size_t outlen = 0;
    FILE *mem = open_memstream(&out, &outlen);
    assert_non_null(mem);
    assert_int_equal(tg_ledger_verify_file(t.path, mem), 0); /* reported, not a problem */
    fclose(mem);
    assert_non_null(strstr(out, "torn last line"));
    free(out);

    st = must_open(t.path);
    assert_account(st, "acme", 7 * C, 0, 2);
    assert_int_equal(file_size(t.path), good); /* cut off */
    /* the next event is a whole line after the good ones */
    assert_int_equal(tg_ledger_store_change(st, "acme", C, "", "k3", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(ev.seq, 3);
    assert_int_equal(ev.balance, 8 * C);
    tg_ledger_store_close(st);

    /* a whole event without its newline is torn too */
    size_t len;
    char *all = read_all(t.path, &len);
    assert_true(len > 0 && all[len - 1] == '\n');
    write_all(t.path, all, len - 1, "wb");
    free(all);
    st = must_open(t.path);
    assert_account(st, "acme", 7 * C, 0, 2);
    tg_ledger_store_close(st);
    assert_int_equal(verify_quiet(t.path), 0);

    /* an empty file is an empty ledger */
    write_all(t.path, "", 0, "wb");
    st = must_open(t.path);
    int64_t b, h, s;
    assert_false(tg_ledger_store_get(st, "acme", &b, &h, &s));
    tg_ledger_store_close(st);
    tmp_remove(&t);
}

/* Replaces the first `from` after the start of line `lineno` (1-based) by `to`. */
static void edit_line(const char *path, int lineno, const char *from, const char *to)
{
    size_t len;
    char *buf = read_all(path, &len);
    char *line = buf;
    for (int i = 1; i < lineno; i++) {
        line = strchr(line, '\n');
        assert_non_null(line);
        line++;
    }
    char *at = strstr(line, from);
    assert_non_null(at);
    assert_true(at < strchr(line, '\n'));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(buf, 1, (size_t)(at - buf), f);
    fputs(to, f);
    size_t skip = (size_t)(at - buf) + strlen(from);
    fwrite(buf + skip, 1, len - skip, f);
    assert_int_equal(fclose(f), 0);
    free(buf);
}

static void delete_line(const char *path, int lineno)
{
    size_t len;
    char *buf = read_all(path, &len);
    char *line = buf;
    for (int i = 1; i < lineno; i++)
        line = strchr(line, '\n') + 1;
    char *end = strchr(line, '\n') + 1;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(buf, 1, (size_t)(line - buf), f);
    fwrite(end, 1, len - (size_t)(end - buf), f);
    assert_int_equal(fclose(f), 0);
    free(buf);
}

static int verify_to_string(const char *path, char **text)
{
    size_t n = 0;
    FILE *mem = open_memstream(text, &n);
    assert_non_null(mem);
    int problems = tg_ledger_verify_file(path, mem);
    assert_int_equal(fclose(mem), 0);
    return problems;
}

static void test_verify_file(void **state)
{
    tg_ledger_set_sink(NULL);
    struct tmp t;
    tmp_make(&t);
    struct tg_ledger_store *st = must_open(t.path);
    struct tg_ledger_event ev;
    assert_int_equal(tg_ledger_store_change(st, "acme", 5 * C, "", "k1", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(tg_ledger_store_change(st, "acme", 2 * C, "", "k2", HASH_A, &ev),
                     TG_CHANGE_APPLIED);
    assert_int_equal(tg_ledger_store_hold(st, "acme", HOLD_1, "rid-1", 500000, &ev), 1);
    tg_ledger_store_settle(st, "acme", HOLD_1, "rid-1", 250000);
    tg_ledger_store_close(st);

    char *out = NULL;
    assert_int_equal(verify_to_string(t.path, &out), 0);
    assert_non_null(strstr(out, "acme: 4 events, balance 6.750000, held 0.000000"));
    free(out);
    size_t len;
    char *orig = read_all(t.path, &len);

    /* one balance changed in the middle of the file */
    edit_line(t.path, 2, "\"balance\":\"7.000000\"", "\"balance\":\"70.000000\"");
    out = NULL;
    int problems = verify_to_string(t.path, &out);
    assert_true(problems > 0);
    char expect[256];
    snprintf(expect, sizeof(expect), "%s:2: balance is not the previous balance plus delta",
             t.path);
    if (!strstr(out, expect)) fail_msg("no \"%s\" in:\n%s", expect, out);
    free(out);
    /* a store does not open on it */
    char err[TG_ERR_LEN] = "";
    assert_null(tg_ledger_store_open(t.path, err));
    assert_non_null(strstr(err, "balance is not the previous balance plus delta"));

    /* a delta changed to match a changed balance still breaks the next line */
    write_all(t.path, orig, len, "wb");
    edit_line(t.path, 2, "\"delta\":\"2.000000\",\"balance\":\"7.000000\"",
              "\"delta\":\"3.000000\",\"balance\":\"8.000000\"");
    out = NULL;
    assert_true(verify_to_string(t.path, &out) > 0);
    snprintf(expect, sizeof(expect), "%s:3: balance is not", t.path);
    if (!strstr(out, expect)) fail_msg("no \"%s\" in:\n%s", expect, out);
    free(out);

    /* a line taken out: the seq has a gap */
    write_all(t.path, orig, len, "wb");
    delete_line(t.path, 2);
    out = NULL;
    assert_true(verify_to_string(t.path, &out) > 0);
    snprintf(expect, sizeof(expect), "%s:2: seq does not follow", t.path);
    if (!strstr(out, expect)) fail_msg("no \"%s\" in:\n%s", expect, out);
    free(out);

    /* held not what the holds add up to */
    write_all(t.path, orig, len, "wb");
    edit_line(t.path, 3, "\"held\":\"0.500000\"", "\"held\":\"0.400000\"");
    out = NULL;
    assert_true(verify_to_string(t.path, &out) > 0);
    snprintf(expect, sizeof(expect), "%s:3: held is not", t.path);
    if (!strstr(out, expect)) fail_msg("no \"%s\" in:\n%s", expect, out);
    free(out);

    /* a line that is not an event */
    write_all(t.path, orig, len, "wb");
    write_all(t.path, "garbage\n", 8, "ab");
    out = NULL;
    assert_int_equal(verify_to_string(t.path, &out), 1);
    snprintf(expect, sizeof(expect), "%s:5: not a ledger event", t.path);
    if (!strstr(out, expect)) fail_msg("no \"%s\" in:\n%s", expect, out);
    free(out);

    /* the original is fine again, and /dev/null takes the report */
    write_all(t.path, orig, len, "wb");
    FILE *devnull = fopen("/dev/null", "w");
    assert_non_null(devnull);
    assert_int_equal(tg_ledger_verify_file(t.path, devnull), 0);
    fclose(devnull);
    free(orig);

    /* a file that is not there is a problem */
    tmp_remove(&t);
    out = NULL;
    assert_true(verify_to_string(t.path, &out) > 0);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_price_first_match_wins),
        cmocka_unit_test(test_price_rounds_up_and_clamps),
        cmocka_unit_test(test_format_amount),
        cmocka_unit_test(test_parse_amount),
        cmocka_unit_test(test_amount_round_trip),
        cmocka_unit_test(test_idem_valid),
        cmocka_unit_test(test_event_json),
        cmocka_unit_test(test_store_change_idempotent),
        cmocka_unit_test(test_store_hold_and_settle),
        cmocka_unit_test(test_store_events_paging),
        cmocka_unit_test(test_store_replay),
        cmocka_unit_test(test_store_open_hold_expires),
        cmocka_unit_test(test_store_torn_line),
        cmocka_unit_test(test_verify_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
