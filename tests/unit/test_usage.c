/* Tests of usage records: the JSON schema and escaping, request ids, the "none" sink, what
 * tg_usage_emit keeps while a sink is full. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "tollgate/metrics.h"
#include "tollgate/usage.h"

static int64_t utc_ms(int y, int mo, int d, int h, int mi, int s, int ms)
{
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = s};
    return (int64_t)timegm(&tm) * 1000 + ms;
}

static void base_record(struct tg_usage_record *r)
{
    memset(r, 0, sizeof(*r));
    strcpy(r->id, "0123456789abcdef0123456789abcdef");
    r->ts_ms = utc_ms(2026, 11, 24, 11, 0, 0, 123);
    r->tenant = "acme";
    strcpy(r->key, "9f86d0818884");
    r->route = "/v1/chat/completions";
    r->model = "gpt-4o";
    r->upstream = "openai";
    r->status = 200;
    r->stream = true;
    r->decision = TG_DECISION_ALLOWED;
    r->usage.prompt_tokens = 12;
    r->usage.completion_tokens = 30;
    r->usage.total_tokens = 42;
    r->estimated.u[TG_UNIT_REQUESTS] = 1 * TG_MICRO;
    r->estimated.u[TG_UNIT_TOKENS] = 4108 * TG_MICRO;
    r->actual.u[TG_UNIT_REQUESTS] = 1 * TG_MICRO;
    r->actual.u[TG_UNIT_TOKENS] = 42 * TG_MICRO;
    r->latency_ms = 123.44;
    r->upstream_ms = 120.06;
    r->bytes_in = 311;
    r->bytes_out = 2048;
}

/* Serialises, checks the length and that jansson reads it back (which also
 * proves the output is valid UTF-8). Returns the parsed object; *text gets
 * the JSON (caller frees). */
static json_t *roundtrip(const struct tg_usage_record *r, char **text)
{
    size_t len = 0;
    char *s = tg_usage_to_json(r, &len);
    assert_non_null(s);
    assert_int_equal(len, strlen(s));
    assert_null(memchr(s, '\n', len));
    json_error_t e;
    json_t *o = json_loadb(s, len, JSON_REJECT_DUPLICATES, &e);
    if (o == NULL) fail_msg("bad JSON (%s) in: %s", e.text, s);
    if (text)
        *text = s;
    else
        free(s);
    return o;
}

static const char *const field_order[] = {
    "v",           "id",          "ts",       "tenant",      "key",      "route",
    "model",       "requested_model", "upstream", "status", "stream",  "priority",
    "decision",    "limit",       "fallback", "paid_by",     "credits",  "usage",
    "cost",        "latency_ms",  "upstream_ms", "bytes_in", "bytes_out"};

static void check_order(json_t *o)
{
    size_t i = 0;
    for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it), i++) {
        assert_true(i < TG_ARRAY_LEN(field_order));
        assert_string_equal(json_object_iter_key(it), field_order[i]);
    }
    assert_int_equal(i, TG_ARRAY_LEN(field_order));
}

static const char *str(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

static json_int_t num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static double real(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_number(v));
    return json_number_value(v);
}

static void is_null(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_non_null(v);
    assert_true(json_is_null(v));
}

static void test_allowed(void **state)
{
    struct tg_usage_record r;
    base_record(&r);
    char *text;
    json_t *o = roundtrip(&r, &text);
    check_order(o);
    assert_int_equal(num(o, "v"), 2);
    assert_string_equal(str(o, "id"), "0123456789abcdef0123456789abcdef");
    assert_string_equal(str(o, "ts"), "2026-11-24T11:00:00.123Z");
    assert_string_equal(str(o, "tenant"), "acme");
    assert_string_equal(str(o, "key"), "9f86d0818884");
    assert_string_equal(str(o, "route"), "/v1/chat/completions");
    assert_string_equal(str(o, "model"), "gpt-4o");
    assert_string_equal(str(o, "upstream"), "openai");
    assert_int_equal(num(o, "status"), 200);
    assert_true(json_is_true(json_object_get(o, "stream")));
    assert_string_equal(str(o, "decision"), "allowed");
    is_null(o, "limit");
    assert_true(json_is_false(json_object_get(o, "fallback")));
    json_t *u = json_object_get(o, "usage");
    assert_int_equal(num(u, "prompt_tokens"), 12);
    assert_int_equal(num(u, "completion_tokens"), 30);
    assert_int_equal(num(u, "total_tokens"), 42);
    assert_int_equal(num(u, "video_seconds"), 0);
    assert_int_equal(num(u, "width"), 0);
    assert_int_equal(num(u, "height"), 0);
    assert_int_equal(json_object_size(u), 6);
    json_t *est = json_object_get(json_object_get(o, "cost"), "estimated");
    json_t *act = json_object_get(json_object_get(o, "cost"), "actual");
    assert_int_equal(json_object_size(est), 2);
    assert_int_equal(num(est, "requests"), 1);
    assert_int_equal(num(est, "tokens"), 4108);
    assert_int_equal(num(act, "tokens"), 42);
    assert_true(real(o, "latency_ms") == 123.4);
    assert_true(real(o, "upstream_ms") == 120.1);
    assert_int_equal(num(o, "bytes_in"), 311);
    assert_int_equal(num(o, "bytes_out"), 2048);
    /* the exact text of the parts whose formatting is specified */
    assert_non_null(strstr(text, "\"cost\":{\"estimated\":{\"requests\":1,\"tokens\":4108},"
                                 "\"actual\":{\"requests\":1,\"tokens\":42}}"));
    assert_non_null(strstr(text, "\"latency_ms\":123.4,\"upstream_ms\":120.1,"));
    free(text);
    json_decref(o);
}

static void test_access_line(void **state)
{
    struct tg_usage_record r;
    base_record(&r);
    r.model = "gpt\"4o\n\xff";
    char line[TG_USAGE_ACCESS_LINE_MAX];
    size_t n = tg_usage_access_line(&r, line, sizeof(line));
    assert_true(n > 0 && n < sizeof(line));
    assert_null(memchr(line, '\n', n));
    json_error_t err;
    json_t *o = json_loadb(line, n, 0, &err);
    assert_non_null(o);
    assert_int_equal(json_object_size(o), 12);
    assert_string_equal(str(o, "priority"), "interactive");
    assert_string_equal(str(o, "ts"), "2026-11-24T11:00:00.123Z");
    assert_string_equal(str(o, "id"), "0123456789abcdef0123456789abcdef");
    assert_string_equal(str(o, "tenant"), "acme");
    assert_string_equal(str(o, "route"), "/v1/chat/completions");
    assert_string_equal(str(o, "model"), "gpt\"4o\n\xef\xbf\xbd");
    assert_int_equal(num(o, "status"), 200);
    assert_string_equal(str(o, "decision"), "allowed");
    assert_true(real(o, "latency_ms") == 123.4);
    assert_true(real(o, "upstream_ms") == 120.1);
    assert_int_equal(num(o, "bytes_in"), 311);
    assert_int_equal(num(o, "bytes_out"), 2048);
    json_decref(o);
    /* Before authentication: no tenant, no route, not forwarded. */
    r.tenant = NULL;
    r.route = NULL;
    r.upstream_ms = -1;
    n = tg_usage_access_line(&r, line, sizeof(line));
    o = json_loadb(line, n, 0, &err);
    assert_non_null(o);
    is_null(o, "tenant");
    is_null(o, "route");
    assert_true(real(o, "upstream_ms") == 0);
    json_decref(o);
    assert_int_equal(tg_usage_access_line(&r, line, 100), 0); /* too small a buffer */
}

/* A request the balance paid: what paid, what it was charged (6 decimals, a string) and the
 * seq of its hold's ledger event. */
static void test_paid_by_credits(void **state)
{
    struct tg_usage_record r;
    base_record(&r);
    r.paid_by = TG_PAID_CREDITS;
    r.credits = true;
    r.credits_charged = 17000; /* 0.017 credits */
    r.ledger_seq = 42;
    char *text;
    json_t *o = roundtrip(&r, &text);
    check_order(o);
    assert_string_equal(str(o, "paid_by"), "credits");
    assert_string_equal(str(o, "priority"), "interactive");
    json_t *c = json_object_get(o, "credits");
    assert_true(json_is_object(c));
    assert_string_equal(str(c, "charged"), "0.017000");
    assert_int_equal(num(c, "ledger_seq"), 42);
    assert_non_null(strstr(text, "\"paid_by\":\"credits\",\"credits\":{\"charged\":\"0.017000\","
                                 "\"ledger_seq\":42}"));
    free(text);
    json_decref(o);
    r.paid_by = TG_PAID_RATE_LIMIT;
    r.credits = false;
    r.priority = TG_PRIO_BACKGROUND;
    o = roundtrip(&r, NULL);
    assert_string_equal(str(o, "priority"), "background");
    assert_string_equal(str(o, "paid_by"), "rate_limit");
    is_null(o, "requested_model");
    is_null(o, "credits");
    json_decref(o);
}

static void test_limited(void **state)
{
    struct tg_usage_record r;
    base_record(&r);
    r.decision = TG_DECISION_LIMITED;
    r.status = 429;
    r.stream = false;
    r.limit = "tpm";
    r.fallback = true;
    r.upstream = NULL;
    r.upstream_ms = -1;
    memset(&r.usage, 0, sizeof(r.usage));
    memset(&r.actual, 0, sizeof(r.actual));
    json_t *o = roundtrip(&r, NULL);
    check_order(o);
    assert_string_equal(str(o, "decision"), "limited");
    assert_string_equal(str(o, "limit"), "tpm");
    is_null(o, "paid_by");
    is_null(o, "credits");
    assert_int_equal(num(o, "status"), 429);
    assert_true(json_is_false(json_object_get(o, "stream")));
    assert_true(json_is_true(json_object_get(o, "fallback")));
    is_null(o, "upstream");
    is_null(o, "upstream_ms");
    assert_int_equal(json_object_size(json_object_get(json_object_get(o, "cost"), "actual")), 0);
    json_decref(o);
}

static void test_rejected(void **state)
{
    struct tg_usage_record r;
    base_record(&r);
    r.decision = TG_DECISION_REJECTED;
    r.status = 401;
    r.tenant = NULL;
    r.key[0] = '\0';
    r.route = NULL;
    r.model = "";
    r.upstream = NULL;
    r.upstream_ms = -1;
    r.latency_ms = 0.04;
    memset(&r.estimated, 0, sizeof(r.estimated));
    memset(&r.actual, 0, sizeof(r.actual));
    char *text;
    json_t *o = roundtrip(&r, &text);
    check_order(o);
    assert_string_equal(str(o, "decision"), "rejected");
    is_null(o, "tenant");
    is_null(o, "key");
    is_null(o, "route");
    is_null(o, "model");
    is_null(o, "upstream");
    is_null(o, "limit");
    assert_non_null(strstr(text, "\"cost\":{\"estimated\":{},\"actual\":{}}"));
    assert_non_null(strstr(text, "\"latency_ms\":0.0,"));
    free(text);
    json_decref(o);
}

static void test_error_video(void **state)
{
    struct tg_usage_record r;
    base_record(&r);
    r.decision = TG_DECISION_ERROR;
    r.status = 502;
    r.route = "/v1/videos";
    r.model = "sora-2";
    r.usage =
        (struct tg_usage){.video_seconds = 1.5, .width = 1280, .height = 720, .have_video = true};
    r.estimated = (struct tg_cost){{TG_MICRO, 0, 4 * TG_MICRO + 1}};
    r.actual = (struct tg_cost){{TG_MICRO, 0, TG_MICRO / 2}};
    r.latency_ms = 2500;
    r.upstream_ms = 0;
    char *text;
    json_t *o = roundtrip(&r, &text);
    check_order(o);
    assert_string_equal(str(o, "decision"), "error");
    assert_int_equal(num(o, "status"), 502);
    json_t *u = json_object_get(o, "usage");
    assert_true(real(u, "video_seconds") == 1.5);
    assert_int_equal(num(u, "width"), 1280);
    assert_int_equal(num(u, "height"), 720);
    assert_non_null(strstr(text, "\"estimated\":{\"requests\":1,\"video_seconds\":4.000001}"));
    assert_non_null(strstr(text, "\"actual\":{\"requests\":1,\"video_seconds\":0.5}"));
    assert_non_null(strstr(text, "\"latency_ms\":2500.0,\"upstream_ms\":0.0,"));
    free(text);
    json_decref(o);
}

static void test_timestamps(void **state)
{
    static const struct {
        int y, mo, d, h, mi, s, ms;
        const char *want;
    } cases[] = {
        {1970, 1, 1, 0, 0, 0, 0, "1970-01-01T00:00:00.000Z"},
        {2024, 2, 29, 23, 59, 59, 999, "2024-02-29T23:59:59.999Z"},
        {2000, 3, 1, 0, 0, 1, 7, "2000-03-01T00:00:01.007Z"},
        {2100, 12, 31, 12, 30, 45, 50, "2100-12-31T12:30:45.050Z"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        struct tg_usage_record r;
        base_record(&r);
        r.ts_ms = utc_ms(cases[i].y, cases[i].mo, cases[i].d, cases[i].h, cases[i].mi, cases[i].s,
                         cases[i].ms);
        json_t *o = roundtrip(&r, NULL);
        assert_string_equal(str(o, "ts"), cases[i].want);
        json_decref(o);
    }
}

/* Every string field with nasty content: what jansson reads back. */
static void test_escaping(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"plain", "plain"},
        {"q\"uo\\te/", "q\"uo\\te/"},
        {"ctl\x01\x1f\n\t\r\x7f", "ctl\x01\x1f\n\t\r\x7f"},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e"},
        {"bad\xff!", "bad\xef\xbf\xbd!"},
        {"cut\xe2\x82", "cut\xef\xbf\xbd"},
        {"cut\xe2\x82X", "cut\xef\xbf\xbdX"},
        {"over\xc0\xaf", "over\xef\xbf\xbd\xef\xbf\xbd"},
        {"surr\xed\xa0\x80", "surr\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"big\xf4\x90\x80\x80", "big\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\x80\xbf", "\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        struct tg_usage_record r;
        base_record(&r);
        r.tenant = r.route = r.model = r.upstream = r.limit = cases[i].in;
        snprintf(r.id, sizeof(r.id), "%s", cases[i].in);
        snprintf(r.key, sizeof(r.key), "%s", cases[i].in);
        char *text;
        json_t *o = roundtrip(&r, &text);
        const char *fields[] = {"id", "tenant", "route", "model", "upstream", "limit"};
        for (size_t f = 0; f < TG_ARRAY_LEN(fields); f++)
            assert_string_equal(str(o, fields[f]), cases[i].want);
        char key[13];
        snprintf(key, sizeof(key), "%s", cases[i].in);
        if (strcmp(key, cases[i].in) == 0) assert_string_equal(str(o, "key"), cases[i].want);
        if (i == 2) {
            assert_non_null(
                strstr(text, "\"tenant\":\"ctl\\u0001\\u001f\\u000a\\u0009\\u000d\x7f\""));
        }
        free(text);
        json_decref(o);
    }
}

/* A string of every byte value and a very long one: still one valid line. */
static void test_worst_case_sizes(void **state)
{
    char all[256];
    for (int i = 0; i < 255; i++)
        all[i] = (char)(i + 1);
    all[255] = '\0';
    size_t n = 100000;
    char *ctl = malloc(n + 1);
    memset(ctl, '\x01', n);
    ctl[n] = '\0';
    struct tg_usage_record r;
    base_record(&r);
    r.tenant = all;
    r.route = r.model = r.upstream = r.limit = ctl;
    memset(r.id, '"', sizeof(r.id) - 1);
    r.id[sizeof(r.id) - 1] = '\0';
    memset(r.key, '\x02', sizeof(r.key));
    json_t *o = roundtrip(&r, NULL);
    assert_int_equal(strlen(str(o, "route")), n);
    assert_int_equal(strlen(str(o, "id")), sizeof(r.id) - 1);
    assert_int_equal(strlen(str(o, "key")), sizeof(r.key));
    json_decref(o);
    free(ctl);
}

#define ID_THREADS 4
#define IDS_PER_THREAD 100000

static char (*ids)[33];

static void *make_ids(void *arg)
{
    size_t t = (size_t)arg;
    char id[TG_REQUEST_ID_LEN];
    for (size_t i = 0; i < IDS_PER_THREAD; i++) {
        tg_usage_new_id(id);
        memcpy(ids[t * IDS_PER_THREAD + i], id, 33);
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, 33);
}

static void test_ids_unique(void **state)
{
    size_t n = ID_THREADS * IDS_PER_THREAD;
    ids = malloc(n * sizeof(*ids));
    pthread_t th[ID_THREADS];
    for (size_t t = 0; t < ID_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, make_ids, (void *)t), 0);
    for (size_t t = 0; t < ID_THREADS; t++)
        pthread_join(th[t], NULL);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(strlen(ids[i]), 32);
        assert_int_equal(strspn(ids[i], "0123456789abcdef"), 32);
    }
    qsort(ids, n, sizeof(*ids), cmp_id);
    for (size_t i = 1; i < n; i++)
        if (memcmp(ids[i - 1], ids[i], 33) == 0) fail_msg("duplicate id %s", ids[i]);
    free(ids);
}

/* A forked child must not repeat the ids its parent goes on to make. */
static void test_ids_after_fork(void **state)
{
    char a[TG_REQUEST_ID_LEN], b[TG_REQUEST_ID_LEN] = "";
    tg_usage_new_id(a);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        tg_usage_new_id(b);
        ssize_t w = write(fds[1], b, 33);
        _exit(w == 33 ? 0 : 1);
    }
    tg_usage_new_id(a);
    assert_int_equal(read(fds[0], b, 33), 33);
    int st;
    waitpid(pid, &st, 0);
    close(fds[0]);
    close(fds[1]);
    assert_string_not_equal(a, b);
}

static void test_none_sink(void **state)
{
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.usage.sink = TG_SINK_NONE;
    char err[TG_ERR_LEN];
    struct tg_sink *s = tg_sink_create(&cfg, NULL, err);
    assert_non_null(s);
    assert_string_equal(s->ops->name, "none");
    assert_true(s->ops->accepting(s));
    struct tg_usage_record r;
    base_record(&r);
    assert_int_equal(tg_usage_emit(s, &r), 0);
    size_t len;
    char *json = tg_usage_to_json(&r, &len);
    assert_int_equal(s->ops->submit(s, json, len, "acme"), 0);
    free(json);
    s->ops->flush(s, 10);
    s->ops->destroy(s);
}

/* A sink that keeps count of what it is given and accepts on demand. */
struct fake_sink {
    struct tg_sink base;
    bool accepting;
    int submitted;
};

static int fake_submit(struct tg_sink *s, const char *json, size_t len, const char *key)
{
    ((struct fake_sink *)s)->submitted++;
    return 0;
}

static bool fake_accepting(struct tg_sink *s)
{
    return ((struct fake_sink *)s)->accepting;
}

static double skipped_count(void)
{
    struct evbuffer *b = evbuffer_new();
    tg_metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    static const char k[] = "tollgate_usage_records_total{sink=\"fake\",result=\"skipped\"} ";
    const char *p = strstr(text, k);
    double v = p ? strtod(p + strlen(k), NULL) : 0;
    evbuffer_free(b);
    return v;
}

/* While the sink cannot keep records, a rejected request's record (nothing
 * forwarded, nothing charged: the 503s a full sink causes among them) is
 * counted and not submitted; every other record is still submitted. */
static void test_emit_while_sink_full(void **state)
{
    static const struct tg_sink_ops ops = {
        .name = "fake", .submit = fake_submit, .accepting = fake_accepting};
    struct fake_sink f = {.base = {.ops = &ops}, .accepting = true};
    struct tg_usage_record r;
    base_record(&r);
    static const enum tg_decision all[] = {TG_DECISION_ALLOWED, TG_DECISION_LIMITED,
                                           TG_DECISION_REJECTED, TG_DECISION_ERROR};
    for (size_t i = 0; i < TG_ARRAY_LEN(all); i++) {
        r.decision = all[i];
        assert_int_equal(tg_usage_emit(&f.base, &r), 0);
    }
    assert_int_equal(f.submitted, 4);
    f.accepting = false;
    for (size_t i = 0; i < TG_ARRAY_LEN(all); i++) {
        r.decision = all[i];
        assert_int_equal(tg_usage_emit(&f.base, &r), 0);
    }
    assert_int_equal(f.submitted, 7);
    assert_true(skipped_count() == 1);
}

/* Timestamps of records in any order, across seconds, days, months and
 * years: each is what gmtime says (the text of a second is reused while
 * records keep to it). */
static void test_timestamps_in_sequence(void **state)
{
    (void)state;
    struct tg_usage_record r;
    base_record(&r);
    int64_t t = utc_ms(1999, 12, 31, 23, 59, 58, 990);
    uint64_t x = 99991;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (i % 1000 == 999)
            t = (int64_t)(x % 4102444800000ull); /* anywhere in 1970-2099 */
        else
            t += (int64_t)(x % 1500) - (i % 7 == 0 ? 1200 : 0); /* mostly forward, some back */
        if (t < 0) t = 0;
        r.ts_ms = t;
        size_t len;
        char *json = tg_usage_to_json(&r, &len);
        assert_non_null(json);
        time_t secs = (time_t)(t / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        char want[64];
        snprintf(want, sizeof(want), "\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(t % 1000));
        if (strstr(json, want) == NULL) fail_msg("ts %lld: want %s in %s", (long long)t, want, json);
        free(json);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowed),
        cmocka_unit_test(test_timestamps_in_sequence),
        cmocka_unit_test(test_access_line),
        cmocka_unit_test(test_limited),
        cmocka_unit_test(test_paid_by_credits),
        cmocka_unit_test(test_rejected),
        cmocka_unit_test(test_error_video),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_worst_case_sizes),
        cmocka_unit_test(test_ids_unique),
        cmocka_unit_test(test_ids_after_fork),
        cmocka_unit_test(test_none_sink),
        cmocka_unit_test(test_emit_while_sink_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
