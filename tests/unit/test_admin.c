/* Tests for admin.c: the admin listener as an operator's curl and a scraper see it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <event2/event.h>
#include "tollgate/admin.h"
#include "tollgate/metrics.h"

struct readiness {
    bool ready;
    const char *why;
    int asked;
};

static bool ready_fn(void *arg, char *why, size_t cap)
{
    struct readiness *r = arg;
    r->asked++;
    if (!r->ready) snprintf(why, cap, "%s", r->why);
    return r->ready;
}

struct fixture {
    struct event_base *base;
    struct tg_admin *admin;
    struct readiness readiness;
    int port;
    int wake[2];
};

/* One HTTP exchange done by a client thread while the test thread runs the loop. */
struct exchange {
    int port;
    const char *request;
    int wake_fd;
    char response[65536];
    size_t len;
    int status;
    const char *body; /* into response */
};

static void *client(void *arg)
{
    struct exchange *x = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)x->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0) {
        size_t rl = strlen(x->request);
        if (write(fd, x->request, rl) == (ssize_t)rl) {
            ssize_t n;
            while (x->len < sizeof(x->response) - 1 &&
                   (n = read(fd, x->response + x->len, sizeof(x->response) - 1 - x->len)) > 0)
                x->len += (size_t)n;
        }
    }
    if (fd >= 0) close(fd);
    x->response[x->len] = '\0';
    if (write(x->wake_fd, "x", 1) != 1) abort();
    return NULL;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    char c;
    if (read(fd, &c, 1) != 1) abort();
    event_base_loopbreak(arg);
}

/* Sends `request` and returns the parsed exchange (caller frees). */
static struct exchange *fetch(struct fixture *f, const char *request)
{
    struct exchange *x = calloc(1, sizeof(*x));
    assert_non_null(x);
    x->port = f->port;
    x->request = request;
    x->wake_fd = f->wake[1];
    struct event *ev = event_new(f->base, f->wake[0], EV_READ, on_wake, f->base);
    assert_non_null(ev);
    event_add(ev, NULL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, client, x), 0);
    event_base_dispatch(f->base);
    pthread_join(t, NULL);
    event_free(ev);
    assert_true(sscanf(x->response, "HTTP/1.1 %d ", &x->status) == 1 ||
                sscanf(x->response, "HTTP/1.0 %d ", &x->status) == 1);
    char *sep = strstr(x->response, "\r\n\r\n");
    assert_non_null(sep);
    x->body = sep + 4;
    return x;
}

static struct exchange *get(struct fixture *f, const char *path, const char *extra)
{
    static char req[1024];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n",
             path, extra ? extra : "");
    return fetch(f, req);
}

/* The value of header `name` in the response, or NULL (static buffer). */
static const char *header(const struct exchange *x, const char *name)
{
    static char value[512];
    size_t nl = strlen(name);
    const char *end = strstr(x->response, "\r\n\r\n");
    for (const char *p = strstr(x->response, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
        const char *h = p + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            h += nl + 1;
            while (*h == ' ')
                h++;
            const char *e = strstr(h, "\r\n");
            snprintf(value, sizeof(value), "%.*s", (int)(e - h), h);
            return value;
        }
    }
    return NULL;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_int_equal(pipe(f->wake), 0);
    f->readiness.ready = true;
    struct sockaddr_in *sin;
    struct tg_listen l = {.text = "127.0.0.1:0", .addrlen = sizeof(*sin)};
    sin = (struct sockaddr_in *)&l.addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char err[TG_ERR_LEN];
    f->admin = tg_admin_create(f->base, &l, "", ready_fn, &f->readiness, err);
    if (f->admin == NULL) fail_msg("%s", err);
    f->port = tg_admin_port(f->admin);
    assert_true(f->port > 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    tg_admin_destroy(f->admin);
    event_base_free(f->base);
    close(f->wake[0]);
    close(f->wake[1]);
    free(f);
    return 0;
}

static void test_metrics_page(void **state)
{
    struct fixture *f = *state;
    const char *labels[] = {"/v1/models", "admin-test", "200"};
    tg_metrics_add(TG_M_REQUESTS, labels, 3);
    struct exchange *x = get(f, "/metrics", NULL);
    assert_int_equal(x->status, 200);
    assert_string_equal(header(x, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(x->body, "# TYPE tollgate_requests_total counter\n"));
    assert_non_null(strstr(x->body, "tollgate_requests_total{route=\"/v1/models\","
                                    "tenant=\"admin-test\",code=\"200\"} 3\n"));
    assert_int_equal(atoi(header(x, "Content-Length")), (int)strlen(x->body));
    free(x);
}

static void test_healthz(void **state)
{
    struct fixture *f = *state;
    struct exchange *x = get(f, "/healthz", NULL);
    assert_int_equal(x->status, 200);
    assert_string_equal(x->body, "ok\n");
    free(x);
}

static void test_readyz(void **state)
{
    struct fixture *f = *state;
    struct exchange *x = get(f, "/readyz", NULL);
    assert_int_equal(x->status, 200);
    assert_string_equal(x->body, "ready\n");
    free(x);

    f->readiness.ready = false;
    f->readiness.why = "redis: connection refused";
    x = get(f, "/readyz?verbose=1", NULL);
    assert_int_equal(x->status, 503);
    assert_string_equal(x->body, "not ready: redis: connection refused\n");
    assert_int_equal(f->readiness.asked, 2);
    free(x);
}

static void test_not_found_and_method(void **state)
{
    struct fixture *f = *state;
    struct exchange *x = get(f, "/", NULL);
    assert_int_equal(x->status, 404);
    free(x);
    x = get(f, "/metricsx", NULL);
    assert_int_equal(x->status, 404);
    free(x);

    x = fetch(f, "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                 "Connection: close\r\n\r\n{}");
    assert_int_equal(x->status, 405);
    assert_string_equal(header(x, "Allow"), "GET, HEAD");
    free(x);
    x = fetch(f, "DELETE /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_int_equal(x->status, 405);
    free(x);

    /* HEAD: the headers of GET, no body. */
    x = fetch(f, "HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_int_equal(x->status, 200);
    assert_string_equal(header(x, "Content-Length"), "3");
    assert_string_equal(x->body, "");
    free(x);
}

static void test_token(void **state)
{
    struct fixture *f = *state;
    tg_admin_set_token(f->admin, "s3cret-token");

    struct exchange *x = get(f, "/metrics", NULL);
    assert_int_equal(x->status, 401);
    assert_non_null(header(x, "WWW-Authenticate"));
    assert_null(strstr(x->body, "tollgate_"));
    free(x);
    x = get(f, "/metrics", "Authorization: Bearer s3cret-tokem\r\n");
    assert_int_equal(x->status, 401);
    free(x);
    x = get(f, "/metrics", "Authorization: Bearer s3cret-token-and-more\r\n");
    assert_int_equal(x->status, 401);
    free(x);
    x = get(f, "/metrics", "Authorization: Basic czNjcmV0LXRva2Vu\r\n");
    assert_int_equal(x->status, 401);
    free(x);
    x = get(f, "/readyz", NULL);
    assert_int_equal(x->status, 401);
    free(x);
    /* Unknown paths do not reveal themselves without the token. */
    x = get(f, "/secret-path", NULL);
    assert_int_equal(x->status, 401);
    free(x);

    x = get(f, "/metrics", "Authorization: Bearer s3cret-token\r\n");
    assert_int_equal(x->status, 200);
    assert_non_null(strstr(x->body, "# TYPE tollgate_requests_total counter"));
    free(x);
    x = get(f, "/readyz", "authorization: bearer s3cret-token\r\n");
    assert_int_equal(x->status, 200);
    free(x);
    /* Health checks need no token. */
    x = get(f, "/healthz", NULL);
    assert_int_equal(x->status, 200);
    assert_string_equal(x->body, "ok\n");
    free(x);

    /* A reload that removes the token opens the listener again. */
    tg_admin_set_token(f->admin, "");
    x = get(f, "/metrics", NULL);
    assert_int_equal(x->status, 200);
    free(x);
}

static void test_bind_error(void **state)
{
    /* A port held by another program (without SO_REUSEPORT) cannot be shared. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in held = {.sin_family = AF_INET};
    held.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t hl = sizeof(held);
    assert_int_equal(bind(fd, (struct sockaddr *)&held, sizeof(held)), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&held, &hl), 0);

    struct tg_listen l = {.text = "127.0.0.1:busy", .addrlen = sizeof(held)};
    memcpy(&l.addr, &held, sizeof(held));
    struct fixture *f = *state;
    char err[TG_ERR_LEN] = "";
    struct tg_admin *a = tg_admin_create(f->base, &l, NULL, NULL, NULL, err);
    close(fd);
    assert_null(a);
    assert_string_equal(err, "admin.listen 127.0.0.1:busy: bind: Address already in use");
}

/* An upgrade starts the new daemon while the old one still listens. */
static void test_second_admin_can_share_port(void **state)
{
    struct fixture *f = *state;
    struct tg_listen l = {.text = "127.0.0.1:same"};
    struct sockaddr_in *sin = (struct sockaddr_in *)&l.addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons((uint16_t)f->port);
    l.addrlen = sizeof(*sin);
    char err[TG_ERR_LEN] = "";
    struct tg_admin *a = tg_admin_create(f->base, &l, NULL, NULL, NULL, err);
    if (a == NULL) fail_msg("%s", err);
    assert_int_equal(tg_admin_port(a), f->port);
    tg_admin_destroy(a);
    struct exchange *x = get(f, "/healthz", NULL);
    assert_int_equal(x->status, 200);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_healthz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readyz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_admin_can_share_port, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
