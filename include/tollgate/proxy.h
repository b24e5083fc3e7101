/* The request path inside one worker: client connections, upstream pools, proxying. */
#ifndef TOLLGATE_PROXY_H
#define TOLLGATE_PROXY_H

#include <pthread.h>
#include <openssl/ssl.h>
#include <event2/event.h>
#include <event2/bufferevent.h>
#include "tollgate/config.h"
#include "tollgate/limiter.h"
#include "tollgate/usage.h"

struct tg_conn;
struct tg_req;
struct tg_pool;
struct tg_server;

/* One worker thread: everything here is touched only by that thread, except
 * the fields under `mu`, which the main thread uses to post messages. */
struct tg_worker {
    struct tg_server *server; /* (ref) */
    int id;
    pthread_t thread;
    struct event_base *base;
    struct evconnlistener *listener;
    struct tg_config *cfg;      /* current snapshot, one reference */
    struct tg_limiter *limiter; /* this worker's Redis limiter, or the shared local one */
    bool own_limiter;
    struct tg_limiter *local; /* (ref) process-wide local limiter */
    struct tg_sink *sink;     /* (ref) */
    struct tg_pool **pools;   /* one per cfg->upstreams[i] */
    size_t npools;
    SSL_CTX *ssl_verify, *ssl_noverify;
    struct tg_conn *conns;    /* every open client connection */
    struct tg_conn *idle_head, *idle_tail; /* those between requests, latest idle first */
    int nidle;
    struct tg_req *free_reqs; /* request state kept for reuse */
    int nfree_reqs;
    int inflight; /* read by other threads with __atomic */
    int wake_fd;  /* eventfd: main -> worker messages */
    struct event *wake;
    pthread_mutex_t mu;
    struct tg_config *pending_cfg; /* under mu */
    bool stop_accepting, stop;     /* under mu */
    bool draining;
};

/* Takes an accepted client socket (non-blocking) into the worker. */
void tg_proxy_accept(struct tg_worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen);
/* Closes client connections that are between requests (drain). */
void tg_proxy_close_idle(struct tg_worker *w);
/* Closes every client connection (end of drain). */
void tg_proxy_close_all(struct tg_worker *w);
/* Frees the worker's pool of request state (at shutdown). */
void tg_proxy_free_pool(struct tg_worker *w);

/* Upstream connection pools (upstream.c). */
struct tg_upconn;
/* Called once with a connected connection, or with NULL and a reason. */
typedef void (*tg_pool_cb)(void *arg, struct tg_upconn *c, const char *err, bool timeout);

struct tg_pool *tg_pool_create(struct tg_worker *w, const struct tg_upstream *u);
/* Gives a connection: an idle keep-alive one, a new one, or the next one freed
 * when max_connections are busy. `cb` may run before this returns. */
void tg_pool_acquire(struct tg_pool *p, tg_pool_cb cb, void *arg);
/* Withdraws a waiting acquire (the client went away). */
void tg_pool_cancel(struct tg_pool *p, void *arg);
/* Returns a connection: kept idle if `reusable`, else closed. */
void tg_pool_release(struct tg_upconn *c, bool reusable);
/* Detaches a pool from its worker's table (reload): it is freed once its last
 * connection is released. */
void tg_pool_retire(struct tg_pool *p);
bool tg_pool_matches(const struct tg_pool *p, const struct tg_upstream *u);
void tg_pool_rebind(struct tg_pool *p, const struct tg_upstream *u);
struct bufferevent *tg_upconn_bev(struct tg_upconn *c);
bool tg_upconn_reused(const struct tg_upconn *c);
bool tg_upconn_tls(const struct tg_upconn *c);

#endif
