/* The Redis limiter of one worker: the bucket protocol — checks batched per tenant
 * into EVALSHA of bucket.lua and replayed, settles coalesced into settle.lua — over
 * the connection layer (src/redis/), and the failure policy when Redis cannot answer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include "tollgate/limiter.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/redis.h"
#include "credits.h"
#include "lease.h"
#include "settles.h"

extern const char tg_lua_bucket[];
extern const char tg_lua_settle[];
extern const char tg_lua_lease[];
extern const char tg_lua_hold[];
extern const char tg_lua_commit[];

#define MAX_INFLIGHT_CHECKS 1024
#define BATCH_MAX_CHECKS 256 /* checks of one tenant in one EVALSHA */
#define SETTLE_FLUSH_MS 10 /* settles lag by at most this; fewer calls under load */

enum op_kind { OP_CHECK, OP_BATCH, OP_SETTLE };
enum script { SC_BUCKET, SC_SETTLE, SC_LEASE, SC_HOLD, SC_COMMIT, SC_COUNT };

/* A check, or a call awaiting its reply (the connection's callback argument). */
struct op {
    struct op *prev, *next; /* a batch in flight (rl->batches), or the free list */
    struct rl *rl;
    enum op_kind kind;
    bool cancelled;
    struct op *mnext;   /* OP_CHECK: next in the queue or in its batch */
    struct op *members; /* OP_BATCH: its checks, in order */
    struct tg_resp cmd; /* OP_BATCH, OP_SETTLE: the command, the connection's until the
                         * reply; OP_CHECK: its keys, kept for a refund */
    /* OP_CHECK */
    tg_limiter_cb cb;
    void *arg;
    struct tg_limit_req req; /* copy; what it points to is the caller's until cb/cancel */
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    uint32_t key_off[TG_MAX_BUCKETS], key_len[TG_MAX_BUCKETS]; /* keys inside cmd */
    uint8_t kidx[TG_MAX_BUCKETS]; /* index of each bucket among its batch's keys */
    size_t tenant_len;
    /* OP_SETTLE: its keys; OP_BATCH: its distinct keys, and the settles riding in it */
    size_t nkeys, nsettles;
};

struct rl {
    struct tg_limiter base;
    struct tg_limiter *fallback; /* (ref) */
    struct tg_redis *redis;
    struct lease_set *lease; /* NULL: limiter.lease.mode off */
    struct credit_set *credits; /* the checks of tenants that pay with credits */
    char *prefix;
    size_t prefix_len;
    bool deny; /* on_redis_error: deny */
    int64_t fixed_clock_ms; /* < 0: the server's TIME */
    bool destroying;

    size_t inflight_checks;   /* queued or sent, not yet answered */
    struct op *qhead, *qtail; /* checks waiting for the end of this loop turn */
    struct event *batch_ev;
    bool batch_scheduled;
    size_t batches_inflight; /* OP_BATCH calls sent, not yet answered */
    struct op *batches;      /* those calls, for cancel */
    struct op *free_ops;
    struct event *flush_ev;

    struct settles settles;
};

static const char *const script_text[SC_COUNT] = {tg_lua_bucket, tg_lua_settle, tg_lua_lease,
                                                  tg_lua_hold, tg_lua_commit};

static void count_error(const char *kind, double n)
{
    tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){kind}, n);
}

/* ---- ops ---- */

static struct op *op_get(struct rl *rl)
{
    struct op *op = rl->free_ops;
    if (op) {
        rl->free_ops = op->next;
    } else {
        op = calloc(1, sizeof(*op));
        if (!op) return NULL;
    }
    memset(op, 0, offsetof(struct op, cmd));
    tg_resp_reset(&op->cmd);
    op->rl = rl;
    return op;
}

static void op_put(struct rl *rl, struct op *op)
{
    op->next = rl->free_ops;
    rl->free_ops = op;
}

static void batch_link(struct rl *rl, struct op *batch)
{
    batch->prev = NULL;
    batch->next = rl->batches;
    if (rl->batches) rl->batches->prev = batch;
    rl->batches = batch;
}

static void batch_unlink(struct rl *rl, struct op *batch)
{
    if (batch->prev)
        batch->prev->next = batch->next;
    else
        rl->batches = batch->next;
    if (batch->next) batch->next->prev = batch->prev;
    batch->prev = batch->next = NULL;
}

static void on_reply(void *arg, const redisReply *r);

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
    int n = settles_add(&rl->settles, key, key_len, tag_off, tag_len, p);
    if (n < 0) {
        count_error("settle_dropped", 1);
    } else if (n == SETTLES_MAX) {
        flush_settles(rl);
    } else if (n == 1) {
        struct timeval tv = {0, SETTLE_FLUSH_MS * 1000};
        evtimer_add(rl->flush_ev, &tv);
    }
}

/* One EVALSHA settle per tenant (hash tag) with all of its keys. */
static void flush_settles(struct rl *rl)
{
    evtimer_del(rl->flush_ev);
    struct settles *st = &rl->settles;
    bool done[SETTLES_MAX] = {false};
    size_t group[SETTLES_MAX];
    for (size_t i = 0; i < st->n; i++) {
        if (done[i] || st->ps[i].p.cost_u == 0) continue;
        size_t k = 0;
        for (size_t j = i; j < st->n; j++) {
            if (done[j] || st->ps[j].p.cost_u == 0 || !settles_same_tag(st, i, j))
                continue;
            done[j] = true;
            group[k++] = j;
        }
        struct op *op = tg_redis_up(rl->redis) ? op_get(rl) : NULL;
        if (!op) {
            count_error("settle_dropped", (double)k);
            continue;
        }
        op->kind = OP_SETTLE;
        op->nkeys = k;
        struct tg_resp *b = &op->cmd;
        tg_resp_head(b, '*', 3 + 5 * k + (rl->fixed_clock_ms >= 0));
        tg_resp_bulk(b, "EVALSHA", 7);
        tg_resp_bulk(b, tg_redis_sha(rl->redis, SC_SETTLE), 40);
        tg_resp_bulk_int(b, (int64_t)k);
        for (size_t g = 0; g < k; g++) {
            tg_resp_bulk(b, settles_key(st, group[g]), st->ps[group[g]].key_len);
        }
        for (size_t g = 0; g < k; g++) {
            const struct tg_bucket_param *p = &st->ps[group[g]].p;
            tg_resp_bulk_int(b, p->cap_u);
            tg_resp_bulk_double(b, p->rate);
            tg_resp_bulk_int(b, p->per_ms);
            tg_resp_bulk_int(b, p->cost_u);
        }
        if (rl->fixed_clock_ms >= 0) tg_resp_bulk_int(b, rl->fixed_clock_ms);
        if (tg_redis_send(rl->redis, b, SC_SETTLE, on_reply, op) != 0) {
            count_error("settle_dropped", (double)k);
            op_put(rl, op);
        } else {
            tg_metrics_add(TG_M_REDIS_CALLS, (const char *const[]){"settle"}, 1);
        }
    }
    settles_clear(st);
    tg_redis_flush(rl->redis);
}

/* An abandoned check that Redis allowed: give everything back, requests units
 * included. The request was never judged, and its record says it cost nothing. */
static void refund_cancelled(struct rl *rl, struct op *op)
{
    for (size_t i = 0; i < op->req.n; i++) {
        if (op->p[i].cost_u == 0) continue;
        struct tg_bucket_param p = op->p[i];
        p.cost_u = -p.cost_u;
        settle_add(rl, op->cmd.b.p + op->key_off[i], op->key_len[i], rl->prefix_len,
                   op->tenant_len + 2, &p);
    }
}

/* ---- replies ---- */

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
        if (lv[op->kidx[i] - 1] < (double)op->p[i].cost_u + (double)op->p[i].floor_u) return (int)i;
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
        tg_limiter_count_decision(false);
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
    batch_unlink(rl, batch);
    if (--rl->batches_inflight == 0 && rl->qhead && !rl->batch_scheduled) {
        rl->batch_scheduled = true;
        event_active(rl->batch_ev, EV_TIMEOUT, 1);
    }
    double lv0[TG_MAX_BUCKETS], lv[TG_MAX_BUCKETS];
    long long allowed = 0, replayed = 0;
    bool ok = parse_batch(batch, r, lv0, &allowed);
    struct op *m = batch->members;
    size_t nsettles = batch->nsettles;
    batch->members = NULL;
    op_put(rl, batch);
    if (ok) { /* the replay must count the allowed checks Redis counted */
        memcpy(lv, lv0, sizeof(lv));
        for (const struct op *c = m; c; c = c->mnext)
            replayed += replay_check(c, lv) < 0;
        ok = replayed == allowed;
        memcpy(lv, lv0, sizeof(lv));
    }
    if (!ok && r) count_error("reply", 1);
    if (!ok && !rl->destroying && nsettles) count_error("settle_dropped", (double)nsettles);
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
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (r) count_error("reply", 1);
        if (!rl->destroying) count_error("settle_dropped", (double)op->nkeys);
    }
    op_put(rl, op);
}

static void on_reply(void *arg, const redisReply *r)
{
    struct op *op = arg;
    if (op->kind == OP_BATCH)
        finish_batch(op->rl, op, r);
    else
        finish_settle(op->rl, op, r);
}

/* ---- the ops table ---- */

/* Writes a check's keys into its own buffer (kept for refunds): one
 * reservation, then plain copies. */
static void build_keys(struct rl *rl, struct op *op)
{
    const struct tg_limit_req *req = &op->req;
    struct tg_resp *b = &op->cmd;
    size_t tlen = strlen(req->tenant), nlen[TG_MAX_BUCKETS], total = 0;
    op->tenant_len = tlen;
    for (size_t i = 0; i < req->n; i++) {
        nlen[i] = strlen(req->b[i].limit->name);
        total += rl->prefix_len + tlen + 3 + nlen[i];
    }
    if (!tg_resp_reserve(b, total)) return;
    for (size_t i = 0; i < req->n; i++) {
        char *k = b->b.p + b->b.len;
        op->key_off[i] = (uint32_t)b->b.len;
        op->key_len[i] = (uint32_t)(rl->prefix_len + tlen + 3 + nlen[i]);
        memcpy(k, rl->prefix, rl->prefix_len);
        k += rl->prefix_len;
        *k++ = '{';
        memcpy(k, req->tenant, tlen);
        k += tlen;
        *k++ = '}';
        *k++ = ':';
        memcpy(k, req->b[i].limit->name, nlen[i]);
        b->b.len += op->key_len[i];
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
    /* Settles still pending on these keys ride along, applied before the checks: a
     * client pacing itself on the remaining headers sees its last request settled. */
    int64_t delta[TG_MAX_BUCKETS];
    size_t nset = 0;
    for (size_t k = 0; k < nk; k++) {
        delta[k] = settles_take(&rl->settles, kop[k]->cmd.b.p + kop[k]->key_off[kb[k]],
                                kop[k]->key_len[kb[k]]);
        nset += delta[k] != 0;
    }
    batch->nsettles = nset;
    struct tg_resp *b = &batch->cmd;
    tg_resp_head(b, '*', 3 + nk + 1 + 4 * nk + 1 + 1 + (nset ? nk : 0));
    tg_resp_bulk(b, "EVALSHA", 7);
    tg_resp_bulk(b, tg_redis_sha(rl->redis, SC_BUCKET), 40);
    tg_resp_bulk_int(b, (int64_t)nk);
    for (size_t k = 0; k < nk; k++)
        tg_resp_bulk(b, kop[k]->cmd.b.p + kop[k]->key_off[kb[k]], kop[k]->key_len[kb[k]]);
    if (rl->fixed_clock_ms >= 0)
        tg_resp_bulk_int(b, rl->fixed_clock_ms);
    else
        tg_resp_bulk(b, "", 0);
    for (size_t k = 0; k < nk; k++) {
        const struct tg_bucket_param *p = &kop[k]->p[kb[k]];
        const struct tg_limit *limit = kop[k]->req.b[kb[k]].limit;
        tg_resp_bulk_int(b, p->cap_u);
        tg_resp_bulk_double(b, p->rate);
        tg_resp_bulk_int(b, p->per_ms);
        /* the floor of a background check, whichever check brought the key */
        tg_resp_bulk_int(b, limit->reserve > 0 ? (int64_t)floor(limit->reserve * (double)p->cap_u)
                                               : 0);
    }
    tg_resp_bulk_int(b, (int64_t)m);
    tg_resp_head(b, '$', m * (nk + 1) * 8);
    for (struct op *c = batch->members; c; c = c->mnext) {
        double row[TG_MAX_BUCKETS + 1];
        for (size_t k = 0; k < nk; k++)
            row[k] = -1; /* bucket not used by this check */
        for (size_t i = 0; i < c->req.n; i++)
            row[c->kidx[i] - 1] = (double)c->p[i].cost_u;
        row[nk] = c->req.background ? 1 : 0;
        unsigned char le[(TG_MAX_BUCKETS + 1) * 8];
        for (size_t k = 0; k <= nk; k++) { /* little-endian IEEE 754, as struct '<d' reads */
            uint64_t bits;
            memcpy(&bits, &row[k], 8);
            for (int j = 0; j < 8; j++)
                le[8 * k + (size_t)j] = (unsigned char)(bits >> (8 * j));
        }
        tg_resp_raw(b, le, (nk + 1) * 8);
    }
    tg_resp_raw(b, "\r\n", 2);
    if (nset)
        for (size_t k = 0; k < nk; k++)
            tg_resp_bulk_int(b, delta[k]);
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
    bool up = tg_redis_up(rl->redis);
    if (up && rl->batches_inflight > 0) return;
    while (rl->qhead) {
        struct op *first = rl->qhead;
        if (first->cancelled) { /* abandoned before it was sent: costs nothing */
            rl->qhead = first->mnext;
            if (rl->qhead == NULL) rl->qtail = NULL;
            rl->inflight_checks--;
            op_put(rl, first);
            continue;
        }
        struct op *batch = up ? op_get(rl) : NULL;
        if (batch == NULL) {
            rl->qhead = first->mnext;
            if (rl->qhead == NULL) rl->qtail = NULL;
            answer_check(rl, first, NULL);
            continue;
        }
        batch->kind = OP_BATCH;
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
        batch_link(rl, batch);
        if (tg_redis_send(rl->redis, &batch->cmd, SC_BUCKET, on_reply, batch) != 0)
            finish_batch(rl, batch, NULL);
        else
            tg_metrics_add(TG_M_REDIS_CALLS, (const char *const[]){"bucket"}, 1);
    }
    tg_redis_flush(rl->redis);
}

/* A check for the next round of batches (or the failure policy). */
static void check_strict(void *owner, const struct tg_limit_req *req, tg_limiter_cb cb, void *arg)
{
    struct rl *rl = owner;
    struct op *op = NULL;
    if (tg_redis_up(rl->redis) && rl->inflight_checks < MAX_INFLIGHT_CHECKS) op = op_get(rl);
    if (!op) {
        answer_by_policy(rl, req, cb, arg);
        return;
    }
    op->kind = OP_CHECK;
    op->cb = cb;
    op->arg = arg;
    op->req.tenant = req->tenant;
    op->req.background = req->background;
    op->req.n = req->n;
    memcpy(op->req.b, req->b, req->n * sizeof(req->b[0]));
    tg_bucket_params(req, 1, op->p);
    build_keys(rl, op);
    if (op->cmd.failed) { /* out of memory */
        op_put(rl, op);
        answer_by_policy(rl, req, cb, arg);
        return;
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
}

static int rl_check(struct tg_limiter *l, const struct tg_limit_req *req, tg_limiter_cb cb,
                    void *arg)
{
    struct rl *rl = (struct rl *)l;
    if (req->credit.mode != TG_CREDITS_OFF) { /* a balance is never leased */
        struct tg_bucket_param p[TG_MAX_BUCKETS];
        tg_bucket_params(req, 1, p);
        credit_check(rl->credits, req, p, cb, arg);
        return 0;
    }
    /* A lease cannot see how much of a bucket is left in Redis: a background request that a
     * reserve applies to is judged there. */
    if (rl->lease && !tg_limiter_reserve_applies(req)) {
        struct tg_bucket_param p[TG_MAX_BUCKETS];
        tg_bucket_params(req, 1, p);
        struct tg_limit_result res;
        switch (lease_check(rl->lease, req, p, &res, cb, arg)) {
        case LEASE_ALLOWED:
            cb(arg, &res);
            return 0;
        case LEASE_QUEUED:
            return 0;
        case LEASE_STRICT:
            break;
        }
    }
    check_strict(rl, req, cb, arg);
    return 0;
}

/* Settles on the buckets in Redis (coalesced, sent within SETTLE_FLUSH_MS). */
static void settle_strict(void *owner, const struct tg_limit_req *req, const int64_t *delta_u)
{
    struct rl *rl = owner;
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

static void rl_settle(struct tg_limiter *l, const struct tg_limit_req *req, const int64_t *delta_u)
{
    struct rl *rl = (struct rl *)l;
    if (req->fallback) {
        if (rl->fallback) tg_limiter_settle(rl->fallback, req, delta_u);
        return;
    }
    if (req->credit.mode != TG_CREDITS_OFF && req->credit.paid_by == TG_PAID_CREDITS) {
        credit_settle(rl->credits, req, delta_u);
        return;
    }
    if (rl->lease) { /* a bucket's delta goes to its lease when it has a live one */
        int64_t d[TG_MAX_BUCKETS];
        memcpy(d, delta_u, req->n * sizeof(*d));
        lease_settle(rl->lease, req, d);
        settle_strict(rl, req, d);
        return;
    }
    settle_strict(rl, req, delta_u);
}

static void no_answer(void *owner, const struct tg_limit_req *req, tg_limiter_cb cb, void *arg)
{
    answer_by_policy(owner, req, cb, arg);
}

static void rl_tick(struct tg_limiter *l)
{
    struct rl *rl = (struct rl *)l;
    if (rl->lease) lease_tick(rl->lease);
}

static void rl_cancel(struct tg_limiter *l, void *arg)
{
    struct rl *rl = (struct rl *)l;
    if (rl->lease) lease_cancel(rl->lease, arg);
    if (rl->credits) credit_cancel(rl->credits, arg);
    for (struct op *op = rl->qhead; op; op = op->mnext)
        if (op->arg == arg) op->cancelled = true;
    for (struct op *b = rl->batches; b; b = b->next)
        for (struct op *m = b->members; m; m = m->mnext)
            if (m->arg == arg) m->cancelled = true;
}

static bool rl_ready(struct tg_limiter *l)
{
    struct rl *rl = (struct rl *)l;
    return tg_redis_up(rl->redis) || !rl->deny;
}

static void rl_destroy(struct tg_limiter *l)
{
    struct rl *rl = (struct rl *)l;
    if (rl->settles.n) flush_settles(rl);
    rl->destroying = true;
    lease_close(rl->lease); /* the unused leases go back with the last settles */
    credit_close(rl->credits); /* and the commits still waiting for a retry */
    tg_redis_destroy(rl->redis); /* sends them; pending calls answer NULL, call no one */
    lease_destroy(rl->lease);
    credit_destroy(rl->credits);
    while (rl->qhead) {
        struct op *op = rl->qhead;
        rl->qhead = op->mnext;
        op_put(rl, op);
    }
    if (rl->batch_ev) event_free(rl->batch_ev);
    if (rl->flush_ev) event_free(rl->flush_ev);
    for (struct op *op = rl->free_ops, *next; op; op = next) {
        next = op->next;
        tg_buf_free(&op->cmd.b);
        free(op);
    }
    tg_buf_free(&rl->settles.arena);
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
    .tick = rl_tick,
};

void tg_limiter_redis_set_clock(struct tg_limiter *l, int64_t now_ms)
{
    if (l && l->ops == &redis_ops) ((struct rl *)l)->fixed_clock_ms = now_ms < 0 ? -1 : now_ms;
}

struct tg_limiter *tg_limiter_redis_create(struct event_base *base, const struct tg_config *cfg,
                                           struct tg_limiter *fallback)
{
    struct rl *rl = calloc(1, sizeof(*rl));
    if (!rl) return NULL;
    rl->base.ops = &redis_ops;
    rl->fallback = fallback;
    rl->prefix = strdup(cfg->limiter.redis.key_prefix ? cfg->limiter.redis.key_prefix
                                                      : TG_DEFAULT_REDIS_KEY_PREFIX);
    rl->deny = cfg->limiter.on_redis_error == TG_REDIS_ERROR_DENY;
    rl->fixed_clock_ms = -1;
    rl->flush_ev = evtimer_new(base, on_flush, rl);
    rl->batch_ev = event_new(base, -1, 0, on_batch, rl);
    char ip[INET6_ADDRSTRLEN];
    struct tg_redis_options o = {
        .host = ip,
        .password = cfg->limiter.redis.password,
        .db = cfg->limiter.redis.db,
        .timeout_ms = cfg->limiter.redis.timeout_ms > 0 ? cfg->limiter.redis.timeout_ms
                                                        : TG_DEFAULT_REDIS_TIMEOUT_MS,
        .scripts = script_text,
        .nscripts = SC_COUNT,
        .unavailable_note = rl->deny ? "answering checks by on_redis_error=deny"
                                     : "answering checks by on_redis_error=allow",
    };
    tg_redis_address(cfg, ip, sizeof(ip), &o.port);
    if (rl->prefix && rl->flush_ev && rl->batch_ev) rl->redis = tg_redis_create(base, &o);
    if (!rl->redis) {
        rl_destroy(&rl->base);
        return NULL;
    }
    rl->prefix_len = strlen(rl->prefix);
    struct credit_opts co = {.redis = rl->redis,
                             .prefix = rl->prefix,
                             .script_hold = SC_HOLD,
                             .script_commit = SC_COMMIT,
                             .fixed_clock_ms = &rl->fixed_clock_ms,
                             .owner = rl,
                             .settle_strict = settle_strict};
    rl->credits = credit_create(base, &co);
    if (!rl->credits) {
        rl_destroy(&rl->base);
        return NULL;
    }
    const typeof(cfg->limiter.lease) *lc = &cfg->limiter.lease;
    if (lc->mode != TG_LEASE_OFF) {
        struct lease_opts lo = {.mode = lc->mode,
                                .ttl_ms = lc->ttl_ms,
                                .sync_ms = lc->sync_interval_ms,
                                .min_rate = lc->min_rate,
                                .prefix = rl->prefix,
                                .script = SC_LEASE,
                                .fixed_clock_ms = &rl->fixed_clock_ms,
                                .owner = rl,
                                .no_answer = no_answer,
                                .check_strict = check_strict,
                                .settle_strict = settle_strict};
        rl->lease = lease_create(rl->redis, &lo);
        if (!rl->lease) {
            rl_destroy(&rl->base);
            return NULL;
        }
        rl->base.tick_ms = lc->sync_interval_ms;
    }
    return &rl->base;
}
