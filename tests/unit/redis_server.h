/* The redis-server the Redis tests run against: one per test binary, on a free
 * loopback port, started and killed by the test (and killed with it). Included by one
 * file of each test binary. */
#ifndef TOLLGATE_TEST_REDIS_SERVER_H
#define TOLLGATE_TEST_REDIS_SERVER_H

#include <netinet/in.h>
#include <arpa/inet.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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
#include "tollgate/common.h"
#include "tollgate/metrics.h"

static int port;
static pid_t redis_pid;
static bool have_redis;

/* ---- the redis-server under test ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *sync_conn(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static void redis_start(void)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", port);
    redis_pid = fork();
    assert_true(redis_pid >= 0);
    if (redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        redisContext *c = sync_conn();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) freeReplyObject(r);
            redisFree(c);
            if (ok) return;
        }
        usleep(10000);
    }
    fail_msg("redis-server did not start on port %d", port);
}

static void redis_kill(void)
{
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = 0;
}

/* Runs one command on a fresh connection; returns the reply (caller frees). */
static redisReply *cmd(const char *fmt, ...)
{
    redisContext *c = sync_conn();
    assert_non_null(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(r);
    return r;
}

/* In main: 0 when the server is up; else what main returns — 77 (skipped) when
 * redis-server is not installed, 1 in CI (CI=true), where its absence is a failure:
 * scripts/install-deps.sh installs it. */
static int redis_fixture_start(const char *what)
{
    have_redis = system("command -v redis-server >/dev/null 2>&1") == 0;
    if (!have_redis) {
        const char *ci = getenv("CI");
        bool in_ci = ci && strcmp(ci, "true") == 0;
        fprintf(stderr, "redis-server is not installed: %s%s\n",
                in_ci ? "failing (CI)" : "skipping ", in_ci ? "" : what);
        return in_ci ? 1 : 77;
    }
    port = free_port();
    redis_start();
    return 0;
}

#define NEED_REDIS()                                                                               \
    do {                                                                                           \
        if (!have_redis) skip();                                                                   \
    } while (0)

static void tick(evutil_socket_t fd, short what, void *arg) {}

/* Runs the loop until done(arg) or `ms` pass; returns done(arg). */
static bool spin(struct event_base *base, int ms, bool (*done)(void *), void *arg)
{
    struct event *t = event_new(base, -1, EV_PERSIST, tick, NULL);
    struct timeval tv = {0, 2000};
    event_add(t, &tv);
    int64_t end = tg_now_mono_ms() + ms;
    while (!(done && done(arg)) && tg_now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return done && done(arg);
}

/* The value of one series in the metrics as rendered now (0 when absent). */
static double metric(const char *series)
{
    struct evbuffer *b = evbuffer_new();
    tg_metrics_render(b);
    size_t len = evbuffer_get_length(b);
    char *text = malloc(len + 1);
    evbuffer_remove(b, text, len);
    text[len] = '\0';
    evbuffer_free(b);
    double v = 0;
    size_t sl = strlen(series);
    for (char *line = text; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, series, sl) == 0 && line[sl] == ' ') v = atof(line + sl + 1);
    free(text);
    return v;
}

#endif
