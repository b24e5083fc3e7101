/* A client connection and the request under way on it: the state the request path's files share.
 * The path runs client.c -> judge.c -> forward.c -> pump.c -> report.c; io.c moves the bytes.
 * judge.c calls the router, accounting (reserve) and admission; report.c accounting (commit). */
#ifndef TOLLGATE_PROXY_CONN_H
#define TOLLGATE_PROXY_CONN_H

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/crypto.h>
#include "tollgate/accounting.h"
#include "tollgate/auth.h"
#include "tollgate/buf.h"
#include "tollgate/cost.h"
#include "tollgate/http.h"
#include "tollgate/http_path.h"
#include "tollgate/jsonw.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/proxy.h"
#include "tollgate/router.h"
#include "tollgate/upstream.h"
#include "tollgate/gate.h"
#include "tollgate/waitq.h"
#include "tollgate/worker.h"
#include "tollgate/headbuf.h"

/* A reply buffered for a client past this stops reading from its upstream. */
#define CLIENT_HIGH_WATER (256 * 1024)
#define CLIENT_LOW_WATER (64 * 1024)
/* Bytes an upstream connection may hold unread (its read high-water mark). */
#define UPSTREAM_READ_MAX (128 * 1024)
/* Pipelined bytes a busy connection keeps buffered before it stops reading. */
#define PIPELINE_MAX (TG_HTTP_MAX_HEAD + 64 * 1024)
#define RL_HEADERS_MAX 1536

enum conn_state {
    C_IDLE,    /* between requests */
    C_HEAD,    /* reading a request head */
    C_BODY,    /* reading a request body */
    C_WORK,    /* judging, forwarding, replying */
    C_CLOSING, /* writing the last reply, then close */
};

enum out_mode {
    OUT_PASS,    /* move the upstream's bytes as they are */
    OUT_REFRAME, /* write de-chunked body data, chunked (or raw until close) */
};

struct tg_req {
    struct tg_config *cfg; /* the snapshot this request runs on */
    char id[TG_REQUEST_ID_LEN];
    int64_t t0_us, tup_us;
    int64_t ts_ms;
    char *head; /* copy of the request head: header pointers point here */
    size_t head_cap;
    struct tg_http_scan hscan; /* where the search for the head's end stands */
    struct tg_http_msg msg;
    char *path; /* the target's path in normal form (in `head`), and its query */
    size_t path_len;
    const char *query; /* after the '?', or NULL */
    size_t query_len;
    bool bodyless; /* no body and a method that takes none: costs one request */
    char *body;
    size_t body_len, body_cap;
    bool body_too_large;
    char *fwd_body; /* body with usage requested, when rewritten */
    size_t fwd_len;
    const struct tg_route *route;
    const struct tg_upstream *upstream; /* the router's pick, once the model is known */
    const struct tg_tenant *tenant;
    uint8_t key_digest[32];
    struct tg_request_info info;
    struct tg_cost est;
    struct tg_limit_req lreq;
    struct tg_admit_ticket admit;
    bool refused; /* held back by admission after the check: charged nothing */
    int denied;   /* index of the bucket that denied, or -1 */
    int64_t ledger_seq; /* the hold's ledger event, when the balance paid */
    enum tg_priority priority; /* the key's class, lowered by x-tollgate-priority */
    char requested_model[TG_MODEL_LEN]; /* the alias the client asked for; "" if none */
    bool checking, charged, acquiring, retried;
    int64_t t_lim_us;
    struct tg_waiter waiter;  /* its place in the tenant's wait queue (routes[].max_wait_ms) */
    struct tg_conn *conn;     /* (ref) the connection, for the waiter's wake-up */
    int64_t wait_deadline_ms; /* 0 until it first waits */
    bool wait_expired;        /* its max_wait_ms passed: one last check, then 429 */
    struct tg_gate_ticket gate; /* its place of the upstream (max_inflight) */
    char rl[RL_HEADERS_MAX];
    size_t rl_len;
    struct tg_pool *pool;
    struct tg_upconn *up;
    char *uhead;
    size_t uhead_cap;
    struct tg_http_scan uscan;
    struct tg_http_msg umsg;
    bool bad_reply; /* the upstream's reply is not framed as HTTP/1.1 allows */
    bool resp_head, resp_started, upstream_failed, paused, strip_usage, scanning;
    bool out_chunked;
    enum out_mode out_mode;
    struct tg_scan scan;
    int status;
    int64_t bytes_in, bytes_out, up_bytes;
    bool active; /* counted in worker inflight */
    struct tg_req *next_free;
};

/* Request state comes from a per-worker free list: an idle keep-alive
 * connection holds none of it. */
#define REQ_POOL_MAX 1024
#define REQ_KEEP_BUFFER (64 * 1024)

struct tg_conn {
    struct tg_worker *w;
    struct bufferevent *bev; /* its evbuffers, writes and events; reads: rev */
    struct event *rev;       /* EV_READ on the socket: see client_sock_read */
    bool reading;            /* rev is added */
    /* The upstream connection of the request under way, when it is plain TCP,
     * is read the same way (urev); a TLS one reads through its bufferevent. */
    struct event *urev;
    bool uplain, ureading;
    struct timeval utv; /* the upstream's response timeout, between reads */
    struct event *timer;
    char peer[INET6_ADDRSTRLEN];
    enum conn_state state;
    bool keep_alive;
    bool http10;
    bool served; /* a request was read on it */
    bool idle;   /* on the worker's idle list: between requests, or before the first */
    struct tg_conn *idle_prev, *idle_next; /* the idle list, the latest idle first */
    struct tg_req *req; /* while a request is under way; from the worker's pool */
    /* The last key this connection authenticated with, so that a keep-alive
     * client is not hashed again on every request. */
    struct tg_config *auth_cfg; /* a reference, so that the tenant stays valid */
    const struct tg_tenant *auth_tenant;
    enum tg_priority auth_priority;
    uint8_t auth_digest[32];
    uint8_t auth_len;
    char auth_val[160];
    struct tg_conn *prev, *next;
};

static inline int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* io.c: socket reads and writes of the request path: client and upstream sockets, timers */
void arm_timer(struct tg_conn *c, int ms);
void flush_out(struct bufferevent *bev, bool plain);
void client_reading(struct tg_conn *c, bool on);
void client_sock_read(evutil_socket_t fd, short what, void *arg);
void up_reading(struct tg_conn *c, bool on);
bool up_attach(struct tg_conn *c, struct tg_upconn *up, const struct timeval *tv);
void up_detach(struct tg_conn *c, struct tg_upconn *up);

/* client.c: the client side: connections (accept, idle, close), request heads and bodies,
 * tollgate's own replies */
void conn_free(struct tg_conn *c);
void conn_close_after_write(struct tg_conn *c);
void req_release(struct tg_conn *c);
void add_common_headers(struct tg_conn *c, struct headbuf *hb, bool close);
void reply_json(struct tg_conn *c, int status, const char *body, size_t blen, bool close,
                enum tg_decision decision);
void reply_error(struct tg_conn *c, int status, const char *type, const char *code,
                 const char *message, bool close, enum tg_decision decision);
void client_read_cb(struct bufferevent *bev, void *arg);
void client_write_cb(struct bufferevent *bev, void *arg);
void client_event_cb(struct bufferevent *bev, short what, void *arg);
void idle_enter(struct tg_conn *c);
bool reserve_head(char **buf, size_t *cap, size_t need);
ssize_t scan_head(struct evbuffer *in, struct tg_http_scan *s);

/* judge.c: judging a request read whole: its cost estimated, its upstream picked, its estimate
 * reserved (a denied one waiting for room), its admission acquired */
void on_request_complete(struct tg_conn *c);
void run_check(struct tg_conn *c);
void on_admit(void *arg, enum tg_admit_status status);

/* forward.c: forwarding: an upstream connection for the request, and the request written to it */
void start_forward(struct tg_conn *c);
void on_upconn(void *arg, struct tg_upconn *up, const char *err, bool timeout);

/* pump.c: the reply: its head checked and rewritten, its body moved to the client as it arrives */
void up_read_cb(struct bufferevent *bev, void *arg);
void up_write_cb(struct bufferevent *bev, void *arg);
void up_event_cb(struct bufferevent *bev, short what, void *arg);
void pump_body(struct tg_conn *c);

/* report.c: the end of a request: settled, recorded, counted, logged (exactly once, whatever its
 * outcome) */
void req_finish(struct tg_conn *c, enum tg_decision decision);
/* Logs an upstream failure of request `r` (its id and tenant first), at most once a second per
 * worker with the number of similar lines left out. */
TG_PRINTF(2, 3) void log_upstream_failure(const struct tg_req *r, const char *fmt, ...);

#endif
