/* The request path of one worker: read a request, judge it, forward it, stream the reply, settle,
 * record. */
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
#include "tollgate/auth.h"
#include "tollgate/cost.h"
#include "tollgate/http.h"
#include "tollgate/http_path.h"
#include "tollgate/jsonw.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/proxy.h"
#include "tollgate/upstream.h"
#include "tollgate/worker.h"

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
    const struct tg_tenant *tenant;
    uint8_t key_digest[32];
    struct tg_request_info info;
    struct tg_cost est;
    struct tg_limit_req lreq;
    int denied; /* index of the bucket that denied, or -1 */
    bool checking, charged, acquiring, retried;
    int64_t t_lim_us;
    int waited_ms;
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

static struct tg_req *req_get(struct tg_worker *w)
{
    struct tg_req *r = w->free_reqs;
    if (r) {
        w->free_reqs = r->next_free;
        w->nfree_reqs--;
        r->next_free = NULL;
        return r;
    }
    return calloc(1, sizeof(*r));
}

static void req_free(struct tg_req *r)
{
    free(r->head);
    free(r->body);
    free(r->uhead);
    free(r);
}

static void req_put(struct tg_worker *w, struct tg_req *r)
{
    if (w->nfree_reqs >= REQ_POOL_MAX) {
        req_free(r);
        return;
    }
    if (r->body_cap > REQ_KEEP_BUFFER) {
        free(r->body);
        r->body = NULL;
        r->body_cap = 0;
    }
    r->next_free = w->free_reqs;
    w->free_reqs = r;
    w->nfree_reqs++;
}

void tg_proxy_free_pool(struct tg_worker *w)
{
    while (w->free_reqs) {
        struct tg_req *r = w->free_reqs;
        w->free_reqs = r->next_free;
        req_free(r);
    }
    w->nfree_reqs = 0;
}

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
    uint8_t auth_digest[32];
    uint8_t auth_len;
    char auth_val[160];
    struct tg_conn *prev, *next;
};

static const char *const side_client[] = {"client"};

/* Builds a message head in a stack buffer and hands libevent one piece
 * (spilling into the evbuffer only for very long heads). Without an evbuffer
 * it builds a line in place, cut at the buffer's size. */
struct headbuf {
    struct evbuffer *out;
    size_t len, total;
    char p[4096];
};

static void hb_init(struct headbuf *hb, struct evbuffer *out)
{
    hb->out = out;
    hb->len = hb->total = 0;
}

static void hb_add(struct headbuf *hb, const char *s, size_t n)
{
    if (hb->out == NULL && hb->len + n > sizeof(hb->p))
        n = sizeof(hb->p) - hb->len; /* a line: cut */
    hb->total += n;
    if (hb->len + n > sizeof(hb->p)) {
        evbuffer_add(hb->out, hb->p, hb->len);
        hb->len = 0;
        if (n > sizeof(hb->p)) {
            evbuffer_add(hb->out, s, n);
            return;
        }
    }
    memcpy(hb->p + hb->len, s, n);
    hb->len += n;
}

static void hb_str(struct headbuf *hb, const char *s)
{
    hb_add(hb, s, strlen(s));
}

static void hb_int(struct headbuf *hb, long long v)
{
    char d[24];
    size_t n;
    const char *p = tg_fmt_int(d, v, &n);
    hb_add(hb, p, n);
}

static void hb_header(struct headbuf *hb, const char *name, size_t nlen, const char *value,
                      size_t vlen)
{
    hb_add(hb, name, nlen);
    hb_add(hb, ": ", 2);
    hb_add(hb, value, vlen);
    hb_add(hb, "\r\n", 2);
}

/* Header lines kept as they came ("Name: value\r\n", in the head they were
 * parsed from) are copied in runs: consecutive kept lines are one copy. A
 * line written any other way (other spacing, or a value the parser trimmed)
 * is written afresh by hb_header, as before. Flush the run before adding
 * anything else. */
struct hrun {
    const char *p;
    size_t n;
};

static void hb_run_flush(struct headbuf *hb, struct hrun *run)
{
    if (run->n) hb_add(hb, run->p, run->n);
    run->n = 0;
}

static void hb_keep(struct headbuf *hb, struct hrun *run, const struct tg_http_header *h)
{
    const char *line = h->name;
    if (h->value == line + h->nlen + 2 && line[h->nlen] == ':' && line[h->nlen + 1] == ' ' &&
        h->value[h->vlen] == '\r' && h->value[h->vlen + 1] == '\n') {
        size_t len = (size_t)h->nlen + 2 + h->vlen + 2;
        if (run->n && run->p + run->n == line) {
            run->n += len;
            return;
        }
        hb_run_flush(hb, run);
        run->p = line;
        run->n = len;
        return;
    }
    hb_run_flush(hb, run);
    hb_header(hb, h->name, h->nlen, h->value, h->vlen);
}

/* Writes what is buffered; returns the head's whole length. */
static size_t hb_flush(struct headbuf *hb)
{
    if (hb->len) evbuffer_add(hb->out, hb->p, hb->len);
    hb->len = 0;
    return hb->total;
}

static void hb_status_line(struct headbuf *hb, int status)
{
    hb_add(hb, "HTTP/1.1 ", 9);
    hb_int(hb, status);
    hb_add(hb, " ", 1);
    hb_str(hb, tg_http_reason(status));
    hb_add(hb, "\r\n", 2);
}

/* Upstream failures are logged at most once a second per worker, with the
 * number of similar lines left out: a dead upstream must not flood the log. */
#define UPSTREAM_LOG_EVERY_MS 1000
static __thread int64_t upstream_log_ms;
static __thread long long upstream_log_skipped;

TG_PRINTF(1, 2) static void log_upstream_failure(const char *fmt, ...)
{
    int64_t now = tg_now_mono_ms();
    if (upstream_log_ms && now - upstream_log_ms < UPSTREAM_LOG_EVERY_MS) {
        upstream_log_skipped++;
        return;
    }
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (upstream_log_skipped)
        tg_log_warn("%s (%lld similar in the last second not logged)", line, upstream_log_skipped);
    else
        tg_log_warn("%s", line);
    upstream_log_ms = now;
    upstream_log_skipped = 0;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void client_read_cb(struct bufferevent *bev, void *arg);
static void client_sock_read(evutil_socket_t fd, short what, void *arg);
static void up_sock_read(evutil_socket_t fd, short what, void *arg);
static void client_write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short what, void *arg);
static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_write_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);
static void timer_cb(evutil_socket_t fd, short what, void *arg);
static void req_finish(struct tg_conn *c, enum tg_decision decision);
static void start_forward(struct tg_conn *c);

/* (Re)arms the connection's timer: event_add reschedules a pending one. */
static void arm_timer(struct tg_conn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Writes what is queued for a plain TCP socket at once. EV_WRITE stays off
 * unless a write is partial: no epoll_ctl pair per reply. TLS connections
 * write through their bufferevent. */
static void flush_out(struct bufferevent *bev, bool plain)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (evbuffer_get_length(out) == 0) return;
    if (plain) {
        /* A socket bufferevent keeps its output's start frozen except while
         * it writes itself; it does the same around this write. */
        evbuffer_unfreeze(out, 1);
        evbuffer_write(out, bufferevent_getfd(bev));
        evbuffer_freeze(out, 1);
    }
    if (evbuffer_get_length(out) > 0) bufferevent_enable(bev, EV_WRITE);
}

/* Turns reading from the client on or off. The connection reads its socket
 * itself rather than through the bufferevent: libevent's evbuffer_read asks
 * the kernel how much is readable (ioctl FIONREAD) before every read, a system
 * call per request that a plain recv into reserved space does without. */
static void client_reading(struct tg_conn *c, bool on)
{
    if (on == c->reading) return;
    c->reading = on;
    if (on)
        event_add(c->rev, NULL);
    else
        event_del(c->rev);
}

#define CLIENT_READ_CHUNK 4096
#define UPSTREAM_READ_CHUNK (16 * 1024)

/* Reads what is readable on `fd` into `in` (at most `chunk` bytes): > 0 bytes
 * read, 0 at the end of the stream, -1 on an error, -2 when nothing was ready.
 * The bytes land in a scratch buffer of the worker's and are copied into
 * `in`, which then grows by what arrived: a small message takes a small chain,
 * which malloc serves from its per-thread cache, where a recv straight into
 * `chunk` bytes of reserved space took a 32 KiB chain per reply. */
static ssize_t sock_read(evutil_socket_t fd, struct evbuffer *in, size_t chunk)
{
    static _Thread_local char scratch[UPSTREAM_READ_CHUNK];
    if (chunk > sizeof(scratch)) chunk = sizeof(scratch);
    ssize_t n = recv(fd, scratch, chunk, 0);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -2 : -1;
    if (n == 0) return 0;
    /* A socket bufferevent keeps its input's end frozen except while it reads
     * itself; this is that read. */
    evbuffer_unfreeze(in, 0);
    int rc = evbuffer_add(in, scratch, (size_t)n);
    evbuffer_freeze(in, 0);
    return rc == 0 ? n : -1;
}

static void client_sock_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct tg_conn *c = arg;
    ssize_t n = sock_read(fd, bufferevent_get_input(c->bev), CLIENT_READ_CHUNK);
    if (n == -2) return;
    if (n <= 0) {
        client_event_cb(c->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), c);
        return;
    }
    client_read_cb(c->bev, c);
}

/* Turns reading from the upstream on or off. */
static void up_reading(struct tg_conn *c, bool on)
{
    if (!c->uplain) {
        struct bufferevent *ub = tg_upconn_bev(c->req->up);
        if (on)
            bufferevent_enable(ub, EV_READ);
        else
            bufferevent_disable(ub, EV_READ);
        return;
    }
    if (on == c->ureading) return;
    c->ureading = on;
    if (on)
        event_add(c->urev, &c->utv);
    else
        event_del(c->urev);
}

/* Starts reading the upstream connection just acquired for this request. */
static bool up_attach(struct tg_conn *c, struct tg_upconn *up, const struct timeval *tv)
{
    struct bufferevent *ub = tg_upconn_bev(up);
    c->uplain = !tg_upconn_tls(up);
    c->ureading = false;
    c->utv = *tv;
    if (c->uplain) {
        if (c->urev == NULL && (c->urev = event_new(c->w->base, -1, 0, NULL, NULL)) == NULL)
            return false;
        event_assign(c->urev, c->w->base, bufferevent_getfd(ub), EV_READ | EV_PERSIST,
                     up_sock_read, c);
        /* Added before the bufferevent's own read (left on by the pool) is
         * turned off, so that the socket's epoll interest never changes. */
        up_reading(c, true);
        bufferevent_disable(ub, EV_READ);
    } else {
        bufferevent_setwatermark(ub, EV_READ, 0, UPSTREAM_READ_MAX);
        bufferevent_set_timeouts(ub, tv, NULL);
        bufferevent_enable(ub, EV_READ);
    }
    return true;
}

/* Stops reading an upstream connection before it goes back to its pool. The
 * bufferevent's read is turned on before our event is deleted, for the same
 * reason as in up_attach: the pool watches idle connections with it. */
static void up_detach(struct tg_conn *c, struct tg_upconn *up)
{
    struct bufferevent *ub = tg_upconn_bev(up);
    if (c->uplain && c->ureading) {
        bufferevent_enable(ub, EV_READ);
        event_del(c->urev);
        c->ureading = false;
    }
    bufferevent_setcb(ub, NULL, NULL, NULL, NULL);
}

static void up_sock_read(evutil_socket_t fd, short what, void *arg)
{
    struct tg_conn *c = arg;
    struct bufferevent *ub = tg_upconn_bev(c->req->up);
    if (what & EV_TIMEOUT) {
        up_event_cb(ub, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, c);
        return;
    }
    ssize_t n = sock_read(fd, bufferevent_get_input(ub), UPSTREAM_READ_CHUNK);
    if (n == -2) return;
    if (n <= 0) {
        up_event_cb(ub, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), c);
        return;
    }
    up_read_cb(ub, c);
}

/* ---- connection lifecycle ---- */

static void idle_enter(struct tg_conn *c);
static void idle_leave(struct tg_conn *c);

void tg_proxy_accept(struct tg_worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
    struct tg_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        evutil_closesocket(fd);
        return;
    }
    c->w = w;
    c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(w->base, timer_cb, c);
    c->rev = event_new(w->base, fd, EV_READ | EV_PERSIST, client_sock_read, c);
    if (c->bev == NULL || c->timer == NULL || c->rev == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c->timer) event_free(c->timer);
        if (c->rev) event_free(c->rev);
        free(c);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof(c->peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer,
                  sizeof(c->peer));
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    tg_metrics_add(TG_M_CONNECTIONS, side_client, 1);
    bufferevent_setcb(c->bev, client_read_cb, client_write_cb, client_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, CLIENT_LOW_WATER, 0);
    bufferevent_disable(c->bev, EV_WRITE); /* on by default; see flush_out */
    client_reading(c, true);
    c->state = C_IDLE;
    arm_timer(c, w->cfg->server.header_timeout_ms);
    idle_enter(c);
}

/* ---- idle connections ----
 * A connection between requests (or before its first) is on its worker's
 * idle list, the latest idle first. Past server.max_idle_connections the one
 * idle longest is closed: connections that send nothing cannot pile up. */

static void idle_leave(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (!c->idle) return;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        w->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        w->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->idle = false;
    w->nidle--;
}

static void conn_free(struct tg_conn *c);

static void idle_enter(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (c->idle) return;
    c->idle = true;
    c->idle_prev = NULL;
    c->idle_next = w->idle_head;
    if (w->idle_head)
        w->idle_head->idle_prev = c;
    else
        w->idle_tail = c;
    w->idle_head = c;
    w->nidle++;
    if (w->nidle > w->cfg->server.max_idle_connections && w->idle_tail != c) {
        tg_metrics_add(TG_M_IDLE_CLOSED, NULL, 1);
        conn_free(w->idle_tail);
    }
}

/* Ends the request state of a connection and returns it to the pool. */
static void req_release(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    if (r == NULL) return;
    if (r->checking) tg_limiter_cancel(c->w->limiter, c);
    if (r->acquiring && r->pool) tg_pool_cancel(r->pool, c);
    if (r->up) {
        up_detach(c, r->up);
        tg_pool_release(r->up, false);
    }
    r->checking = r->acquiring = false;
    r->up = NULL;
    if (r->scanning) tg_scan_deinit(&r->scan);
    r->scanning = false;
    free(r->fwd_body);
    r->fwd_body = NULL;
    if (r->cfg) tg_config_unref(r->cfg);
    r->cfg = NULL;
    if (r->active) __atomic_fetch_sub(&c->w->inflight, 1, __ATOMIC_RELAXED);
    r->active = false;
    c->req = NULL;
    req_put(c->w, r);
}

static void conn_free(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    req_release(c);
    idle_leave(c);
    if (c->auth_cfg) tg_config_unref(c->auth_cfg);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    event_free(c->timer);
    event_free(c->rev);
    if (c->urev) event_free(c->urev);
    bufferevent_free(c->bev);
    tg_metrics_add(TG_M_CONNECTIONS, side_client, -1);
    free(c);
}

/* Closes once everything queued for the client is written. */
static void conn_close_after_write(struct tg_conn *c)
{
    c->state = C_CLOSING;
    client_reading(c, false);
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    flush_out(c->bev, true);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_free(c);
        return;
    }
    bufferevent_enable(c->bev, EV_WRITE);
    arm_timer(c, c->w->cfg->server.idle_timeout_ms);
}

void tg_proxy_close_idle(struct tg_worker *w)
{
    struct tg_conn *c = w->conns;
    while (c) {
        struct tg_conn *next = c->next;
        if (c->state == C_IDLE && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            conn_free(c);
        c = next;
    }
}

void tg_proxy_close_all(struct tg_worker *w)
{
    while (w->conns) {
        struct tg_conn *c = w->conns;
        if (c->req && c->req->active && c->state == C_WORK) {
            c->state = C_CLOSING;
            if (!c->req->resp_started) c->req->upstream_failed = true; /* costs its request unit */
            c->req->status = c->req->status ? c->req->status : 503;
            req_finish(c, TG_DECISION_ERROR);
        }
        conn_free(c);
    }
}

/* ---- replies made by tollgate ---- */

static void add_common_headers(struct tg_conn *c, struct headbuf *hb, bool close)
{
    struct tg_req *r = c->req;
    hb_add(hb, "x-request-id: ", 14);
    hb_str(hb, r->id);
    hb_add(hb, "\r\n", 2);
    if (r->rl_len) hb_add(hb, r->rl, r->rl_len);
    if (close)
        hb_add(hb, "Connection: close\r\n", 19);
    else if (c->http10)
        hb_add(hb, "Connection: keep-alive\r\n", 24);
}

/* Answers the current request with an OpenAI-shaped error (or a ready body). */
static void reply_json(struct tg_conn *c, int status, const char *body, size_t blen, bool close,
                       enum tg_decision decision)
{
    struct tg_req *r = c->req;
    if (!c->keep_alive || c->w->draining) close = true;
    c->keep_alive = c->keep_alive && !close;
    struct headbuf hb;
    hb_init(&hb, bufferevent_get_output(c->bev));
    hb_status_line(&hb, status);
    hb_add(&hb, "Content-Type: application/json\r\nContent-Length: ", 48);
    hb_int(&hb, (long long)blen);
    hb_add(&hb, "\r\n", 2);
    add_common_headers(c, &hb, close);
    hb_add(&hb, "\r\n", 2);
    hb_add(&hb, body, blen);
    r->bytes_out += (int64_t)hb_flush(&hb);
    r->status = status;
    r->resp_started = true;
    req_finish(c, decision);
}

static void reply_error(struct tg_conn *c, int status, const char *type, const char *code,
                        const char *message, bool close, enum tg_decision decision)
{
    char body[TG_JSONW_STR_MAX(TG_ERR_LEN) + 256];
    size_t mlen = strnlen(message, TG_ERR_LEN);
    char *p = body;
    p += sprintf(p, "{\"error\":{\"message\":");
    p = tg_jsonw_str(p, message, mlen);
    p += sprintf(p, ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}", type, code);
    reply_json(c, status, body, (size_t)(p - body), close, decision);
}

/* ---- request start and head ---- */

static bool sane_request_id(const char *v, size_t len)
{
    if (len == 0 || len >= TG_REQUEST_ID_LEN) return false;
    for (size_t i = 0; i < len; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return false;
    }
    return true;
}

static bool req_begin(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    struct tg_req *r = req_get(w);
    if (r == NULL) return false;
    c->req = r;
    r->cfg = tg_config_ref(w->cfg);
    r->t0_us = now_us();
    r->ts_ms = tg_now_wall_ms();
    r->id[0] = '\0';
    r->body_len = 0;
    tg_http_scan_init(&r->hscan, TG_HTTP_REQUEST);
    r->path = NULL;
    r->path_len = 0;
    r->query = NULL;
    r->query_len = 0;
    r->bodyless = r->bad_reply = false;
    r->body_too_large = false;
    r->fwd_len = 0;
    r->route = NULL;
    r->tenant = NULL;
    memset(&r->info, 0, sizeof(r->info));
    memset(&r->est, 0, sizeof(r->est));
    r->lreq.n = 0;
    r->lreq.fallback = false;
    r->denied = -1;
    r->checking = r->charged = r->acquiring = r->retried = false;
    r->waited_ms = 0;
    r->rl_len = 0;
    r->rl[0] = '\0';
    r->pool = NULL;
    r->up = NULL;
    r->resp_head = r->resp_started = r->upstream_failed = r->paused = false;
    r->strip_usage = r->scanning = r->out_chunked = false;
    r->out_mode = OUT_PASS;
    r->status = 0;
    r->bytes_in = r->bytes_out = r->up_bytes = 0;
    r->tup_us = 0;
    r->active = true;
    __atomic_fetch_add(&w->inflight, 1, __ATOMIC_RELAXED);
    return true;
}

static void on_req_body(void *arg, const char *data, size_t len)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (r->body_too_large) return;
    if ((int64_t)(r->body_len + len) > r->cfg->server.max_body_bytes) {
        r->body_too_large = true;
        return;
    }
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + len + 1)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (nb == NULL) {
            r->body_too_large = true;
            return;
        }
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
}

static void on_request_complete(struct tg_conn *c);
static void read_body(struct tg_conn *c);

/* Puts the request target in the form it is routed and forwarded in: the
 * path in normal form (so that a route is chosen on the path the upstream
 * serves: "/v1/models/../chat/completions" is the chat route), the query
 * checked. False when the request was refused. */
static bool route_target(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_http_msg *m = &r->msg;
    size_t plen = 0;
    while (plen < m->target_len && m->target[plen] != '?')
        plen++;
    const char *why = NULL;
    /* The target points into r->head (or is the literal "/", already normal). */
    char *path = (char *)(uintptr_t)m->target;
    ssize_t n = tg_http_path_normalize(path, plen, path, &why);
    if (n < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "The request path is not valid: %s.", why);
        reply_error(c, 400, "invalid_request_error", "invalid_path", msg, !m->done,
                    TG_DECISION_REJECTED);
        return false;
    }
    r->path = path;
    r->path_len = n > 0 ? (size_t)n : plen;
    if (plen < m->target_len) {
        r->query = m->target + plen + 1;
        r->query_len = m->target_len - plen - 1;
        if (!tg_http_query_valid(r->query, r->query_len)) {
            reply_error(c, 400, "invalid_request_error", "invalid_path",
                        "The request query holds bytes a URI may not hold.", !m->done,
                        TG_DECISION_REJECTED);
            return false;
        }
    }
    return true;
}

/* Called with a parsed head: route, authenticate, check size; then read the body. */
static void on_head(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_http_msg *m = &r->msg;
    c->keep_alive = m->keep_alive;
    c->http10 = m->minor == 0;
    size_t idlen;
    const char *rid = tg_http_header(m, "x-request-id", &idlen);
    if (rid && sane_request_id(rid, idlen)) {
        memcpy(r->id, rid, idlen);
        r->id[idlen] = '\0';
    } else {
        tg_usage_new_id(r->id);
    }
    bool body_pending = !m->done;
    if (m->method == TG_HTTP_CONNECT || m->method == TG_HTTP_TRACE) {
        r->rl_len = (size_t)snprintf(r->rl, sizeof(r->rl),
                                     "Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n");
        reply_error(c, 405, "invalid_request_error", "method_not_allowed",
                    "CONNECT and TRACE are not served by this gateway.", true,
                    TG_DECISION_REJECTED);
        return;
    }
    if (!route_target(c)) return;
    r->route = tg_config_route(r->cfg, r->path, r->path_len);
    if (r->route == NULL) {
        char msg[256];
        size_t mlen;
        const char *mname = tg_http_method_name(m, &mlen);
        snprintf(msg, sizeof(msg), "Invalid URL (%.*s %.*s)", (int)(mlen > 16 ? 16 : mlen), mname,
                 (int)(r->path_len > 160 ? 160 : r->path_len), r->path);
        reply_error(c, 404, "invalid_request_error", "unknown_url", msg, body_pending,
                    TG_DECISION_REJECTED);
        return;
    }
    size_t alen = 0;
    const char *auth = tg_http_header(m, "authorization", &alen);
    if (auth && c->auth_cfg == r->cfg && alen == c->auth_len &&
        CRYPTO_memcmp(auth, c->auth_val, alen) == 0) {
        r->tenant = c->auth_tenant;
        memcpy(r->key_digest, c->auth_digest, sizeof(r->key_digest));
    } else {
        r->tenant = auth ? tg_auth_lookup(r->cfg, auth, alen, r->key_digest) : NULL;
        if (r->tenant && alen <= sizeof(c->auth_val)) {
            if (c->auth_cfg != r->cfg) {
                if (c->auth_cfg) tg_config_unref(c->auth_cfg);
                c->auth_cfg = tg_config_ref(r->cfg);
            }
            c->auth_tenant = r->tenant;
            c->auth_len = (uint8_t)alen;
            memcpy(c->auth_val, auth, alen);
            memcpy(c->auth_digest, r->key_digest, sizeof(c->auth_digest));
        }
    }
    if (r->tenant == NULL) {
        reply_error(c, 401, "invalid_request_error", "invalid_api_key",
                    auth ? "Incorrect API key provided."
                         : "You didn't provide an API key. You need to provide your API key in an "
                           "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                           "YOUR_KEY).",
                    body_pending, TG_DECISION_REJECTED);
        return;
    }
    if (m->content_length > r->cfg->server.max_body_bytes) {
        char msg[160];
        snprintf(msg, sizeof(msg), "Request body of %lld bytes exceeds the limit of %lld bytes.",
                 (long long)m->content_length, (long long)r->cfg->server.max_body_bytes);
        reply_error(c, 413, "invalid_request_error", "request_too_large", msg, true,
                    TG_DECISION_REJECTED);
        return;
    }
    if (m->expect_continue && body_pending &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
        flush_out(c->bev, true);
    }
    if (m->content_length > 0 && (size_t)m->content_length + 1 > r->body_cap) {
        char *nb = realloc(r->body, (size_t)m->content_length + 1);
        if (nb) {
            r->body = nb;
            r->body_cap = (size_t)m->content_length + 1;
        }
    }
    if (!body_pending) {
        on_request_complete(c);
        return;
    }
    c->state = C_BODY;
    arm_timer(c, r->cfg->server.idle_timeout_ms);
    read_body(c);
}

/* Grows a head copy buffer to hold `need` bytes. */
static bool reserve_head(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return true;
    size_t ncap = *cap ? *cap : 2048;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL) return false;
    *buf = nb;
    *cap = ncap;
    return true;
}

/* Scans the bytes of a head that arrived since the last call: its length
 * once complete, 0 while more must come, a negative tg_http_result when the
 * bytes can be no head. A head a client sends a byte at a time costs one
 * pass over its bytes, not a rescan per byte. */
static ssize_t scan_head(struct evbuffer *in, struct tg_http_scan *s)
{
    struct evbuffer_iovec v[8];
    for (;;) {
        if (s->pos >= evbuffer_get_length(in)) return 0;
        struct evbuffer_ptr at;
        if (evbuffer_ptr_set(in, &at, s->pos, EVBUFFER_PTR_SET) != 0) return 0;
        int nv = evbuffer_peek(in, -1, &at, v, 8);
        if (nv > 8) nv = 8;
        for (int i = 0; i < nv; i++) {
            ssize_t n = tg_http_scan_head(s, v[i].iov_base, v[i].iov_len);
            if (n != 0) return n;
        }
    }
}

/* The error code of an OpenAI-shaped error for a head refused so. */
static const char *head_error_code(enum tg_http_result res)
{
    switch (tg_http_status(res)) {
    case 431:
        return "request_header_fields_too_large";
    case 414:
        return "uri_too_long";
    case 505:
        return "http_version_not_supported";
    case 501:
        return "not_implemented";
    default:
        return "bad_request";
    }
}

static void refuse_head(struct tg_conn *c, enum tg_http_result res)
{
    if (c->req->id[0] == '\0') tg_usage_new_id(c->req->id);
    reply_error(c, tg_http_status(res), "invalid_request_error", head_error_code(res),
                tg_http_error(res), true, TG_DECISION_REJECTED);
}

/* Tries to read a whole head from the input. */
static void read_head(struct tg_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0) return;
    if (c->state == C_IDLE) {
        /* Stray line breaks between pipelined requests are allowed. */
        unsigned char first;
        while (len > 0 && evbuffer_copyout(in, &first, 1) == 1 &&
               (first == '\r' || first == '\n')) {
            evbuffer_drain(in, 1);
            len--;
        }
        if (len == 0) return;
        if (!req_begin(c)) {
            conn_free(c);
            return;
        }
        idle_leave(c);
        c->state = C_HEAD;
        /* A connection's first head has header_timeout_ms from the accept;
         * a later one from its first byte (before it, idle_timeout_ms). */
        if (c->served) arm_timer(c, c->req->cfg->server.header_timeout_ms);
        c->served = true;
    }
    struct tg_req *r = c->req;
    ssize_t n = scan_head(in, &r->hscan);
    if (n == 0) return;
    if (n < 0) {
        refuse_head(c, (enum tg_http_result)n);
        return;
    }
    size_t hlen = (size_t)n;
    if (!reserve_head(&r->head, &r->head_cap, hlen)) {
        conn_free(c);
        return;
    }
    evbuffer_remove(in, r->head, hlen);
    r->bytes_in += (int64_t)hlen;
    tg_http_msg_init(&r->msg, TG_HTTP_REQUEST, on_req_body, c);
    enum tg_http_result res = tg_http_parse_head(&r->msg, r->head, hlen);
    if (res != TG_HTTP_OK) {
        refuse_head(c, res);
        return;
    }
    on_head(c);
}

/* Feeds buffered body bytes to the parser. */
static void read_body(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_iovec v[8];
    while (evbuffer_get_length(in) > 0 && !r->msg.done) {
        int nv = evbuffer_peek(in, -1, NULL, v, 8);
        if (nv > 8) nv = 8;
        size_t used = 0;
        bool stop = false;
        for (int i = 0; i < nv && !stop; i++) {
            ssize_t n = tg_http_feed(&r->msg, v[i].iov_base, v[i].iov_len);
            if (n < 0) {
                evbuffer_drain(in, used);
                refuse_head(c, (enum tg_http_result)n);
                return;
            }
            used += (size_t)n;
            stop = (size_t)n < v[i].iov_len || r->msg.done;
        }
        evbuffer_drain(in, used);
        r->bytes_in += (int64_t)used;
        if (used == 0 && !r->msg.done) { /* the parser took nothing: never spin */
            reply_error(c, 400, "invalid_request_error", "bad_request",
                        "The request body framing is invalid.", true, TG_DECISION_REJECTED);
            return;
        }
        if (r->body_too_large) {
            char msg[160];
            snprintf(msg, sizeof(msg), "Request body exceeds the limit of %lld bytes.",
                     (long long)r->cfg->server.max_body_bytes);
            reply_error(c, 413, "invalid_request_error", "request_too_large", msg, true,
                        TG_DECISION_REJECTED);
            return;
        }
    }
    if (r->msg.done) on_request_complete(c);
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct tg_conn *c = arg;
    switch (c->state) {
    case C_IDLE:
    case C_HEAD:
        read_head(c); /* goes on to the body; c may be gone after it */
        break;
    case C_BODY:
        read_body(c);
        break;
    case C_WORK:
        if (evbuffer_get_length(bufferevent_get_input(bev)) > PIPELINE_MAX)
            client_reading(c, false);
        break;
    case C_CLOSING:
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
        break;
    }
}

/* ---- judging ---- */

static void on_limit(void *arg, const struct tg_limit_result *res);

static void run_check(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    r->checking = true;
    r->t_lim_us = now_us();
    if (tg_limiter_check(c->w->limiter, &r->lreq, on_limit, c) != 0 && r->checking) {
        struct tg_limit_result err = {.status = TG_LIMIT_ERROR, .denied = -1};
        on_limit(c, &err);
    }
}

static void on_request_complete(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_config *cfg = r->cfg;
    c->state = C_WORK;
    evtimer_del(c->timer);
    char err[TG_ERR_LEN];
    if (!c->w->sink->ops->accepting(c->w->sink)) {
        reply_error(c, 503, "server_error", "usage_sink_unavailable",
                    "The gateway cannot record usage right now. Please retry shortly.", false,
                    TG_DECISION_REJECTED);
        return;
    }
    enum tg_http_method method = r->msg.method;
    r->bodyless = r->body_len == 0 && method != TG_HTTP_POST && method != TG_HTTP_PUT &&
                  method != TG_HTTP_PATCH;
    if (r->bodyless) {
        /* Polling a job, fetching a result, listing, deleting: one request. */
        r->est.u[TG_UNIT_REQUESTS] = TG_MICRO;
    } else if (tg_cost_estimate(r->route->cost, cfg->costs.chars_per_token,
                                r->route->default_max_tokens, r->body, r->body_len, &r->est,
                                &r->info, err) != 0) {
        reply_error(c, 400, "invalid_request_error", "invalid_request_body", err, false,
                    TG_DECISION_REJECTED);
        return;
    }
    if (r->route->cost == TG_COST_TOKENS && r->info.stream && !r->info.client_wants_usage) {
        r->fwd_body = tg_cost_request_usage_valid(r->body, r->body_len, &r->fwd_len);
        r->strip_usage = r->fwd_body != NULL;
    }
    tg_limiter_plan(r->tenant, &r->est, r->info.model, &r->lreq);
    r->lreq.tenant = r->tenant->name;
    run_check(c);
}

static void on_limit(void *arg, const struct tg_limit_result *res)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    r->checking = false;
    r->denied = res->denied;
    r->lreq.fallback = res->fallback;
    const char *backend[] = {c->w->limiter->ops->name};
    tg_metrics_observe(TG_M_LIMITER_DURATION, backend, (double)(now_us() - r->t_lim_us) / 1e6);
    r->rl_len = tg_limiter_format_headers(&r->lreq, res, r->rl, sizeof(r->rl));
    if (res->status == TG_LIMIT_ALLOWED) {
        r->charged = true;
        start_forward(c);
        return;
    }
    if (res->status == TG_LIMIT_DENIED && r->route->max_wait_ms > 0 &&
        r->waited_ms + res->retry_ms <= r->route->max_wait_ms) {
        int ms = (int)(res->retry_ms > 0 ? res->retry_ms : 1);
        r->waited_ms += ms;
        r->rl_len = 0;
        arm_timer(c, ms);
        return;
    }
    char body[1024];
    size_t n = tg_limiter_format_error(&r->lreq, res, body, sizeof(body));
    if (res->status == TG_LIMIT_DENIED) {
        const char *labels[] = {r->tenant->name, r->lreq.b[res->denied].limit->name};
        tg_metrics_add(TG_M_RATELIMITED, labels, 1);
        reply_json(c, 429, body, n, false, TG_DECISION_LIMITED);
    } else if (res->status == TG_LIMIT_TOO_LARGE) {
        reply_json(c, 400, body, n, false, TG_DECISION_REJECTED);
    } else {
        r->rl_len = (size_t)snprintf(r->rl, sizeof(r->rl), "Retry-After: 1\r\n");
        reply_json(c, 503, body, n, false, TG_DECISION_ERROR);
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tg_conn *c = arg;
    switch (c->state) {
    case C_IDLE:
    case C_CLOSING:
        conn_free(c);
        return;
    case C_HEAD:
    case C_BODY:
        if (c->req->id[0] == '\0') tg_usage_new_id(c->req->id);
        reply_error(c, 408, "invalid_request_error", "request_timeout",
                    "The request was not received in time.", true, TG_DECISION_REJECTED);
        return;
    case C_WORK:
        run_check(c); /* a denied request waiting for room (route max_wait_ms) */
        return;
    }
}

/* ---- forwarding ---- */

static void on_upconn(void *arg, struct tg_upconn *up, const char *err, bool timeout);

static struct tg_pool *pool_for(struct tg_worker *w, const struct tg_upstream *u)
{
    if (u->index < w->npools && tg_pool_matches(w->pools[u->index], u)) return w->pools[u->index];
    for (size_t i = 0; i < w->npools; i++)
        if (tg_pool_matches(w->pools[i], u)) return w->pools[i];
    return NULL;
}

static void start_forward(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    r->pool = pool_for(c->w, r->route->upstream);
    if (r->pool == NULL) {
        r->upstream_failed = true;
        reply_error(c, 502, "server_error", "upstream_unavailable",
                    "The upstream of this route was removed by a reload.", false,
                    TG_DECISION_ERROR);
        return;
    }
    r->acquiring = true;
    tg_pool_acquire(r->pool, on_upconn, c);
}

enum fwd { FWD_KEEP, FWD_DROP, FWD_XFF };

/* What becomes of a client's request header on its way upstream: hop-by-hop
 * headers, Host, the client's key, Expect, Content-Length and x-request-id
 * are replaced; X-Forwarded-For is extended. Sorted by length: one compare
 * for most headers. */
static enum fwd forward_kind(const char *name, size_t len)
{
    static const char *const dropped[16] = {[4] = "host",
                                            [6] = "expect",
                                            [12] = "x-request-id",
                                            [13] = "authorization",
                                            [14] = "content-length"};
    if (len < 16 && dropped[len] && tg_http_lc_is(name, len, dropped[len])) return FWD_DROP;
    if (len == 15 && tg_http_lc_is(name, len, "x-forwarded-for")) return FWD_XFF;
    return tg_http_is_hop_by_hop(name, len) ? FWD_DROP : FWD_KEEP;
}

static void write_request(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    const struct tg_upstream *u = r->route->upstream;
    struct tg_http_msg *m = &r->msg;
    struct headbuf hb;
    hb_init(&hb, bufferevent_get_output(tg_upconn_bev(r->up)));
    size_t mlen;
    const char *mname = tg_http_method_name(m, &mlen);
    hb_add(&hb, mname, mlen);
    hb_add(&hb, " ", 1);
    hb_str(&hb, u->base_path);
    hb_add(&hb, r->path, r->path_len);
    if (r->query) {
        hb_add(&hb, "?", 1);
        hb_add(&hb, r->query, r->query_len);
    }
    hb_add(&hb, " HTTP/1.1\r\nHost: ", 17);
    hb_str(&hb, u->host_header);
    hb_add(&hb, "\r\n", 2);
    const char *xff = NULL;
    size_t xff_len = 0;
    struct hrun run = {NULL, 0};
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct tg_http_header *h = &m->headers[i];
        enum fwd what = forward_kind(h->name, h->nlen);
        if (what == FWD_DROP || tg_http_listed(m, h->name, h->nlen)) continue;
        if (what == FWD_XFF) {
            xff = h->value;
            xff_len = h->vlen;
            continue;
        }
        bool configured = false;
        for (size_t k = 0; k < u->nheaders && !configured; k++)
            configured = tg_http_name_is(h->name, h->nlen, u->headers[k].key);
        if (!configured) hb_keep(&hb, &run, h);
    }
    hb_run_flush(&hb, &run);
    hb_add(&hb, "X-Forwarded-For: ", 17);
    if (xff) {
        hb_add(&hb, xff, xff_len);
        hb_add(&hb, ", ", 2);
    }
    hb_str(&hb, c->peer);
    hb_add(&hb, "\r\nx-request-id: ", 16);
    hb_str(&hb, r->id);
    hb_add(&hb, "\r\n", 2);
    for (size_t k = 0; k < u->nheaders; k++)
        hb_header(&hb, u->headers[k].key, strlen(u->headers[k].key), u->headers[k].value,
                  strlen(u->headers[k].value));
    const char *body = r->fwd_body ? r->fwd_body : r->body;
    size_t blen = r->fwd_body ? r->fwd_len : r->body_len;
    if (blen > 0 || m->method == TG_HTTP_POST || m->method == TG_HTTP_PUT ||
        m->method == TG_HTTP_PATCH) {
        hb_add(&hb, "Content-Length: ", 16);
        hb_int(&hb, (long long)blen);
        hb_add(&hb, "\r\n", 2);
    }
    hb_add(&hb, "\r\n", 2);
    if (blen) hb_add(&hb, body, blen);
    hb_flush(&hb);
}

static void on_upconn(void *arg, struct tg_upconn *up, const char *err, bool timeout)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    r->acquiring = false;
    if (up != NULL) {
        int ms = r->route->upstream->response_timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        bufferevent_disable(tg_upconn_bev(up), EV_WRITE);
        if (!up_attach(c, up, &tv)) {
            tg_pool_release(up, false);
            up = NULL;
            err = "out of memory";
        }
    }
    if (up == NULL) {
        log_upstream_failure("request %s tenant %s: %s", r->id, r->tenant->name, err);
        r->upstream_failed = true;
        reply_error(c, 502, "server_error", "upstream_unavailable",
                    "The upstream model server could not be reached.", false, TG_DECISION_ERROR);
        return;
    }
    r->up = up;
    tg_http_scan_init(&r->uscan, TG_HTTP_REPLY);
    if (r->tup_us == 0) r->tup_us = now_us();
    struct bufferevent *ub = tg_upconn_bev(up);
    bufferevent_setcb(ub, up_read_cb, up_write_cb, up_event_cb, c);
    write_request(c);
    flush_out(ub, !tg_upconn_tls(up));
}

/* ---- the reply ---- */

static void out_data(struct tg_conn *c, const char *data, size_t len)
{
    struct tg_req *r = c->req;
    if (len == 0) return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (r->out_chunked) {
        char hdr[24];
        int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
        evbuffer_add(out, hdr, (size_t)n);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
        r->bytes_out += n + (int64_t)len + 2;
    } else {
        evbuffer_add(out, data, len);
        r->bytes_out += (int64_t)len;
    }
}

static void on_scan_emit(void *arg, const char *data, size_t len)
{
    out_data(arg, data, len);
}

static void on_resp_body(void *arg, const char *data, size_t len)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (r->scanning) tg_scan_feed(&r->scan, data, len);
    if (r->out_mode == OUT_REFRAME && !(r->scanning && r->scan.strip_usage)) out_data(c, data, len);
}

static bool header_starts(const struct tg_http_msg *m, const char *name, const char *prefix)
{
    size_t vlen;
    const char *v = tg_http_header(m, name, &vlen);
    size_t pl = strlen(prefix);
    return v && vlen >= pl && strncasecmp(v, prefix, pl) == 0;
}

static void send_resp_head(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_http_msg *um = &r->umsg;
    r->status = um->status;
    if (um->status >= 500) r->upstream_failed = true;
    bool sse = header_starts(um, "content-type", "text/event-stream");
    if (r->route->cost != TG_COST_REQUESTS && !r->bodyless && !um->done) {
        bool strip = r->strip_usage && sse;
        tg_scan_init(&r->scan, sse, strip, strip ? on_scan_emit : NULL, c);
        r->scanning = true;
    }
    /* An HTTP/1.0 client cannot read chunks (RFC 9112 7): it gets the body
     * de-chunked, delimited by the close. */
    bool dechunk = c->http10 && um->chunked && !um->done;
    if ((r->scanning && r->scan.strip_usage) || (um->until_close && !um->done) || dechunk)
        r->out_mode = OUT_REFRAME;
    else
        r->out_mode = OUT_PASS;
    bool close = !c->keep_alive || c->w->draining;
    if (r->out_mode == OUT_REFRAME) {
        r->out_chunked = !c->http10;
        if (c->http10) close = true;
    }
    c->keep_alive = !close;
    struct headbuf hb;
    hb_init(&hb, bufferevent_get_output(c->bev));
    hb_status_line(&hb, um->status);
    struct hrun run = {NULL, 0};
    for (size_t i = 0; i < um->nheaders; i++) {
        const struct tg_http_header *h = &um->headers[i];
        if (tg_http_is_hop_by_hop(h->name, h->nlen) || tg_http_listed(um, h->name, h->nlen) ||
            tg_http_lc_is(h->name, h->nlen, "x-request-id") ||
            (r->out_mode == OUT_REFRAME && tg_http_lc_is(h->name, h->nlen, "content-length")))
            continue;
        hb_keep(&hb, &run, h);
    }
    hb_run_flush(&hb, &run);
    if (r->out_chunked || (r->out_mode == OUT_PASS && um->chunked))
        hb_add(&hb, "Transfer-Encoding: chunked\r\n", 28);
    add_common_headers(c, &hb, close);
    hb_add(&hb, "\r\n", 2);
    r->bytes_out += (int64_t)hb_flush(&hb);
    r->resp_started = true;
}

static void resp_complete(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    if (r->scanning) tg_scan_finish(&r->scan);
    if (r->out_chunked) {
        evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
        r->bytes_out += 5;
    }
    struct tg_upconn *up = r->up;
    r->up = NULL;
    up_detach(c, up);
    tg_pool_release(up, r->umsg.keep_alive);
    req_finish(c, r->upstream_failed ? TG_DECISION_ERROR : TG_DECISION_ALLOWED);
}

/* Moves reply bytes from the upstream to the client, parsing as they pass. */
static void pump_body(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct bufferevent *ub = tg_upconn_bev(r->up);
    struct evbuffer *in = bufferevent_get_input(ub);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct evbuffer_iovec v[8];
    while (!r->umsg.done && evbuffer_get_length(in) > 0) {
        int nv = evbuffer_peek(in, -1, NULL, v, 8);
        if (nv > 8) nv = 8;
        size_t used = 0;
        bool stop = false;
        for (int i = 0; i < nv && !stop; i++) {
            ssize_t n = tg_http_feed(&r->umsg, v[i].iov_base, v[i].iov_len);
            if (n < 0) {
                r->bad_reply = true;
                up_event_cb(ub, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
                return;
            }
            used += (size_t)n;
            stop = (size_t)n < v[i].iov_len || r->umsg.done;
        }
        if (used == 0 && !r->umsg.done) { /* the parser took nothing: never spin */
            up_event_cb(ub, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        r->up_bytes += (int64_t)used;
        if (r->out_mode == OUT_PASS) {
            evbuffer_remove_buffer(in, out, used);
            r->bytes_out += (int64_t)used;
        } else {
            evbuffer_drain(in, used);
        }
    }
    if (r->umsg.done) {
        resp_complete(c);
        return;
    }
    flush_out(c->bev, true);
    if (evbuffer_get_length(out) > CLIENT_HIGH_WATER && !r->paused) {
        r->paused = true;
        up_reading(c, false);
    }
}

static void up_read_cb(struct bufferevent *bev, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (!r->resp_head) {
        struct evbuffer *in = bufferevent_get_input(bev);
        ssize_t n = scan_head(in, &r->uscan);
        if (n == 0) return;
        if (n < 0) {
            r->bad_reply = true;
            up_event_cb(bev, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        size_t hlen = (size_t)n;
        if (!reserve_head(&r->uhead, &r->uhead_cap, hlen)) {
            up_event_cb(bev, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        evbuffer_remove(in, r->uhead, hlen);
        r->up_bytes += (int64_t)hlen;
        tg_http_msg_init(&r->umsg, TG_HTTP_REPLY, on_resp_body, c);
        r->umsg.skip_body = r->msg.method == TG_HTTP_HEAD;
        /* 101 switches protocols, which was never asked for. */
        if (tg_http_parse_head(&r->umsg, r->uhead, hlen) != TG_HTTP_OK || r->umsg.status == 101) {
            r->bad_reply = true;
            up_event_cb(bev, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        if (r->umsg.status / 100 == 1) {
            tg_http_scan_init(&r->uscan, TG_HTTP_REPLY);
            up_read_cb(bev, arg); /* an interim reply: wait for the final one */
            return;
        }
        r->resp_head = true;
        send_resp_head(c);
    }
    pump_body(c);
}

static void up_write_cb(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) bufferevent_disable(bev, EV_WRITE);
}

/* The upstream connection ended or failed while serving this request. */
static void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if ((what & BEV_EVENT_EOF) && r->resp_head && !r->umsg.done) {
        pump_body(c);
        if (r->up == NULL) return; /* completed */
        tg_http_feed_eof(&r->umsg);
        if (r->umsg.done) {
            r->umsg.keep_alive = false;
            resp_complete(c);
            return;
        }
    }
    struct tg_upconn *up = r->up;
    bool reused = tg_upconn_reused(up);
    r->up = NULL;
    up_detach(c, up);
    tg_pool_release(up, false);
    if (!r->resp_head && r->up_bytes == 0 && reused && !r->retried && !r->bad_reply &&
        !(what & BEV_EVENT_TIMEOUT)) {
        /* A stale keep-alive connection: once more on a fresh one. */
        r->retried = true;
        r->acquiring = true;
        tg_pool_acquire(r->pool, on_upconn, c);
        return;
    }
    r->upstream_failed = true;
    if (!r->resp_started) {
        bool timeout = (what & BEV_EVENT_TIMEOUT) != 0;
        log_upstream_failure("request %s tenant %s: upstream %s %s", r->id, r->tenant->name,
                             r->route->upstream->name,
                             timeout        ? "did not answer in time"
                             : r->bad_reply ? "sent a reply that is not valid HTTP/1.1"
                                            : "closed the connection");
        if (r->bad_reply)
            reply_error(c, 502, "server_error", "upstream_error",
                        "The upstream model server sent a reply that is not valid HTTP/1.1.",
                        false, TG_DECISION_ERROR);
        else if (timeout)
            reply_error(c, 504, "server_error", "upstream_timeout",
                        "The upstream model server did not answer in time.", false,
                        TG_DECISION_ERROR);
        else
            reply_error(c, 502, "server_error", "upstream_error",
                        "The upstream model server closed the connection without a reply.", false,
                        TG_DECISION_ERROR);
        return;
    }
    /* Mid-stream: the client's reply ends here, without a clean end. */
    log_upstream_failure("request %s tenant %s: upstream %s stream %s after %lld bytes", r->id,
                         r->tenant->name, r->route->upstream->name,
                         r->bad_reply ? "broke its framing" : "cut", (long long)r->up_bytes);
    c->keep_alive = false;
    if (r->scanning) tg_scan_finish(&r->scan);
    req_finish(c, TG_DECISION_ERROR);
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    bool drained = evbuffer_get_length(bufferevent_get_output(bev)) == 0;
    if (c->state == C_CLOSING) {
        if (drained) conn_free(c);
        return;
    }
    if (drained) bufferevent_disable(bev, EV_WRITE);
    if (r && r->paused && r->up) {
        r->paused = false;
        up_reading(c, true);
        pump_body(c);
    }
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (r && r->active && c->state == C_WORK) {
        /* The client went away mid-request: record it; releasing the request
         * cancels the limiter check, the wait for a connection or the
         * upstream request, whichever is under way. */
        if (r->scanning) tg_scan_finish(&r->scan);
        r->status = 499;
        c->keep_alive = false;
        c->state = C_CLOSING;
        req_finish(c, TG_DECISION_ERROR);
    }
    conn_free(c);
}

/* ---- the end of a request: settle, record, count, log ---- */

/* The actual cost of a finished request, and the settle of actual − estimate.
 * What reached the client is charged, however the request ended: a stream cut
 * by the upstream or left by the client costs what was delivered of it (the
 * usage the upstream reported, or else the text that passed). A failed
 * upstream call (no reply, or a 5xx one) or a client gone before any reply
 * byte costs only its request unit, and so does a bodyless request. */
static void settle(struct tg_conn *c, enum tg_decision decision, struct tg_cost *actual)
{
    struct tg_req *r = c->req;
    const struct tg_usage *usage = r->scanning ? &r->scan.usage : NULL;
    bool reported = usage && (usage->have_tokens || usage->have_video);
    bool delivered = r->resp_head && r->umsg.status < 500;
    bool nothing_delivered = r->status == 499 && !r->resp_started;
    if (r->bodyless || (decision == TG_DECISION_ERROR && !delivered && !reported &&
                        (r->upstream_failed || nothing_delivered))) {
        memset(actual, 0, sizeof(*actual));
        actual->u[TG_UNIT_REQUESTS] = TG_MICRO;
    } else {
        static const struct tg_usage none;
        tg_cost_actual(r->route->cost, r->cfg->costs.chars_per_token, &r->info,
                       usage ? usage : &none, actual);
    }
    int64_t delta[TG_MAX_BUCKETS];
    bool any = false;
    for (size_t i = 0; i < r->lreq.n; i++) {
        delta[i] = actual->u[r->lreq.b[i].limit->unit] - r->lreq.b[i].cost_u;
        any = any || delta[i] != 0;
    }
    if (any) tg_limiter_settle(c->w->limiter, &r->lreq, delta);
    r->charged = false;
}

static void count(struct tg_conn *c, const struct tg_usage_record *rec, bool admitted)
{
    /* This worker's series for the labels of its last request, reused while the
     * labels stay the same. Labels are compared by content, never by address: a
     * reload frees the old config's strings and a new one may reuse the memory.
     * A label longer than its copy is `unkept`: its series are looked up again. */
    static __thread struct {
        char route[128], tenant[128], upstream[128], model[TG_MODEL_LEN];
        int status;
        unsigned unkept;
        struct tg_metric_series *req, *dur, *up, *cost[TG_UNIT_COUNT][2], *tok[2];
    } memo;
    enum { ROUTE = 1, TENANT = 2, UPSTREAM = 4, MODEL = 8, STATUS = 16 };
    struct tg_req *r = c->req;
    const char *tenant = rec->tenant;
    const char *route = rec->route;
    /* Models are labelled only when some limit names them; others are "other". */
    const char *model = NULL;
    if (tenant && admitted)
        for (size_t i = 0; i < r->tenant->nlimits && model == NULL; i++)
            for (size_t k = 0; k < r->tenant->limits[i].nmodels; k++)
                if (strcmp(r->tenant->limits[i].models[k], rec->model) == 0) model = rec->model;
    const char *now[] = {route, tenant, rec->upstream, model};
    char *copy[] = {memo.route, memo.tenant, memo.upstream, memo.model};
    const size_t cap[] = {sizeof(memo.route), sizeof(memo.tenant), sizeof(memo.upstream),
                          sizeof(memo.model)};
    unsigned changed = rec->status != memo.status ? STATUS : 0;
    memo.status = rec->status;
    for (unsigned i = 0; i < 4; i++) {
        const char *v = now[i] ? now[i] : "other"; /* as the metrics write NULL */
        if (!(memo.unkept & 1u << i) && strcmp(copy[i], v) == 0) continue;
        changed |= 1u << i;
        size_t n = strlen(v);
        memo.unkept &= ~(1u << i);
        if (n < cap[i])
            memcpy(copy[i], v, n + 1);
        else
            memo.unkept |= 1u << i;
    }
    if (changed & (ROUTE | TENANT | STATUS)) memo.req = NULL;
    if (changed & ROUTE) memo.dur = NULL;
    if (changed & UPSTREAM) memo.up = NULL;
    if (changed & TENANT) memset(memo.cost, 0, sizeof(memo.cost));
    if (changed & (TENANT | MODEL)) memo.tok[0] = memo.tok[1] = NULL;

    if (memo.req == NULL) {
        char digits[24], code[8];
        size_t cn;
        const char *cd = tg_fmt_int(digits, rec->status, &cn);
        if (cn >= sizeof(code)) cn = sizeof(code) - 1;
        memcpy(code, cd, cn);
        code[cn] = '\0';
        memo.req = tg_metrics_series(TG_M_REQUESTS, (const char *[]){route, tenant, code});
    }
    tg_metrics_series_add(memo.req, 1);
    if (memo.dur == NULL) memo.dur = tg_metrics_series(TG_M_REQUEST_DURATION, &route);
    tg_metrics_series_observe(memo.dur, rec->latency_ms / 1000.0);
    if (rec->upstream_ms >= 0) {
        if (memo.up == NULL) memo.up = tg_metrics_series(TG_M_UPSTREAM_DURATION, &rec->upstream);
        tg_metrics_series_observe(memo.up, rec->upstream_ms / 1000.0);
    }
    if (tenant == NULL || !admitted) return;
    static const char *const phase[] = {"estimated", "actual"};
    for (int u = 0; u < TG_UNIT_COUNT; u++) {
        const int64_t micro[] = {rec->estimated.u[u], rec->actual.u[u]};
        for (int p = 0; p < 2; p++) {
            if (micro[p] == 0) continue;
            if (memo.cost[u][p] == NULL) {
                const char *l[] = {tenant, tg_unit_name((enum tg_unit)u), phase[p]};
                memo.cost[u][p] = tg_metrics_series(TG_M_COST_UNITS, l);
            }
            tg_metrics_series_add(memo.cost[u][p], (double)micro[p] / TG_MICRO);
        }
    }
    if (rec->usage.have_tokens) {
        static const char *const kind[] = {"prompt", "completion"};
        for (int k = 0; k < 2; k++)
            if (memo.tok[k] == NULL)
                memo.tok[k] =
                    tg_metrics_series(TG_M_TOKENS, (const char *[]){tenant, model, kind[k]});
        tg_metrics_series_add(memo.tok[0], (double)rec->usage.prompt_tokens);
        tg_metrics_series_add(memo.tok[1], (double)rec->usage.completion_tokens);
    }
    if (rec->usage.have_video) {
        const char *lv[] = {tenant, model};
        tg_metrics_add(TG_M_VIDEO_SECONDS, lv, rec->usage.video_seconds);
    }
}

static void access_log(const struct tg_usage_record *rec)
{
    char line[TG_USAGE_ACCESS_LINE_MAX];
    size_t n = tg_usage_access_line(rec, line, sizeof(line));
    if (n) tg_log_access(line, n);
}

/* Every request ends here exactly once, whatever its outcome. */
static void req_finish(struct tg_conn *c, enum tg_decision decision)
{
    struct tg_req *r = c->req;
    struct tg_worker *w = c->w;
    int64_t t_end = now_us();
    struct tg_usage_record rec;
    memset(&rec, 0, sizeof(rec));
    memcpy(rec.id, r->id, sizeof(rec.id));
    if (rec.id[0] == '\0') tg_usage_new_id(rec.id);
    rec.ts_ms = r->ts_ms;
    rec.tenant = r->tenant ? r->tenant->name : NULL;
    if (r->tenant) {
        static const char hex[] = "0123456789abcdef";
        for (int i = 0; i < 6; i++) {
            rec.key[2 * i] = hex[r->key_digest[i] >> 4];
            rec.key[2 * i + 1] = hex[r->key_digest[i] & 15];
        }
        rec.key[12] = '\0';
    }
    rec.route = r->route ? r->route->path : NULL;
    rec.model = r->info.model;
    rec.upstream = r->tup_us ? r->route->upstream->name : NULL;
    rec.status = r->status;
    rec.stream = r->info.stream;
    rec.decision = decision;
    if (decision == TG_DECISION_LIMITED && r->denied >= 0)
        rec.limit = r->lreq.b[r->denied].limit->name;
    rec.fallback = r->lreq.fallback;
    if (r->scanning) rec.usage = r->scan.usage;
    rec.estimated = r->est;
    bool admitted = r->charged;
    if (admitted) settle(c, decision, &rec.actual);
    rec.latency_ms = (double)(t_end - r->t0_us) / 1000.0;
    rec.upstream_ms = r->tup_us ? (double)(t_end - r->tup_us) / 1000.0 : -1;
    rec.bytes_in = r->bytes_in;
    rec.bytes_out = r->bytes_out;
    /* A record the sink cannot keep is counted and logged (at most once a
     * second) by the sink itself. */
    (void)tg_usage_emit(w->sink, &rec);
    count(c, &rec, admitted);
    access_log(&rec);
    req_release(c);

    /* The reply's last bytes are still queued: they are written below (or by
     * the close), after the record was handed to the sink, so that a client
     * never holds a complete answer whose record a crash could lose. */
    if (c->state == C_CLOSING) return; /* the client is gone: its close is under way */
    if (!c->keep_alive || w->draining) {
        conn_close_after_write(c);
        return;
    }
    flush_out(c->bev, true);
    c->state = C_IDLE;
    arm_timer(c, w->cfg->server.idle_timeout_ms);
    client_reading(c, true);
    idle_enter(c);
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}
