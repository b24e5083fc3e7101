/* Tests of the limiter: bucket math, plan, the local backend, headers and error bodies. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include "tollgate/limiter.h"

#define U TG_MICRO
#define MINUTE 60000
#define DAY 86400000

static struct tg_limit mk(const char *name, enum tg_unit unit, double rate, int64_t per_ms,
                          double burst)
{
    return (struct tg_limit){
        .name = (char *)name, .unit = unit, .rate = rate, .per_ms = per_ms, .burst = burst};
}

/* ---- pure math ---- */

static void test_capacity(void **state)
{
    struct tg_limit a = mk("a", TG_UNIT_TOKENS, 600, MINUTE, 0);
    struct tg_limit b = mk("b", TG_UNIT_TOKENS, 600, MINUTE, 50);
    struct tg_limit c = mk("c", TG_UNIT_VIDEO_SECONDS, 1, DAY, 0.25);
    assert_int_equal(tg_bucket_capacity_u(&a), 600 * U);
    assert_int_equal(tg_bucket_capacity_u(&b), 50 * U);
    assert_int_equal(tg_bucket_capacity_u(&c), 250000);
    struct tg_bucket_param p;
    tg_bucket_param_init(&p, &a, 4, 7);
    assert_int_equal(p.cap_u, 150 * U);
    assert_true(p.rate == 150.0);
    assert_int_equal(p.per_ms, MINUTE);
    assert_int_equal(p.cost_u, 7);
}

static void test_refill(void **state)
{
    const int64_t cap = 10 * U;
    struct tg_bucket b = {0, 1000};
    /* 1 unit per second: 500 ms add half a unit */
    assert_int_equal(tg_bucket_refill(&b, 1500, 1, 1000, cap), 500000);
    /* capped */
    assert_int_equal(tg_bucket_refill(&b, 1000 + 60000, 1, 1000, cap), cap);
    /* time going backwards counts as no time */
    assert_int_equal(tg_bucket_refill(&b, 10, 1, 1000, cap), 0);
    /* above capacity (a reload lowered the burst) → capacity */
    b = (struct tg_bucket){20 * U, 1000};
    assert_int_equal(tg_bucket_refill(&b, 1000, 1, 1000, cap), cap);
    /* never seen = full */
    b = TG_BUCKET_FULL;
    assert_int_equal(tg_bucket_refill(&b, 0, 1, 1000, cap), cap);
    /* debt refills like any level; fractional rates floor to the micro-unit */
    b = (struct tg_bucket){-3 * U, 0};
    assert_int_equal(tg_bucket_refill(&b, 1000, 1, 1000, cap), -2 * U);
    b = (struct tg_bucket){0, 0};
    assert_int_equal(tg_bucket_refill(&b, 1, 7.3, 1000, cap), 7300);
    assert_int_equal(tg_bucket_refill(&b, 1, 1, 3, cap), 333333);
    /* a huge gap does not overflow */
    assert_int_equal(tg_bucket_refill(&b, INT64_MAX / 2, 1e9, 1, cap), cap);
}

static void test_time_to(void **state)
{
    assert_int_equal(tg_bucket_time_to(5 * U, 5 * U, 1, 1000), 0);
    assert_int_equal(tg_bucket_time_to(6 * U, 5 * U, 1, 1000), 0);
    assert_int_equal(tg_bucket_time_to(0, U, 1, 1000), 1000);
    assert_int_equal(tg_bucket_time_to(-2 * U, U, 1, 1000), 3000);
    /* 3 per second: 333 ms add 999000, 334 ms add 1002000 */
    assert_int_equal(tg_bucket_time_to(0, U, 3, 1000), 334);
    /* the answer is exactly when refill gets there */
    for (int64_t need = 1; need < 5 * U; need += 123457) {
        int64_t t = tg_bucket_time_to(0, need, 7.3, 1000);
        struct tg_bucket b = {0, 0};
        assert_true(tg_bucket_refill(&b, t, 7.3, 1000, 100 * U) >= need);
        assert_true(tg_bucket_refill(&b, t - 1, 7.3, 1000, 100 * U) < need);
    }
    /* 200000 per minute, 4096 tokens from 0 */
    assert_int_equal(tg_bucket_time_to(0, 4096 * U, 200000, MINUTE), 1229);
}

static void test_check_all_or_nothing(void **state)
{
    struct tg_bucket a = TG_BUCKET_FULL, b = TG_BUCKET_FULL;
    struct tg_bucket *bs[] = {&a, &b};
    struct tg_bucket_param p[] = {{10 * U, 1, 1000, 2 * U, 0}, {3 * U, 1, 60000, 2 * U, 0}};
    int64_t level[2];
    assert_int_equal(tg_bucket_check(bs, p, 2, 1000, level), -1);
    assert_int_equal(level[0], 8 * U);
    assert_int_equal(level[1], 1 * U);
    assert_int_equal(a.level_u, 8 * U);
    assert_int_equal(b.updated_ms, 1000);
    /* B has 1 (+ a little refill), not 2: denied by B, A keeps 8 and its time */
    assert_int_equal(tg_bucket_check(bs, p, 2, 1500, level), 1);
    assert_int_equal(level[0], 8 * U + 500000);
    assert_int_equal(level[1], U + 8333);
    assert_int_equal(a.level_u, 8 * U);
    assert_int_equal(a.updated_ms, 1000);
    assert_int_equal(b.level_u, U);
    assert_int_equal(b.updated_ms, 1000);

    struct tg_limit_result res;
    tg_limiter_result_fill(p, level, 2, 1, &res);
    assert_int_equal(res.status, TG_LIMIT_DENIED);
    assert_int_equal(res.denied, 1);
    assert_int_equal(res.n, 2);
    assert_int_equal(res.b[1].remaining_u, U + 8333);
    assert_int_equal(res.b[1].limit_u, 3 * U);
    /* B needs 991667 more at 1/60000 per ms: 59501 ms */
    assert_int_equal(res.retry_ms, tg_bucket_time_to(U + 8333, 2 * U, 1, 60000));
    assert_int_equal(res.retry_ms, 59501);
    assert_int_equal(res.b[0].reset_ms, 1500);
}

/* A limit's reserve: a background request passes only while the level after its cost stays at
 * or above reserve × capacity; an interactive one may take the bucket to 0. */
static void test_reserve_is_for_interactive_requests(void **state)
{
    struct tg_limit l = {.name = "rpm", .unit = TG_UNIT_REQUESTS, .rate = 10, .per_ms = 60000,
                         .burst = 10, .reserve = 0.2};
    struct tg_limit_req bg = {.tenant = "acme", .background = true, .n = 1,
                              .b = {{.limit = &l, .cost_u = U}}};
    struct tg_limit_req in = bg;
    in.background = false;
    struct tg_bucket_param pb, pi;
    tg_bucket_params(&bg, 1, &pb);
    tg_bucket_params(&in, 1, &pi);
    assert_int_equal(pb.floor_u, 2 * U);
    assert_int_equal(pi.floor_u, 0);
    assert_true(tg_limiter_reserve_applies(&bg));
    assert_false(tg_limiter_reserve_applies(&in));
    struct tg_bucket b = TG_BUCKET_FULL;
    struct tg_bucket *bs[] = {&b};
    int64_t level;
    int passed = 0;
    while (tg_bucket_check(bs, &pb, 1, 0, &level) < 0)
        passed++;
    assert_int_equal(passed, 8); /* 10 - 8 = 2 left: the reserve */
    struct tg_limit_result res;
    tg_limiter_result_fill(&pb, &level, 1, 0, &res);
    assert_int_equal(res.status, TG_LIMIT_DENIED);
    /* 1 + 2 needed, 2 there: one request's worth at 10/minute = 6000 ms */
    assert_int_equal(res.retry_ms, 6000);
    passed = 0;
    while (tg_bucket_check(bs, &pi, 1, 0, &level) < 0)
        passed++;
    assert_int_equal(passed, 2); /* interactive takes the reserve */
    l.reserve = 0;
    tg_bucket_params(&bg, 1, &pb);
    assert_int_equal(pb.floor_u, 0);
    assert_false(tg_limiter_reserve_applies(&bg));
}

static void test_settle_math(void **state)
{
    struct tg_bucket b = {4 * U, 0};
    struct tg_bucket_param refund = {10 * U, 1, 1000, -100 * U, 0};
    assert_int_equal(tg_bucket_settle(&b, &refund, 0), 10 * U); /* never above capacity */
    struct tg_bucket_param charge = {10 * U, 1, 1000, 25 * U, 0};
    assert_int_equal(tg_bucket_settle(&b, &charge, 1000), -15 * U); /* debt */
    assert_int_equal(b.updated_ms, 1000);
    /* debt is honoured: a check for 1 unit passes only once it is paid back */
    struct tg_bucket *bs[] = {&b};
    struct tg_bucket_param p = {10 * U, 1, 1000, U, 0};
    int64_t level;
    assert_int_equal(tg_bucket_check(bs, &p, 1, 2000, &level), 0);
    assert_int_equal(level, -14 * U);
    struct tg_limit_result res;
    tg_limiter_result_fill(&p, &level, 1, 0, &res);
    assert_int_equal(res.b[0].remaining_u, 0); /* never below 0 in replies */
    assert_int_equal(res.retry_ms, 15000);
    assert_int_equal(res.b[0].reset_ms, 24000);
    assert_int_equal(tg_bucket_check(bs, &p, 1, 1000 + 15999, &level), 0);
    assert_int_equal(level, 999000);
    assert_int_equal(tg_bucket_check(bs, &p, 1, 1000 + 16000, &level), -1);
    assert_int_equal(level, 0);
}

/* ---- plan ---- */

static void test_plan(void **state)
{
    char *models[] = {"gpt-4o"};
    struct tg_limit limits[] = {
        mk("rpm", TG_UNIT_REQUESTS, 600, MINUTE, 0),
        mk("tpm", TG_UNIT_TOKENS, 200000, MINUTE, 0),
        mk("vsd", TG_UNIT_VIDEO_SECONDS, 3600, DAY, 0),
        mk("gpt4o-tpm", TG_UNIT_TOKENS, 50000, MINUTE, 0),
    };
    limits[3].models = models;
    limits[3].nmodels = 1;
    struct tg_tenant t = {.name = "acme", .limits = limits, .nlimits = 4};
    struct tg_limit_req req;
    struct tg_cost chat = {{U, 4108 * U, 0}};
    tg_limiter_plan(&t, &chat, "gpt-4o", &req);
    assert_string_equal(req.tenant, "acme");
    assert_false(req.fallback);
    assert_int_equal(req.n, 3);
    assert_ptr_equal(req.b[0].limit, &limits[0]);
    assert_int_equal(req.b[0].cost_u, U);
    assert_ptr_equal(req.b[1].limit, &limits[1]);
    assert_int_equal(req.b[1].cost_u, 4108 * U);
    assert_ptr_equal(req.b[2].limit, &limits[3]);

    tg_limiter_plan(&t, &chat, "gpt-4o-mini", &req);
    assert_int_equal(req.n, 2);
    assert_ptr_equal(req.b[1].limit, &limits[1]);
    tg_limiter_plan(&t, &chat, NULL, &req);
    assert_int_equal(req.n, 2);

    struct tg_cost video = {{U, 0, 5333333}};
    tg_limiter_plan(&t, &video, "sora-2", &req);
    assert_int_equal(req.n, 2);
    assert_ptr_equal(req.b[0].limit, &limits[0]);
    assert_ptr_equal(req.b[1].limit, &limits[2]);
    assert_int_equal(req.b[1].cost_u, 5333333);

    struct tg_cost models_only = {{U, 0, 0}};
    tg_limiter_plan(&t, &models_only, "gpt-4o", &req);
    assert_int_equal(req.n, 1);
}

/* ---- the local backend ---- */

struct answer {
    int calls;
    struct tg_limit_result res;
};

static void on_answer(void *arg, const struct tg_limit_result *res)
{
    struct answer *a = arg;
    a->calls++;
    a->res = *res;
}

static struct tg_limit_result check(struct tg_limiter *l, const struct tg_limit_req *req)
{
    struct answer a = {0};
    assert_int_equal(tg_limiter_check(l, req, on_answer, &a), 0);
    assert_int_equal(a.calls, 1); /* synchronous, exactly once */
    return a.res;
}

static struct tg_limit_req req2(const char *tenant, const struct tg_limit *a, int64_t ca,
                                const struct tg_limit *b, int64_t cb)
{
    struct tg_limit_req r = {.tenant = tenant, .n = b ? 2 : 1};
    r.b[0] = (struct tg_bucket_ref){a, ca};
    if (b) r.b[1] = (struct tg_bucket_ref){b, cb};
    return r;
}

static void test_local_all_or_nothing(void **state)
{
    /* 1 unit per day refills ~0.0116 micro-units per ms: nothing visible here */
    struct tg_limit a = mk("a", TG_UNIT_TOKENS, 1, DAY, 10);
    struct tg_limit b = mk("b", TG_UNIT_TOKENS, 1, DAY, 3);
    struct tg_limiter *l = tg_limiter_local_create(1);
    assert_string_equal(l->ops->name, "local");
    assert_true(tg_limiter_ready(l));
    struct tg_limit_req r = req2("acme", &a, 2 * U, &b, 2 * U);
    struct tg_limit_result res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.denied, -1);
    assert_false(res.fallback);
    assert_int_equal(res.b[0].remaining_u / U, 8);
    assert_int_equal(res.b[1].remaining_u / U, 1);
    res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_DENIED);
    assert_int_equal(res.denied, 1);
    assert_true(res.retry_ms > DAY / 2); /* a day per unit */
    /* A was not charged by the denied check */
    struct tg_limit_req ra = req2("acme", &a, 8 * U, NULL, 0);
    res = check(l, &ra);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].remaining_u / U, 0);
    /* another tenant has its own buckets */
    struct tg_limit_req other = req2("globex", &a, 10 * U, NULL, 0);
    assert_int_equal(check(l, &other).status, TG_LIMIT_ALLOWED);
    tg_limiter_cancel(l, &r); /* no-op */
    tg_limiter_destroy(l);
}

static void test_local_too_large(void **state)
{
    struct tg_limit a = mk("rpm", TG_UNIT_REQUESTS, 1, DAY, 5);
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 100);
    struct tg_limiter *l = tg_limiter_local_create(1);
    struct tg_limit_req r = req2("acme", &a, U, &t, 101 * U);
    struct tg_limit_result res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_TOO_LARGE);
    assert_int_equal(res.denied, 1);
    assert_int_equal(res.b[1].limit_u, 100 * U);
    /* nothing was touched, not even the requests bucket */
    r.b[1].cost_u = 100 * U;
    res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].remaining_u / U, 4);
    assert_int_equal(res.b[1].remaining_u / U, 0);
    tg_limiter_destroy(l);
}

static void test_local_settle(void **state)
{
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 100);
    struct tg_limiter *l = tg_limiter_local_create(1);
    struct tg_limit_req r = req2("acme", &t, 60 * U, NULL, 0);
    assert_int_equal(check(l, &r).status, TG_LIMIT_ALLOWED); /* 40 left */
    int64_t refund = -80 * U;                                /* more than was taken */
    tg_limiter_settle(l, &r, &refund);
    r.b[0].cost_u = 100 * U;
    struct tg_limit_result res = check(l, &r); /* full again, not 120 */
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].remaining_u / U, 0);
    int64_t charge = 30 * U; /* into debt: -30 */
    tg_limiter_settle(l, &r, &charge);
    r.b[0].cost_u = 0;
    res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_DENIED); /* even a zero cost waits out the debt */
    assert_int_equal(res.b[0].remaining_u, 0);
    assert_true(res.retry_ms > 29LL * DAY);
    tg_limiter_destroy(l);
}

static void test_local_reload_keeps_level(void **state)
{
    struct tg_limit v1 = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 100);
    struct tg_limit v2 = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 50); /* reloaded: smaller burst */
    struct tg_limiter *l = tg_limiter_local_create(1);
    struct tg_limit_req r = req2("acme", &v1, 70 * U, NULL, 0);
    assert_int_equal(check(l, &r).status, TG_LIMIT_ALLOWED); /* 30 left */
    r = req2("acme", &v2, 10 * U, NULL, 0);
    struct tg_limit_result res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].limit_u, 50 * U);
    assert_int_equal(res.b[0].remaining_u / U, 20);
    tg_limiter_destroy(l);
}

static void test_local_divisor(void **state)
{
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 200000, MINUTE, 0);
    struct tg_limiter *l = tg_limiter_local_create(4);
    struct tg_limit_req r = req2("acme", &t, 60000 * U, NULL, 0);
    struct tg_limit_result res = check(l, &r);
    /* fits the real bucket, not this gateway's quarter: a 429, not a 400 */
    assert_int_equal(res.status, TG_LIMIT_DENIED);
    assert_int_equal(res.b[0].limit_u, 50000 * U);
    r.b[0].cost_u = 40000 * U;
    res = check(l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].limit_u, 50000 * U);
    assert_true(res.b[0].remaining_u >= 10000 * U && res.b[0].remaining_u < 10100 * U);
    /* reset: 40000 tokens at 50000 per minute = 48 s */
    assert_true(res.b[0].reset_ms > 47000 && res.b[0].reset_ms <= 48000);
    r.b[0].cost_u = 200001 * U;
    assert_int_equal(check(l, &r).status, TG_LIMIT_TOO_LARGE);
    tg_limiter_destroy(l);
}

/* Threads hammer one pair of buckets, half of them naming the pair in the
 * other order (different stripes, opposite order: no deadlock). */
struct hammer {
    struct tg_limiter *l;
    const struct tg_limit *x, *y;
    bool reversed;
    int admitted;
};

static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    struct tg_limit_req r =
        h->reversed ? req2("acme", h->y, U, h->x, U) : req2("acme", h->x, U, h->y, U);
    for (int i = 0; i < 20000; i++) {
        struct answer a = {0};
        assert_int_equal(tg_limiter_check(h->l, &r, on_answer, &a), 0);
        if (a.res.status == TG_LIMIT_ALLOWED) h->admitted++;
    }
    return NULL;
}

static void test_local_threads(void **state)
{
    /* 3000 units, refilling 3000 per hour (< 1 per second) */
    struct tg_limit x = mk("x", TG_UNIT_REQUESTS, 3000, 3600000, 0);
    struct tg_limit y = mk("y", TG_UNIT_TOKENS, 3000, 3600000, 0);
    struct tg_limiter *l = tg_limiter_local_create(1);
    struct hammer h[4];
    pthread_t th[4];
    int64_t t0 = tg_now_mono_ms();
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){l, &x, &y, i % 2 == 1, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer_thread, &h[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += h[i].admitted;
    }
    double secs = (double)(tg_now_mono_ms() - t0) / 1000.0;
    int refill = (int)(secs * 3000.0 / 3600.0) + 1;
    assert_true(total >= 3000);
    assert_true(total <= 3000 + refill);
    /* both buckets saw exactly the same charges */
    struct tg_limit_req r = req2("acme", &x, 0, &y, 0);
    struct tg_limit_result res = check(l, &r);
    assert_int_equal(res.b[0].remaining_u, res.b[1].remaining_u);
    tg_limiter_destroy(l);
}

/* ---- headers and bodies ---- */

static struct tg_limit hl[3];
static struct tg_limit_req hreq;

static void header_fixture(struct tg_limit_result *res)
{
    hl[0] = mk("rpm", TG_UNIT_REQUESTS, 600, MINUTE, 0);
    hl[1] = mk("tpm", TG_UNIT_TOKENS, 200000, MINUTE, 0);
    hl[2] = mk("gpt4o-tpm", TG_UNIT_TOKENS, 50000, MINUTE, 0);
    hreq = (struct tg_limit_req){.tenant = "acme", .n = 3};
    hreq.b[0] = (struct tg_bucket_ref){&hl[0], U};
    hreq.b[1] = (struct tg_bucket_ref){&hl[1], 4096 * U};
    hreq.b[2] = (struct tg_bucket_ref){&hl[2], 4096 * U};
    *res = (struct tg_limit_result){.status = TG_LIMIT_ALLOWED, .denied = -1, .n = 3};
    res->b[0] = (struct tg_bucket_state){600 * U, 599 * U + 999999, 100};
    res->b[1] = (struct tg_bucket_state){200000 * U, 195904 * U, 1229};
    res->b[2] = (struct tg_bucket_state){50000 * U, 45904 * U + 500000, 4915};
}

static void test_headers_allowed(void **state)
{
    struct tg_limit_result res;
    header_fixture(&res);
    char out[1024];
    size_t n = tg_limiter_format_headers(&hreq, &res, out, sizeof(out));
    const char *want = "x-ratelimit-limit-requests: 600\r\n"
                       "x-ratelimit-remaining-requests: 599\r\n"
                       "x-ratelimit-reset-requests: 100ms\r\n"
                       "x-ratelimit-limit-tokens: 50000\r\n"
                       "x-ratelimit-remaining-tokens: 45904\r\n"
                       "x-ratelimit-reset-tokens: 4.915s\r\n"
                       "RateLimit-Policy: \"rpm\";q=600;w=60, \"tpm\";q=200000;w=60, "
                       "\"gpt4o-tpm\";q=50000;w=60\r\n"
                       "RateLimit: \"gpt4o-tpm\";r=45904;t=5\r\n";
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    /* truncated, still terminated */
    n = tg_limiter_format_headers(&hreq, &res, out, 20);
    assert_int_equal(n, 19);
    assert_string_equal(out, "x-ratelimit-limit-r");
    assert_int_equal(tg_limiter_format_headers(&hreq, &res, out, 0), 0);
}

static void test_headers_denied(void **state)
{
    struct tg_limit_result res;
    header_fixture(&res);
    res.status = TG_LIMIT_DENIED;
    res.denied = 1;
    res.retry_ms = 1574;
    res.b[1].remaining_u = 120 * U;
    res.b[1].reset_ms = 59964;
    char out[1024];
    tg_limiter_format_headers(&hreq, &res, out, sizeof(out));
    const char *want = "x-ratelimit-limit-requests: 600\r\n"
                       "x-ratelimit-remaining-requests: 599\r\n"
                       "x-ratelimit-reset-requests: 100ms\r\n"
                       "x-ratelimit-limit-tokens: 200000\r\n"
                       "x-ratelimit-remaining-tokens: 120\r\n"
                       "x-ratelimit-reset-tokens: 59.964s\r\n"
                       "RateLimit-Policy: \"rpm\";q=600;w=60, \"tpm\";q=200000;w=60, "
                       "\"gpt4o-tpm\";q=50000;w=60\r\n"
                       "RateLimit: \"tpm\";r=120;t=60\r\n"
                       "Retry-After: 2\r\n"
                       "retry-after-ms: 1574\r\n";
    assert_string_equal(out, want);
    /* a wait under a second still says 1 */
    res.retry_ms = 17;
    tg_limiter_format_headers(&hreq, &res, out, sizeof(out));
    assert_non_null(strstr(out, "Retry-After: 1\r\nretry-after-ms: 17\r\n"));
}

/* Many limits with long names that need escaping: the headers outgrow the
 * formatter's stack buffer and still come out whole, and any cut of them is a
 * prefix of the whole. */
static void test_headers_long_names(void **state)
{
    enum { N = 24, NAME = 150 };
    static char names[N][NAME + 1];
    static struct tg_limit l[N];
    struct tg_limit_req r = {.tenant = "acme", .n = N};
    struct tg_limit_result res = {.status = TG_LIMIT_DENIED, .denied = N - 1, .n = N,
                                  .retry_ms = 2500};
    for (int i = 0; i < N; i++) {
        memset(names[i], 'a' + i % 26, NAME);
        names[i][0] = '"';
        names[i][1] = '\\';
        names[i][NAME] = '\0';
        l[i] = mk(names[i], (enum tg_unit)(i % TG_UNIT_COUNT), 100 + i, 60000, 0);
        r.b[i] = (struct tg_bucket_ref){&l[i], U};
        res.b[i] = (struct tg_bucket_state){(100 + i) * U, (50 + i) * U, 1000 + i};
    }
    static char out[16384], cut[16384];
    size_t n = tg_limiter_format_headers(&r, &res, out, sizeof(out));
    assert_int_equal(n, strlen(out));
    assert_true(n > 4096); /* more than the stack buffer holds */
    char want[NAME + 32];
    snprintf(want, sizeof(want), "\"\\\"\\\\%s\";q=123;w=60", names[N - 1] + 2);
    assert_non_null(strstr(out, want)); /* the last limit, escaped, in the policy */
    assert_non_null(strstr(out, "Retry-After: 3\r\nretry-after-ms: 2500\r\n"));
    const size_t caps[] = {1, 2, 100, 4095, 4096, 4097, 8000, n, n + 1};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        size_t k = tg_limiter_format_headers(&r, &res, cut, caps[i]);
        size_t w = caps[i] - 1 < n ? caps[i] - 1 : n;
        assert_int_equal(k, w);
        assert_int_equal(strlen(cut), w);
        assert_memory_equal(cut, out, w);
    }
}

static void test_headers_video_and_none(void **state)
{
    struct tg_limit v = mk("vsd", TG_UNIT_VIDEO_SECONDS, 3600, DAY, 0);
    struct tg_limit_req r = req2("acme", &v, 5333333, NULL, 0);
    struct tg_limit_result res = {.status = TG_LIMIT_ALLOWED, .denied = -1, .n = 1};
    res.b[0] = (struct tg_bucket_state){3600 * U, 3594666667, 128000};
    char out[512];
    tg_limiter_format_headers(&r, &res, out, sizeof(out));
    assert_string_equal(out, "x-ratelimit-limit-video-seconds: 3600\r\n"
                             "x-ratelimit-remaining-video-seconds: 3594\r\n"
                             "x-ratelimit-reset-video-seconds: 2m8s\r\n"
                             "RateLimit-Policy: \"vsd\";q=3600;w=86400\r\n"
                             "RateLimit: \"vsd\";r=3594;t=128\r\n");
    res.status = TG_LIMIT_TOO_LARGE;
    assert_int_equal(tg_limiter_format_headers(&r, &res, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    res.status = TG_LIMIT_ERROR;
    assert_int_equal(tg_limiter_format_headers(&r, &res, out, sizeof(out)), 0);
}

/* Parses `body` and returns error.message (valid until json_decref). */
static json_t *parse_error(const char *body, const char **message, const char *type,
                           const char *code)
{
    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    assert_non_null(j);
    json_t *e = json_object_get(j, "error");
    assert_true(json_is_object(e));
    assert_string_equal(json_string_value(json_object_get(e, "type")), type);
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_true(json_is_null(json_object_get(e, "param")));
    *message = json_string_value(json_object_get(e, "message"));
    assert_non_null(*message);
    return j;
}

static void test_error_denied(void **state)
{
    struct tg_limit_result res;
    header_fixture(&res);
    res.status = TG_LIMIT_DENIED;
    res.denied = 1;
    res.retry_ms = 1574;
    res.b[1].remaining_u = 120 * U + 700000;
    char out[1024];
    size_t n = tg_limiter_format_error(&hreq, &res, out, sizeof(out));
    const char *want =
        "{\"error\":{\"message\":\"Rate limit reached for tokens per minute (tpm) for tenant "
        "acme: limit 200000, remaining 120, requested 4096. Please try again in 1.574s.\","
        "\"type\":\"tokens\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}";
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    const char *msg;
    json_t *j = parse_error(out, &msg, "tokens", "rate_limit_exceeded");
    json_decref(j);

    /* names that need escaping stay valid JSON */
    hreq.tenant = "ac\"me\\\n";
    tg_limiter_format_error(&hreq, &res, out, sizeof(out));
    j = parse_error(out, &msg, "tokens", "rate_limit_exceeded");
    assert_non_null(strstr(msg, "for tenant ac\"me\\\n: limit"));
    json_decref(j);
}

static void test_error_video(void **state)
{
    struct tg_limit v = mk("vsd", TG_UNIT_VIDEO_SECONDS, 3600, DAY, 0);
    struct tg_limit_req r = req2("acme", &v, 6400000, NULL, 0);
    struct tg_limit_result res = {
        .status = TG_LIMIT_DENIED, .denied = 0, .retry_ms = 360000, .n = 1};
    res.b[0] = (struct tg_bucket_state){3600 * U, 1256000, 86000000};
    char out[1024];
    tg_limiter_format_error(&r, &res, out, sizeof(out));
    assert_string_equal(out, "{\"error\":{\"message\":\"Rate limit reached for video seconds per "
                             "day (vsd) for tenant acme: limit 3600, remaining 1.25, requested "
                             "6.40. Please try again in 6m0s.\",\"type\":\"video_seconds\","
                             "\"param\":null,\"code\":\"rate_limit_exceeded\"}}");
}

static void test_error_too_large_and_unavailable(void **state)
{
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 200000, MINUTE, 0);
    struct tg_limit_req r = req2("acme", &t, 250000 * U, NULL, 0);
    struct tg_limit_result res;
    assert_true(tg_limiter_too_large(&r, &res));
    char out[1024];
    tg_limiter_format_error(&r, &res, out, sizeof(out));
    assert_string_equal(out, "{\"error\":{\"message\":\"Request too large for tokens per minute "
                             "(tpm) for tenant acme: limit 200000, requested 250000. A request "
                             "must not cost more than the limit.\",\"type\":"
                             "\"invalid_request_error\",\"param\":null,"
                             "\"code\":\"limit_exceeds_capacity\"}}");
    const char *msg;
    json_decref(parse_error(out, &msg, "invalid_request_error", "limit_exceeds_capacity"));

    res = (struct tg_limit_result){.status = TG_LIMIT_ERROR, .denied = -1};
    tg_limiter_format_error(&r, &res, out, sizeof(out));
    assert_string_equal(out, "{\"error\":{\"message\":\"The rate limiter is unavailable; please "
                             "try again later.\",\"type\":\"server_error\",\"param\":null,"
                             "\"code\":\"rate_limiter_unavailable\"}}");
    json_decref(parse_error(out, &msg, "server_error", "rate_limiter_unavailable"));

    res = (struct tg_limit_result){.status = TG_LIMIT_ALLOWED, .denied = -1};
    assert_int_equal(tg_limiter_format_error(&r, &res, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    r.b[0].cost_u = 200000 * U;
    assert_false(tg_limiter_too_large(&r, &res));
}

static void test_duration(void **state)
{
    static const struct {
        int64_t ms;
        const char *s;
    } table[] = {
        {-5, "0s"},       {0, "0s"},           {17, "17ms"},        {120, "120ms"},
        {999, "999ms"},   {1000, "1s"},        {1500, "1.5s"},      {1574, "1.574s"},
        {1050, "1.05s"},  {59999, "59.999s"},  {60000, "1m0s"},     {90500, "1m30.5s"},
        {360000, "6m0s"}, {3600000, "1h0m0s"}, {3723000, "1h2m3s"}, {86400000, "24h0m0s"},
    };
    char out[32];
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        size_t n = tg_limiter_format_duration(table[i].ms, out, sizeof(out));
        assert_string_equal(out, table[i].s);
        assert_int_equal(n, strlen(table[i].s));
    }
}

/* The table of backends: the local one is shared by every worker, never owned. */
static void test_backend_table(void **state)
{
    (void)state;
    const struct tg_limiter_backend_def *local = tg_limiter_backend_def(TG_LIMITER_LOCAL);
    const struct tg_limiter_backend_def *redis = tg_limiter_backend_def(TG_LIMITER_REDIS);
    assert_non_null(local);
    assert_non_null(redis);
    assert_string_equal(local->name, "local");
    assert_true(local->shared);
    assert_string_equal(redis->name, "redis");
    assert_false(redis->shared);
    assert_null(tg_limiter_backend_def((enum tg_limiter_backend)99));

    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.limiter.backend = TG_LIMITER_LOCAL;
    struct tg_limiter *shared = tg_limiter_local_create(1);
    assert_non_null(shared);
    const struct tg_limiter_env env = {.cfg = &cfg, .local = shared, .fallback = shared};
    bool own = true;
    char err[TG_ERR_LEN] = "";
    assert_ptr_equal(tg_limiter_for_worker(&env, &own, err), shared);
    assert_false(own);
    cfg.limiter.backend = (enum tg_limiter_backend)99;
    assert_null(tg_limiter_for_worker(&env, &own, err));
    assert_string_equal(err, "unknown limiter backend 99");
    tg_limiter_destroy(shared);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_backend_table),
        cmocka_unit_test(test_refill),
        cmocka_unit_test(test_time_to),
        cmocka_unit_test(test_check_all_or_nothing),
        cmocka_unit_test(test_reserve_is_for_interactive_requests),
        cmocka_unit_test(test_settle_math),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_local_all_or_nothing),
        cmocka_unit_test(test_local_too_large),
        cmocka_unit_test(test_local_settle),
        cmocka_unit_test(test_local_reload_keeps_level),
        cmocka_unit_test(test_local_divisor),
        cmocka_unit_test(test_local_threads),
        cmocka_unit_test(test_headers_allowed),
        cmocka_unit_test(test_headers_denied),
        cmocka_unit_test(test_headers_video_and_none),
        cmocka_unit_test(test_headers_long_names),
        cmocka_unit_test(test_error_denied),
        cmocka_unit_test(test_error_video),
        cmocka_unit_test(test_error_too_large_and_unavailable),
        cmocka_unit_test(test_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
