/* Judging a request read whole: its cost estimated, its upstream picked, its estimate reserved in
 * its buckets (a denied one waiting for room), its admission acquired. */
#include "conn.h"

/* ---- judging ---- */

static void on_limit(void *arg, const struct tg_limit_result *res);

/* The tenant's wait queue woke this request: judge it again, or (draining) let it go. */
static void on_wake(struct tg_waiter *w, enum tg_wake why)
{
    struct tg_req *r = (struct tg_req *)(void *)((char *)w - offsetof(struct tg_req, waiter));
    struct tg_conn *c = r->conn;
    if (why == TG_WAKE_DRAIN) {
        evtimer_del(c->timer);
        r->rl_len = (size_t)snprintf(r->rl, sizeof(r->rl), "Retry-After: 1\r\n");
        reply_error(c, 503, "server_error", "shutting_down",
                    "The gateway is shutting down. Please retry.", false, TG_DECISION_REJECTED);
        return;
    }
    run_check(c);
}

void run_check(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    r->checking = true;
    r->t_lim_us = now_us();
    if (tg_account_reserve(c->w->limiter, r->cfg, r->tenant, &r->est, r->info.model, r->id,
                           r->priority, &r->lreq, on_limit, c) != 0 &&
        r->checking) {
        struct tg_limit_result err = {.status = TG_LIMIT_ERROR, .denied = -1};
        on_limit(c, &err);
    }
}

void on_request_complete(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_config *cfg = r->cfg;
    c->state = C_WORK;
    evtimer_del(c->timer);
    char err[TG_ERR_LEN];
    bool pays = cfg->credits.enabled && r->tenant->credits.mode != TG_CREDITS_OFF;
    if (!tg_sink_accepting(c->w->sink) || (pays && !tg_ledger_accepting())) {
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
    /* A model alias: the model it stands for is the one forwarded, routed, limited and
     * priced; the record keeps the name the client asked for. */
    const char *alias = tg_router_alias(r->route, r->info.model);
    if (alias && !r->bodyless) {
        size_t n;
        char *nb = tg_cost_request_model(r->body, r->body_len, alias, &n);
        if (nb) {
            memcpy(r->requested_model, r->info.model, sizeof(r->requested_model));
            snprintf(r->info.model, sizeof(r->info.model), "%s", alias);
            r->fwd_body = nb;
            r->fwd_len = n;
        }
    }
    if (r->route->cost == TG_COST_TOKENS && r->info.stream && !r->info.client_wants_usage) {
        const char *src = r->fwd_body ? r->fwd_body : r->body;
        size_t slen = r->fwd_body ? r->fwd_len : r->body_len, n;
        char *nb = tg_cost_request_usage_valid(src, slen, &n);
        if (nb) {
            free(r->fwd_body);
            r->fwd_body = nb;
            r->fwd_len = n;
        }
        r->strip_usage = nb != NULL;
    }
    r->upstream = tg_router_pick(r->route, &r->info);
    if (r->upstream == NULL) {
        char msg[TG_MODEL_LEN + 96];
        snprintf(msg, sizeof(msg), "The model `%s` does not exist or you do not have access to it.",
                 r->info.model);
        reply_error(c, 404, "invalid_request_error", "model_not_found", msg, false,
                    TG_DECISION_REJECTED);
        return;
    }
    /* Waiters of its tenant and class (or a higher one) are ahead: it queues behind them
     * rather than take the room they wait for. */
    if (r->route->max_wait_ms > 0 && !r->waiter.q &&
        tg_waitq_busy(c->w->waitq, r->tenant->name, r->priority)) {
        r->waiter.wake = on_wake;
        if (tg_waitq_enter(c->w->waitq, &r->waiter, r->tenant->name, r->priority, 0,
                           r->tenant->max_queue) == 0) {
            r->wait_deadline_ms = tg_now_mono_ms() + r->route->max_wait_ms;
            arm_timer(c, r->route->max_wait_ms);
            return;
        }
    }
    run_check(c);
}

static void on_limit(void *arg, const struct tg_limit_result *res)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    r->checking = false;
    r->denied = res->denied;
    r->lreq.fallback = res->fallback;
    r->lreq.credit.paid_by = res->status == TG_LIMIT_ALLOWED ? res->paid_by : TG_PAID_NONE;
    if (r->lreq.credit.paid_by == TG_PAID_NONE && res->status == TG_LIMIT_ALLOWED)
        r->lreq.credit.paid_by = TG_PAID_RATE_LIMIT;
    r->ledger_seq = res->ledger_seq;
    const char *backend[] = {tg_limiter_name(c->w->limiter)};
    tg_metrics_observe(TG_M_LIMITER_DURATION, backend, (double)(now_us() - r->t_lim_us) / 1e6);
    r->rl_len = tg_limiter_format_headers(&r->lreq, res, r->rl, sizeof(r->rl));
    if (res->status == TG_LIMIT_ALLOWED) {
        if (r->waiter.q) {
            evtimer_del(c->timer);
            tg_waitq_done(c->w->waitq, &r->waiter, true, 0);
        }
        r->charged = true;
        tg_admission_acquire(&c->w->admission, &r->admit, r->tenant, r->route, on_admit, c);
        return;
    }
    if (res->status == TG_LIMIT_DENIED && r->route->max_wait_ms > 0 && !r->wait_expired) {
        /* Wait in the tenant's queue, woken when the bucket will hold enough. */
        int64_t now = tg_now_mono_ms();
        if (r->wait_deadline_ms == 0) r->wait_deadline_ms = now + r->route->max_wait_ms;
        if (now + res->retry_ms <= r->wait_deadline_ms) {
            r->rl_len = 0;
            if (r->waiter.q) {
                tg_waitq_done(c->w->waitq, &r->waiter, false, res->retry_ms);
                return;
            }
            r->waiter.wake = on_wake;
            if (tg_waitq_enter(c->w->waitq, &r->waiter, r->tenant->name, r->priority,
                               res->retry_ms, r->tenant->max_queue) == 0) {
                arm_timer(c, (int)(r->wait_deadline_ms - now));
                return;
            }
            /* the queue is full: 429 now */
            r->rl_len = tg_limiter_format_headers(&r->lreq, res, r->rl, sizeof(r->rl));
        }
    }
    if (r->waiter.q) {
        evtimer_del(c->timer);
        tg_waitq_leave(c->w->waitq, &r->waiter);
    }
    char body[1024];
    size_t n = tg_limiter_format_error(&r->lreq, res, body, sizeof(body));
    if (res->status == TG_LIMIT_NO_CREDIT) {
        reply_json(c, 429, body, n, false, TG_DECISION_LIMITED);
    } else if (res->status == TG_LIMIT_DENIED) {
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

/* Admission answered: forward, or refuse without charging anything. */
void on_admit(void *arg, enum tg_admit_status status)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (status == TG_ADMIT_OK) {
        start_forward(c);
        return;
    }
    r->refused = true;
    r->rl_len = 0;
    if (status == TG_ADMIT_ERROR) {
        r->rl_len = (size_t)snprintf(r->rl, sizeof(r->rl), "Retry-After: 1\r\n");
        reply_error(c, 503, "server_error", "rate_limiter_unavailable",
                    "The concurrency limiter is unavailable; please try again later.", false,
                    TG_DECISION_ERROR);
        return;
    }
    reply_error(c, 429, "requests", "concurrency_limit_exceeded",
                status == TG_ADMIT_TIMEOUT
                    ? "The request waited as long as its route allows for a free slot."
                    : "Too many requests of this tenant are under way. Please retry shortly.",
                false, TG_DECISION_LIMITED);
}
