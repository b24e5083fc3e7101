/* The token-bucket math, the C twin of the Lua scripts: refill, the all-or-nothing check,
 * settle, and a check's result. */
#include <math.h>
#include "tollgate/limiter.h"

/* Beyond this a wait is "never" (about 31 years); keeps conversions defined. */
#define NEVER_MS 1000000000000LL

int64_t tg_bucket_capacity_u(const struct tg_limit *l)
{
    double burst = l->burst > 0 ? l->burst : l->rate;
    return (int64_t)llround(burst * (double)TG_MICRO);
}

void tg_bucket_param_init(struct tg_bucket_param *p, const struct tg_limit *l, int divisor,
                          int64_t cost_u)
{
    if (divisor < 1) divisor = 1;
    p->cap_u = tg_bucket_capacity_u(l) / divisor;
    p->rate = l->rate / divisor;
    p->per_ms = l->per_ms > 0 ? l->per_ms : 1000;
    p->cost_u = cost_u;
    p->floor_u = 0;
}

void tg_bucket_params(const struct tg_limit_req *req, int divisor, struct tg_bucket_param *p)
{
    for (size_t i = 0; i < req->n; i++) {
        tg_bucket_param_init(&p[i], req->b[i].limit, divisor, req->b[i].cost_u);
        if (req->background && req->b[i].limit->reserve > 0)
            p[i].floor_u = (int64_t)floor(req->b[i].limit->reserve * (double)p[i].cap_u);
    }
}

bool tg_limiter_reserve_applies(const struct tg_limit_req *req)
{
    if (!req->background) return false;
    for (size_t i = 0; i < req->n; i++)
        if (req->b[i].limit->reserve > 0) return true;
    return false;
}

/* Keep every operation here in the order of refill() in the Lua scripts: the
 * doubles then round identically and C and Redis agree to the micro-unit. */
int64_t tg_bucket_refill(const struct tg_bucket *b, int64_t now_ms, double rate, int64_t per_ms,
                         int64_t cap_u)
{
    if (b->level_u >= cap_u) return cap_u;
    int64_t elapsed = now_ms - b->updated_ms;
    if (elapsed < 0) elapsed = 0;
    double level = (double)b->level_u + floor((double)elapsed * rate * 1e6 / (double)per_ms);
    if (level >= (double)cap_u) return cap_u;
    return (int64_t)level;
}

static double added(int64_t ms, double rate, int64_t per_ms)
{
    return floor((double)ms * rate * 1e6 / (double)per_ms);
}

int64_t tg_bucket_time_to(int64_t level_u, int64_t target_u, double rate, int64_t per_ms)
{
    if (level_u >= target_u) return 0;
    if (!(rate > 0) || per_ms <= 0) return NEVER_MS;
    double need = (double)target_u - (double)level_u;
    double t = ceil(need * (double)per_ms / (rate * 1e6));
    if (!(t < (double)NEVER_MS)) return NEVER_MS;
    int64_t ms = (int64_t)t;
    while (added(ms, rate, per_ms) < need)
        ms++;
    while (ms > 0 && added(ms - 1, rate, per_ms) >= need)
        ms--;
    return ms;
}

int tg_bucket_check(struct tg_bucket *const *b, const struct tg_bucket_param *p, size_t n,
                    int64_t now_ms, int64_t *level_u)
{
    int denied = -1;
    for (size_t i = 0; i < n; i++) {
        level_u[i] = tg_bucket_refill(b[i], now_ms, p[i].rate, p[i].per_ms, p[i].cap_u);
        if (denied < 0 && level_u[i] < p[i].cost_u + p[i].floor_u) denied = (int)i;
    }
    if (denied >= 0) return denied;
    for (size_t i = 0; i < n; i++) {
        level_u[i] -= p[i].cost_u;
        b[i]->level_u = level_u[i];
        b[i]->updated_ms = now_ms;
    }
    return -1;
}

int64_t tg_bucket_settle(struct tg_bucket *b, const struct tg_bucket_param *p, int64_t now_ms)
{
    int64_t level = tg_bucket_refill(b, now_ms, p->rate, p->per_ms, p->cap_u) - p->cost_u;
    if (level > p->cap_u) level = p->cap_u;
    b->level_u = level;
    b->updated_ms = now_ms;
    return level;
}

void tg_limiter_result_fill(const struct tg_bucket_param *p, const int64_t *level_u, size_t n,
                            int denied, struct tg_limit_result *res)
{
    res->status = denied < 0 ? TG_LIMIT_ALLOWED : TG_LIMIT_DENIED;
    res->denied = denied < 0 ? -1 : denied;
    res->retry_ms = 0;
    res->fallback = false;
    res->paid_by = denied < 0 ? TG_PAID_RATE_LIMIT : TG_PAID_NONE;
    res->credits_known = false;
    res->balance = res->held = res->ledger_seq = 0;
    res->n = n;
    for (size_t i = 0; i < n; i++) {
        res->b[i].limit_u = p[i].cap_u;
        res->b[i].remaining_u = level_u[i] > 0 ? level_u[i] : 0;
        res->b[i].reset_ms = tg_bucket_time_to(level_u[i], p[i].cap_u, p[i].rate, p[i].per_ms);
        int64_t need = p[i].cost_u + p[i].floor_u;
        if (denied >= 0 && level_u[i] < need) {
            int64_t w = tg_bucket_time_to(level_u[i], need, p[i].rate, p[i].per_ms);
            if (w > res->retry_ms) res->retry_ms = w;
        }
    }
}

bool tg_limiter_too_large(const struct tg_limit_req *req, struct tg_limit_result *res)
{
    int bad = -1;
    for (size_t i = 0; i < req->n; i++) {
        res->b[i].limit_u = tg_bucket_capacity_u(req->b[i].limit);
        res->b[i].remaining_u = 0;
        res->b[i].reset_ms = 0;
        if (bad < 0 && req->b[i].cost_u > res->b[i].limit_u) bad = (int)i;
    }
    if (bad < 0) return false;
    res->status = TG_LIMIT_TOO_LARGE;
    res->denied = bad;
    res->retry_ms = 0;
    res->fallback = false;
    res->n = req->n;
    return true;
}
