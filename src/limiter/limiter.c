/* The limiter's front: the checks every backend shares, and the table of backends. */
#include <stdio.h>
#include "tollgate/limiter.h"
#include "tollgate/metrics.h"

void tg_limiter_count_decision(bool on_lease)
{
    static _Thread_local struct tg_metric_series *series[2];
    if (!series[on_lease])
        series[on_lease] = tg_metrics_series(TG_M_LIMITER_DECISIONS,
                                             (const char *const[]){on_lease ? "lease" : "redis"});
    tg_metrics_series_add(series[on_lease], 1);
}

void tg_limiter_count_credit(const char *tenant, const struct tg_limit_result *res)
{
    const char *outcome = res->status == TG_LIMIT_ERROR       ? "error"
                          : res->status == TG_LIMIT_DENIED     ? "denied"
                          : res->status == TG_LIMIT_NO_CREDIT  ? "insufficient"
                          : res->paid_by == TG_PAID_CREDITS    ? "credits"
                                                               : "rate_limit";
    tg_metrics_add(TG_M_CREDIT_DECISIONS, (const char *const[]){tenant, outcome}, 1);
}

int tg_limiter_check(struct tg_limiter *l, const struct tg_limit_req *req, tg_limiter_cb cb,
                     void *arg)
{
    struct tg_limit_result res;
    if (tg_limiter_too_large(req, &res)) {
        cb(arg, &res);
        return 0;
    }
    if (req->n == 0 && req->credit.mode == TG_CREDITS_OFF) {
        res = (struct tg_limit_result){.status = TG_LIMIT_ALLOWED, .denied = -1};
        cb(arg, &res);
        return 0;
    }
    return l->ops->check(l, req, cb, arg);
}

/* ---- the table of backends ---- */

static struct tg_limiter *shared_local(const struct tg_limiter_env *env)
{
    return env->local;
}

static struct tg_limiter *redis_for_worker(const struct tg_limiter_env *env)
{
    return tg_limiter_redis_create(env->base, env->cfg, env->fallback);
}

static const struct tg_limiter_backend_def backends[] = {
    {TG_LIMITER_LOCAL, "local", true, shared_local},
    {TG_LIMITER_REDIS, "redis", false, redis_for_worker},
};

const struct tg_limiter_backend_def *tg_limiter_backend_def(enum tg_limiter_backend backend)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(backends); i++)
        if (backends[i].backend == backend) return &backends[i];
    return NULL;
}

struct tg_limiter *tg_limiter_for_worker(const struct tg_limiter_env *env, bool *own,
                                         char err[TG_ERR_LEN])
{
    const struct tg_limiter_backend_def *def = tg_limiter_backend_def(env->cfg->limiter.backend);
    if (def == NULL) {
        snprintf(err, TG_ERR_LEN, "unknown limiter backend %d", (int)env->cfg->limiter.backend);
        return NULL;
    }
    struct tg_limiter *l = def->create(env);
    if (l == NULL) {
        snprintf(err, TG_ERR_LEN, "cannot create the %s limiter", def->name);
        return NULL;
    }
    *own = !def->shared;
    return l;
}
