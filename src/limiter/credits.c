/* The Redis backend's checks and settles of tenants that pay with credits: the checks of a
 * tenant that arrive in one loop turn go as one hold.lua call, the settles gathered for a
 * few ms as one commit.lua call per tenant (resent until Redis takes them: a call carries
 * an id Redis remembers, so a resend is applied once), the ledger events they return
 * shipped. */
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "tollgate/ledger.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/usage.h"
#include "credits.h"

#define BATCH_MAX 128        /* checks of one tenant in one hold.lua call */
#define COMMIT_FLUSH_MS 5    /* commits wait at most this long to be sent together */
#define COMMIT_BATCH_MAX 128 /* commits of one tenant in one commit.lua call */
#define RETRY_MS 250         /* a commit call Redis did not take is sent again after this */
#define RETRY_FOR_MS 300000  /* for this long; then its holds are left to expire */
#define CALL_ID_KEEP_MS 600000 /* Redis remembers an applied commit call this long */
#define MAX_RETRYING 10000   /* commit calls waiting for a retry; past this they are dropped */
#define NAME_MAX_LEN 256

enum call_kind { CALL_HOLD, CALL_COMMIT };

/* One check waiting for its tenant's hold.lua call, or in it. */
struct check {
    struct check *next;
    tg_limiter_cb cb;
    void *arg;
    bool cancelled;
    struct tg_limit_req req; /* copy; its refs are the caller's until cb/cancel */
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    uint8_t kidx[TG_MAX_BUCKETS]; /* each bucket's index among the call's keys */
};

/* One settle waiting for its tenant's commit.lua call, self-contained (the request and
 * its config may be gone by the time it is sent): its strings live in `text`. */
struct commit {
    struct commit *next;
    const char *tenant;
    char hold_id[TG_HOLD_ID_LEN];
    char rid[TG_REQUEST_ID_LEN];
    int64_t actual;
    size_t n;
    const char *names[TG_MAX_BUCKETS];
    struct tg_bucket_param p[TG_MAX_BUCKETS]; /* cost_u: the delta */
    char text[];
};

/* A call in flight (or waiting for a retry). */
struct call {
    struct call *prev, *next;
    struct credit_set *cs;
    enum call_kind kind;
    struct tg_resp cmd;
    char tenant[NAME_MAX_LEN];
    size_t nkeys;           /* bucket keys of the call */
    struct check *checks;   /* CALL_HOLD: in order */
    size_t ncommits;        /* CALL_COMMIT */
    int64_t first_ms;       /* CALL_COMMIT: when it was first sent */
};

struct credit_set {
    struct credit_opts o;
    struct check *qhead, *qtail; /* checks of this loop turn */
    struct event *batch_ev;
    bool batch_scheduled;
    struct commit *commits, **commits_tail; /* waiting for the flush, in order */
    size_t ncommits;
    struct event *flush_ev;
    struct call *inflight;
    struct call *waiting; /* commit calls to send again */
    size_t nwaiting;
    struct event *retry_ev;
    bool closing;
};

static void link_call(struct call **head, struct call *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
}

static void unlink_call(struct call **head, struct call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void free_checks(struct check *c)
{
    while (c) {
        struct check *next = c->next;
        free(c);
        c = next;
    }
}

static void free_call(struct call *c)
{
    free_checks(c->checks);
    tg_buf_free(&c->cmd.b);
    free(c);
}

static void count_error(const char *kind, double n)
{
    tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){kind}, n);
}


static void put_head(struct tg_resp *b, const struct credit_set *cs, int script, size_t nargs,
                     size_t nkeys)
{
    tg_resp_head(b, '*', 3 + nkeys + nargs);
    tg_resp_bulk(b, "EVALSHA", 7);
    tg_resp_bulk(b, tg_redis_sha(cs->o.redis, (size_t)script), 40);
    tg_resp_bulk_int(b, (int64_t)nkeys);
}

static void put_clock(struct tg_resp *b, const struct credit_set *cs)
{
    if (*cs->o.fixed_clock_ms >= 0)
        tg_resp_bulk_int(b, *cs->o.fixed_clock_ms);
    else
        tg_resp_bulk(b, "", 0);
}

static void put_str(struct tg_resp *b, const char *s)
{
    tg_resp_bulk(b, s ? s : "", s ? strlen(s) : 0);
}

static void put_param(struct tg_resp *b, const struct tg_bucket_param *p)
{
    tg_resp_bulk_int(b, p->cap_u);
    tg_resp_bulk_double(b, p->rate);
    tg_resp_bulk_int(b, p->per_ms);
}

static void on_reply(void *arg, const redisReply *r);

/* Sends a built call; -1 (the call is the caller's again) when it cannot be queued. */
static int send_call(struct credit_set *cs, struct call *c)
{
    int script = c->kind == CALL_HOLD ? cs->o.script_hold : cs->o.script_commit;
    if (c->cmd.failed || tg_redis_send(cs->o.redis, &c->cmd, script, on_reply, c) != 0) return -1;
    link_call(&cs->inflight, c);
    tg_metrics_add(TG_M_REDIS_CALLS,
                   (const char *const[]){c->kind == CALL_HOLD ? "hold" : "commit"}, 1);
    return 0;
}

/* ---- commits ---- */

static void on_retry(evutil_socket_t fd, short what, void *arg);

/* A commit call Redis did not take: sent again later, the same bytes (idempotent). */
static void wait_retry(struct credit_set *cs, struct call *c)
{
    if (cs->closing || cs->nwaiting >= MAX_RETRYING ||
        tg_now_mono_ms() - c->first_ms > RETRY_FOR_MS) {
        count_error("credit_settle_dropped", (double)c->ncommits);
        tg_log_error("credits: %zu settles of tenant %s could not be sent; their holds are "
                     "refunded when they expire",
                     c->ncommits, c->tenant);
        free_call(c);
        return;
    }
    link_call(&cs->waiting, c);
    if (cs->nwaiting++ == 0) {
        struct timeval tv = {0, RETRY_MS * 1000};
        evtimer_add(cs->retry_ev, &tv);
    }
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct credit_set *cs = arg;
    struct call *list = cs->waiting;
    cs->waiting = NULL;
    cs->nwaiting = 0;
    while (list) {
        struct call *c = list;
        list = c->next;
        c->prev = c->next = NULL;
        if (send_call(cs, c) != 0) wait_retry(cs, c);
    }
}

/* One commit.lua call for up to COMMIT_BATCH_MAX commits of one tenant (taken from *list,
 * in order; the rest stay there). */
static struct call *build_commits(struct credit_set *cs, struct commit **list)
{
    struct call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->cs = cs;
    c->kind = CALL_COMMIT;
    struct commit *first = *list, *group[COMMIT_BATCH_MAX];
    snprintf(c->tenant, sizeof(c->tenant), "%s", first->tenant);
    size_t m = 0;
    for (struct commit **pp = list; *pp && m < COMMIT_BATCH_MAX;) {
        struct commit *k = *pp;
        if (strcmp(k->tenant, c->tenant) == 0) {
            *pp = k->next;
            group[m++] = k;
        } else {
            pp = &k->next;
        }
    }
    /* the distinct buckets, by name (a reload may have changed a limit's parameters: the
     * first commit's win, as they would for a settle of the old config) */
    const char *names[TG_MAX_BUCKETS];
    const struct tg_bucket_param *params[TG_MAX_BUCKETS];
    uint8_t kidx[COMMIT_BATCH_MAX][TG_MAX_BUCKETS];
    size_t nb = 0;
    for (size_t j = 0; j < m; j++) {
        for (size_t i = 0; i < group[j]->n; i++) {
            size_t k = 0;
            while (k < nb && strcmp(names[k], group[j]->names[i]) != 0)
                k++;
            if (k == nb) {
                if (nb == TG_MAX_BUCKETS) { /* cannot happen within one tenant's limits */
                    kidx[j][i] = 0;
                    continue;
                }
                names[nb] = group[j]->names[i];
                params[nb++] = &group[j]->p[i];
            }
            kidx[j][i] = (uint8_t)(k + 1);
        }
    }
    struct tg_resp *b = &c->cmd;
    char call_id[TG_REQUEST_ID_LEN];
    tg_usage_new_id(call_id);
    c->first_ms = tg_now_mono_ms();
    put_head(b, cs, cs->o.script_commit, 4 + 3 * nb + 1 + m * (3 + nb), nb + 5);
    for (size_t k = 0; k < nb; k++)
        tg_resp_tenant_key(b, cs->o.prefix, c->tenant, names[k], NULL);
    tg_ledger_put_keys(b, cs->o.prefix, c->tenant, true);
    put_clock(b, cs);
    put_str(b, c->tenant);
    put_str(b, call_id);
    tg_resp_bulk_int(b, CALL_ID_KEEP_MS);
    for (size_t k = 0; k < nb; k++)
        put_param(b, params[k]);
    tg_resp_bulk_int(b, (int64_t)m);
    for (size_t j = 0; j < m; j++) {
        const struct commit *k = group[j];
        int64_t delta[TG_MAX_BUCKETS] = {0};
        for (size_t i = 0; i < k->n; i++)
            if (kidx[j][i]) delta[kidx[j][i] - 1] += k->p[i].cost_u;
        put_str(b, k->hold_id);
        put_str(b, k->rid);
        tg_resp_bulk_int(b, k->actual);
        for (size_t x = 0; x < nb; x++)
            tg_resp_bulk_int(b, delta[x]);
    }
    c->ncommits = m;
    for (size_t j = 0; j < m; j++)
        free(group[j]);
    cs->commits_tail = &cs->commits;
    while (*cs->commits_tail)
        cs->commits_tail = &(*cs->commits_tail)->next;
    return c;
}

static void flush_commits(struct credit_set *cs)
{
    evtimer_del(cs->flush_ev);
    if (!cs->commits) return;
    while (cs->commits) {
        struct call *c = build_commits(cs, &cs->commits);
        if (!c) { /* out of memory: these are lost, their holds expire */
            count_error("credit_settle_dropped", (double)cs->ncommits);
            while (cs->commits) {
                struct commit *k = cs->commits;
                cs->commits = k->next;
                free(k);
            }
            cs->commits_tail = &cs->commits;
            break;
        }
        if (send_call(cs, c) != 0) wait_retry(cs, c);
    }
    cs->ncommits = 0;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    flush_commits(arg);
}

static void commit_done(struct credit_set *cs, struct call *c, const redisReply *r)
{
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
        r->element[3]->type == REDIS_REPLY_STRING) { /* "applied before": a resend's answer */
        free_call(c);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3 + c->ncommits) {
        if (r) count_error("reply", 1);
        wait_retry(cs, c);
        return;
    }
    tg_ledger_ship_reply(c->tenant, r, 3 + c->ncommits);
    free_call(c);
}

static void queue_commit(struct credit_set *cs, const struct tg_limit_req *req,
                         const int64_t *delta_u, int64_t actual, const char *rid)
{
    size_t tl = strlen(req->tenant) + 1, text = tl;
    for (size_t i = 0; i < req->n; i++)
        if (delta_u[i] != 0) text += strlen(req->b[i].limit->name) + 1;
    struct commit *k = malloc(sizeof(*k) + text);
    if (!k) {
        count_error("credit_settle_dropped", 1);
        return;
    }
    k->next = NULL;
    char *t = k->text;
    memcpy(t, req->tenant, tl);
    k->tenant = t;
    t += tl;
    memcpy(k->hold_id, req->credit.hold_id, sizeof(k->hold_id));
    snprintf(k->rid, sizeof(k->rid), "%s", rid ? rid : "");
    k->actual = actual;
    k->n = 0;
    for (size_t i = 0; i < req->n; i++) {
        if (delta_u[i] == 0) continue;
        size_t nl = strlen(req->b[i].limit->name) + 1;
        memcpy(t, req->b[i].limit->name, nl);
        k->names[k->n] = t;
        t += nl;
        tg_bucket_param_init(&k->p[k->n++], req->b[i].limit, 1, delta_u[i]);
    }
    /* appended at the tail: a tenant's commits go in the order they were made */
    *cs->commits_tail = k;
    cs->commits_tail = &k->next;
    if (++cs->ncommits >= COMMIT_BATCH_MAX) {
        flush_commits(cs);
    } else if (cs->ncommits == 1) {
        struct timeval tv = {0, COMMIT_FLUSH_MS * 1000};
        evtimer_add(cs->flush_ev, &tv);
    }
}

/* ---- holds ---- */

static void answer(struct credit_set *cs, struct check *k, const struct tg_limit_result *res)
{
    tg_limiter_count_credit(k->req.tenant, res);
    if (k->cancelled || cs->closing) {
        /* Abandoned before its answer: what it took goes back, as if it never came. */
        if (res->status == TG_LIMIT_ALLOWED && !cs->closing) {
            int64_t delta[TG_MAX_BUCKETS] = {0};
            bool buckets = res->paid_by == TG_PAID_RATE_LIMIT ||
                           k->req.credit.mode == TG_CREDITS_PREPAID;
            if (buckets)
                for (size_t i = 0; i < k->req.n; i++)
                    delta[i] = -k->p[i].cost_u;
            if (res->paid_by == TG_PAID_CREDITS)
                queue_commit(cs, &k->req, delta, 0, "");
            else
                cs->o.settle_strict(cs->o.owner, &k->req, delta);
        }
        return;
    }
    k->cb(k->arg, res);
}

/* The answer of check `k` from its rows of a hold.lua reply. */
static bool parse_check(const struct check *k, const redisReply *r, size_t row, size_t nk,
                        struct tg_limit_result *res)
{
    redisReply **e = r->element + row;
    for (size_t i = 0; i < 4 + nk; i++)
        if (e[i]->type != REDIS_REPLY_INTEGER) return false;
    int64_t outcome = e[0]->integer, paid = e[1]->integer, denied = e[2]->integer;
    size_t n = k->req.n;
    int64_t level[TG_MAX_BUCKETS];
    int d = -1;
    for (size_t i = 0; i < n; i++) {
        level[i] = e[4 + k->kidx[i] - 1]->integer;
        if (d < 0 && denied > 0 && k->kidx[i] == denied) d = (int)i;
    }
    bool charged = outcome == 0 && (paid == 1 || k->req.credit.mode == TG_CREDITS_PREPAID);
    if (charged)
        for (size_t i = 0; i < n; i++)
            level[i] -= k->p[i].cost_u;
    if (outcome == 1) {
        if (d < 0) return false;
        tg_limiter_result_fill(k->p, level, n, d, res);
    } else {
        tg_limiter_result_fill(k->p, level, n, -1, res);
        res->status = outcome == 0 ? TG_LIMIT_ALLOWED : TG_LIMIT_NO_CREDIT;
        res->denied = -1;
    }
    res->paid_by = outcome != 0 ? TG_PAID_NONE : paid == 2 ? TG_PAID_CREDITS : TG_PAID_RATE_LIMIT;
    res->credits_known = true;
    res->held = res->paid_by == TG_PAID_CREDITS ? k->req.credit.price : 0;
    res->ledger_seq = e[3]->integer;
    return true;
}

static void hold_done(struct credit_set *cs, struct call *c, const redisReply *r)
{
    size_t nk = c->nkeys, m = 0;
    for (const struct check *k = c->checks; k; k = k->next)
        m++;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 3 + m * (4 + nk);
    if (!ok && r) count_error("reply", 1);
    if (ok) tg_ledger_ship_reply(c->tenant, r, 3 + m * (4 + nk));
    /* The balance each check saw after it: the call's last one for all (they were judged
     * in one instant). */
    int64_t balance = ok ? tg_redis_reply_int(r->element[1]) : 0;
    size_t row = 3;
    for (struct check *k = c->checks; k; k = k->next, row += 4 + nk) {
        struct tg_limit_result res;
        if (!ok || !parse_check(k, r, row, nk, &res)) {
            if (ok) count_error("reply", 1);
            res = (struct tg_limit_result){.status = TG_LIMIT_ERROR, .denied = -1};
        } else {
            res.balance = balance;
        }
        answer(cs, k, &res);
    }
    free_call(c);
}

/* One hold.lua call for the queued checks of the first one's tenant (same config: the
 * tenant is compared by pointer, so the limits of a call are one config's). */
static struct call *build_holds(struct credit_set *cs)
{
    struct call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->cs = cs;
    c->kind = CALL_HOLD;
    const char *tenant = cs->qhead->req.tenant;
    snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
    struct check **tail = &c->checks, **pp = &cs->qhead, *last = NULL;
    size_t m = 0;
    const struct tg_limit *limits[TG_MAX_BUCKETS];
    const struct tg_bucket_param *params[TG_MAX_BUCKETS];
    size_t nk = 0;
    while (*pp) {
        struct check *k = *pp;
        if (k->cancelled && k != cs->qhead) { /* abandoned before it was sent: costs nothing */
            *pp = k->next;
            free(k);
            continue;
        }
        if (m < BATCH_MAX && k->req.tenant == tenant) {
            *pp = k->next;
            k->next = NULL;
            *tail = k;
            tail = &k->next;
            m++;
            for (size_t i = 0; i < k->req.n; i++) {
                size_t x = 0;
                while (x < nk && limits[x] != k->req.b[i].limit)
                    x++;
                if (x == nk) {
                    limits[nk] = k->req.b[i].limit;
                    params[nk++] = &k->p[i];
                }
                k->kidx[i] = (uint8_t)(x + 1);
            }
        } else {
            last = k;
            pp = &k->next;
        }
    }
    cs->qtail = last;
    c->nkeys = nk;
    struct tg_resp *b = &c->cmd;
    put_head(b, cs, cs->o.script_hold, 3 + 4 * nk + 1 + m * (5 + nk), nk + 4);
    for (size_t x = 0; x < nk; x++)
        tg_resp_tenant_key(b, cs->o.prefix, tenant, limits[x]->name, NULL);
    tg_ledger_put_keys(b, cs->o.prefix, tenant, false);
    put_clock(b, cs);
    put_str(b, tenant);
    tg_resp_bulk_int(b, c->checks->req.credit.hold_ttl_ms);
    for (size_t x = 0; x < nk; x++) {
        put_param(b, params[x]);
        tg_resp_bulk_int(b, limits[x]->reserve > 0
                                ? (int64_t)floor(limits[x]->reserve * (double)params[x]->cap_u)
                                : 0);
    }
    tg_resp_bulk_int(b, (int64_t)m);
    for (const struct check *k = c->checks; k; k = k->next) {
        const struct tg_credit_req *cr = &k->req.credit;
        tg_resp_bulk_int(b, cr->mode == TG_CREDITS_PREPAID ? 2 : 1);
        tg_resp_bulk_int(b, cr->price);
        put_str(b, cr->hold_id);
        put_str(b, cr->request_id);
        tg_resp_bulk_int(b, k->req.background ? 1 : 0);
        int64_t cost[TG_MAX_BUCKETS];
        for (size_t x = 0; x < nk; x++)
            cost[x] = -1;
        for (size_t i = 0; i < k->req.n; i++)
            cost[k->kidx[i] - 1] = k->p[i].cost_u;
        for (size_t x = 0; x < nk; x++)
            tg_resp_bulk_int(b, cost[x]);
    }
    return c;
}

static void on_batch(evutil_socket_t fd, short what, void *arg)
{
    struct credit_set *cs = arg;
    cs->batch_scheduled = false;
    while (cs->qhead) {
        struct check *first = cs->qhead;
        if (first->cancelled) { /* abandoned before it was sent: costs nothing */
            cs->qhead = first->next;
            if (!cs->qhead) cs->qtail = NULL;
            free(first);
            continue;
        }
        struct call *c = tg_redis_up(cs->o.redis) ? build_holds(cs) : NULL;
        if (!c) {
            cs->qhead = first->next;
            if (!cs->qhead) cs->qtail = NULL;
            first->next = NULL;
            struct tg_limit_result res = {.status = TG_LIMIT_ERROR, .denied = -1};
            answer(cs, first, &res);
            free(first);
            continue;
        }
        if (send_call(cs, c) != 0) hold_done(cs, c, NULL);
    }
}

void credit_check(struct credit_set *cs, const struct tg_limit_req *req,
                  const struct tg_bucket_param *p, tg_limiter_cb cb, void *arg)
{
    struct check *k = tg_redis_up(cs->o.redis) ? malloc(sizeof(*k)) : NULL;
    if (!k) {
        struct tg_limit_result res = {.status = TG_LIMIT_ERROR, .denied = -1};
        tg_limiter_count_credit(req->tenant, &res);
        cb(arg, &res);
        return;
    }
    k->next = NULL;
    k->cancelled = false;
    k->cb = cb;
    k->arg = arg;
    k->req = *req;
    memcpy(k->p, p, req->n * sizeof(*p));
    if (cs->qtail)
        cs->qtail->next = k;
    else
        cs->qhead = k;
    cs->qtail = k;
    if (!cs->batch_scheduled) {
        cs->batch_scheduled = true;
        event_active(cs->batch_ev, EV_TIMEOUT, 1);
    }
}

void credit_settle(struct credit_set *cs, const struct tg_limit_req *req, const int64_t *delta_u)
{
    queue_commit(cs, req, delta_u, req->credit.actual, req->credit.request_id);
}

void credit_cancel(struct credit_set *cs, void *arg)
{
    for (struct check *k = cs->qhead; k; k = k->next)
        if (k->arg == arg) k->cancelled = true;
    for (struct call *c = cs->inflight; c; c = c->next)
        for (struct check *k = c->checks; k; k = k->next)
            if (k->arg == arg) k->cancelled = true;
}

static void on_reply(void *arg, const redisReply *r)
{
    struct call *c = arg;
    struct credit_set *cs = c->cs;
    unlink_call(&cs->inflight, c);
    if (r && r->type == REDIS_REPLY_ERROR) {
        tg_log_warn("credits: Redis answered %s: %s", c->kind == CALL_HOLD ? "hold" : "commit",
                    r->str);
        count_error("reply", 1);
        r = NULL;
    }
    if (c->kind == CALL_HOLD)
        hold_done(cs, c, r);
    else
        commit_done(cs, c, r);
}

struct credit_set *credit_create(struct event_base *base, const struct credit_opts *o)
{
    struct credit_set *cs = calloc(1, sizeof(*cs));
    if (!cs) return NULL;
    cs->o = *o;
    cs->commits_tail = &cs->commits;
    cs->retry_ev = evtimer_new(base, on_retry, cs);
    cs->flush_ev = evtimer_new(base, on_flush, cs);
    cs->batch_ev = event_new(base, -1, 0, on_batch, cs);
    if (!cs->retry_ev || !cs->flush_ev || !cs->batch_ev) {
        credit_destroy(cs);
        return NULL;
    }
    return cs;
}

void credit_close(struct credit_set *cs)
{
    if (!cs) return;
    flush_commits(cs);
    evtimer_del(cs->retry_ev);
    struct call *list = cs->waiting;
    cs->waiting = NULL;
    cs->nwaiting = 0;
    cs->closing = true;
    while (list) { /* one last try: sent before the connection is destroyed */
        struct call *c = list;
        list = c->next;
        c->prev = c->next = NULL;
        if (send_call(cs, c) != 0) wait_retry(cs, c);
    }
}

void credit_destroy(struct credit_set *cs)
{
    if (!cs) return;
    cs->closing = true;
    while (cs->inflight) { /* the connection answered them all with NULL by now */
        struct call *c = cs->inflight;
        unlink_call(&cs->inflight, c);
        free_call(c);
    }
    while (cs->waiting) {
        struct call *c = cs->waiting;
        unlink_call(&cs->waiting, c);
        free_call(c);
    }
    free_checks(cs->qhead);
    while (cs->commits) {
        struct commit *k = cs->commits;
        cs->commits = k->next;
        free(k);
    }
    cs->commits_tail = &cs->commits;
    if (cs->retry_ev) event_free(cs->retry_ev);
    if (cs->flush_ev) event_free(cs->flush_ev);
    if (cs->batch_ev) event_free(cs->batch_ev);
    free(cs);
}
