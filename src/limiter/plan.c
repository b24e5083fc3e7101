/* Which buckets a request is charged against: its tenant's limits for its cost and model. */
#include <string.h>
#include "tollgate/limiter.h"

static bool model_listed(const struct tg_limit *l, const char *model)
{
    for (size_t i = 0; i < l->nmodels; i++)
        if (strcmp(l->models[i], model) == 0) return true;
    return false;
}

void tg_limiter_plan(const struct tg_tenant *tenant, const struct tg_cost *cost, const char *model,
                     struct tg_limit_req *req)
{
    req->tenant = tenant->name;
    req->fallback = false;
    req->background = false;
    req->n = 0;
    for (size_t i = 0; i < tenant->nlimits && req->n < TG_MAX_BUCKETS; i++) {
        const struct tg_limit *l = &tenant->limits[i];
        int64_t c = cost->u[l->unit];
        if (l->unit != TG_UNIT_REQUESTS && c <= 0) continue;
        if (l->nmodels > 0 && !model_listed(l, model ? model : "")) continue;
        req->b[req->n].limit = l;
        req->b[req->n].cost_u = c;
        req->n++;
    }
}
