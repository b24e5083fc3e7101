/* Accounting: a request's estimate reserved in its buckets, its actual cost committed at its end.
 */
#include <string.h>
#include "tollgate/accounting.h"
#include "tollgate/metrics.h"
#include "tollgate/usage.h"

int tg_account_reserve(struct tg_limiter *l, const struct tg_config *cfg,
                       const struct tg_tenant *tenant, const struct tg_cost *est,
                       const char *model, const char *request_id, enum tg_priority priority,
                       struct tg_limit_req *req, tg_limiter_cb cb, void *arg)
{
    tg_limiter_plan(tenant, est, model, req);
    req->background = priority == TG_PRIO_BACKGROUND;
    struct tg_credit_req *cr = &req->credit;
    memset(cr, 0, sizeof(*cr));
    cr->enabled = cfg->credits.enabled;
    cr->mode = cfg->credits.enabled ? tenant->credits.mode : TG_CREDITS_OFF;
    if (cr->mode != TG_CREDITS_OFF) {
        cr->price = tg_ledger_price(cfg, est, model);
        cr->hold_ttl_ms = cfg->credits.hold_ttl_ms;
        cr->request_id = request_id;
        char id[TG_REQUEST_ID_LEN];
        tg_usage_new_id(id);
        memcpy(cr->hold_id, id, TG_HOLD_ID_LEN - 1);
        cr->hold_id[TG_HOLD_ID_LEN - 1] = '\0';
    }
    return tg_limiter_check(l, req, cb, arg);
}

void tg_account_actual(enum tg_cost_model model, int chars_per_token,
                       const struct tg_request_info *info, const struct tg_outcome *out,
                       struct tg_cost *actual)
{
    if (out->refused) {
        memset(actual, 0, sizeof(*actual));
        return;
    }
    if (out->bodyless || out->failed_undelivered) {
        memset(actual, 0, sizeof(*actual));
        actual->u[TG_UNIT_REQUESTS] = TG_MICRO;
        return;
    }
    static const struct tg_usage none;
    tg_cost_actual(model, chars_per_token, info, out->usage ? out->usage : &none, actual);
}

int64_t tg_account_commit(struct tg_limiter *l, const struct tg_config *cfg, const char *model,
                          struct tg_limit_req *req, const struct tg_cost *actual)
{
    int64_t delta[TG_MAX_BUCKETS];
    struct tg_credit_req *cr = &req->credit;
    bool paid = cr->mode != TG_CREDITS_OFF && cr->paid_by == TG_PAID_CREDITS;
    /* Overflow paid by the balance left the buckets untouched: nothing to settle there. */
    bool buckets = !(paid && cr->mode == TG_CREDITS_OVERFLOW);
    bool any = false;
    for (size_t i = 0; i < req->n; i++) {
        delta[i] = buckets ? actual->u[req->b[i].limit->unit] - req->b[i].cost_u : 0;
        any = any || delta[i] != 0;
    }
    if (paid) {
        cr->actual = tg_ledger_price(cfg, actual, model);
        tg_metrics_add(TG_M_CREDITS_CHARGED, (const char *const[]){req->tenant},
                       (double)cr->actual / TG_CREDIT_MICRO);
    }
    if (any || paid) tg_limiter_settle(l, req, delta);
    return paid ? cr->actual : -1;
}
