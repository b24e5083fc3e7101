/* Tests of the Redis connection layer against a real redis-server: RESP building, set-up,
 * pipelining in order, NOSCRIPT reload and resend, deadlines, reconnect, AUTH, destroy. */
#include "redis_server.h"
#include "tollgate/metrics.h"
#include "tollgate/redis.h"

#define SLACK_TIMEOUT_MS 1000 /* slow sanitizer builds must not time out */

static const char echo_lua[] = "return ARGV[1]";
static const char *const scripts[] = {echo_lua};

/* ---- RESP building ---- */

static void test_resp(void **state)
{
    struct tg_resp c = {0};
    tg_resp_head(&c, '*', 5);
    tg_resp_bulk(&c, "SET", 3);
    tg_resp_bulk_int(&c, -1234567890123LL);
    tg_resp_bulk_int(&c, 0);
    tg_resp_bulk_double(&c, 0.1);
    tg_resp_bulk_double(&c, 0.1); /* from the per-thread cache: the same text */
    const char want[] = "*5\r\n$3\r\nSET\r\n$14\r\n-1234567890123\r\n$1\r\n0\r\n"
                        "$19\r\n0.10000000000000001\r\n$19\r\n0.10000000000000001\r\n";
    assert_false(c.failed);
    assert_int_equal(c.b.len, sizeof(want) - 1);
    assert_memory_equal(c.b.p, want, sizeof(want) - 1);
    tg_resp_reset(&c);
    assert_int_equal(c.b.len, 0);
    char big[3000];
    memset(big, 'x', sizeof(big));
    tg_resp_bulk(&c, big, sizeof(big)); /* grows past the first allocation */
    assert_int_equal(c.b.len, 3000 + 9);
    assert_memory_equal(c.b.p, "$3000\r\nxx", 9);
    c.failed = true; /* as after an append that ran out of memory: later appends do nothing */
    tg_resp_raw(&c, "y", 1);
    assert_int_equal(c.b.len, 3000 + 9);
    tg_buf_free(&c.b);
}

/* ---- the connection ---- */

struct env {
    struct event_base *base;
    struct tg_redis *r;
};

static void env_open(struct env *e, const char *password, int timeout_ms)
{
    e->base = event_base_new();
    assert_non_null(e->base);
    struct tg_redis_options o = {.host = "127.0.0.1",
                                 .port = port,
                                 .password = password,
                                 .timeout_ms = timeout_ms,
                                 .scripts = scripts,
                                 .nscripts = 1,
                                 .unavailable_note = "testing"};
    e->r = tg_redis_create(e->base, &o);
    assert_non_null(e->r);
}

static void env_close(struct env *e)
{
    tg_redis_destroy(e->r);
    event_base_free(e->base);
}

static bool is_up(void *r)
{
    return tg_redis_up(r);
}

static bool is_down(void *r)
{
    return !tg_redis_up(r);
}

static void env_wait_up(struct env *e)
{
    assert_true(spin(e->base, 3000, is_up, e->r));
}

#define MAX_ANSWERS 64

struct answers {
    int n;
    bool null[MAX_ANSWERS];
    char text[MAX_ANSWERS][32];
};

static void on_answer(void *arg, const redisReply *rp)
{
    struct answers *a = arg;
    assert_true(a->n < MAX_ANSWERS);
    a->null[a->n] = rp == NULL;
    a->text[a->n][0] = '\0';
    if (rp && (rp->type == REDIS_REPLY_STRING || rp->type == REDIS_REPLY_STATUS ||
               rp->type == REDIS_REPLY_ERROR))
        snprintf(a->text[a->n], sizeof(a->text[0]), "%.*s", (int)rp->len, rp->str);
    else if (rp && rp->type == REDIS_REPLY_INTEGER)
        snprintf(a->text[a->n], sizeof(a->text[0]), "%lld", rp->integer);
    a->n++;
}

struct wait_n {
    struct answers *a;
    int n;
};

static bool have_n(void *arg)
{
    struct wait_n *w = arg;
    return w->a->n >= w->n;
}

static void wait_answers(struct env *e, struct answers *a, int n, int ms)
{
    struct wait_n w = {a, n};
    assert_true(spin(e->base, ms, have_n, &w));
}

static void resp_cmd(struct tg_resp *c, const char *const *argv, size_t argc)
{
    tg_resp_reset(c);
    tg_resp_head(c, '*', argc);
    for (size_t i = 0; i < argc; i++)
        tg_resp_bulk(c, argv[i], strlen(argv[i]));
}

static void test_setup_and_pipeline(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, NULL, SLACK_TIMEOUT_MS);
    struct tg_resp c = {0};
    resp_cmd(&c, (const char *const[]){"PING"}, 1);
    struct answers a = {0};
    assert_false(tg_redis_up(e.r)); /* not before the script is loaded */
    assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), -1);
    env_wait_up(&e);
    assert_int_equal(strlen(tg_redis_sha(e.r, 0)), 40);

    /* 40 calls queued in one turn come back in order */
    static struct tg_resp cmds[40];
    for (int i = 0; i < 40; i++) {
        char v[16];
        snprintf(v, sizeof(v), "v%d", i);
        const char *argv[] = {"EVALSHA", tg_redis_sha(e.r, 0), "0", v};
        resp_cmd(&cmds[i], argv, 4);
        assert_int_equal(tg_redis_send(e.r, &cmds[i], 0, on_answer, &a), 0);
    }
    tg_redis_flush(e.r);
    assert_int_equal(a.n, 0); /* answers come from the loop, never from send */
    wait_answers(&e, &a, 40, 3000);
    for (int i = 0; i < 40; i++) {
        char v[16];
        snprintf(v, sizeof(v), "v%d", i);
        assert_false(a.null[i]);
        assert_string_equal(a.text[i], v);
    }
    for (int i = 0; i < 40; i++)
        tg_buf_free(&cmds[i].b);

    /* a command that ran out of memory while written is refused */
    c.failed = true;
    assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), -1);
    tg_buf_free(&c.b);
    env_close(&e);
}

static void test_noscript_resend(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, NULL, SLACK_TIMEOUT_MS);
    env_wait_up(&e);
    const char *series = "tollgate_redis_errors_total{kind=\"noscript\"}";
    double before = metric(series);
    freeReplyObject(cmd("SCRIPT FLUSH"));
    struct tg_resp c1 = {0}, c2 = {0};
    resp_cmd(&c1, (const char *const[]){"EVALSHA", tg_redis_sha(e.r, 0), "0", "one"}, 4);
    resp_cmd(&c2, (const char *const[]){"EVALSHA", tg_redis_sha(e.r, 0), "0", "two"}, 4);
    struct answers a = {0};
    assert_int_equal(tg_redis_send(e.r, &c1, 0, on_answer, &a), 0);
    assert_int_equal(tg_redis_send(e.r, &c2, 0, on_answer, &a), 0);
    wait_answers(&e, &a, 2, 3000);
    /* both refused, the script loaded once, both resent: the caller sees the replies */
    assert_false(a.null[0]);
    assert_false(a.null[1]);
    assert_string_equal(a.text[0], "one");
    assert_string_equal(a.text[1], "two");
    assert_true(metric(series) == before + 2);

    /* without a script index, NOSCRIPT is the caller's reply */
    freeReplyObject(cmd("SCRIPT FLUSH"));
    assert_int_equal(tg_redis_send(e.r, &c1, TG_REDIS_NO_SCRIPT, on_answer, &a), 0);
    wait_answers(&e, &a, 3, 3000);
    assert_false(a.null[2]);
    assert_memory_equal(a.text[2], "NOSCRIPT", 8);
    assert_true(tg_redis_up(e.r)); /* an error reply is no reason to reconnect */
    tg_buf_free(&c1.b);
    tg_buf_free(&c2.b);
    env_close(&e);
}

static void test_deadline_and_reconnect(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, NULL, 80);
    env_wait_up(&e);
    const char *series = "tollgate_redis_errors_total{kind=\"timeout\"}";
    double before = metric(series);
    struct tg_resp c = {0};
    resp_cmd(&c, (const char *const[]){"PING"}, 1);
    struct answers a = {0};
    kill(redis_pid, SIGSTOP);
    int64_t t0 = tg_now_mono_ms();
    assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), 0);
    assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), 0);
    wait_answers(&e, &a, 2, 3000);
    int64_t took = tg_now_mono_ms() - t0;
    assert_true(a.null[0] && a.null[1]); /* every call in flight: no answer */
    assert_true(took >= 78 && took < 80 + 600);
    assert_false(tg_redis_up(e.r));
    assert_true(metric(series) == before + 1); /* one connection lost, not one per call */
    assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), -1);
    kill(redis_pid, SIGCONT);
    env_wait_up(&e); /* reconnects by itself */
    assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), 0);
    wait_answers(&e, &a, 3, 3000);
    assert_string_equal(a.text[2], "PONG");

    /* a restarted server: down, then up again with the script loaded again */
    redis_kill();
    assert_true(spin(e.base, 3000, is_down, e.r));
    redis_start();
    env_wait_up(&e);
    resp_cmd(&c, (const char *const[]){"EVALSHA", tg_redis_sha(e.r, 0), "0", "back"}, 4);
    assert_int_equal(tg_redis_send(e.r, &c, 0, on_answer, &a), 0);
    wait_answers(&e, &a, 4, 3000);
    assert_string_equal(a.text[3], "back");
    tg_buf_free(&c.b);
    env_close(&e);
}

static void test_idle_ping_notices_a_dead_server(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, NULL, 80);
    env_wait_up(&e);
    kill(redis_pid, SIGSTOP);
    /* nothing sent: the idle PING (every second) times out and the state follows */
    bool down = spin(e.base, 3000, is_down, e.r);
    kill(redis_pid, SIGCONT);
    assert_true(down);
    env_wait_up(&e);
    env_close(&e);
}

static void test_auth(void **state)
{
    NEED_REDIS();
    freeReplyObject(cmd("CONFIG SET requirepass s3cret"));
    struct env good, bad;
    env_open(&good, "s3cret", SLACK_TIMEOUT_MS);
    env_open(&bad, "wrong", SLACK_TIMEOUT_MS);
    env_wait_up(&good);
    bool bad_up = spin(bad.base, 300, is_up, bad.r);
    env_close(&bad);
    struct tg_resp c = {0};
    resp_cmd(&c, (const char *const[]){"CONFIG", "SET", "requirepass", ""}, 4);
    struct answers a = {0};
    assert_int_equal(tg_redis_send(good.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), 0);
    wait_answers(&good, &a, 1, 3000);
    assert_string_equal(a.text[0], "OK");
    assert_false(bad_up); /* a wrong password never comes up */
    tg_buf_free(&c.b);
    env_close(&good);
}

static void test_destroy_answers_pending(void **state)
{
    NEED_REDIS();
    struct env e;
    env_open(&e, NULL, SLACK_TIMEOUT_MS);
    env_wait_up(&e);
    struct tg_resp c = {0};
    resp_cmd(&c, (const char *const[]){"PING"}, 1);
    struct answers a = {0};
    kill(redis_pid, SIGSTOP);
    for (int i = 0; i < 3; i++)
        assert_int_equal(tg_redis_send(e.r, &c, TG_REDIS_NO_SCRIPT, on_answer, &a), 0);
    tg_redis_destroy(e.r);
    kill(redis_pid, SIGCONT);
    assert_int_equal(a.n, 3); /* each exactly once, with no reply */
    assert_true(a.null[0] && a.null[1] && a.null[2]);
    event_base_free(e.base);
    tg_buf_free(&c.b);
}

int main(void)
{
    int skip = redis_fixture_start("the Redis connection tests");
    if (skip) return skip;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resp),
        cmocka_unit_test(test_setup_and_pipeline),
        cmocka_unit_test(test_noscript_resend),
        cmocka_unit_test(test_deadline_and_reconnect),
        cmocka_unit_test(test_idle_ping_notices_a_dead_server),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_destroy_answers_pending),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (redis_pid > 0) redis_kill();
    return rc;
}
