/* The Redis limiter of one worker: EVALSHA of the embedded scripts over hiredis async, with
 * deadlines, reconnects, settle batching and the failure policy. */
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
#include "tollgate/limiter.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"

extern const char tg_lua_bucket[];
extern const char tg_lua_settle[];

#define MAX_INFLIGHT_CHECKS 1024
#define BATCH_MAX_CHECKS 256 /* checks of one tenant in one EVALSHA */
#define SETTLE_MAX_KEYS 128
#define SETTLE_FLUSH_MS 10 /* settles lag by at most this; fewer calls under load */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MIN_MS 500 /* connect + AUTH/SELECT/SCRIPT LOAD */
#define MAX_RESENDS 2              /* NOSCRIPT retries of one call */
#define PING_IDLE_MS 1000          /* an idle connection is probed this often */

enum conn_state { ST_DOWN, ST_CONNECTING, ST_UP };
enum op_kind { OP_CHECK, OP_BATCH, OP_SETTLE, OP_SETUP, OP_LOAD, OP_PING };
enum script { SC_BUCKET, SC_SETTLE, SC_COUNT };

struct buf {
    char *p;
    size_t len, cap;
};

/* One command awaiting its reply; hiredis's privdata. */
struct op {
    struct op *prev, *next; /* in-flight FIFO (oldest first), or the free list */
    struct rl *rl;
    enum op_kind kind;
    enum script script; /* EVALSHA / SCRIPT LOAD of which script */
    bool cancelled;
    bool last_setup; /* its reply completes the handshake */
    int resends;
    int64_t deadline_ms;
    struct op *mnext;   /* OP_CHECK: next in the queue or in its batch */
    struct op *members; /* OP_BATCH: its checks, in order */
    struct buf cmd;     /* OP_BATCH and others: the command in RESP, kept to resend after
                         * NOSCRIPT; OP_CHECK: its keys, kept for a refund */
    /* OP_CHECK */
    tg_limiter_cb cb;
    void *arg;
    struct tg_limit_req req; /* copy; what it points to is the caller's until cb/cancel */
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    uint32_t key_off[TG_MAX_BUCKETS], key_len[TG_MAX_BUCKETS]; /* keys inside cmd */
    uint8_t kidx[TG_MAX_BUCKETS]; /* index of each bucket among its batch's keys */
    size_t tenant_len;
    /* OP_SETTLE */
    size_t nkeys;
};

/* One coalesced settle: key and tag ("{tenant}") live in rl->arena. */
struct pending_settle {
    uint64_t hash, tag_hash;
    uint32_t key_off, key_len, tag_off, tag_len;
    struct tg_bucket_param p; /* p.cost_u = summed delta */
};

struct rl {
    struct tg_limiter base;
    struct event_base *evb;
    struct tg_limiter *fallback; /* (ref) */
    char ip[INET6_ADDRSTRLEN];
    int port;
    char *password;
    int db;
    int timeout_ms;
    char *prefix;
    size_t prefix_len;
    bool deny; /* on_redis_error: deny */
    char sha[SC_COUNT][41];

    redisAsyncContext *ac; /* NULL while down */
    enum conn_state state; /* written by the worker (set_state), read by ready() from any thread */
    bool down_logged;
    char down_why[160]; /* the reason last logged, so that a new one is logged too */
    bool loading[SC_COUNT];
    int backoff_ms;
    uint64_t rnd;
    int64_t fixed_clock_ms; /* < 0: the server's TIME */
    bool destroying;

    struct op *head, *tail;
    size_t inflight_checks;   /* queued or sent, not yet answered */
    struct op *qhead, *qtail; /* checks waiting for the end of this loop turn */
    struct event *batch_ev;
    bool batch_scheduled;
    size_t batches_inflight; /* OP_BATCH calls sent, not yet answered */
    struct op *free_ops;
    struct event *deadline_ev, *reconnect_ev, *flush_ev, *ping_ev;
    int64_t timer_at_ms; /* when deadline_ev fires */

    struct pending_settle ps[SETTLE_MAX_KEYS];
    size_t nps;
    struct buf arena;
};

static const char *const script_text[SC_COUNT] = {tg_lua_bucket, tg_lua_settle};

static void set_state(struct rl *rl, enum conn_state st)
{
    __atomic_store_n(&rl->state, st, __ATOMIC_RELAXED);
}

static void count_error(const char *kind, double n)
{
    tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){kind}, n);
}

static uint64_t fnv(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* ---- RESP building into a reusable buffer ---- */

static bool buf_reserve(struct buf *b, size_t more)
{
    if (b->len + more <= b->cap) return true;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + more)
        ncap *= 2;
    char *p = realloc(b->p, ncap);
    if (!p) return false;
    b->p = p;
    b->cap = ncap;
    return true;
}

/* Appends; on OOM sets len past cap so that the command is refused later. */
static void buf_add(struct buf *b, const void *s, size_t len)
{
    if (b->len > b->cap || !buf_reserve(b, len)) {
        b->len = b->cap + 1;
        return;
    }
    memcpy(b->p + b->len, s, len);
    b->len += len;
}

static bool buf_ok(const struct buf *b)
{
    return b->len <= b->cap;
}

static void resp_head(struct buf *b, char type, size_t n)
{
    char d[24];
    size_t k;
    const char *p = tg_fmt_int(d, (long long)n, &k);
    buf_add(b, &type, 1);
    buf_add(b, p, k);
    buf_add(b, "\r\n", 2);
}

static void resp_bulk(struct buf *b, const char *s, size_t len)
{
    resp_head(b, '$', len);
    buf_add(b, s, len);
    buf_add(b, "\r\n", 2);
}

/* An integer as a bulk string, "$<len>\r\n<digits>\r\n", in one append. */
static void resp_int(struct buf *b, int64_t v)
{
    char d[24], t[32];
    size_t k;
    const char *p = tg_fmt_int(d, (long long)v, &k);
    size_t n = 0;
    t[n++] = '$';
    if (k >= 10) t[n++] = '0' + (char)(k / 10);
    t[n++] = '0' + (char)(k % 10);
    t[n++] = '\r';
    t[n++] = '\n';
    memcpy(t + n, p, k);
    n += k;
    t[n++] = '\r';
    t[n++] = '\n';
    buf_add(b, t, n);
}

/* %.17g reads back as the same double in Lua's tonumber. The few rates of a
 * configuration are formatted once per thread, not on every batch. */
static void resp_double(struct buf *b, double v)
{
    static _Thread_local struct {
        double v;
        char t[32];
        size_t n;
    } cache[8];
    static _Thread_local unsigned next;
    for (unsigned i = 0; i < 8; i++)
        if (cache[i].n && memcmp(&cache[i].v, &v, sizeof(v)) == 0) {
            resp_bulk(b, cache[i].t, cache[i].n);
            return;
        }
    unsigned i = next++ % 8;
    int k = snprintf(cache[i].t, sizeof(cache[i].t), "%.17g", v);
    cache[i].v = v;
    cache[i].n = (size_t)k;
    resp_bulk(b, cache[i].t, cache[i].n);
}

/* ---- ops and the in-flight FIFO ---- */

static struct op *op_get(struct rl *rl)
{
    struct op *op = rl->free_ops;
    if (op) {
        rl->free_ops = op->next;
    } else {
        op = calloc(1, sizeof(*op));
        if (!op) return NULL;
    }
    struct buf cmd = op->cmd;
    memset(op, 0, offsetof(struct op, cmd));
    op->cmd = cmd;
    op->cmd.len = 0;
    op->rl = rl;
    return op;
}

static void op_put(struct rl *rl, struct op *op)
{
    op->next = rl->free_ops;
    rl->free_ops = op;
}

static void list_remove(struct rl *rl, struct op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        rl->head = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        rl->tail = op->prev;
    op->prev = op->next = NULL;
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv);

/* Writes the commands queued in this turn of the loop now, instead of waiting
 * for EPOLLOUT in the next turn: one turn less of latency, and hiredis's write
 * event is turned on and off within the turn, which costs no epoll_ctl with the
 * worker's changelist. A failed write disconnects and answers every command
 * queued so far through its callback, so it comes after every queueing; and
 * never from inside a reply callback (a settle flushed by a refund), where a
 * disconnect would free the context under hiredis's feet: there the write
 * event hiredis armed does it. */
static void write_now(struct rl *rl)
{
    if (rl->ac && rl->state == ST_UP && !(rl->ac->c.flags & REDIS_IN_CALLBACK))
        redisAsyncHandleWrite(rl->ac);
}

static void arm_deadline(struct rl *rl, int64_t at_ms, int64_t now_ms)
{
    int64_t in = at_ms > now_ms ? at_ms - now_ms : 0;
    struct timeval tv = {(time_t)(in / 1000), (suseconds_t)(in % 1000) * 1000};
    rl->timer_at_ms = at_ms;
    evtimer_add(rl->deadline_ev, &tv);
}

/* Queues op->cmd on the connection and starts its deadline. */
static int send_op(struct rl *rl, struct op *op, int timeout_ms)
{
    if (!rl->ac || !buf_ok(&op->cmd) ||
        redisAsyncFormattedCommand(rl->ac, on_reply, op, op->cmd.p, op->cmd.len) != REDIS_OK)
        return -1;
    int64_t now = tg_now_mono_ms();
    op->deadline_ms = now + timeout_ms;
    op->prev = rl->tail;
    op->next = NULL;
    if (rl->tail)
        rl->tail->next = op;
    else
        rl->head = op;
    rl->tail = op;
    if (!evtimer_pending(rl->deadline_ev, NULL) || rl->timer_at_ms > op->deadline_ms)
        arm_deadline(rl, op->deadline_ms, now);
    return 0;
}

/* ---- the failure policy ---- */

struct trampoline {
    tg_limiter_cb cb;
    void *arg;
};

static void fallback_done(void *arg, const struct tg_limit_result *res)
{
    struct trampoline *t = arg;
    struct tg_limit_result r = *res;
    r.fallback = true;
    t->cb(t->arg, &r);
}

/* Answers a check without Redis: deny → ERROR; allow → the fallback limiter
 * (which answers synchronously), marked fallback. */
static void answer_by_policy(struct rl *rl, const struct tg_limit_req *req, tg_limiter_cb cb,
                             void *arg)
{
    if (rl->deny) {
        struct tg_limit_result res = {.status = TG_LIMIT_ERROR, .denied = -1};
        cb(arg, &res);
    } else if (rl->fallback) {
        struct trampoline t = {cb, arg};
        rl->fallback->ops->check(rl->fallback, req, fallback_done, &t); /* already screened */
    } else {
        struct tg_limit_result res = {.status = TG_LIMIT_ALLOWED, .denied = -1, .fallback = true};
        cb(arg, &res);
    }
}

/* ---- connection state ---- */

static void connect_redis(struct rl *rl);

static void schedule_reconnect(struct rl *rl)
{
    if (rl->destroying || evtimer_pending(rl->reconnect_ev, NULL)) return;
    rl->rnd ^= rl->rnd << 13;
    rl->rnd ^= rl->rnd >> 7;
    rl->rnd ^= rl->rnd << 17;
    int half = rl->backoff_ms / 2;
    int delay = half + (int)(rl->rnd % (uint64_t)(half + 1)); /* equal jitter */
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(rl->reconnect_ev, &tv);
    rl->backoff_ms = rl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : rl->backoff_ms * 2;
}

/* Forgets the connection (whoever frees it) and plans a reconnect. */
static void mark_down(struct rl *rl, const char *kind, const char *detail)
{
    if (rl->state == ST_DOWN) return;
    rl->ac = NULL;
    set_state(rl, ST_DOWN);
    rl->loading[SC_BUCKET] = rl->loading[SC_SETTLE] = false;
    count_error(kind, 1);
    /* Logged once per outage, and again only if the reason changes (refused, then a
     * wrong password): never per request or per reconnect with the same reason. */
    char why[sizeof(rl->down_why)];
    snprintf(why, sizeof(why), "%s%s%s", kind, detail ? ": " : "", detail ? detail : "");
    if ((!rl->down_logged || strcmp(why, rl->down_why) != 0) && !rl->destroying) {
        tg_log_warn("redis %s:%d unavailable (%s): answering checks by on_redis_error=%s", rl->ip,
                    rl->port, why, rl->deny ? "deny" : "allow");
        rl->down_logged = true;
        memcpy(rl->down_why, why, sizeof(why));
    }
    schedule_reconnect(rl);
}

/* Drops the connection now: every pending callback runs with reply == NULL.
 * From inside a hiredis reply callback, hiredis defers the free until it returns. */
static void kill_connection(struct rl *rl, const char *kind, const char *detail)
{
    redisAsyncContext *ac = rl->ac;
    mark_down(rl, kind, detail);
    if (ac) redisAsyncFree(ac);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct rl *rl = arg;
    if (!rl->head) return;
    int64_t now = tg_now_mono_ms();
    if (rl->head->deadline_ms <= now)
        kill_connection(rl, "timeout", NULL);
    else
        arm_deadline(rl, rl->head->deadline_ms, now);
}

/* hiredis 0.14 copies the error into ac->errstr only after onConnect: read the inner context. */
static const char *error_of(const redisAsyncContext *ac)
{
    return ac->c.err ? ac->c.errstr : "closed";
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rl *rl = ac->data;
    /* On failure hiredis frees the context right after this returns (never free it here). */
    if (status != REDIS_OK && rl->ac == ac) mark_down(rl, "connect", error_of(ac));
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rl *rl = ac->data;
    if (rl->ac == ac) mark_down(rl, "connect", error_of(ac));
}

static int send_setup(struct rl *rl, enum op_kind kind, enum script sc, const char *const *argv,
                      size_t argc, bool last)
{
    struct op *op = op_get(rl);
    if (!op) return -1;
    op->kind = kind;
    op->script = sc;
    op->last_setup = last;
    resp_head(&op->cmd, '*', argc);
    for (size_t i = 0; i < argc; i++)
        resp_bulk(&op->cmd, argv[i], strlen(argv[i]));
    int timeout = rl->timeout_ms > CONNECT_TIMEOUT_MIN_MS ? rl->timeout_ms : CONNECT_TIMEOUT_MIN_MS;
    if (kind == OP_LOAD) timeout = rl->timeout_ms;
    if (send_op(rl, op, timeout) != 0) {
        op_put(rl, op);
        return -1;
    }
    return 0;
}

static int send_script_load(struct rl *rl, enum op_kind kind, enum script sc, bool last)
{
    const char *argv[] = {"SCRIPT", "LOAD", script_text[sc]};
    return send_setup(rl, kind, sc, argv, 3, last);
}

static void connect_redis(struct rl *rl)
{
    redisAsyncContext *ac = redisAsyncConnect(rl->ip, rl->port);
    if (!ac || ac->err) {
        set_state(rl, ST_CONNECTING); /* so that mark_down counts and logs it */
        mark_down(rl, "connect", ac ? error_of(ac) : "out of memory");
        if (ac) redisAsyncFree(ac);
        return;
    }
    ac->data = rl;
    if (redisLibeventAttach(ac, rl->evb) != REDIS_OK) {
        set_state(rl, ST_CONNECTING);
        mark_down(rl, "connect", "libevent attach");
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rl->ac = ac;
    set_state(rl, ST_CONNECTING);
    char db[16];
    snprintf(db, sizeof(db), "%d", rl->db);
    int rc = 0;
    if (rl->password[0])
        rc |= send_setup(rl, OP_SETUP, SC_BUCKET, (const char *const[]){"AUTH", rl->password}, 2,
                         false);
    if (rl->db != 0)
        rc |= send_setup(rl, OP_SETUP, SC_BUCKET, (const char *const[]){"SELECT", db}, 2, false);
    rc |= send_script_load(rl, OP_SETUP, SC_BUCKET, false);
    rc |= send_script_load(rl, OP_SETUP, SC_SETTLE, true);
    if (rc != 0) kill_connection(rl, "connect", "out of memory");
}

static void on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    connect_redis(arg);
}

/* An idle connection gets a PING under the usual deadline, so that a server
 * that stopped answering is noticed (and ready() turns false) without traffic.
 * While commands are in flight, their own deadlines watch the connection. */
static void on_ping(evutil_socket_t fd, short what, void *arg)
{
    struct rl *rl = arg;
    if (rl->state != ST_UP || rl->head) return;
    struct op *op = op_get(rl);
    if (!op) return;
    op->kind = OP_PING;
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    buf_add(&op->cmd, ping, sizeof(ping) - 1);
    if (send_op(rl, op, rl->timeout_ms) != 0) op_put(rl, op);
}

/* ---- settles: coalesced per key, flushed as pipelined EVALSHA calls ---- */

static void flush_settles(struct rl *rl);

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    flush_settles(arg);
}

/* Adds `delta` (p->cost_u) for `key`, whose hash tag is key[tag_off, +tag_len). */
static void settle_add(struct rl *rl, const char *key, size_t key_len, size_t tag_off,
                       size_t tag_len, const struct tg_bucket_param *p)
{
    uint64_t h = fnv(key, key_len);
    for (size_t i = 0; i < rl->nps; i++) {
        struct pending_settle *ps = &rl->ps[i];
        if (ps->hash == h && ps->key_len == key_len &&
            memcmp(rl->arena.p + ps->key_off, key, key_len) == 0) {
            int64_t sum = ps->p.cost_u + p->cost_u;
            ps->p = *p;
            ps->p.cost_u = sum;
            return;
        }
    }
    size_t off = rl->arena.len;
    buf_add(&rl->arena, key, key_len);
    if (!buf_ok(&rl->arena)) {
        rl->arena.len = off;
        count_error("settle_dropped", 1);
        return;
    }
    struct pending_settle *ps = &rl->ps[rl->nps++];
    ps->hash = h;
    ps->key_off = (uint32_t)off;
    ps->key_len = (uint32_t)key_len;
    ps->tag_off = (uint32_t)(off + tag_off);
    ps->tag_len = (uint32_t)tag_len;
    ps->tag_hash = fnv(key + tag_off, tag_len);
    ps->p = *p;
    if (rl->nps == SETTLE_MAX_KEYS) {
        flush_settles(rl);
    } else if (rl->nps == 1) {
        struct timeval tv = {0, SETTLE_FLUSH_MS * 1000};
        evtimer_add(rl->flush_ev, &tv);
    }
}

static bool same_tag(const struct rl *rl, const struct pending_settle *a,
                     const struct pending_settle *b)
{
    return a->tag_hash == b->tag_hash && a->tag_len == b->tag_len &&
           memcmp(rl->arena.p + a->tag_off, rl->arena.p + b->tag_off, a->tag_len) == 0;
}

/* One EVALSHA settle per tenant (hash tag) with all of its keys. */
static void flush_settles(struct rl *rl)
{
    evtimer_del(rl->flush_ev);
    bool done[SETTLE_MAX_KEYS] = {false};
    size_t group[SETTLE_MAX_KEYS];
    for (size_t i = 0; i < rl->nps; i++) {
        if (done[i] || rl->ps[i].p.cost_u == 0) continue;
        size_t k = 0;
        for (size_t j = i; j < rl->nps; j++) {
            if (done[j] || rl->ps[j].p.cost_u == 0 || !same_tag(rl, &rl->ps[i], &rl->ps[j]))
                continue;
            done[j] = true;
            group[k++] = j;
        }
        struct op *op = rl->state == ST_UP ? op_get(rl) : NULL;
        if (!op) {
            count_error("settle_dropped", (double)k);
            continue;
        }
        op->kind = OP_SETTLE;
        op->script = SC_SETTLE;
        op->nkeys = k;
        struct buf *b = &op->cmd;
        resp_head(b, '*', 3 + 5 * k + (rl->fixed_clock_ms >= 0));
        resp_bulk(b, "EVALSHA", 7);
        resp_bulk(b, rl->sha[SC_SETTLE], 40);
        resp_int(b, (int64_t)k);
        for (size_t g = 0; g < k; g++) {
            const struct pending_settle *ps = &rl->ps[group[g]];
            resp_bulk(b, rl->arena.p + ps->key_off, ps->key_len);
        }
        for (size_t g = 0; g < k; g++) {
            const struct tg_bucket_param *p = &rl->ps[group[g]].p;
            resp_int(b, p->cap_u);
            resp_double(b, p->rate);
            resp_int(b, p->per_ms);
            resp_int(b, p->cost_u);
        }
        if (rl->fixed_clock_ms >= 0) resp_int(b, rl->fixed_clock_ms);
        if (send_op(rl, op, rl->timeout_ms) != 0) {
            count_error("settle_dropped", (double)k);
            op_put(rl, op);
        }
    }
    rl->nps = 0;
    rl->arena.len = 0;
    write_now(rl);
}

/* An abandoned check that Redis allowed: give everything back, requests units
 * included. The request was never judged, and its record says it cost nothing. */
static void refund_cancelled(struct rl *rl, struct op *op)
{
    for (size_t i = 0; i < op->req.n; i++) {
        if (op->p[i].cost_u == 0) continue;
        struct tg_bucket_param p = op->p[i];
        p.cost_u = -p.cost_u;
        settle_add(rl, op->cmd.p + op->key_off[i], op->key_len[i], rl->prefix_len,
                   op->tenant_len + 2, &p);
    }
}

/* ---- replies ---- */

static bool is_noscript(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Loads the script again (once per NOSCRIPT wave) and resends the same call
 * after it on the same pipeline. Returns 0 if resent. */
static int resend_after_noscript(struct rl *rl, struct op *op)
{
    count_error("noscript", 1);
    if (++op->resends > MAX_RESENDS || rl->state != ST_UP) return -1;
    if (!rl->loading[op->script]) {
        if (send_script_load(rl, OP_LOAD, op->script, false) != 0) return -1;
        rl->loading[op->script] = true;
    }
    return send_op(rl, op, rl->timeout_ms);
}

/* Reads a batch reply {now_ms, allowed, level_1..level_nk} into the levels
 * before the batch (as doubles: Lua's numbers). */
static bool parse_batch(const struct op *batch, const redisReply *r, double *lv,
                        long long *allowed)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 + batch->nkeys) return false;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return false;
    *allowed = r->element[1]->integer;
    for (size_t k = 0; k < batch->nkeys; k++)
        lv[k] = (double)r->element[2 + k]->integer;
    return true;
}

/* Judges one check of a batch on the levels `lv` exactly as bucket.lua did, in
 * the same double arithmetic, charging `lv` if it is allowed. Returns the index
 * of the first denying bucket of the check, or -1 if it is allowed. */
static int replay_check(const struct op *op, double *lv)
{
    size_t n = op->req.n;
    for (size_t i = 0; i < n; i++)
        if (lv[op->kidx[i] - 1] < (double)op->p[i].cost_u) return (int)i;
    for (size_t i = 0; i < n; i++)
        lv[op->kidx[i] - 1] -= (double)op->p[i].cost_u;
    return -1;
}

/* Answers one check: from Redis (res != NULL) or by the failure policy. */
static void answer_check(struct rl *rl, struct op *op, const struct tg_limit_result *res)
{
    rl->inflight_checks--;
    tg_limiter_cb cb = op->cb;
    void *arg = op->arg;
    bool cancelled = op->cancelled || rl->destroying;
    if (res) {
        if (cancelled && res->status == TG_LIMIT_ALLOWED && !rl->destroying)
            refund_cancelled(rl, op);
        op_put(rl, op);
        if (!cancelled) cb(arg, res);
        return;
    }
    struct tg_limit_req req = op->req;
    op_put(rl, op);
    if (!cancelled) answer_by_policy(rl, &req, cb, arg);
}

static void finish_batch(struct rl *rl, struct op *batch, const redisReply *r)
{
    if (r && is_noscript(r)) {
        bool live = false;
        for (struct op *m = batch->members; m; m = m->mnext)
            live = live || !m->cancelled;
        if (!live)
            count_error("noscript", 1);
        else if (resend_after_noscript(rl, batch) == 0)
            return;
    }
    if (--rl->batches_inflight == 0 && rl->qhead && !rl->batch_scheduled) {
        rl->batch_scheduled = true;
        event_active(rl->batch_ev, EV_TIMEOUT, 1);
    }
    double lv0[TG_MAX_BUCKETS], lv[TG_MAX_BUCKETS];
    long long allowed = 0, replayed = 0;
    bool ok = r && !is_noscript(r) && parse_batch(batch, r, lv0, &allowed);
    struct op *m = batch->members;
    batch->members = NULL;
    op_put(rl, batch);
    if (ok) { /* the replay must count the allowed checks Redis counted */
        memcpy(lv, lv0, sizeof(lv));
        for (const struct op *c = m; c; c = c->mnext)
            replayed += replay_check(c, lv) < 0;
        ok = replayed == allowed;
        memcpy(lv, lv0, sizeof(lv));
    }
    if (!ok && r && !is_noscript(r)) count_error("reply", 1); /* NOSCRIPT: counted on resend */
    while (m) {
        struct op *next = m->mnext;
        if (ok) {
            struct tg_limit_result res;
            int denied = replay_check(m, lv);
            int64_t level[TG_MAX_BUCKETS];
            for (size_t i = 0; i < m->req.n; i++)
                level[i] = (int64_t)lv[m->kidx[i] - 1];
            tg_limiter_result_fill(m->p, level, m->req.n, denied, &res);
            answer_check(rl, m, &res);
        } else {
            answer_check(rl, m, NULL);
        }
        m = next;
    }
}

static void finish_settle(struct rl *rl, struct op *op, const redisReply *r)
{
    if (r && is_noscript(r) && resend_after_noscript(rl, op) == 0) return;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (r && !is_noscript(r)) count_error("reply", 1);
        if (!rl->destroying) count_error("settle_dropped", (double)op->nkeys);
    }
    op_put(rl, op);
}

static void finish_setup(struct rl *rl, struct op *op, redisAsyncContext *ac, const redisReply *r)
{
    bool last = op->last_setup;
    enum op_kind kind = op->kind;
    enum script sc = op->script;
    op_put(rl, op);
    if (!r || ac != rl->ac) return;
    if (kind == OP_LOAD) rl->loading[sc] = false;
    if (r->type == REDIS_REPLY_ERROR) {
        count_error("reply", 1);
        if (kind == OP_SETUP) {
            char detail[160];
            snprintf(detail, sizeof(detail), "%.*s", (int)(r->len < 150 ? r->len : 150), r->str);
            kill_connection(rl, "connect", detail);
        }
        return;
    }
    if (last && rl->state == ST_CONNECTING) {
        set_state(rl, ST_UP);
        rl->backoff_ms = BACKOFF_MIN_MS;
        if (rl->down_logged) tg_log_info("redis %s:%d up", rl->ip, rl->port);
        rl->down_logged = false;
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct op *op = priv;
    struct rl *rl = op->rl;
    redisReply *r = reply;
    list_remove(rl, op);
    if (!r && ac == rl->ac) mark_down(rl, "connect", error_of(ac));
    switch (op->kind) {
    case OP_BATCH:
        finish_batch(rl, op, r);
        break;
    case OP_CHECK: /* never sent on its own: only as a member of an OP_BATCH */
        break;
    case OP_SETTLE:
        finish_settle(rl, op, r);
        break;
    case OP_SETUP:
    case OP_LOAD:
        finish_setup(rl, op, ac, r);
        break;
    case OP_PING:
        if (r && r->type == REDIS_REPLY_ERROR) count_error("reply", 1);
        op_put(rl, op);
        break;
    }
}

/* ---- the ops table ---- */

/* Writes a check's keys into its own buffer (kept for refunds): one
 * reservation, then plain copies. */
static void build_keys(struct rl *rl, struct op *op)
{
    const struct tg_limit_req *req = &op->req;
    struct buf *b = &op->cmd;
    size_t tlen = strlen(req->tenant), nlen[TG_MAX_BUCKETS], total = 0;
    op->tenant_len = tlen;
    for (size_t i = 0; i < req->n; i++) {
        nlen[i] = strlen(req->b[i].limit->name);
        total += rl->prefix_len + tlen + 3 + nlen[i];
    }
    if (b->len > b->cap || !buf_reserve(b, total)) {
        b->len = b->cap + 1; /* refused by buf_ok */
        return;
    }
    for (size_t i = 0; i < req->n; i++) {
        char *k = b->p + b->len;
        op->key_off[i] = (uint32_t)b->len;
        op->key_len[i] = (uint32_t)(rl->prefix_len + tlen + 3 + nlen[i]);
        memcpy(k, rl->prefix, rl->prefix_len);
        k += rl->prefix_len;
        *k++ = '{';
        memcpy(k, req->tenant, tlen);
        k += tlen;
        *k++ = '}';
        *k++ = ':';
        memcpy(k, req->b[i].limit->name, nlen[i]);
        b->len += op->key_len[i];
    }
}

/* One EVALSHA of src/lua/bucket.lua for the checks of one tenant, in order. */
static void build_batch(struct rl *rl, struct op *batch)
{
    const struct op *kop[TG_MAX_BUCKETS]; /* which check holds each distinct key */
    uint8_t kb[TG_MAX_BUCKETS];
    size_t nk = 0, m = 0;
    /* The checks of a batch share their tenant (the same config's): two of
     * their buckets are one key exactly when they are one limit (a tenant's
     * limit names are unique), so limits compare by pointer. */
    for (struct op *c = batch->members; c; c = c->mnext, m++) {
        for (size_t i = 0; i < c->req.n; i++) {
            const struct tg_limit *limit = c->req.b[i].limit;
            size_t k = 0;
            while (k < nk && kop[k]->req.b[kb[k]].limit != limit)
                k++;
            if (k == nk) {
                kop[nk] = c;
                kb[nk++] = (uint8_t)i;
            }
            c->kidx[i] = (uint8_t)(k + 1);
        }
    }
    struct buf *b = &batch->cmd;
    resp_head(b, '*', 3 + nk + 1 + 3 * nk + 1 + 1);
    resp_bulk(b, "EVALSHA", 7);
    resp_bulk(b, rl->sha[SC_BUCKET], 40);
    resp_int(b, (int64_t)nk);
    for (size_t k = 0; k < nk; k++)
        resp_bulk(b, kop[k]->cmd.p + kop[k]->key_off[kb[k]], kop[k]->key_len[kb[k]]);
    if (rl->fixed_clock_ms >= 0)
        resp_int(b, rl->fixed_clock_ms);
    else
        resp_bulk(b, "", 0);
    for (size_t k = 0; k < nk; k++) {
        const struct tg_bucket_param *p = &kop[k]->p[kb[k]];
        resp_int(b, p->cap_u);
        resp_double(b, p->rate);
        resp_int(b, p->per_ms);
    }
    resp_int(b, (int64_t)m);
    resp_head(b, '$', m * nk * 8);
    for (struct op *c = batch->members; c; c = c->mnext) {
        double row[TG_MAX_BUCKETS];
        for (size_t k = 0; k < nk; k++)
            row[k] = -1; /* bucket not used by this check */
        for (size_t i = 0; i < c->req.n; i++)
            row[c->kidx[i] - 1] = (double)c->p[i].cost_u;
        unsigned char le[TG_MAX_BUCKETS * 8];
        for (size_t k = 0; k < nk; k++) { /* little-endian IEEE 754, as struct '<d' reads */
            uint64_t bits;
            memcpy(&bits, &row[k], 8);
            for (int j = 0; j < 8; j++)
                le[8 * k + (size_t)j] = (unsigned char)(bits >> (8 * j));
        }
        buf_add(b, le, nk * 8);
    }
    buf_add(b, "\r\n", 2);
    batch->nkeys = nk;
}

/* Checks that arrived in one turn of the loop: one call per tenant. */
static void on_batch(evutil_socket_t fd, short what, void *arg)
{
    struct rl *rl = arg;
    rl->batch_scheduled = false;
    /* One round of batches in flight at a time: checks that arrive while one
     * is out wait for its answer and then go together. Idle, a check goes at
     * the end of its loop turn; under load, rounds grow instead of calls. */
    if (rl->state == ST_UP && rl->batches_inflight > 0) return;
    while (rl->qhead) {
        struct op *first = rl->qhead;
        if (first->cancelled) { /* abandoned before it was sent: costs nothing */
            rl->qhead = first->mnext;
            if (rl->qhead == NULL) rl->qtail = NULL;
            rl->inflight_checks--;
            op_put(rl, first);
            continue;
        }
        struct op *batch = rl->state == ST_UP ? op_get(rl) : NULL;
        if (batch == NULL) {
            rl->qhead = first->mnext;
            if (rl->qhead == NULL) rl->qtail = NULL;
            answer_check(rl, first, NULL);
            continue;
        }
        batch->kind = OP_BATCH;
        batch->script = SC_BUCKET;
        /* Take every queued check of the first one's tenant, keeping order. The
         * tenant is compared by pointer: the same config's tenant, so at most
         * TG_MAX_BUCKETS distinct keys in a batch (a reload's new tenant of the
         * same name goes in a batch of its own). */
        const char *tenant = first->req.tenant;
        struct op **tail = &batch->members, **pp = &rl->qhead, *last = NULL;
        size_t n = 0;
        while (*pp) {
            struct op *c = *pp;
            if (c->cancelled) {
                *pp = c->mnext;
                rl->inflight_checks--;
                op_put(rl, c);
                continue;
            }
            if (n < BATCH_MAX_CHECKS && c->req.tenant == tenant) {
                *pp = c->mnext;
                c->mnext = NULL;
                *tail = c;
                tail = &c->mnext;
                n++;
            } else {
                last = c;
                pp = &c->mnext;
            }
        }
        rl->qtail = last;
        build_batch(rl, batch);
        rl->batches_inflight++;
        if (send_op(rl, batch, rl->timeout_ms) != 0) finish_batch(rl, batch, NULL);
    }
    write_now(rl);
}

static int rl_check(struct tg_limiter *l, const struct tg_limit_req *req, tg_limiter_cb cb,
                    void *arg)
{
    struct rl *rl = (struct rl *)l;
    struct op *op = NULL;
    if (rl->state == ST_UP && rl->inflight_checks < MAX_INFLIGHT_CHECKS) op = op_get(rl);
    if (!op) {
        answer_by_policy(rl, req, cb, arg);
        return 0;
    }
    op->kind = OP_CHECK;
    op->cb = cb;
    op->arg = arg;
    op->req.tenant = req->tenant;
    op->req.n = req->n;
    memcpy(op->req.b, req->b, req->n * sizeof(req->b[0]));
    for (size_t i = 0; i < req->n; i++) {
        tg_bucket_param_init(&op->p[i], req->b[i].limit, 1, req->b[i].cost_u);
    }
    build_keys(rl, op);
    if (!buf_ok(&op->cmd)) { /* out of memory */
        op_put(rl, op);
        answer_by_policy(rl, req, cb, arg);
        return 0;
    }
    rl->inflight_checks++;
    if (rl->qtail)
        rl->qtail->mnext = op;
    else
        rl->qhead = op;
    rl->qtail = op;
    if (!rl->batch_scheduled) {
        rl->batch_scheduled = true;
        event_active(rl->batch_ev, EV_TIMEOUT, 1);
    }
    return 0;
}

static void rl_settle(struct tg_limiter *l, const struct tg_limit_req *req, const int64_t *delta_u)
{
    struct rl *rl = (struct rl *)l;
    if (req->fallback) {
        if (rl->fallback) tg_limiter_settle(rl->fallback, req, delta_u);
        return;
    }
    size_t tlen = strlen(req->tenant);
    char stack[512];
    for (size_t i = 0; i < req->n; i++) {
        if (delta_u[i] == 0) continue;
        const char *name = req->b[i].limit->name;
        size_t nlen = strlen(name), klen = rl->prefix_len + tlen + 3 + nlen;
        char *key = klen <= sizeof(stack) ? stack : malloc(klen);
        if (!key) {
            count_error("settle_dropped", 1);
            continue;
        }
        memcpy(key, rl->prefix, rl->prefix_len);
        key[rl->prefix_len] = '{';
        memcpy(key + rl->prefix_len + 1, req->tenant, tlen);
        memcpy(key + rl->prefix_len + 1 + tlen, "}:", 2);
        memcpy(key + rl->prefix_len + 3 + tlen, name, nlen);
        struct tg_bucket_param p;
        tg_bucket_param_init(&p, req->b[i].limit, 1, delta_u[i]);
        settle_add(rl, key, klen, rl->prefix_len, tlen + 2, &p);
        if (key != stack) free(key);
    }
}

static void rl_cancel(struct tg_limiter *l, void *arg)
{
    struct rl *rl = (struct rl *)l;
    for (struct op *op = rl->qhead; op; op = op->mnext)
        if (op->arg == arg) op->cancelled = true;
    for (struct op *op = rl->head; op; op = op->next)
        if (op->kind == OP_BATCH)
            for (struct op *m = op->members; m; m = m->mnext)
                if (m->arg == arg) m->cancelled = true;
}

static bool rl_ready(struct tg_limiter *l)
{
    struct rl *rl = (struct rl *)l;
    return __atomic_load_n(&rl->state, __ATOMIC_RELAXED) == ST_UP || !rl->deny;
}

static void free_buf(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void rl_destroy(struct tg_limiter *l)
{
    struct rl *rl = (struct rl *)l;
    if (rl->nps) flush_settles(rl);
    rl->destroying = true;
    if (rl->ac) {
        redisAsyncContext *ac = rl->ac;
        write_now(rl); /* best effort: the last settles */
        if (rl->ac == ac) {
            rl->ac = NULL;
            set_state(rl, ST_DOWN);
            redisAsyncFree(ac); /* pending callbacks run with NULL and call no one */
        }
    }
    while (rl->qhead) {
        struct op *op = rl->qhead;
        rl->qhead = op->mnext;
        op_put(rl, op);
    }
    if (rl->batch_ev) event_free(rl->batch_ev);
    if (rl->deadline_ev) event_free(rl->deadline_ev);
    if (rl->reconnect_ev) event_free(rl->reconnect_ev);
    if (rl->flush_ev) event_free(rl->flush_ev);
    if (rl->ping_ev) event_free(rl->ping_ev);
    for (struct op *op = rl->free_ops, *next; op; op = next) {
        next = op->next;
        free_buf(&op->cmd);
        free(op);
    }
    free_buf(&rl->arena);
    free(rl->password);
    free(rl->prefix);
    free(rl);
}

static const struct tg_limiter_ops redis_ops = {
    .name = "redis",
    .check = rl_check,
    .settle = rl_settle,
    .cancel = rl_cancel,
    .ready = rl_ready,
    .destroy = rl_destroy,
};

void tg_limiter_redis_set_clock(struct tg_limiter *l, int64_t now_ms)
{
    if (l && l->ops == &redis_ops) ((struct rl *)l)->fixed_clock_ms = now_ms < 0 ? -1 : now_ms;
}

static void sha1_hex(const char *s, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(s, strlen(s), md, &len, EVP_sha1(), NULL);
    for (unsigned i = 0; i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* The address to connect to, as the IP string hiredis 0.14 wants. */
static void address_of(const struct tg_config *cfg, char *ip, size_t iplen, int *port)
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

struct tg_limiter *tg_limiter_redis_create(struct event_base *base, const struct tg_config *cfg,
                                           struct tg_limiter *fallback)
{
    struct rl *rl = calloc(1, sizeof(*rl));
    if (!rl) return NULL;
    rl->base.ops = &redis_ops;
    rl->evb = base;
    rl->fallback = fallback;
    address_of(cfg, rl->ip, sizeof(rl->ip), &rl->port);
    rl->password = strdup(cfg->limiter.redis.password ? cfg->limiter.redis.password : "");
    rl->prefix = strdup(cfg->limiter.redis.key_prefix ? cfg->limiter.redis.key_prefix
                                                      : TG_DEFAULT_REDIS_KEY_PREFIX);
    rl->db = cfg->limiter.redis.db;
    rl->timeout_ms = cfg->limiter.redis.timeout_ms > 0 ? cfg->limiter.redis.timeout_ms
                                                       : TG_DEFAULT_REDIS_TIMEOUT_MS;
    rl->deny = cfg->limiter.on_redis_error == TG_REDIS_ERROR_DENY;
    rl->fixed_clock_ms = -1;
    rl->backoff_ms = BACKOFF_MIN_MS;
    rl->rnd = (uint64_t)(uintptr_t)rl ^ ((uint64_t)tg_now_mono_ms() << 20) ^ 0x9e3779b97f4a7c15ULL;
    rl->deadline_ev = evtimer_new(base, on_deadline, rl);
    rl->reconnect_ev = evtimer_new(base, on_reconnect, rl);
    rl->flush_ev = evtimer_new(base, on_flush, rl);
    rl->ping_ev = event_new(base, -1, EV_PERSIST, on_ping, rl);
    rl->batch_ev = event_new(base, -1, 0, on_batch, rl);
    if (!rl->password || !rl->prefix || !rl->deadline_ev || !rl->reconnect_ev || !rl->flush_ev ||
        !rl->ping_ev || !rl->batch_ev) {
        rl_destroy(&rl->base);
        return NULL;
    }
    rl->prefix_len = strlen(rl->prefix);
    for (int i = 0; i < SC_COUNT; i++)
        sha1_hex(script_text[i], rl->sha[i]);
    struct timeval ping_tv = {PING_IDLE_MS / 1000, (PING_IDLE_MS % 1000) * 1000};
    event_add(rl->ping_ev, &ping_tv);
    connect_redis(rl);
    return &rl->base;
}
