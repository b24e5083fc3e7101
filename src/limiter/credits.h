/* Private to src/limiter/: the Redis backend's checks of tenants that pay with credits
 * (credits.c). The checks of a tenant in one loop turn are one call of hold.lua — each
 * request's buckets and its tenant's balance in one atomic decision, the estimate's price
 * held — and the ends of requests, gathered for a few ms, one call of commit.lua, which
 * replaces each hold by the actual price and settles the buckets. They are never leased:
 * a balance is exact or it is nothing. */
#ifndef TOLLGATE_LIMITER_CREDITS_H
#define TOLLGATE_LIMITER_CREDITS_H

#include "tollgate/limiter.h"
#include "tollgate/redis.h"

struct event_base;
struct credit_set;

struct credit_opts {
    struct tg_redis *redis;        /* (ref) the worker's connection */
    const char *prefix;            /* (ref) the Redis key prefix */
    int script_hold, script_commit; /* hold.lua's and commit.lua's index on the connection */
    const int64_t *fixed_clock_ms; /* (ref) tests: < 0 = Redis TIME */
    /* The owner's settle of buckets alone (a request the buckets paid). */
    void *owner;
    void (*settle_strict)(void *owner, const struct tg_limit_req *req, const int64_t *delta_u);
};

struct credit_set *credit_create(struct event_base *base, const struct credit_opts *o) TG_WUR;
/* Sends the commits still waiting for a retry (best effort), before the connection goes. */
void credit_close(struct credit_set *cs);
void credit_destroy(struct credit_set *cs);

/* Checks `req` (credit.mode != OFF; p: its buckets' parameters and costs): calls cb once,
 * maybe before returning. Redis unreachable: TG_LIMIT_ERROR (a balance cannot be guessed). */
void credit_check(struct credit_set *cs, const struct tg_limit_req *req,
                  const struct tg_bucket_param *p, tg_limiter_cb cb, void *arg);
/* The end of a request the balance paid (credit.paid_by == CREDITS): its hold replaced by
 * credit.actual, its buckets settled by delta_u. Retried until Redis takes it. */
void credit_settle(struct credit_set *cs, const struct tg_limit_req *req, const int64_t *delta_u);
void credit_cancel(struct credit_set *cs, void *arg);

#endif
