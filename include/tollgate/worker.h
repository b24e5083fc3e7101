/* One worker thread's state: its event loop, listener, limiter, sink and upstream pools. */
#ifndef TOLLGATE_WORKER_H
#define TOLLGATE_WORKER_H

#include <pthread.h>
#include <openssl/ssl.h>
#include <event2/event.h>
#include "tollgate/admission.h"
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
    struct event *limiter_tick; /* calls limiter->ops->tick, for backends that have one */
    struct tg_limiter *local; /* (ref) process-wide local limiter */
    struct tg_admission admission;
    struct tg_waitq *waitq; /* denied requests waiting for room, per tenant */
    struct tg_gate *gate;   /* requests waiting for a place of a max_inflight upstream */
    struct tg_sink *sink;     /* (ref) */
    struct tg_pool **pools;   /* one per cfg->upstreams[i] */
    size_t npools;
    SSL_CTX *ssl_verify, *ssl_noverify;
    struct tg_conn *conns;                 /* every open client connection */
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

#endif
