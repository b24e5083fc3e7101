/* The Redis backend's checks and settles of tenants that pay with credits: one hold.lua
 * call per check, one commit.lua call per settle (retried until Redis takes it), the
 * ledger events they return shipped. */
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "tollgate/ledger.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "credits.h"

#define RETRY_MS 250          /* a commit Redis did not take is sent again after this */
#define MAX_PENDING 100000    /* commits waiting for a retry; past this they are dropped */
#define EVENT_FIELDS 9

enum call_kind { CALL_HOLD, CALL_COMMIT };

struct call {
    struct call *prev, *next; /* in flight or waiting for a retry */
    struct credit_set *cs;
    enum call_kind kind;
    bool cancelled, retrying;
    struct tg_resp cmd;
    char tenant[256];
    /* CALL_HOLD */
    tg_limiter_cb cb;
    void *arg;
    struct tg_limit_req req; /* copy; its refs are the caller's until cb/cancel */
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    /* CALL_COMMIT */
    int64_t actual;
};

struct credit_set {
    struct credit_opts o;
    size_t prefix_len;
    struct call *inflight; /* holds and commits sent */
    struct call *waiting;  /* commits to send again */
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

static void free_call(struct call *c)
{
    tg_buf_free(&c->cmd.b);
    free(c);
}

static void count_error(const char *kind, double n)
{
    tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){kind}, n);
}

static void count_outcome(const char *tenant, const char *outcome)
{
    tg_metrics_add(TG_M_CREDIT_DECISIONS, (const char *const[]){tenant, outcome}, 1);
}

/* "<prefix>{<tenant>}:<name>" */
static void put_key(struct tg_resp *b, const struct credit_set *cs, const char *tenant,
                    const char *name)
{
    size_t tl = strlen(tenant), nl = strlen(name);
    tg_resp_head(b, '$', cs->prefix_len + tl + 3 + nl);
    tg_resp_raw(b, cs->o.prefix, cs->prefix_len);
    tg_resp_raw(b, "{", 1);
    tg_resp_raw(b, tenant, tl);
    tg_resp_raw(b, "}:", 2);
    tg_resp_raw(b, name, nl);
    tg_resp_raw(b, "\r\n", 2);
}

static void put_credit_keys(struct tg_resp *b, const struct credit_set *cs, const char *tenant)
{
    static const char *const names[] = {"$credits", "$holds", "$holdexp", "$ledger"};
    for (size_t i = 0; i < 4; i++)
        put_key(b, cs, tenant, names[i]);
}

static void put_clock(struct tg_resp *b, const struct credit_set *cs)
{
    if (*cs->o.fixed_clock_ms >= 0)
        tg_resp_bulk_int(b, *cs->o.fixed_clock_ms);
    else
        tg_resp_bulk(b, "", 0);
}

static int64_t reply_int(const redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER) return e->integer;
    if (e->type == REDIS_REPLY_STRING) return strtoll(e->str, NULL, 10);
    return 0;
}

static const char *reply_str(const redisReply *e)
{
    return e->type == REDIS_REPLY_STRING ? e->str : "";
}

/* Ships the events of a reply from element `from` on, 9 values each. */
static void ship_events(const char *tenant, const redisReply *r, size_t from)
{
    for (size_t i = from; i + EVENT_FIELDS <= r->elements; i += EVENT_FIELDS) {
        redisReply **e = r->element + i;
        struct tg_ledger_event ev = {
            .seq = reply_int(e[0]),
            .ts_ms = reply_int(e[1]),
            .delta = reply_int(e[2]),
            .balance = reply_int(e[3]),
            .held = reply_int(e[4]),
            .tenant = tenant,
            .reason = reply_str(e[5]),
            .request_id = reply_str(e[6]),
            .idem = reply_str(e[7]),
            .note = reply_str(e[8]),
        };
        tg_ledger_ship(&ev);
    }
}

/* ---- commits ---- */

static void send_call(struct credit_set *cs, struct call *c);

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
        send_call(cs, c);
    }
}

static void wait_retry(struct credit_set *cs, struct call *c)
{
    if (cs->closing || cs->nwaiting >= MAX_PENDING) {
        count_error("credit_settle_dropped", 1);
        tg_log_error("credits: a settle of tenant %s could not be sent; its hold will be "
                     "refunded when it expires",
                     c->tenant);
        free_call(c);
        return;
    }
    c->retrying = true;
    link_call(&cs->waiting, c);
    if (cs->nwaiting++ == 0) {
        struct timeval tv = {0, RETRY_MS * 1000};
        evtimer_add(cs->retry_ev, &tv);
    }
}

static void on_reply(void *arg, const redisReply *r);

static void send_call(struct credit_set *cs, struct call *c)
{
    int script = c->kind == CALL_HOLD ? cs->o.script_hold : cs->o.script_commit;
    link_call(&cs->inflight, c);
    if (tg_redis_send(cs->o.redis, &c->cmd, script, on_reply, c) != 0) {
        unlink_call(&cs->inflight, c);
        on_reply(c, NULL);
        return;
    }
    tg_metrics_add(TG_M_REDIS_CALLS,
                   (const char *const[]){c->kind == CALL_HOLD ? "hold" : "commit"}, 1);
    tg_redis_flush(cs->o.redis);
}

/* Builds a commit.lua call for hold `hold_id` of `tenant`: actual price, bucket deltas. */
static struct call *new_commit(struct credit_set *cs, const char *tenant, const char *hold_id,
                               const char *request_id, int64_t actual, int ttl_ms,
                               const struct tg_limit_req *req, const int64_t *delta_u)
{
    struct call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->cs = cs;
    c->kind = CALL_COMMIT;
    c->actual = actual;
    snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
    size_t nb = 0;
    for (size_t i = 0; i < req->n; i++)
        nb += delta_u[i] != 0;
    struct tg_resp *b = &c->cmd;
    tg_resp_head(b, '*', 3 + nb + 4 + 6 + 4 * nb);
    tg_resp_bulk(b, "EVALSHA", 7);
    tg_resp_bulk(b, tg_redis_sha(cs->o.redis, (size_t)cs->o.script_commit), 40);
    tg_resp_bulk_int(b, (int64_t)(nb + 4));
    for (size_t i = 0; i < req->n; i++)
        if (delta_u[i] != 0) put_key(b, cs, tenant, req->b[i].limit->name);
    put_credit_keys(b, cs, tenant);
    put_clock(b, cs);
    tg_resp_bulk(b, hold_id, strlen(hold_id));
    tg_resp_bulk(b, request_id ? request_id : "", request_id ? strlen(request_id) : 0);
    tg_resp_bulk_int(b, actual);
    tg_resp_bulk_int(b, ttl_ms);
    tg_resp_bulk(b, tenant, strlen(tenant));
    for (size_t i = 0; i < req->n; i++) {
        if (delta_u[i] == 0) continue;
        struct tg_bucket_param p;
        tg_bucket_param_init(&p, req->b[i].limit, 1, delta_u[i]);
        tg_resp_bulk_int(b, p.cap_u);
        tg_resp_bulk_double(b, p.rate);
        tg_resp_bulk_int(b, p.per_ms);
        tg_resp_bulk_int(b, p.cost_u);
    }
    if (b->failed) {
        free_call(c);
        return NULL;
    }
    return c;
}

static void commit_done(struct credit_set *cs, struct call *c, const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 4) {
        if (r) count_error("reply", 1);
        wait_retry(cs, c);
        return;
    }
    if (reply_int(r->element[1]) > 0) {
        double credits = (double)c->actual / TG_CREDIT_MICRO;
        tg_metrics_add(TG_M_CREDITS_CHARGED, (const char *const[]){c->tenant}, credits);
    }
    ship_events(c->tenant, r, 4);
    free_call(c);
}

/* ---- holds ---- */

/* The answer of hold.lua, as a check's result. */
static bool parse_hold(const struct call *c, const redisReply *r, struct tg_limit_result *res)
{
    size_t n = c->req.n;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 7 + n) return false;
    for (size_t i = 0; i < 7 + n; i++)
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return false;
    int64_t outcome = r->element[1]->integer, paid = r->element[2]->integer;
    int64_t denied = r->element[3]->integer;
    int64_t level[TG_MAX_BUCKETS];
    for (size_t i = 0; i < n; i++)
        level[i] = r->element[7 + i]->integer;
    bool charged = outcome == 0 && (paid == 1 || c->req.credit.mode == TG_CREDITS_PREPAID);
    if (charged)
        for (size_t i = 0; i < n; i++)
            level[i] -= c->p[i].cost_u;
    if (outcome == 1) {
        if (denied < 1 || (size_t)denied > n) return false;
        tg_limiter_result_fill(c->p, level, n, (int)denied - 1, res);
    } else {
        tg_limiter_result_fill(c->p, level, n, -1, res);
        res->status = outcome == 0 ? TG_LIMIT_ALLOWED : TG_LIMIT_NO_CREDIT;
        res->denied = -1;
    }
    res->paid_by = outcome != 0 ? TG_PAID_NONE : paid == 2 ? TG_PAID_CREDITS : TG_PAID_RATE_LIMIT;
    res->credits_known = true;
    res->balance = r->element[4]->integer;
    res->held = res->paid_by == TG_PAID_CREDITS ? c->req.credit.price : 0;
    res->ledger_seq = r->element[6]->integer;
    return true;
}

/* A hold whose request was abandoned before the answer: give it all back. */
static void release_abandoned(struct credit_set *cs, const struct call *c,
                              const struct tg_limit_result *res)
{
    int64_t delta[TG_MAX_BUCKETS] = {0};
    bool buckets = res->paid_by == TG_PAID_RATE_LIMIT ||
                   (res->paid_by == TG_PAID_CREDITS && c->req.credit.mode == TG_CREDITS_PREPAID);
    if (buckets)
        for (size_t i = 0; i < c->req.n; i++)
            delta[i] = -c->p[i].cost_u;
    if (res->paid_by == TG_PAID_CREDITS) {
        struct call *k = new_commit(cs, c->tenant, c->req.credit.hold_id, "", 0,
                                    c->req.credit.hold_ttl_ms, &c->req, delta);
        if (k)
            send_call(cs, k);
        else
            count_error("credit_settle_dropped", 1);
    } else if (buckets) {
        cs->o.settle_strict(cs->o.owner, &c->req, delta);
    }
}

static void hold_done(struct credit_set *cs, struct call *c, const redisReply *r)
{
    struct tg_limit_result res;
    bool ok = parse_hold(c, r, &res);
    if (!ok) {
        if (r) count_error("reply", 1);
        res = (struct tg_limit_result){.status = TG_LIMIT_ERROR, .denied = -1};
    } else {
        ship_events(c->tenant, r, 7 + c->req.n);
    }
    static const char *const outcome[] = {"rate_limit", "credits", "denied", "insufficient",
                                          "error"};
    int o = !ok ? 4
            : res.status == TG_LIMIT_DENIED    ? 2
            : res.status == TG_LIMIT_NO_CREDIT ? 3
            : res.paid_by == TG_PAID_CREDITS   ? 1
                                               : 0;
    count_outcome(c->tenant, outcome[o]);
    if (c->cancelled || cs->closing) {
        if (ok && res.status == TG_LIMIT_ALLOWED && !cs->closing) release_abandoned(cs, c, &res);
        free_call(c);
        return;
    }
    tg_limiter_cb cb = c->cb;
    void *arg = c->arg;
    free_call(c);
    cb(arg, &res);
}

static void on_reply(void *arg, const redisReply *r)
{
    struct call *c = arg;
    struct credit_set *cs = c->cs;
    if (c->prev || c->next || cs->inflight == c) unlink_call(&cs->inflight, c);
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

void credit_check(struct credit_set *cs, const struct tg_limit_req *req,
                  const struct tg_bucket_param *p, tg_limiter_cb cb, void *arg)
{
    struct call *c = tg_redis_up(cs->o.redis) ? calloc(1, sizeof(*c)) : NULL;
    if (!c) {
        count_outcome(req->tenant, "error");
        struct tg_limit_result res = {.status = TG_LIMIT_ERROR, .denied = -1};
        cb(arg, &res);
        return;
    }
    c->cs = cs;
    c->kind = CALL_HOLD;
    c->cb = cb;
    c->arg = arg;
    c->req = *req;
    memcpy(c->p, p, req->n * sizeof(*p));
    snprintf(c->tenant, sizeof(c->tenant), "%s", req->tenant);
    const struct tg_credit_req *cr = &req->credit;
    struct tg_resp *b = &c->cmd;
    tg_resp_head(b, '*', 3 + req->n + 4 + 7 + 4 * req->n);
    tg_resp_bulk(b, "EVALSHA", 7);
    tg_resp_bulk(b, tg_redis_sha(cs->o.redis, (size_t)cs->o.script_hold), 40);
    tg_resp_bulk_int(b, (int64_t)(req->n + 4));
    for (size_t i = 0; i < req->n; i++)
        put_key(b, cs, req->tenant, req->b[i].limit->name);
    put_credit_keys(b, cs, req->tenant);
    put_clock(b, cs);
    tg_resp_bulk_int(b, cr->mode == TG_CREDITS_PREPAID ? 2 : 1);
    tg_resp_bulk_int(b, cr->price);
    tg_resp_bulk(b, cr->hold_id, strlen(cr->hold_id));
    tg_resp_bulk(b, cr->request_id ? cr->request_id : "",
                 cr->request_id ? strlen(cr->request_id) : 0);
    tg_resp_bulk_int(b, cr->hold_ttl_ms);
    tg_resp_bulk(b, req->tenant, strlen(req->tenant));
    for (size_t i = 0; i < req->n; i++) {
        tg_resp_bulk_int(b, p[i].cap_u);
        tg_resp_bulk_double(b, p[i].rate);
        tg_resp_bulk_int(b, p[i].per_ms);
        tg_resp_bulk_int(b, p[i].cost_u);
    }
    if (b->failed) {
        free_call(c);
        count_outcome(req->tenant, "error");
        struct tg_limit_result res = {.status = TG_LIMIT_ERROR, .denied = -1};
        cb(arg, &res);
        return;
    }
    send_call(cs, c);
}

void credit_settle(struct credit_set *cs, const struct tg_limit_req *req, const int64_t *delta_u)
{
    const struct tg_credit_req *cr = &req->credit;
    struct call *c = new_commit(cs, req->tenant, cr->hold_id, cr->request_id, cr->actual,
                                cr->hold_ttl_ms, req, delta_u);
    if (!c) {
        count_error("credit_settle_dropped", 1);
        return;
    }
    if (!tg_redis_up(cs->o.redis)) {
        wait_retry(cs, c);
        return;
    }
    send_call(cs, c);
}

void credit_cancel(struct credit_set *cs, void *arg)
{
    for (struct call *c = cs->inflight; c; c = c->next)
        if (c->kind == CALL_HOLD && c->arg == arg) c->cancelled = true;
}

struct credit_set *credit_create(struct event_base *base, const struct credit_opts *o)
{
    struct credit_set *cs = calloc(1, sizeof(*cs));
    if (!cs) return NULL;
    cs->o = *o;
    cs->prefix_len = strlen(o->prefix);
    cs->retry_ev = evtimer_new(base, on_retry, cs);
    if (!cs->retry_ev) {
        free(cs);
        return NULL;
    }
    return cs;
}

void credit_close(struct credit_set *cs)
{
    if (!cs) return;
    evtimer_del(cs->retry_ev);
    struct call *list = cs->waiting;
    cs->waiting = NULL;
    cs->nwaiting = 0;
    cs->closing = true;
    while (list) { /* one last try: sent before the connection is destroyed */
        struct call *c = list;
        list = c->next;
        c->prev = c->next = NULL;
        send_call(cs, c);
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
    event_free(cs->retry_ev);
    free(cs);
}
