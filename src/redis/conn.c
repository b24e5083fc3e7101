/* One Redis connection over hiredis async on a worker's loop: set-up, deadlines,
 * NOSCRIPT → SCRIPT LOAD and resend, idle PING, reconnect with backoff. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>
#include <openssl/evp.h>
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/redis.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MIN_MS 500 /* connect + AUTH/SELECT/SCRIPT LOAD */
#define MAX_RESENDS 2              /* NOSCRIPT retries of one call */
#define PING_IDLE_MS 1000          /* an idle connection is probed this often */
#define MAX_SCRIPTS 8

enum conn_state { ST_DOWN, ST_CONNECTING, ST_UP };
enum call_kind { CALL_USER, CALL_SETUP, CALL_LOAD, CALL_PING };

/* One command awaiting its reply; hiredis's privdata. */
struct call {
    struct call *prev, *next; /* in-flight FIFO (oldest first), or the free list */
    struct tg_redis *r;
    enum call_kind kind;
    int script; /* CALL_USER: the script it runs (NOSCRIPT); CALL_LOAD/SETUP: the one loaded */
    bool last_setup; /* its reply completes the handshake */
    int resends;
    int64_t deadline_ms;
    const struct tg_resp *cmd; /* the caller's, or &own */
    tg_redis_cb cb;
    void *arg;
    struct tg_resp own; /* set-up, SCRIPT LOAD and PING commands */
};

struct tg_redis {
    struct event_base *evb;
    char *host;
    int port;
    char *password;
    int db;
    int timeout_ms;
    size_t nscripts;
    const char *const *scripts;
    char sha[MAX_SCRIPTS][41];
    bool loading[MAX_SCRIPTS];
    char *note;

    redisAsyncContext *ac; /* NULL while down */
    enum conn_state state; /* written by the worker (set_state), read by tg_redis_up from any thread */
    bool down_logged;
    char down_why[160]; /* the reason last logged, so that a new one is logged too */
    int backoff_ms;
    uint64_t rnd;
    bool destroying;

    struct call *head, *tail;
    struct call *free_calls;
    struct event *deadline_ev, *reconnect_ev, *ping_ev;
    int64_t timer_at_ms; /* when deadline_ev fires */
};

static void set_state(struct tg_redis *r, enum conn_state st)
{
    __atomic_store_n(&r->state, st, __ATOMIC_RELAXED);
}

static void count_error(const char *kind)
{
    tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){kind}, 1);
}

/* ---- calls and the in-flight FIFO ---- */

static struct call *call_get(struct tg_redis *r)
{
    struct call *c = r->free_calls;
    if (c) {
        r->free_calls = c->next;
    } else {
        c = calloc(1, sizeof(*c));
        if (!c) return NULL;
    }
    memset(c, 0, offsetof(struct call, own)); /* `own` keeps its buffer */
    tg_resp_reset(&c->own);
    c->r = r;
    return c;
}

static void call_put(struct tg_redis *r, struct call *c)
{
    c->next = r->free_calls;
    r->free_calls = c;
}

static void list_remove(struct tg_redis *r, struct call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;
    c->prev = c->next = NULL;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

static void arm_deadline(struct tg_redis *r, int64_t at_ms, int64_t now_ms)
{
    int64_t in = at_ms > now_ms ? at_ms - now_ms : 0;
    struct timeval tv = {(time_t)(in / 1000), (suseconds_t)(in % 1000) * 1000};
    r->timer_at_ms = at_ms;
    evtimer_add(r->deadline_ev, &tv);
}

/* Queues c->cmd on the connection and starts its deadline. */
static int queue_call(struct tg_redis *r, struct call *c, int timeout_ms)
{
    if (!r->ac || c->cmd->failed ||
        redisAsyncFormattedCommand(r->ac, on_reply, c, c->cmd->b.p, c->cmd->b.len) != REDIS_OK)
        return -1;
    int64_t now = tg_now_mono_ms();
    c->deadline_ms = now + timeout_ms;
    c->prev = r->tail;
    c->next = NULL;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    if (!evtimer_pending(r->deadline_ev, NULL) || r->timer_at_ms > c->deadline_ms)
        arm_deadline(r, c->deadline_ms, now);
    return 0;
}

/* Writes the commands queued in this turn of the loop now, instead of waiting
 * for EPOLLOUT in the next turn: one turn less of latency, and hiredis's write
 * event is turned on and off within the turn, which costs no epoll_ctl with the
 * worker's changelist. A failed write disconnects and answers every command
 * queued so far through its callback, so it comes after every queueing; and
 * never from inside a reply callback (a settle flushed by a refund), where a
 * disconnect would free the context under hiredis's feet: there the write
 * event hiredis armed does it. */
void tg_redis_flush(struct tg_redis *r)
{
    if (r->ac && r->state == ST_UP && !(r->ac->c.flags & REDIS_IN_CALLBACK))
        redisAsyncHandleWrite(r->ac);
}

/* ---- connection state ---- */

static void connect_redis(struct tg_redis *r);

static void schedule_reconnect(struct tg_redis *r)
{
    if (r->destroying || evtimer_pending(r->reconnect_ev, NULL)) return;
    r->rnd ^= r->rnd << 13;
    r->rnd ^= r->rnd >> 7;
    r->rnd ^= r->rnd << 17;
    int half = r->backoff_ms / 2;
    int delay = half + (int)(r->rnd % (uint64_t)(half + 1)); /* equal jitter */
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(r->reconnect_ev, &tv);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Forgets the connection (whoever frees it) and plans a reconnect. */
static void mark_down(struct tg_redis *r, const char *kind, const char *detail)
{
    if (r->state == ST_DOWN) return;
    r->ac = NULL;
    set_state(r, ST_DOWN);
    memset(r->loading, 0, sizeof(r->loading));
    count_error(kind);
    /* Logged once per outage, and again only if the reason changes (refused, then a
     * wrong password): never per request or per reconnect with the same reason. */
    char why[sizeof(r->down_why)];
    snprintf(why, sizeof(why), "%s%s%s", kind, detail ? ": " : "", detail ? detail : "");
    if ((!r->down_logged || strcmp(why, r->down_why) != 0) && !r->destroying) {
        tg_log_warn("redis %s:%d unavailable (%s)%s%s", r->host, r->port, why,
                    r->note[0] ? ": " : "", r->note);
        r->down_logged = true;
        memcpy(r->down_why, why, sizeof(why));
    }
    schedule_reconnect(r);
}

/* Drops the connection now: every pending callback runs with reply == NULL.
 * From inside a hiredis reply callback, hiredis defers the free until it returns. */
static void kill_connection(struct tg_redis *r, const char *kind, const char *detail)
{
    redisAsyncContext *ac = r->ac;
    mark_down(r, kind, detail);
    if (ac) redisAsyncFree(ac);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct tg_redis *r = arg;
    if (!r->head) return;
    int64_t now = tg_now_mono_ms();
    if (r->head->deadline_ms <= now)
        kill_connection(r, "timeout", NULL);
    else
        arm_deadline(r, r->head->deadline_ms, now);
}

/* hiredis 0.14 copies the error into ac->errstr only after onConnect: read the inner context. */
static const char *error_of(const redisAsyncContext *ac)
{
    return ac->c.err ? ac->c.errstr : "closed";
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct tg_redis *r = ac->data;
    /* On failure hiredis frees the context right after this returns (never free it here). */
    if (status != REDIS_OK && r->ac == ac) mark_down(r, "connect", error_of(ac));
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct tg_redis *r = ac->data;
    if (r->ac == ac) mark_down(r, "connect", error_of(ac));
}

static int send_own(struct tg_redis *r, enum call_kind kind, int script, const char *const *argv,
                    size_t argc, bool last)
{
    struct call *c = call_get(r);
    if (!c) return -1;
    c->kind = kind;
    c->script = script;
    c->last_setup = last;
    c->cmd = &c->own;
    tg_resp_head(&c->own, '*', argc);
    for (size_t i = 0; i < argc; i++)
        tg_resp_bulk(&c->own, argv[i], strlen(argv[i]));
    int timeout = r->timeout_ms > CONNECT_TIMEOUT_MIN_MS ? r->timeout_ms : CONNECT_TIMEOUT_MIN_MS;
    if (kind != CALL_SETUP) timeout = r->timeout_ms;
    if (queue_call(r, c, timeout) != 0) {
        call_put(r, c);
        return -1;
    }
    return 0;
}

static int send_script_load(struct tg_redis *r, enum call_kind kind, int script, bool last)
{
    const char *argv[] = {"SCRIPT", "LOAD", r->scripts[script]};
    return send_own(r, kind, script, argv, 3, last);
}

static void connect_redis(struct tg_redis *r)
{
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac || ac->err) {
        set_state(r, ST_CONNECTING); /* so that mark_down counts and logs it */
        mark_down(r, "connect", ac ? error_of(ac) : "out of memory");
        if (ac) redisAsyncFree(ac);
        return;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->evb) != REDIS_OK) {
        set_state(r, ST_CONNECTING);
        mark_down(r, "connect", "libevent attach");
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    set_state(r, ST_CONNECTING);
    char db[16];
    snprintf(db, sizeof(db), "%d", r->db);
    int rc = 0;
    bool last = r->nscripts == 0;
    if (r->password[0])
        rc |= send_own(r, CALL_SETUP, TG_REDIS_NO_SCRIPT, (const char *const[]){"AUTH", r->password},
                       2, false);
    if (r->db != 0 || last)
        rc |= send_own(r, CALL_SETUP, TG_REDIS_NO_SCRIPT, (const char *const[]){"SELECT", db}, 2,
                       last);
    for (size_t i = 0; i < r->nscripts; i++)
        rc |= send_script_load(r, CALL_SETUP, (int)i, i + 1 == r->nscripts);
    if (rc != 0) kill_connection(r, "connect", "out of memory");
}

static void on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    connect_redis(arg);
}

/* An idle connection gets a PING under the usual deadline, so that a server
 * that stopped answering is noticed (and tg_redis_up turns false) without traffic.
 * While commands are in flight, their own deadlines watch the connection. */
static void on_ping(evutil_socket_t fd, short what, void *arg)
{
    struct tg_redis *r = arg;
    if (r->state != ST_UP || r->head) return;
    send_own(r, CALL_PING, TG_REDIS_NO_SCRIPT, (const char *const[]){"PING"}, 1, false);
}

/* ---- replies ---- */

static bool is_noscript(const redisReply *rp)
{
    return rp->type == REDIS_REPLY_ERROR && rp->str && strncmp(rp->str, "NOSCRIPT", 8) == 0;
}

/* Loads the script again (once per NOSCRIPT wave) and resends the same call
 * after it on the same pipeline. Returns 0 if resent. */
static int resend_after_noscript(struct tg_redis *r, struct call *c)
{
    count_error("noscript");
    if (++c->resends > MAX_RESENDS || r->state != ST_UP) return -1;
    if (!r->loading[c->script]) {
        if (send_script_load(r, CALL_LOAD, c->script, false) != 0) return -1;
        r->loading[c->script] = true;
    }
    return queue_call(r, c, r->timeout_ms);
}

static void finish_own(struct tg_redis *r, struct call *c, redisAsyncContext *ac,
                       const redisReply *rp)
{
    bool last = c->last_setup;
    enum call_kind kind = c->kind;
    int script = c->script;
    call_put(r, c);
    if (!rp || ac != r->ac) return;
    if (kind == CALL_LOAD) r->loading[script] = false;
    if (rp->type == REDIS_REPLY_ERROR) {
        count_error("reply");
        if (kind == CALL_SETUP) {
            char detail[160];
            snprintf(detail, sizeof(detail), "%.*s", (int)(rp->len < 150 ? rp->len : 150), rp->str);
            kill_connection(r, "connect", detail);
        }
        return;
    }
    if (last && r->state == ST_CONNECTING) {
        set_state(r, ST_UP);
        r->backoff_ms = BACKOFF_MIN_MS;
        if (r->down_logged) tg_log_info("redis %s:%d up", r->host, r->port);
        r->down_logged = false;
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct call *c = priv;
    struct tg_redis *r = c->r;
    const redisReply *rp = reply;
    list_remove(r, c);
    if (!rp && ac == r->ac) mark_down(r, "connect", error_of(ac));
    if (c->kind != CALL_USER) {
        finish_own(r, c, ac, rp);
        return;
    }
    if (rp && c->script >= 0 && is_noscript(rp)) {
        if (resend_after_noscript(r, c) == 0) return;
        rp = NULL; /* counted as noscript: no answer */
    }
    tg_redis_cb cb = c->cb;
    void *arg = c->arg;
    call_put(r, c);
    cb(arg, rp);
}

/* ---- the interface ---- */

int tg_redis_send(struct tg_redis *r, const struct tg_resp *cmd, int script, tg_redis_cb cb,
                  void *arg)
{
    if (r->state != ST_UP || cmd->failed || script >= (int)r->nscripts) return -1;
    struct call *c = call_get(r);
    if (!c) return -1;
    c->kind = CALL_USER;
    c->script = script;
    c->cmd = cmd;
    c->cb = cb;
    c->arg = arg;
    if (queue_call(r, c, r->timeout_ms) != 0) {
        call_put(r, c);
        return -1;
    }
    return 0;
}

bool tg_redis_up(const struct tg_redis *r)
{
    return __atomic_load_n(&r->state, __ATOMIC_RELAXED) == ST_UP;
}

const char *tg_redis_sha(const struct tg_redis *r, size_t i)
{
    return i < r->nscripts ? r->sha[i] : "";
}

void tg_redis_destroy(struct tg_redis *r)
{
    if (!r) return;
    r->destroying = true;
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        tg_redis_flush(r); /* best effort: what was queued last */
        if (r->ac == ac) {
            r->ac = NULL;
            set_state(r, ST_DOWN);
            redisAsyncFree(ac); /* pending callbacks run with NULL */
        }
    }
    if (r->deadline_ev) event_free(r->deadline_ev);
    if (r->reconnect_ev) event_free(r->reconnect_ev);
    if (r->ping_ev) event_free(r->ping_ev);
    for (struct call *c = r->free_calls, *next; c; c = next) {
        next = c->next;
        tg_buf_free(&c->own.b);
        free(c);
    }
    free(r->host);
    free(r->password);
    free(r->note);
    free(r);
}

static void sha1_hex(const char *s, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(s, strlen(s), md, &len, EVP_sha1(), NULL);
    for (unsigned i = 0; i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

struct tg_redis *tg_redis_create(struct event_base *base, const struct tg_redis_options *o)
{
    if (o->nscripts > MAX_SCRIPTS) return NULL;
    struct tg_redis *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->evb = base;
    r->host = strdup(o->host ? o->host : "127.0.0.1");
    r->port = o->port;
    r->password = strdup(o->password ? o->password : "");
    r->note = strdup(o->unavailable_note ? o->unavailable_note : "");
    r->db = o->db;
    r->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : CONNECT_TIMEOUT_MIN_MS;
    r->scripts = o->scripts;
    r->nscripts = o->nscripts;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->rnd = (uint64_t)(uintptr_t)r ^ ((uint64_t)tg_now_mono_ms() << 20) ^ 0x9e3779b97f4a7c15ULL;
    r->deadline_ev = evtimer_new(base, on_deadline, r);
    r->reconnect_ev = evtimer_new(base, on_reconnect, r);
    r->ping_ev = event_new(base, -1, EV_PERSIST, on_ping, r);
    if (!r->host || !r->password || !r->note || !r->deadline_ev || !r->reconnect_ev ||
        !r->ping_ev) {
        tg_redis_destroy(r);
        return NULL;
    }
    for (size_t i = 0; i < r->nscripts; i++)
        sha1_hex(r->scripts[i], r->sha[i]);
    struct timeval ping_tv = {PING_IDLE_MS / 1000, (PING_IDLE_MS % 1000) * 1000};
    event_add(r->ping_ev, &ping_tv);
    connect_redis(r);
    return r;
}

/* The address to connect to, as the IP string hiredis 0.14 wants. */
void tg_redis_address(const struct tg_config *cfg, char *ip, size_t iplen, int *port)
{
    const struct sockaddr_storage *a = &cfg->limiter.redis.addr;
    *port = cfg->limiter.redis.port;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &in->sin_addr, ip, (socklen_t)iplen);
        *port = ntohs(in->sin_port);
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, (socklen_t)iplen);
        *port = ntohs(in6->sin6_port);
    } else {
        snprintf(ip, iplen, "%s", cfg->limiter.redis.host ? cfg->limiter.redis.host : "127.0.0.1");
    }
}
