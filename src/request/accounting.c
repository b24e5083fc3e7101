/* Accounting: a request's estimate reserved in its buckets, its actual cost committed at its end.
 */
#include <string.h>
#include "tollgate/accounting.h"

int tg_account_reserve(struct tg_limiter *l, const struct tg_tenant *tenant,
                       const struct tg_cost *est, const char *model, struct tg_limit_req *req,
                       tg_limiter_cb cb, void *arg)
{
    tg_limiter_plan(tenant, est, model, req);
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

bool tg_account_commit(struct tg_limiter *l, const struct tg_limit_req *req,
                       const struct tg_cost *actual)
{
    int64_t delta[TG_MAX_BUCKETS];
    bool any = false;
    for (size_t i = 0; i < req->n; i++) {
        delta[i] = actual->u[req->b[i].limit->unit] - req->b[i].cost_u;
        any = any || delta[i] != 0;
    }
    if (any) tg_limiter_settle(l, req, delta);
    return any;
}
