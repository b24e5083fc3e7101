/* The request path's seams: the router, admission and accounting (reserve, actual, commit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#include "tollgate/accounting.h"
#include "tollgate/admission.h"
#include "tollgate/router.h"

#define U TG_MICRO

static void test_router_picks_the_routes_upstream(void **state)
{
    (void)state;
    struct tg_upstream up = {.name = "models"};
    struct tg_route route = {.path = "/v1/chat", .upstream = &up};
    struct tg_request_info info;
    memset(&info, 0, sizeof(info));
    assert_ptr_equal(tg_router_pick(&route, &info), &up);
    strcpy(info.model, "gpt-4o");
    assert_ptr_equal(tg_router_pick(&route, &info), &up);
}

struct admits {
    int calls;
    enum tg_admit_status last;
};

static void on_admit(void *arg, enum tg_admit_status st)
{
    struct admits *a = arg;
    a->calls++;
    a->last = st;
}

/* Exactly one answer per acquire; release counts once, whatever is called after. */
static void test_admission_holds_and_releases_once(void **state)
{
    (void)state;
    struct tg_admission adm = {0};
    struct tg_tenant tenant = {.name = "acme"};
    struct tg_route route = {.path = "/v1/chat"};
    struct tg_admit_ticket t1, t2;
    struct admits a = {0};
    tg_admission_acquire(&adm, &t1, &tenant, &route, on_admit, &a);
    tg_admission_acquire(&adm, &t2, &tenant, &route, on_admit, &a);
    assert_int_equal(a.calls, 2);
    assert_int_equal(a.last, TG_ADMIT_OK);
    assert_true(t1.held && t2.held);
    assert_ptr_equal(t1.tenant, &tenant);
    assert_int_equal(adm.held, 2);
    tg_admission_release(&adm, &t1);
    tg_admission_release(&adm, &t1); /* a second release is ignored */
    assert_int_equal(adm.held, 1);
    tg_admission_cancel(&adm, &t2); /* not waiting: nothing to withdraw */
    tg_admission_release(&adm, &t2);
    assert_int_equal(adm.held, 0);
    assert_int_equal(adm.granted, 2);
    struct tg_admit_ticket never = {0};
    tg_admission_release(&adm, &never); /* a request denied before admission */
    assert_int_equal(adm.held, 0);
}

static void test_actual_cost_by_outcome(void **state)
{
    (void)state;
    struct tg_request_info info;
    memset(&info, 0, sizeof(info));
    info.prompt_tokens_est = 10;
    struct tg_usage usage = {.have_tokens = true, .prompt_tokens = 12, .completion_tokens = 30};
    struct tg_cost c;
    /* delivered: what the upstream reported */
    struct tg_outcome out = {.usage = &usage};
    tg_account_actual(TG_COST_TOKENS, 4, &info, &out, &c);
    assert_int_equal(c.u[TG_UNIT_REQUESTS], U);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 42 * U);
    /* failed before anything reached the client, bodyless: one request */
    out = (struct tg_outcome){.failed_undelivered = true, .usage = &usage};
    tg_account_actual(TG_COST_TOKENS, 4, &info, &out, &c);
    assert_int_equal(c.u[TG_UNIT_REQUESTS], U);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    out = (struct tg_outcome){.bodyless = true};
    tg_account_actual(TG_COST_VIDEO, 4, &info, &out, &c);
    assert_int_equal(c.u[TG_UNIT_REQUESTS], U);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 0);
    /* refused by admission: nothing at all */
    out = (struct tg_outcome){.refused = true, .usage = &usage};
    tg_account_actual(TG_COST_TOKENS, 4, &info, &out, &c);
    for (int u = 0; u < TG_UNIT_COUNT; u++)
        assert_int_equal(c.u[u], 0);
    /* nothing read: the estimate's prompt plus the text that passed (none) */
    out = (struct tg_outcome){0};
    tg_account_actual(TG_COST_TOKENS, 4, &info, &out, &c);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 10 * U);
}

struct answer {
    int calls;
    struct tg_limit_result res;
};

static void on_limit(void *arg, const struct tg_limit_result *res)
{
    struct answer *a = arg;
    a->calls++;
    a->res = *res;
}

/* Reserve holds the estimate; commit settles actual − estimate per bucket. */
static void test_reserve_then_commit(void **state)
{
    (void)state;
    struct tg_limit limits[] = {
        {.name = "rpm", .unit = TG_UNIT_REQUESTS, .rate = 10, .per_ms = 3600000, .burst = 10},
        {.name = "tpm", .unit = TG_UNIT_TOKENS, .rate = 1000, .per_ms = 3600000, .burst = 1000},
    };
    struct tg_tenant tenant = {.name = "acme", .limits = limits, .nlimits = 2};
    struct tg_limiter *l = tg_limiter_local_create(1);
    assert_non_null(l);
    struct tg_cost est = {.u = {[TG_UNIT_REQUESTS] = U, [TG_UNIT_TOKENS] = 600 * U}};
    struct tg_limit_req req;
    struct answer a = {0};
    struct tg_config cfg = {0}; /* credits off */
    assert_int_equal(tg_account_reserve(l, &cfg, &tenant, &est, "", "r1", TG_PRIO_INTERACTIVE, &req, on_limit, &a), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(req.n, 2);
    assert_string_equal(req.tenant, "acme");
    assert_int_equal(a.res.b[1].remaining_u, 400 * U);
    /* a second one of 600 does not fit ... */
    struct tg_limit_req req2;
    assert_int_equal(tg_account_reserve(l, &cfg, &tenant, &est, "", "r2", TG_PRIO_INTERACTIVE, &req2, on_limit, &a), 0);
    assert_int_equal(a.res.status, TG_LIMIT_DENIED);
    /* ... until the first commits what it really cost: 100 tokens */
    struct tg_cost actual = {.u = {[TG_UNIT_REQUESTS] = U, [TG_UNIT_TOKENS] = 100 * U}};
    assert_int_equal(tg_account_commit(l, &cfg, "", &req, &actual), -1); /* no credits paid */
    assert_int_equal(tg_account_reserve(l, &cfg, &tenant, &est, "", "r2", TG_PRIO_INTERACTIVE, &req2, on_limit, &a), 0);
    assert_int_equal(a.res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(a.res.b[1].remaining_u, 300 * U);
    /* an actual equal to the estimate changes nothing */
    assert_int_equal(tg_account_commit(l, &cfg, "", &req2, &est), -1);
    assert_int_equal(tg_account_reserve(l, &cfg, &tenant, &est, "", "r3", TG_PRIO_INTERACTIVE, &req2, on_limit, &a), 0);
    assert_int_equal(a.res.status, TG_LIMIT_DENIED);
    tg_limiter_destroy(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_picks_the_routes_upstream),
        cmocka_unit_test(test_admission_holds_and_releases_once),
        cmocka_unit_test(test_actual_cost_by_outcome),
        cmocka_unit_test(test_reserve_then_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
