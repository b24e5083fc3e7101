/* Tests of the Redis limiter against a real redis-server: parity with the C math, TTLs, settles,
 * failures. */
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include "tollgate/limiter.h"
#include "tollgate/metrics.h"
#include "redis_server.h"

#define U TG_MICRO
#define DAY 86400000
#define TIMEOUT_MS 50         /* the timeout test's limiter */
#define SLACK_TIMEOUT_MS 1000 /* everyone else's: slow sanitizer builds must not time out */
#define MARGIN_MS 600         /* how late past its deadline a timed-out check may be answered */

static long long cmd_int(const char *fmt, const char *arg)
{
    redisReply *r = cmd(fmt, arg);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* The stored "<level> <updated>" of a key; false if there is none. */
static bool get_bucket(const char *key, struct tg_bucket *b)
{
    redisReply *r = cmd("GET %s", key);
    bool found = r->type == REDIS_REPLY_STRING;
    if (found) {
        long long l, t;
        assert_int_equal(sscanf(r->str, "%lld %lld", &l, &t), 2);
        b->level_u = l;
        b->updated_ms = t;
    }
    freeReplyObject(r);
    return found;
}

static long long evalsha_calls(void)
{
    redisReply *r = cmd("INFO commandstats");
    const char *s = strstr(r->str, "cmdstat_evalsha:calls=");
    long long v = s ? atoll(s + strlen("cmdstat_evalsha:calls=")) : 0;
    freeReplyObject(r);
    return v;
}

/* ---- limiter plumbing ---- */

static void make_config(struct tg_config *cfg, const char *prefix, enum tg_on_redis_error policy,
                        int timeout_ms)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->limiter.backend = TG_LIMITER_REDIS;
    struct sockaddr_in *a = (struct sockaddr_in *)&cfg->limiter.redis.addr;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cfg->limiter.redis.addrlen = sizeof(*a);
    cfg->limiter.redis.host = "127.0.0.1";
    cfg->limiter.redis.port = port;
    cfg->limiter.redis.password = "";
    cfg->limiter.redis.timeout_ms = timeout_ms;
    cfg->limiter.redis.key_prefix = (char *)prefix;
    cfg->limiter.on_redis_error = policy;
    cfg->limiter.expected_gateways = 1;
}

static bool is_ready(void *l)
{
    return tg_limiter_ready(l);
}

struct answer {
    int calls;
    struct tg_limit_result res;
    int64_t at_ms;
};

static void on_answer(void *arg, const struct tg_limit_result *res)
{
    struct answer *a = arg;
    a->calls++;
    a->res = *res;
    a->at_ms = tg_now_mono_ms();
}

/* For spin(): every one of n answers has come. */
struct answers {
    struct answer *a;
    int n;
};

static bool all_answered(void *arg)
{
    const struct answers *as = arg;
    for (int i = 0; i < as->n; i++)
        if (as->a[i].calls == 0) return false;
    return true;
}

static bool answered(void *arg)
{
    return ((struct answer *)arg)->calls > 0;
}

static struct tg_limit_result check(struct event_base *base, struct tg_limiter *l,
                                    const struct tg_limit_req *req)
{
    struct answer a = {0};
    assert_int_equal(tg_limiter_check(l, req, on_answer, &a), 0);
    assert_true(spin(base, 3000, answered, &a));
    assert_int_equal(a.calls, 1);
    return a.res;
}

static struct tg_limit mk(const char *name, enum tg_unit unit, double rate, int64_t per_ms,
                          double burst)
{
    return (struct tg_limit){
        .name = (char *)name, .unit = unit, .rate = rate, .per_ms = per_ms, .burst = burst};
}

struct env {
    struct event_base *base;
    struct tg_config cfg;
    struct tg_limiter *fallback;
    struct tg_limiter *l;
};

static void env_open_timeout(struct env *e, const char *prefix, enum tg_on_redis_error policy,
                             int timeout_ms)
{
    e->base = event_base_new();
    make_config(&e->cfg, prefix, policy, timeout_ms);
    e->fallback = tg_limiter_local_create(1);
    e->l = tg_limiter_redis_create(e->base, &e->cfg, e->fallback);
    assert_non_null(e->l);
    assert_string_equal(e->l->ops->name, "redis");
}

static void env_open(struct env *e, const char *prefix, enum tg_on_redis_error policy)
{
    env_open_timeout(e, prefix, policy, SLACK_TIMEOUT_MS);
}

/* Waits until Redis answers (ready means "or in fallback" for allow). */
static void env_wait_up(struct env *e)
{
    if (e->cfg.limiter.on_redis_error == TG_REDIS_ERROR_DENY) {
        assert_true(spin(e->base, 5000, is_ready, e->l));
        return;
    }
    struct tg_limit probe = mk("probe", TG_UNIT_REQUESTS, 1000, 1000, 0);
    struct tg_limit_req r = {.tenant = "probe", .n = 1};
    r.b[0] = (struct tg_bucket_ref){&probe, 0};
    for (int i = 0; i < 500; i++) {
        if (!check(e->base, e->l, &r).fallback) return;
        spin(e->base, 10, NULL, NULL);
    }
    fail_msg("allow limiter never reached redis");
}

static void env_close(struct env *e)
{
    tg_limiter_destroy(e->l);
    tg_limiter_destroy(e->fallback);
    event_base_free(e->base);
}

static bool calls_reached(void *arg)
{
    return evalsha_calls() >= *(long long *)arg;
}

/* Runs the loop until Redis has executed `target` EVALSHA calls in all. */
static void wait_evalsha(struct env *e, long long target)
{
    assert_true(spin(e->base, 3000, calls_reached, &target));
}

/* Settles and waits until the flush has run in Redis (`calls` EVALSHA). */
static void settle_and_flush(struct env *e, const struct tg_limit_req *req, const int64_t *delta,
                             int calls)
{
    long long target = evalsha_calls() + calls;
    tg_limiter_settle(e->l, req, delta);
    wait_evalsha(e, target);
}

/* ---- parity: Lua and C give the same answers, to the micro-unit ---- */

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(uint64_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

static void test_parity(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "par:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    struct tg_limit limits[] = {
        mk("rpm", TG_UNIT_REQUESTS, 60, 60000, 0),
        mk("tps", TG_UNIT_TOKENS, 7.3, 1000, 40),
        mk("vsx", TG_UNIT_VIDEO_SECONDS, 1.1, 1000, 10.5),
        mk("tpm", TG_UNIT_TOKENS, 1000.0 / 3.0, 60000, 0),
    };
    const char *keys[] = {"par:{acme}:rpm", "par:{acme}:tps", "par:{acme}:vsx", "par:{acme}:tpm"};
    struct tg_bucket c[4] = {TG_BUCKET_FULL, TG_BUCKET_FULL, TG_BUCKET_FULL, TG_BUCKET_FULL};
    struct tg_bucket *cp[4] = {&c[0], &c[1], &c[2], &c[3]};
    int64_t now = 1700000000000LL;
    int allowed = 0, denied = 0, settles = 0;
    for (int step = 0; step < 300; step++) {
        uint64_t k = rnd(100);
        now += k < 10 ? 0 : k < 15 ? -700 : (int64_t)rnd(3000);
        struct tg_limit_req req = {.tenant = "acme", .n = 4};
        req.b[0] = (struct tg_bucket_ref){&limits[0], U};
        req.b[1] = (struct tg_bucket_ref){&limits[1], (int64_t)rnd(15 * U)};
        req.b[2] = (struct tg_bucket_ref){&limits[2], (int64_t)rnd(3 * U)};
        req.b[3] = (struct tg_bucket_ref){&limits[3], (int64_t)rnd(12) * U};
        tg_limiter_redis_set_clock(e.l, now);
        struct tg_limit_result got = check(e.base, e.l, &req);

        struct tg_bucket_param p[4];
        int64_t level[4];
        for (int i = 0; i < 4; i++)
            tg_bucket_param_init(&p[i], req.b[i].limit, 1, req.b[i].cost_u);
        struct tg_limit_result want;
        tg_limiter_result_fill(p, level, 4, tg_bucket_check(cp, p, 4, now, level), &want);

        assert_int_equal(got.status, want.status);
        assert_int_equal(got.denied, want.denied);
        assert_int_equal(got.retry_ms, want.retry_ms);
        assert_false(got.fallback);
        assert_int_equal(got.n, 4);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(got.b[i].limit_u, want.b[i].limit_u);
            assert_int_equal(got.b[i].remaining_u, want.b[i].remaining_u);
            assert_int_equal(got.b[i].reset_ms, want.b[i].reset_ms);
        }
        if (got.status == TG_LIMIT_ALLOWED) {
            allowed++;
            if (rnd(3) == 0) { /* settle: charges (into debt) and refunds */
                int64_t delta[4] = {0, (int64_t)rnd(30 * U) - 15 * U, (int64_t)rnd(4 * U) - 2 * U,
                                    (int64_t)rnd(60) * U - 20 * U};
                settle_and_flush(&e, &req, delta, 1);
                for (int i = 1; i < 4; i++) {
                    struct tg_bucket_param sp;
                    tg_bucket_param_init(&sp, req.b[i].limit, 1, delta[i]);
                    if (delta[i] != 0) tg_bucket_settle(&c[i], &sp, now);
                }
                settles++;
            }
        } else {
            denied++;
        }
        for (int i = 0; i < 4; i++) { /* the stored state too */
            struct tg_bucket s;
            if (get_bucket(keys[i], &s)) {
                assert_int_equal(s.level_u, c[i].level_u);
                assert_int_equal(s.updated_ms, c[i].updated_ms);
            } else {
                assert_int_equal(tg_bucket_refill(&c[i], now, p[i].rate, p[i].per_ms, p[i].cap_u),
                                 p[i].cap_u);
            }
        }
    }
    print_message("parity: %d allowed, %d denied, %d settles\n", allowed, denied, settles);
    /* the sequence exercised both outcomes and settles */
    assert_true(allowed > 30);
    assert_true(denied > 30);
    assert_true(settles > 10);
    env_close(&e);
}

/* ---- all-or-nothing in Redis ---- */

static void test_all_or_nothing(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "aon:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    tg_limiter_redis_set_clock(e.l, 5000000);
    struct tg_limit a = mk("a", TG_UNIT_TOKENS, 1, DAY, 10);
    struct tg_limit b = mk("b", TG_UNIT_TOKENS, 1, DAY, 3);
    struct tg_limit_req r = {.tenant = "acme", .n = 2};
    r.b[0] = (struct tg_bucket_ref){&a, 2 * U};
    r.b[1] = (struct tg_bucket_ref){&b, 2 * U};
    struct tg_limit_result res = check(e.base, e.l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].remaining_u, 8 * U);
    assert_int_equal(res.b[1].remaining_u, 1 * U);
    tg_limiter_redis_set_clock(e.l, 5000100);
    res = check(e.base, e.l, &r);
    assert_int_equal(res.status, TG_LIMIT_DENIED);
    assert_int_equal(res.denied, 1);
    assert_int_equal(res.b[0].remaining_u, 8 * U + 1); /* refilled, not stored */
    struct tg_bucket s;
    assert_true(get_bucket("aon:{acme}:a", &s));
    assert_int_equal(s.level_u, 8 * U);
    assert_int_equal(s.updated_ms, 5000000);
    assert_true(get_bucket("aon:{acme}:b", &s));
    assert_int_equal(s.level_u, 1 * U);
    assert_int_equal(s.updated_ms, 5000000);
    env_close(&e);
}

static void test_too_large_never_reaches_redis(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "big:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    struct tg_limit a = mk("a", TG_UNIT_TOKENS, 100, 60000, 0);
    struct tg_limit_req r = {.tenant = "acme", .n = 1};
    r.b[0] = (struct tg_bucket_ref){&a, 101 * U};
    long long calls = evalsha_calls();
    struct answer ans = {0};
    assert_int_equal(tg_limiter_check(e.l, &r, on_answer, &ans), 0);
    assert_int_equal(ans.calls, 1); /* answered at once */
    assert_int_equal(ans.res.status, TG_LIMIT_TOO_LARGE);
    assert_int_equal(ans.res.denied, 0);
    assert_int_equal(evalsha_calls(), calls);
    assert_int_equal(cmd_int("EXISTS %s", "big:{acme}:a"), 0);
    env_close(&e);
}

/* ---- TTLs ---- */

static bool keys_gone(void *arg)
{
    const char **k = arg;
    return cmd_int("EXISTS %s", k[0]) == 0 && cmd_int("EXISTS %s", k[1]) == 0 &&
           cmd_int("EXISTS %s", k[2]) == 0;
}

static void test_ttl(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "ttl:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    struct tg_limit a = mk("a", TG_UNIT_REQUESTS, 10, 1000, 0);
    struct tg_limit b = mk("b", TG_UNIT_TOKENS, 10, 1000, 0);
    struct tg_limit c = mk("c", TG_UNIT_TOKENS, 10, 1000, 0);
    struct tg_limit_req r = {.tenant = "idle", .n = 2};
    r.b[0] = (struct tg_bucket_ref){&a, U};
    r.b[1] = (struct tg_bucket_ref){&b, 5 * U};
    assert_int_equal(check(e.base, e.l, &r).status, TG_LIMIT_ALLOWED);
    struct tg_limit_req s = {.tenant = "idle", .n = 1};
    s.b[0] = (struct tg_bucket_ref){&c, 0};
    int64_t charge = 3 * U;
    settle_and_flush(&e, &s, &charge, 1);
    long long ta = cmd_int("PTTL %s", "ttl:{idle}:a");
    long long tb = cmd_int("PTTL %s", "ttl:{idle}:b");
    long long tc = cmd_int("PTTL %s", "ttl:{idle}:c");
    /* time to full + 1000 ms margin: 100, 500 and 300 ms of refill */
    assert_true(ta > 900 && ta <= 1100);
    assert_true(tb > 1300 && tb <= 1500);
    assert_true(tc > 1100 && tc <= 1300);
    const char *keys[] = {"ttl:{idle}:a", "ttl:{idle}:b", "ttl:{idle}:c"};
    assert_true(spin(e.base, 3000, keys_gone, keys));
    env_close(&e);
}

/* ---- settles ---- */

static void test_settle_coalescing(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "set:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    tg_limiter_redis_set_clock(e.l, 9000000);
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 1000);
    struct tg_limit_req r = {.tenant = "co", .n = 1};
    r.b[0] = (struct tg_bucket_ref){&t, 100 * U};
    assert_int_equal(check(e.base, e.l, &r).status, TG_LIMIT_ALLOWED);
    long long calls = evalsha_calls();
    int64_t d1 = 10 * U, d2 = -30 * U, d3 = 5 * U;
    tg_limiter_settle(e.l, &r, &d1);
    tg_limiter_settle(e.l, &r, &d2);
    settle_and_flush(&e, &r, &d3, 1);
    spin(e.base, 20, NULL, NULL);
    assert_int_equal(evalsha_calls(), calls + 1); /* three settles, one call */
    struct tg_bucket s;
    assert_true(get_bucket("set:{co}:tpm", &s));
    assert_int_equal(s.level_u, 915 * U);

    /* 128 pending keys flush at once, as one call per tenant */
    static const char *tenants[] = {"t0", "t1", "t2", "t3"};
    static char names[32][8];
    struct tg_limit lim[32];
    for (int i = 0; i < 32; i++) {
        snprintf(names[i], sizeof(names[i]), "l%d", i);
        lim[i] = mk(names[i], TG_UNIT_TOKENS, 1, DAY, 100);
    }
    int64_t one[32];
    for (int i = 0; i < 32; i++)
        one[i] = U;
    struct tg_limit_req q = {.n = 32};
    for (int i = 0; i < 32; i++)
        q.b[i] = (struct tg_bucket_ref){&lim[i], 0};
    calls = evalsha_calls();
    for (int t_ = 0; t_ < 4; t_++) {
        q.tenant = tenants[t_];
        tg_limiter_settle(e.l, &q, one);
    }
    q.tenant = "t0";
    q.n = 1;
    tg_limiter_settle(e.l, &q, one); /* after the 128-key flush: a batch of its own */
    wait_evalsha(&e, calls + 5);
    spin(e.base, 20, NULL, NULL);
    assert_int_equal(evalsha_calls(), calls + 5);
    assert_true(get_bucket("set:{t0}:l0", &s));
    assert_int_equal(s.level_u, 98 * U);
    assert_true(get_bucket("set:{t3}:l31", &s));
    assert_int_equal(s.level_u, 99 * U);

    /* a settle of a check that fell back goes to the fallback limiter */
    calls = evalsha_calls();
    struct tg_limit f = mk("fb", TG_UNIT_TOKENS, 1, DAY, 50);
    struct tg_limit_req fr = {.tenant = "co", .fallback = true, .n = 1};
    fr.b[0] = (struct tg_bucket_ref){&f, 0};
    int64_t fd = 20 * U;
    settle_and_flush(&e, &fr, &fd, 0);
    spin(e.base, 20, NULL, NULL);
    assert_int_equal(evalsha_calls(), calls);
    struct answer a = {0};
    assert_int_equal(tg_limiter_check(e.fallback, &fr, on_answer, &a), 0);
    assert_int_equal(a.res.b[0].remaining_u / U, 30);
    env_close(&e);
}

/* ---- NOSCRIPT ---- */

static void test_noscript(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "nos:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    tg_limiter_redis_set_clock(e.l, 7000000);
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 10);
    struct tg_limit_req r = {.tenant = "acme", .n = 1};
    r.b[0] = (struct tg_bucket_ref){&t, U};
    struct tg_limit_result res = check(e.base, e.l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_int_equal(res.b[0].remaining_u, 9 * U);
    const char *series = "tollgate_redis_errors_total{kind=\"noscript\"}";
    double before = metric(series);
    freeReplyObject(cmd("SCRIPT FLUSH"));
    res = check(e.base, e.l, &r); /* loaded again and resent: the caller sees nothing */
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_false(res.fallback);
    assert_int_equal(res.b[0].remaining_u, 8 * U);
    assert_true(metric(series) == before + 1);
    freeReplyObject(cmd("SCRIPT FLUSH"));
    int64_t d = 3 * U;
    settle_and_flush(&e, &r, &d, 2); /* refused with NOSCRIPT, then resent */
    struct tg_bucket s;
    assert_true(get_bucket("nos:{acme}:tpm", &s));
    assert_int_equal(s.level_u, 5 * U);
    assert_true(metric(series) == before + 2);
    env_close(&e);
}

/* ---- failures: timeout, restart ---- */

static struct tg_limit fail_limit;
static struct tg_limit_req fail_req(void)
{
    fail_limit = mk("rpm", TG_UNIT_REQUESTS, 1000000, 1000, 0);
    struct tg_limit_req r = {.tenant = "acme", .n = 1};
    r.b[0] = (struct tg_bucket_ref){&fail_limit, U};
    return r;
}

static void test_timeout(void **state)
{
    NEED_REDIS();
    struct env d, a;
    env_open_timeout(&d, "to:", TG_REDIS_ERROR_DENY, TIMEOUT_MS);
    env_open_timeout(&a, "to:", TG_REDIS_ERROR_ALLOW, TIMEOUT_MS);
    env_wait_up(&d);
    env_wait_up(&a);
    struct tg_limit_req r = fail_req();
    const char *series = "tollgate_redis_errors_total{kind=\"timeout\"}";
    double before = metric(series);

    kill(redis_pid, SIGSTOP);
    struct answer x = {0};
    int64_t t0 = tg_now_mono_ms();
    assert_int_equal(tg_limiter_check(d.l, &r, on_answer, &x), 0);
    assert_int_equal(x.calls, 0);
    assert_true(spin(d.base, 2000, answered, &x));
    assert_int_equal(x.calls, 1);
    assert_int_equal(x.res.status, TG_LIMIT_ERROR);
    assert_true(x.at_ms - t0 >= TIMEOUT_MS - 2);
    assert_true(x.at_ms - t0 <= TIMEOUT_MS + MARGIN_MS);
    assert_false(tg_limiter_ready(d.l));
    struct answer y = {0}; /* while down: answered at once */
    assert_int_equal(tg_limiter_check(d.l, &r, on_answer, &y), 0);
    assert_int_equal(y.calls, 1);
    assert_int_equal(y.res.status, TG_LIMIT_ERROR);

    struct answer z = {0};
    t0 = tg_now_mono_ms();
    assert_int_equal(tg_limiter_check(a.l, &r, on_answer, &z), 0);
    assert_true(spin(a.base, 2000, answered, &z));
    assert_int_equal(z.res.status, TG_LIMIT_ALLOWED);
    assert_true(z.res.fallback);
    assert_true(z.at_ms - t0 <= TIMEOUT_MS + MARGIN_MS);
    assert_true(tg_limiter_ready(a.l)); /* allow: the fallback answers */
    assert_true(metric(series) >= before + 2);

    kill(redis_pid, SIGCONT);
    env_wait_up(&d);
    struct tg_limit_result res = check(d.base, d.l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_false(res.fallback);
    env_wait_up(&a);
    env_close(&d);
    env_close(&a);
}

static bool not_ready(void *l)
{
    return !tg_limiter_ready(l);
}

static void test_restart(void **state)
{
    NEED_REDIS();
    struct env d;
    env_open(&d, "rs:", TG_REDIS_ERROR_DENY);
    assert_false(tg_limiter_ready(d.l)); /* not before the scripts are loaded */
    env_wait_up(&d);
    struct tg_limit_req r = fail_req();
    const char *series = "tollgate_redis_errors_total{kind=\"connect\"}";
    double before = metric(series);
    redis_kill();
    assert_true(spin(d.base, 2000, not_ready, d.l));
    struct answer y = {0};
    assert_int_equal(tg_limiter_check(d.l, &r, on_answer, &y), 0);
    assert_int_equal(y.calls, 1);
    assert_int_equal(y.res.status, TG_LIMIT_ERROR);
    redis_start();
    env_wait_up(&d); /* reconnects and loads the scripts by itself */
    struct tg_limit_result res = check(d.base, d.l, &r);
    assert_int_equal(res.status, TG_LIMIT_ALLOWED);
    assert_true(metric(series) > before);
    env_close(&d);
}

/* ---- cancel, bounds, destroy ---- */

static void test_cancel_refunds(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "can:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    tg_limiter_redis_set_clock(e.l, 3000000);
    struct tg_limit rpm = mk("rpm", TG_UNIT_REQUESTS, 1, DAY, 10);
    struct tg_limit tpm = mk("tpm", TG_UNIT_TOKENS, 1, DAY, 100);
    struct tg_limit_req r = {.tenant = "acme", .n = 2};
    r.b[0] = (struct tg_bucket_ref){&rpm, U};
    r.b[1] = (struct tg_bucket_ref){&tpm, 40 * U};
    struct answer a = {0};
    long long calls = evalsha_calls();
    /* Abandoned before it was sent: no call at all. */
    assert_int_equal(tg_limiter_check(e.l, &r, on_answer, &a), 0);
    tg_limiter_cancel(e.l, &a);
    spin(e.base, 50, NULL, NULL);
    assert_int_equal(a.calls, 0);
    assert_int_equal(evalsha_calls(), calls);
    struct tg_bucket s;
    assert_false(get_bucket("can:{acme}:rpm", &s));
    /* Abandoned after it was sent and admitted: everything is given back.
     * CLIENT PAUSE holds Redis's reply until the cancel has happened. */
    freeReplyObject(cmd("CLIENT PAUSE %s", "300"));
    assert_int_equal(tg_limiter_check(e.l, &r, on_answer, &a), 0);
    event_base_loop(e.base, EVLOOP_NONBLOCK); /* the batch is formed and sent */
    tg_limiter_cancel(e.l, &a);
    wait_evalsha(&e, calls + 2); /* the check, then the refund */
    spin(e.base, 20, NULL, NULL);
    assert_int_equal(a.calls, 0);
    assert_true(get_bucket("can:{acme}:rpm", &s));
    assert_int_equal(s.level_u, 10 * U);
    assert_true(get_bucket("can:{acme}:tpm", &s));
    assert_int_equal(s.level_u, 100 * U);
    env_close(&e);
}

/* Checks that arrive while a round of batches is out wait for it, then go
 * together: two rounds, two calls, for three checks in three loop turns. */
static void test_one_round_in_flight(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "rnd:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    tg_limiter_redis_set_clock(e.l, 3000000);
    struct tg_limit rpm = mk("rpm", TG_UNIT_REQUESTS, 1, DAY, 10);
    struct tg_limit_req r = {.tenant = "acme", .n = 1};
    r.b[0] = (struct tg_bucket_ref){&rpm, U};
    struct answer a[3];
    memset(a, 0, sizeof(a));
    long long calls = evalsha_calls();
    freeReplyObject(cmd("CLIENT PAUSE %s", "300")); /* holds the first round's answer */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tg_limiter_check(e.l, &r, on_answer, &a[i]), 0);
        event_base_loop(e.base, EVLOOP_NONBLOCK); /* a loop turn of its own */
    }
    wait_evalsha(&e, calls + 2);
    spin(e.base, 50, NULL, NULL);
    assert_int_equal(evalsha_calls(), calls + 2);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].res.status, TG_LIMIT_ALLOWED);
        assert_int_equal(a[i].res.b[0].remaining_u, (9 - i) * U); /* judged in order */
    }
    env_close(&e);
}

/* A round of 256 checks on 17 buckets (4352 costs) is unpacked by bucket.lua
 * in more than one chunk: every check is judged as the C twin judges it, in
 * order, on one call. */
#define WIDE_N 17
#define WIDE_M 256
static struct answer wide[WIDE_M];

static void test_wide_round(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "wide:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    int64_t now = 5000000;
    tg_limiter_redis_set_clock(e.l, now);
    static char names[WIDE_N][8];
    struct tg_limit limits[WIDE_N];
    struct tg_bucket c[WIDE_N];
    struct tg_bucket *cp[WIDE_N];
    for (int k = 0; k < WIDE_N; k++) {
        snprintf(names[k], sizeof(names[k]), "l%d", k);
        limits[k] = mk(names[k], TG_UNIT_TOKENS, 1, DAY, k == WIDE_N - 1 ? 1000 : 60 + 10 * k);
        c[k] = (struct tg_bucket)TG_BUCKET_FULL;
        cp[k] = &c[k];
    }
    static struct tg_limit_req reqs[WIDE_M];
    memset(wide, 0, sizeof(wide));
    long long calls = evalsha_calls();
    for (int i = 0; i < WIDE_M; i++) { /* one loop turn: one round, one call */
        reqs[i] = (struct tg_limit_req){.tenant = "acme", .n = WIDE_N};
        for (int k = 0; k < WIDE_N; k++) /* the last rows only use the roomy last bucket */
            reqs[i].b[k] = (struct tg_bucket_ref){
                &limits[k], k == WIDE_N - 1 ? U : i < 200 ? (int64_t)rnd(3) * U : 0};
        assert_int_equal(tg_limiter_check(e.l, &reqs[i], on_answer, &wide[i]), 0);
    }
    assert_true(spin(e.base, 5000, all_answered, &(struct answers){wide, WIDE_M}));
    assert_int_equal(evalsha_calls(), calls + 1);
    int allowed = 0, denied = 0, allowed_after_denial = 0;
    for (int i = 0; i < WIDE_M; i++) {
        struct tg_bucket_param p[WIDE_N];
        int64_t level[WIDE_N];
        for (int k = 0; k < WIDE_N; k++)
            tg_bucket_param_init(&p[k], reqs[i].b[k].limit, 1, reqs[i].b[k].cost_u);
        struct tg_limit_result want;
        tg_limiter_result_fill(p, level, WIDE_N, tg_bucket_check(cp, p, WIDE_N, now, level),
                               &want);
        assert_int_equal(wide[i].calls, 1);
        assert_int_equal(wide[i].res.status, want.status);
        assert_int_equal(wide[i].res.denied, want.denied);
        for (int k = 0; k < WIDE_N; k++)
            assert_int_equal(wide[i].res.b[k].remaining_u, want.b[k].remaining_u);
        if (want.status == TG_LIMIT_ALLOWED) {
            allowed++;
            allowed_after_denial += denied > 0;
        } else {
            denied++;
        }
    }
    for (int k = 0; k < WIDE_N; k++) { /* what Redis stored is what C charged */
        char key[160];
        snprintf(key, sizeof(key), "wide:{acme}:%s", names[k]);
        struct tg_bucket got;
        assert_true(get_bucket(key, &got));
        assert_int_equal(got.level_u, c[k].level_u);
        assert_int_equal(got.updated_ms, c[k].updated_ms);
    }
    print_message("wide round: %d allowed (%d after the first denial), %d denied\n", allowed,
                  allowed_after_denial, denied);
    /* both outcomes, and allowed checks late in the round, past the first chunk */
    assert_true(allowed > 20 && denied > 20 && allowed_after_denial > 56);
    env_close(&e);
}

#define FLOOD 1100
static struct answer flood[FLOOD];

static void test_inflight_bound(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "fl:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    struct tg_limit_req r = fail_req();
    memset(flood, 0, sizeof(flood));
    for (int i = 0; i < FLOOD; i++)
        assert_int_equal(tg_limiter_check(e.l, &r, on_answer, &flood[i]), 0);
    int at_once = 0;
    for (int i = 0; i < FLOOD; i++) {
        if (flood[i].calls) {
            at_once++;
            assert_int_equal(flood[i].res.status, TG_LIMIT_ERROR);
        }
    }
    assert_int_equal(at_once, FLOOD - 1024);
    assert_true(spin(e.base, 5000, all_answered, &(struct answers){flood, FLOOD}));
    for (int i = 0; i < 1024; i++) {
        assert_int_equal(flood[i].calls, 1);
        assert_int_equal(flood[i].res.status, TG_LIMIT_ALLOWED);
    }
    env_close(&e);
}

static void test_destroy_with_pending(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, "dp:", TG_REDIS_ERROR_DENY);
    env_wait_up(&e);
    struct tg_limit_req r = fail_req();
    struct answer a = {0};
    assert_int_equal(tg_limiter_check(e.l, &r, on_answer, &a), 0);
    int64_t d = U;
    tg_limiter_settle(e.l, &r, &d);
    env_close(&e);
    assert_int_equal(a.calls, 0);
}

/* ---- several loops hammering one bucket ---- */

#define WORKERS 4
#define ATTEMPTS 200
#define DEPTH 8

struct worker {
    struct env e;
    struct tg_limit_req req;
    int issued, done, inflight, admitted, errors;
};

static void worker_issue(struct worker *w);

static void worker_answer(void *arg, const struct tg_limit_result *res)
{
    struct worker *w = arg;
    w->done++;
    w->inflight--;
    if (res->status == TG_LIMIT_ALLOWED)
        w->admitted++;
    else if (res->status != TG_LIMIT_DENIED)
        w->errors++;
    worker_issue(w);
}

static void worker_issue(struct worker *w)
{
    while (w->issued < ATTEMPTS && w->inflight < DEPTH) {
        w->issued++;
        w->inflight++;
        assert_int_equal(tg_limiter_check(w->e.l, &w->req, worker_answer, w), 0);
    }
}

static bool worker_done(void *arg)
{
    struct worker *w = arg;
    return w->done == ATTEMPTS;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    worker_issue(w);
    spin(w->e.base, 10000, worker_done, w);
    return NULL;
}

static void test_concurrency(void **state)
{
    NEED_REDIS();
    struct tg_limit t = mk("tpm", TG_UNIT_TOKENS, 10, 1000, 300);
    static struct worker w[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        env_open(&w[i].e, "cc:", TG_REDIS_ERROR_DENY);
        env_wait_up(&w[i].e);
        w[i].req = (struct tg_limit_req){.tenant = "shared", .n = 1};
        w[i].req.b[0] = (struct tg_bucket_ref){&t, U};
    }
    pthread_t th[WORKERS];
    int64_t t0 = tg_now_mono_ms();
    for (int i = 0; i < WORKERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    int admitted = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].done, ATTEMPTS);
        assert_int_equal(w[i].errors, 0);
        admitted += w[i].admitted;
    }
    double secs = (double)(tg_now_mono_ms() - t0) / 1000.0;
    assert_true(admitted >= 300 - 1);
    assert_true(admitted <= 300 + (int)(secs * 10) + 1);
    for (int i = 0; i < WORKERS; i++)
        env_close(&w[i].e);
}

int main(void)
{
    int skip = redis_fixture_start("the Redis limiter tests");
    if (skip) return skip;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity),
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_too_large_never_reaches_redis),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_settle_coalescing),
        cmocka_unit_test(test_noscript),
        cmocka_unit_test(test_cancel_refunds),
        cmocka_unit_test(test_one_round_in_flight),
        cmocka_unit_test(test_wide_round),
        cmocka_unit_test(test_inflight_bound),
        cmocka_unit_test(test_destroy_with_pending),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_restart),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (redis_pid > 0) redis_kill();
    return rc;
}
