/* A worker's leases on the Redis buckets of busy tenants: checks judged here from leased
 * units, a lease call (lease.lua) per tenant every sync interval to report, return and
 * renew, and the checks the leases cannot cover carried in that call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include "tollgate/buf.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "lease.h"

#define IDLE_FORGET_MS 60000 /* a tenant with nothing leased is forgotten after this */
#define STRICT_HOLD_MS 1000  /* a tenant whose bucket could not be leased stays strict this long */
#define ARGS_PER_KEY 8

struct lbucket {
    char *name;               /* the limit's name (own copy) */
    enum tg_unit unit;
    struct tg_bucket_param p; /* cost_u unused */
    int64_t r;                /* units this gateway may still admit (negative after overspends) */
    int64_t s;                /* spent since the last report, net of settles */
    bool drop;                /* the call being built gives the whole lease back */
    bool idle;                /* no demand in the last tick: keep no lease */
    int64_t level;            /* the bucket's level L at the last call */
    int64_t want_sent;        /* what the call in flight asked for */
    int64_t demand, max_cost, prev_max; /* since the last tick */
    double rate_u_ms;         /* demand, smoothed */
};

/* A check waiting for its tenant's lease call, or riding in it. */
struct lop {
    struct lop *next;
    bool cancelled;
    tg_limiter_cb cb;
    void *arg;
    struct tg_limit_req req;
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    int8_t kidx[TG_MAX_BUCKETS]; /* the tenant's bucket of each of req's */
};

struct ltenant {
    struct ltenant *next; /* hash chain */
    struct lease_set *ls;
    char *name;
    uint64_t hash;
    struct lbucket b[TG_MAX_BUCKETS];
    size_t nb;
    bool leased;
    bool inflight;
    int64_t until_ms;       /* the leases may be spent before this (this gateway's clock, from
                             * the send of the call that renewed them: Redis renews later) */
    int64_t sent_ms, last_seen_ms, strict_until_ms;
    uint32_t gen;           /* in the gateway id: a call without answer starts a new one */
    uint64_t reqs;
    double req_rate;        /* requests/s, smoothed */
    struct lop *call_op;    /* the check in the call in flight */
    struct lop *waiters, **wtail;
    struct tg_resp cmd;
};

struct lease_set {
    struct tg_redis *redis;
    struct lease_opts o;
    char *prefix;
    size_t prefix_len;
    char gid[80];
    struct ltenant **tab;
    size_t cap, n;
    int64_t last_tick_ms;
    bool closing;
};

static uint64_t fnv(const char *s)
{
    return tg_fnv1a(TG_FNV_SEED, s, strlen(s));
}

static void count(enum tg_metric m, const char *a, const char *b, double v)
{
    tg_metrics_add(m, (const char *const[]){a, b}, v);
}

/* ---- tenants and their buckets ---- */

static bool rehash(struct lease_set *ls)
{
    size_t ncap = ls->cap ? ls->cap * 2 : 64;
    struct ltenant **tab = calloc(ncap, sizeof(*tab));
    if (!tab) return false;
    for (size_t i = 0; i < ls->cap; i++)
        for (struct ltenant *t = ls->tab[i], *next; t; t = next) {
            next = t->next;
            t->next = tab[t->hash & (ncap - 1)];
            tab[t->hash & (ncap - 1)] = t;
        }
    free(ls->tab);
    ls->tab = tab;
    ls->cap = ncap;
    return true;
}

static struct ltenant *tenant_find(const struct lease_set *ls, const char *name, uint64_t h)
{
    if (ls->cap)
        for (struct ltenant *t = ls->tab[h & (ls->cap - 1)]; t; t = t->next)
            if (t->hash == h && strcmp(t->name, name) == 0) return t;
    return NULL;
}

static struct ltenant *tenant_get(struct lease_set *ls, const char *name)
{
    uint64_t h = fnv(name);
    struct ltenant *t = tenant_find(ls, name, h);
    if (t) return t;
    if ((ls->n + 1 > ls->cap) && !rehash(ls)) return NULL;
    t = calloc(1, sizeof(*t));
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return NULL;
    }
    t->ls = ls;
    t->hash = h;
    t->wtail = &t->waiters;
    t->leased = ls->o.mode == TG_LEASE_ALWAYS;
    t->next = ls->tab[h & (ls->cap - 1)];
    ls->tab[h & (ls->cap - 1)] = t;
    ls->n++;
    return t;
}

static void tenant_free(struct ltenant *t)
{
    for (size_t i = 0; i < t->nb; i++)
        free(t->b[i].name);
    for (struct lop *w = t->waiters, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    free(t->call_op);
    tg_buf_free(&t->cmd.b);
    free(t->name);
    free(t);
}

static bool same_param(const struct tg_bucket_param *a, const struct tg_bucket_param *b)
{
    return a->cap_u == b->cap_u && a->per_ms == b->per_ms && memcmp(&a->rate, &b->rate, 8) == 0;
}

static int send_call(struct ltenant *t, struct lop *op);

/* The tenant's bucket for a request's limit; -1 (check it the strict way) when the tenant
 * has no room for another, or when a reload changed the limit. */
static int bucket_of(struct ltenant *t, const struct tg_limit *limit, const struct tg_bucket_param *p)
{
    for (size_t i = 0; i < t->nb; i++) {
        struct lbucket *b = &t->b[i];
        if (strcmp(b->name, limit->name) != 0) continue;
        if (!same_param(&b->p, p)) {
            /* A reload changed the limit: the lease goes back, and what was spent from it
             * is reported, under the limit it was leased from; this check goes the strict
             * way, after that call on the same connection. */
            if (t->inflight) return -1;
            b->drop = true;
            if (send_call(t, NULL) != 0) b->r = b->s = 0; /* unreported: left to expire */
            b->drop = false;
            b->p = *p;
            b->p.cost_u = 0;
            b->unit = limit->unit;
            return -1;
        }
        return (int)i;
    }
    if (t->nb == TG_MAX_BUCKETS || t->inflight) return -1; /* keys of the call in flight */
    struct lbucket *b = &t->b[t->nb];
    memset(b, 0, sizeof(*b));
    if (!(b->name = strdup(limit->name))) return -1;
    b->p = *p;
    b->p.cost_u = 0;
    b->unit = limit->unit;
    return (int)t->nb++;
}

static bool live(const struct ltenant *t, int64_t now)
{
    return t->leased && now < t->until_ms;
}

/* Charges the check on the leases if they cover all of it. */
static bool judge_local(struct ltenant *t, const struct lop *op, struct tg_limit_result *res,
                        int64_t now)
{
    if (!live(t, now)) return false;
    for (size_t i = 0; i < op->req.n; i++)
        if (t->b[op->kidx[i]].r < op->p[i].cost_u) return false;
    int64_t level[TG_MAX_BUCKETS];
    for (size_t i = 0; i < op->req.n; i++) {
        struct lbucket *b = &t->b[op->kidx[i]];
        b->r -= op->p[i].cost_u;
        b->s += op->p[i].cost_u;
        level[i] = b->level + b->r;
    }
    tg_limiter_result_fill(op->p, level, op->req.n, -1, res);
    tg_limiter_count_decision(true);
    return true;
}

/* ---- the lease call ---- */

static void on_reply(void *arg, const redisReply *r);

static int64_t want_of(const struct lease_set *ls, const struct lbucket *b, bool leased)
{
    if (!leased) return 0;
    int64_t maxc = b->max_cost > b->prev_max ? b->max_cost : b->prev_max;
    return (int64_t)(b->rate_u_ms * 2.0 * ls->o.sync_ms) + maxc;
}

/* Sends the tenant's lease call, carrying `op`'s check (whose buckets' leases are returned
 * first) when given. -1: not sent, nothing changed. */
static int send_call(struct ltenant *t, struct lop *op)
{
    struct lease_set *ls = t->ls;
    struct tg_resp *c = &t->cmd;
    size_t nk = t->nb;
    int64_t costs[TG_MAX_BUCKETS], from_r[TG_MAX_BUCKETS];
    for (size_t k = 0; k < nk; k++)
        costs[k] = -1;
    if (op)
        for (size_t i = 0; i < op->req.n; i++)
            costs[op->kidx[i]] = op->p[i].cost_u;
    tg_resp_reset(c);
    tg_resp_head(c, '*', 3 + nk + 4 + ARGS_PER_KEY * nk + (op ? nk : 0));
    tg_resp_bulk(c, "EVALSHA", 7);
    tg_resp_bulk(c, tg_redis_sha(ls->redis, (size_t)ls->o.script), 40);
    tg_resp_bulk_int(c, (int64_t)nk);
    size_t tlen = strlen(t->name);
    for (size_t k = 0; k < nk; k++) {
        size_t nlen = strlen(t->b[k].name);
        tg_resp_head(c, '$', ls->prefix_len + tlen + 3 + nlen);
        tg_resp_raw(c, ls->prefix, ls->prefix_len);
        tg_resp_raw(c, "{", 1);
        tg_resp_raw(c, t->name, tlen);
        tg_resp_raw(c, "}:", 2);
        tg_resp_raw(c, t->b[k].name, nlen);
        tg_resp_raw(c, "\r\n", 2);
    }
    if (*ls->o.fixed_clock_ms >= 0)
        tg_resp_bulk_int(c, *ls->o.fixed_clock_ms);
    else
        tg_resp_bulk(c, "", 0);
    char gid[96];
    int glen = snprintf(gid, sizeof(gid), "%s.%u", ls->gid, t->gen);
    tg_resp_bulk(c, gid, (size_t)glen);
    tg_resp_bulk_int(c, ls->o.ttl_ms);
    tg_resp_bulk(c, op ? "1" : "0", 1);
    for (size_t k = 0; k < nk; k++) {
        struct lbucket *b = &t->b[k];
        int64_t want = want_of(ls, b, t->leased && !ls->closing && !b->drop && !b->idle);
        int64_t give = 0; /* of r, returned */
        if (b->r > 0) {
            if (costs[k] >= 0 || b->drop || b->idle || !t->leased || ls->closing)
                give = b->r; /* a check sees all of it; a strict tenant keeps none */
            else if (b->r > 2 * want)
                give = b->r - want; /* demand fell */
        }
        from_r[k] = give;
        b->want_sent = want;
        int64_t maxc = b->max_cost > b->prev_max ? b->max_cost : b->prev_max;
        tg_resp_bulk_int(c, b->p.cap_u);
        tg_resp_bulk_double(c, b->p.rate);
        tg_resp_bulk_int(c, b->p.per_ms);
        tg_resp_bulk_int(c, b->r + b->s > 0 ? b->r + b->s : 0); /* held */
        tg_resp_bulk_int(c, b->s);
        tg_resp_bulk_int(c, give);
        tg_resp_bulk_int(c, want);
        tg_resp_bulk_int(c, maxc > 0 ? maxc : 1);
    }
    if (op)
        for (size_t k = 0; k < nk; k++)
            tg_resp_bulk_int(c, costs[k]);
    if (tg_redis_send(ls->redis, c, ls->o.script, on_reply, t) != 0) return -1;
    count(TG_M_REDIS_CALLS, "lease", NULL, 1);
    int64_t now = tg_now_mono_ms();
    for (size_t k = 0; k < nk; k++) {
        struct lbucket *b = &t->b[k];
        int64_t back = from_r[k];
        if (back > 0) {
            count(TG_M_LEASE_EVENTS, "returned", NULL, 1);
            count(TG_M_LEASE_UNITS, tg_unit_name(b->unit), "returned", (double)back / TG_MICRO);
        }
        b->r -= from_r[k];
        b->s = 0;
    }
    t->sent_ms = now;
    t->inflight = true;
    t->call_op = op;
    tg_redis_flush(ls->redis);
    return 0;
}

static void answer_op(struct ltenant *t, struct lop *op, const redisReply *r)
{
    struct lease_set *ls = t->ls;
    int64_t level[TG_MAX_BUCKETS];
    bool allowed = r->element[1]->integer == 1;
    int denied = -1;
    for (size_t i = 0; i < op->req.n; i++) {
        size_t k = (size_t)op->kidx[i];
        int64_t seen = r->element[2 + 5 * k + 2]->integer;
        level[i] = allowed ? seen + t->b[k].r : seen;
        if (!allowed && denied < 0 && seen < op->p[i].cost_u) denied = (int)i;
    }
    if (!allowed && denied < 0) denied = 0;
    tg_limiter_count_decision(false);
    if (!op->cancelled) {
        struct tg_limit_result res;
        tg_limiter_result_fill(op->p, level, op->req.n, denied, &res);
        op->cb(op->arg, &res);
    } else if (allowed) { /* abandoned: give it all back */
        int64_t d[TG_MAX_BUCKETS];
        for (size_t i = 0; i < op->req.n; i++)
            d[i] = -op->p[i].cost_u;
        lease_settle(ls, &op->req, d);
        ls->o.settle_strict(ls->o.owner, &op->req, d);
    }
}

static void rejudge_waiters(struct ltenant *t);

static bool reply_ok(const struct ltenant *t, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 + 5 * t->nb) return false;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return false;
    return true;
}

static void on_reply(void *arg, const redisReply *r)
{
    struct ltenant *t = arg;
    struct lease_set *ls = t->ls;
    struct lop *op = t->call_op;
    t->call_op = NULL;
    t->inflight = false;
    if (ls->closing) { /* answers no one */
        free(op);
        return;
    }
    if (!reply_ok(t, r)) {
        /* Whether Redis applied the call is unknown. Either way it holds at least what is
         * left here (r) for this gateway id, until at least until_ms: r may still be
         * spent until then (Redis down or not). What was reported in the call may be
         * lost, so the id is left to expire, written off as spent, with everything spent
         * from it; the next call starts a new id. */
        if (r) tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){"reply"}, 1);
        t->gen++;
        for (size_t k = 0; k < t->nb; k++)
            t->b[k].s = 0;
        if (op && !op->cancelled) ls->o.no_answer(ls->o.owner, &op->req, op->cb, op->arg);
        free(op);
        rejudge_waiters(t);
        return;
    }
    int64_t now = tg_now_mono_ms();
    bool starved = false, held = false;
    for (size_t k = 0; k < t->nb; k++) {
        struct lbucket *b = &t->b[k];
        redisReply *const *e = r->element + 2 + 5 * k;
        int64_t granted = e[0]->integer, own = e[4]->integer;
        if (e[3]->integer) { /* written off before this call: what was spent since is in it */
            b->s = 0;
            count(TG_M_LEASE_EVENTS, "expired", NULL, 1);
        }
        b->r = own - b->s;
        b->level = e[1]->integer;
        held = held || own > 0;
        if (granted > 0) {
            count(TG_M_LEASE_EVENTS, "granted", NULL, 1);
            count(TG_M_LEASE_UNITS, tg_unit_name(b->unit), "granted", (double)granted / TG_MICRO);
        }
        if (t->leased && granted == 0 && b->want_sent > own) starved = true;
    }
    t->until_ms = held ? t->sent_ms + ls->o.ttl_ms : 0;
    if (op) answer_op(t, op, r);
    free(op);
    if (starved && t->leased) {
        /* a bucket too empty to lease: strict for a while, the leases given back first
         * (the checks waiting go to Redis once they are) */
        t->leased = false;
        t->strict_until_ms = now + STRICT_HOLD_MS;
        if (send_call(t, NULL) == 0) return;
    }
    rejudge_waiters(t);
}

/* After a call: each waiting check judged on the new leases, the first they cannot cover
 * in a new call (the rest wait for it); to Redis's strict path when not leased. */
static void rejudge_waiters(struct ltenant *t)
{
    struct lease_set *ls = t->ls;
    struct lop *w = t->waiters;
    t->waiters = NULL;
    t->wtail = &t->waiters;
    int64_t now = tg_now_mono_ms();
    while (w) {
        struct lop *next = w->next;
        w->next = NULL;
        struct tg_limit_result res;
        if (w->cancelled) {
            free(w);
        } else if (t->inflight) {
            *t->wtail = w;
            t->wtail = &w->next;
        } else if (judge_local(t, w, &res, now)) {
            tg_limiter_cb cb = w->cb;
            void *arg = w->arg;
            free(w);
            cb(arg, &res);
        } else if (!t->leased || !tg_redis_up(ls->redis) || send_call(t, w) != 0) {
            tg_limiter_cb cb = w->cb;
            void *arg = w->arg;
            struct tg_limit_req req = w->req;
            free(w);
            ls->o.check_strict(ls->o.owner, &req, cb, arg);
        }
        w = next;
    }
}

/* ---- the interface ---- */

enum lease_verdict lease_check(struct lease_set *ls, const struct tg_limit_req *req,
                               const struct tg_bucket_param *p, struct tg_limit_result *res,
                               tg_limiter_cb cb, void *arg)
{
    struct ltenant *t = tenant_get(ls, req->tenant);
    if (!t) return LEASE_STRICT;
    int64_t now = tg_now_mono_ms();
    t->reqs++;
    t->last_seen_ms = now;
    struct lop probe;
    probe.req.tenant = req->tenant;
    probe.req.fallback = req->fallback;
    probe.req.background = req->background; /* false here: a reserve keeps it off leases */
    probe.req.credit.mode = TG_CREDITS_OFF; /* credit tenants are never leased */
    probe.req.n = req->n;
    memcpy(probe.req.b, req->b, req->n * sizeof(req->b[0]));
    memcpy(probe.p, p, req->n * sizeof(*p));
    for (size_t i = 0; i < req->n; i++) {
        int k = bucket_of(t, req->b[i].limit, &p[i]);
        if (k < 0) return LEASE_STRICT;
        probe.kidx[i] = (int8_t)k;
        struct lbucket *b = &t->b[k];
        b->demand += p[i].cost_u;
        b->idle = false;
        if (p[i].cost_u > b->max_cost) b->max_cost = p[i].cost_u;
    }
    if (judge_local(t, &probe, res, now)) return LEASE_ALLOWED;
    if (!t->inflight && (!t->leased || !tg_redis_up(ls->redis))) return LEASE_STRICT;
    struct lop *op = malloc(sizeof(*op));
    if (!op) return LEASE_STRICT;
    *op = probe;
    op->next = NULL;
    op->cancelled = false;
    op->cb = cb;
    op->arg = arg;
    if (t->inflight) {
        *t->wtail = op;
        t->wtail = &op->next;
        return LEASE_QUEUED;
    }
    if (send_call(t, op) != 0) {
        free(op);
        return LEASE_STRICT;
    }
    return LEASE_QUEUED;
}

void lease_settle(struct lease_set *ls, const struct tg_limit_req *req, int64_t *delta_u)
{
    struct ltenant *t = tenant_find(ls, req->tenant, fnv(req->tenant));
    int64_t now = tg_now_mono_ms();
    if (!t || !live(t, now)) return;
    for (size_t i = 0; i < req->n; i++) {
        if (delta_u[i] == 0) continue;
        for (size_t k = 0; k < t->nb; k++) {
            struct lbucket *b = &t->b[k];
            if (strcmp(b->name, req->b[i].limit->name) != 0) continue;
            if (b->r + b->s > 0) { /* a live lease: the delta is the lease's */
                b->r -= delta_u[i];
                b->s += delta_u[i];
                delta_u[i] = 0;
            }
            break;
        }
    }
}

void lease_cancel(struct lease_set *ls, void *arg)
{
    for (size_t i = 0; i < ls->cap; i++)
        for (struct ltenant *t = ls->tab[i]; t; t = t->next) {
            if (t->call_op && t->call_op->arg == arg) t->call_op->cancelled = true;
            for (struct lop *w = t->waiters; w; w = w->next)
                if (w->arg == arg) w->cancelled = true;
        }
}

void lease_tick(struct lease_set *ls)
{
    int64_t now = tg_now_mono_ms();
    int64_t dt = now - ls->last_tick_ms;
    if (dt <= 0) return;
    ls->last_tick_ms = now;
    for (size_t i = 0; i < ls->cap; i++) {
        for (struct ltenant **pp = &ls->tab[i], *t; (t = *pp) != NULL;) {
            t->req_rate = 0.5 * t->req_rate + 0.5 * ((double)t->reqs * 1000.0 / (double)dt);
            t->reqs = 0;
            bool holds = false;
            for (size_t k = 0; k < t->nb; k++) {
                struct lbucket *b = &t->b[k];
                b->rate_u_ms = 0.5 * b->rate_u_ms + 0.5 * ((double)b->demand / (double)dt);
                b->idle = b->demand == 0;
                b->demand = 0;
                b->prev_max = b->max_cost;
                b->max_cost = 0;
                holds = holds || b->r != 0 || b->s != 0;
            }
            if (ls->o.mode == TG_LEASE_ALWAYS) {
                if (!t->leased && now >= t->strict_until_ms) t->leased = true;
            } else if (!t->leased && t->req_rate >= ls->o.min_rate && now >= t->strict_until_ms) {
                t->leased = true;
            } else if (t->leased && t->req_rate < ls->o.min_rate / 2) {
                t->leased = false; /* cooled: the next call gives everything back */
            }
            /* A sync is due every interval when there is something to report, a lease
             * to top up or to give back; otherwise only to renew before the expiry. */
            bool due = now - t->sent_ms >= ls->o.sync_ms;
            bool needed = !t->leased || (holds && t->until_ms - now < ls->o.ttl_ms / 2);
            for (size_t k = 0; k < t->nb && !needed; k++) {
                const struct lbucket *b = &t->b[k];
                int64_t want = want_of(ls, b, true);
                needed = b->s != 0 || b->r > 2 * want || (b->idle ? b->r > 0 : b->r < want);
            }
            if (!t->inflight && due && needed && (t->leased || holds) && tg_redis_up(ls->redis))
                (void)send_call(t, NULL); /* unanswered: tried again next tick */
            if (!t->leased && !t->inflight && !holds && !t->waiters &&
                now - t->last_seen_ms > IDLE_FORGET_MS) {
                *pp = t->next;
                ls->n--;
                tenant_free(t);
                continue;
            }
            pp = &t->next;
        }
    }
}

struct lease_set *lease_create(struct tg_redis *redis, const struct lease_opts *o)
{
    struct lease_set *ls = calloc(1, sizeof(*ls));
    if (!ls) return NULL;
    ls->redis = redis;
    ls->o = *o;
    ls->prefix = strdup(o->prefix);
    if (!ls->prefix) {
        free(ls);
        return NULL;
    }
    ls->prefix_len = strlen(ls->prefix);
    static unsigned seq;
    char host[48] = "gw";
    gethostname(host, sizeof(host) - 1);
    for (char *c = host; *c; c++) /* an id holds no space, '=' or '@' */
        if (*c == ' ' || *c == '=' || *c == '@' || (unsigned char)*c < 33) *c = '_';
    snprintf(ls->gid, sizeof(ls->gid), "%s-%ld-%u-%lx", host, (long)getpid(),
             __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED),
             (unsigned long)(tg_now_wall_ms() & 0xffffff));
    ls->last_tick_ms = tg_now_mono_ms();
    return ls;
}

void lease_close(struct lease_set *ls)
{
    if (!ls) return;
    ls->closing = true;
    for (size_t i = 0; i < ls->cap; i++)
        for (struct ltenant *t = ls->tab[i]; t; t = t->next) {
            bool holds = false;
            for (size_t k = 0; k < t->nb; k++)
                holds = holds || t->b[k].r > 0 || t->b[k].s != 0;
            if (holds && !t->inflight && tg_redis_up(ls->redis)) (void)send_call(t, NULL);
        }
}

void lease_destroy(struct lease_set *ls)
{
    if (!ls) return;
    for (size_t i = 0; i < ls->cap; i++)
        for (struct ltenant *t = ls->tab[i], *next; t; t = next) {
            next = t->next;
            tenant_free(t);
        }
    free(ls->tab);
    free(ls->prefix);
    free(ls);
}
