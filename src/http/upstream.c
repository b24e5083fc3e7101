/* Upstream connection pools: bounded keep-alive connections per worker and upstream, http and
 * https. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include "tollgate/metrics.h"
#include "tollgate/upstream.h"
#include "tollgate/worker.h"

/* An idle upstream connection unused this long is closed. */
#define POOL_IDLE_TIMEOUT_S 60

struct tg_upconn {
    struct tg_pool *pool;
    struct bufferevent *bev;
    bool reused;
    bool idle_timeout; /* plain TCP: the read timeout is already the pool's idle one */
    tg_pool_cb cb;     /* while connecting */
    void *arg;
    struct tg_upconn *next; /* idle list */
};

struct waiter {
    tg_pool_cb cb;
    void *arg;
    struct waiter *next;
};

struct tg_pool {
    struct tg_worker *w;
    char *name, *url, *host;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    bool tls, verify;
    int connect_timeout_ms;
    int max;
    int total; /* open connections: idle, busy and connecting */
    struct tg_upconn *idle;
    struct tg_upconn *connecting;
    struct waiter *wait_head, *wait_tail;
    bool retired;
};

static const char *const side_upstream[] = {"upstream"};

static void conn_close(struct tg_upconn *c);

static void pool_free(struct tg_pool *p)
{
    free(p->name);
    free(p->url);
    free(p->host);
    free(p);
}

struct tg_pool *tg_pool_create(struct tg_worker *w, const struct tg_upstream *u)
{
    struct tg_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) return NULL;
    p->w = w;
    p->name = strdup(u->name);
    p->url = strdup(u->url);
    p->host = strdup(u->host);
    if (!p->name || !p->url || !p->host) {
        free(p->name);
        free(p->url);
        free(p->host);
        free(p);
        return NULL;
    }
    tg_pool_rebind(p, u);
    return p;
}

bool tg_pool_matches(const struct tg_pool *p, const struct tg_upstream *u)
{
    return strcmp(p->name, u->name) == 0 && strcmp(p->url, u->url) == 0 &&
           p->verify == u->tls_verify;
}

void tg_pool_rebind(struct tg_pool *p, const struct tg_upstream *u)
{
    /* A new address (the name resolved differently at reload): idle
     * connections to the old one are closed; busy ones end with their request. */
    if (p->addrlen && (p->addrlen != u->addrlen || memcmp(&p->addr, &u->addr, u->addrlen) != 0)) {
        while (p->idle) {
            struct tg_upconn *c = p->idle;
            p->idle = c->next;
            conn_close(c);
        }
    }
    memcpy(&p->addr, &u->addr, sizeof(p->addr));
    p->addrlen = u->addrlen;
    p->tls = u->tls;
    p->verify = u->tls_verify;
    p->connect_timeout_ms = u->connect_timeout_ms;
    p->max = u->max_connections;
}

struct bufferevent *tg_upconn_bev(struct tg_upconn *c)
{
    return c->bev;
}

bool tg_upconn_reused(const struct tg_upconn *c)
{
    return c->reused;
}

bool tg_upconn_tls(const struct tg_upconn *c)
{
    return c->pool->tls;
}

static void conn_close(struct tg_upconn *c)
{
    struct tg_pool *p = c->pool;
    bufferevent_free(c->bev);
    free(c);
    p->total--;
    tg_metrics_add(TG_M_CONNECTIONS, side_upstream, -1);
}

static void pool_kick(struct tg_pool *p);

static void list_remove(struct tg_upconn **head, struct tg_upconn *c)
{
    struct tg_upconn **pp = head;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp) *pp = c->next;
    c->next = NULL;
}

static void idle_remove(struct tg_upconn *c)
{
    list_remove(&c->pool->idle, c);
}

/* Takes over a connect whose requester went away: it joins the idle list. */
static void adopt_cb(void *arg, struct tg_upconn *c, const char *err, bool timeout)
{
    if (c) tg_pool_release(c, true);
}

static void maybe_free_retired(struct tg_pool *p)
{
    if (p->retired && p->total == 0 && p->wait_head == NULL) pool_free(p);
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
{
    struct tg_upconn *c = arg;
    struct tg_pool *p = c->pool;
    idle_remove(c); /* a server may not speak unasked: the connection is unusable */
    conn_close(c);
    pool_kick(p);
    maybe_free_retired(p);
}

static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
    idle_read_cb(bev, arg);
}

static void connect_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct tg_upconn *c = arg;
    struct tg_pool *p = c->pool;
    tg_pool_cb cb = c->cb;
    void *cbarg = c->arg;
    c->cb = NULL;
    list_remove(&p->connecting, c);
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        evutil_socket_t fd = bufferevent_getfd(bev);
        if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        bufferevent_set_timeouts(bev, NULL, NULL);
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        cb(cbarg, c, NULL, false);
        return;
    }
    char why[200];
    bool timeout = (what & BEV_EVENT_TIMEOUT) != 0;
    unsigned long ssl_err = p->tls ? bufferevent_get_openssl_error(bev) : 0;
    if (timeout) {
        snprintf(why, sizeof(why), "connect to %s timed out after %d ms", p->name,
                 p->connect_timeout_ms);
    } else if (ssl_err) {
        char e[120];
        ERR_error_string_n(ssl_err, e, sizeof(e));
        snprintf(why, sizeof(why), "TLS handshake with %s failed: %s", p->name, e);
    } else {
        int err = EVUTIL_SOCKET_ERROR();
        snprintf(why, sizeof(why), "connect to %s failed: %s", p->name,
                 err ? evutil_socket_error_to_string(err) : "connection closed");
    }
    conn_close(c);
    cb(cbarg, NULL, why, false);
    pool_kick(p);
    maybe_free_retired(p);
}

static void start_connect(struct tg_pool *p, tg_pool_cb cb, void *arg)
{
    struct event_base *base = p->w->base;
    struct bufferevent *bev = NULL;
    if (p->tls) {
        SSL *ssl = SSL_new(p->verify ? p->w->ssl_verify : p->w->ssl_noverify);
        if (ssl) {
            SSL_set_tlsext_host_name(ssl, p->host);
            if (p->verify) SSL_set1_host(ssl, p->host);
            bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
            if (bev)
                bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
            else
                SSL_free(ssl);
        }
    } else {
        bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    struct tg_upconn *c = bev ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
        if (bev) bufferevent_free(bev);
        cb(arg, NULL, "out of memory", false);
        return;
    }
    c->pool = p;
    c->bev = bev;
    c->cb = cb;
    c->arg = arg;
    c->next = p->connecting;
    p->connecting = c;
    p->total++;
    tg_metrics_add(TG_M_CONNECTIONS, side_upstream, 1);
    struct timeval tv = {p->connect_timeout_ms / 1000, (p->connect_timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_setcb(bev, NULL, NULL, connect_event_cb, c);
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&p->addr, (int)p->addrlen) < 0) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", p->name,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        c->cb = NULL;
        list_remove(&p->connecting, c);
        conn_close(c);
        cb(arg, NULL, why, false);
    }
}

/* Takes the oldest waiter off the queue. */
static void waiter_pop(struct tg_pool *p, tg_pool_cb *cb, void **arg)
{
    struct waiter *wt = p->wait_head;
    p->wait_head = wt->next;
    if (p->wait_head == NULL) p->wait_tail = NULL;
    *cb = wt->cb;
    *arg = wt->arg;
    free(wt);
}

/* Serves waiters while there is room for a new connection. */
static void pool_kick(struct tg_pool *p)
{
    while (p->wait_head && p->total < p->max) {
        tg_pool_cb cb;
        void *arg;
        waiter_pop(p, &cb, &arg);
        start_connect(p, cb, arg);
    }
}

void tg_pool_acquire(struct tg_pool *p, tg_pool_cb cb, void *arg)
{
    if (p->idle) {
        struct tg_upconn *c = p->idle;
        p->idle = c->next;
        c->next = NULL;
        c->reused = true;
        /* The idle timeout stays until the caller sets its own: clearing it
         * would delete and re-add the read event (two epoll_ctl calls). */
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        cb(arg, c, NULL, false);
        return;
    }
    if (p->total < p->max) {
        start_connect(p, cb, arg);
        return;
    }
    struct waiter *wt = calloc(1, sizeof(*wt));
    if (wt == NULL) {
        cb(arg, NULL, "out of memory", false);
        return;
    }
    wt->cb = cb;
    wt->arg = arg;
    if (p->wait_tail)
        p->wait_tail->next = wt;
    else
        p->wait_head = wt;
    p->wait_tail = wt;
}

void tg_pool_cancel(struct tg_pool *p, void *arg)
{
    struct waiter **pp = &p->wait_head, *prev = NULL;
    while (*pp) {
        if ((*pp)->arg == arg) {
            struct waiter *wt = *pp;
            *pp = wt->next;
            if (p->wait_tail == wt) p->wait_tail = prev;
            free(wt);
            break;
        }
        prev = *pp;
        pp = &(*pp)->next;
    }
    /* A connect in progress for `arg` completes into the idle list instead. */
    for (struct tg_upconn *c = p->connecting; c; c = c->next) {
        if (c->arg == arg) {
            c->cb = adopt_cb;
            c->arg = NULL;
        }
    }
    maybe_free_retired(p);
}

void tg_pool_release(struct tg_upconn *c, bool reusable)
{
    struct tg_pool *p = c->pool;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!reusable || p->retired || p->w->draining || evbuffer_get_length(in) > 0) {
        conn_close(c);
        pool_kick(p);
        maybe_free_retired(p);
        return;
    }
    c->reused = true;
    if (p->wait_head) {
        tg_pool_cb cb;
        void *arg;
        waiter_pop(p, &cb, &arg);
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        cb(arg, c, NULL, false);
        return;
    }
    /* A plain connection keeps the idle timeout from its last release (the
     * proxy reads it with its own event), and the proxy left its read on:
     * setting either again would re-add the read event for nothing. A TLS
     * connection had the response timeout set on it. */
    if (p->tls || !c->idle_timeout) {
        struct timeval tv = {POOL_IDLE_TIMEOUT_S, 0};
        bufferevent_set_timeouts(c->bev, &tv, NULL);
        c->idle_timeout = !p->tls;
    }
    bufferevent_setcb(c->bev, idle_read_cb, NULL, idle_event_cb, c);
    if (!(bufferevent_get_enabled(c->bev) & EV_READ)) bufferevent_enable(c->bev, EV_READ);
    c->next = p->idle;
    p->idle = c;
}

void tg_pool_retire(struct tg_pool *p)
{
    p->retired = true;
    while (p->idle) {
        struct tg_upconn *c = p->idle;
        p->idle = c->next;
        conn_close(c);
    }
    maybe_free_retired(p);
}
