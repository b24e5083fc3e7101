/* Private to src/limiter/: a worker's leases on Redis buckets (lease.c), used by the
 * Redis backend (redis.c). A leased tenant's checks are judged on this gateway from
 * units leased from its buckets, synced every sync_interval_ms by lease.lua; a check the
 * leases cannot cover goes to Redis in the tenant's next lease call, which returns the
 * leases first, so it is denied only when Redis has no room either. */
#ifndef TOLLGATE_LIMITER_LEASE_H
#define TOLLGATE_LIMITER_LEASE_H

#include "tollgate/config.h"
#include "tollgate/limiter.h"
#include "tollgate/redis.h"

struct lease_set;

struct lease_opts {
    enum tg_lease_mode mode;
    int ttl_ms, sync_ms;
    double min_rate;          /* auto: requests/s of a tenant on this worker */
    const char *prefix;       /* (ref) the Redis key prefix */
    int script;               /* lease.lua's index in the connection's scripts */
    const int64_t *fixed_clock_ms; /* (ref) tests: < 0 = Redis TIME */
    /* The owner's answers for what the leases cannot do: a check Redis did not
     * answer (the failure policy), a waiting check to judge the strict way, a
     * settle on a bucket with no live lease. */
    void *owner;
    void (*no_answer)(void *owner, const struct tg_limit_req *req, tg_limiter_cb cb, void *arg);
    void (*check_strict)(void *owner, const struct tg_limit_req *req, tg_limiter_cb cb, void *arg);
    void (*settle_strict)(void *owner, const struct tg_limit_req *req, const int64_t *delta_u);
};

enum lease_verdict {
    LEASE_ALLOWED, /* *res is the answer, charged on the leases */
    LEASE_STRICT,  /* not leased (or Redis down and no lease covers it): check as usual */
    LEASE_QUEUED,  /* cb will be called once, from the tenant's lease call */
};

struct lease_set *lease_create(struct tg_redis *redis, const struct lease_opts *o) TG_WUR;
/* Sends every unused lease back (best effort) and answers no one from then on: before
 * the connection is destroyed. */
void lease_close(struct lease_set *ls);
/* After the connection is gone: frees all, waiting checks unanswered. */
void lease_destroy(struct lease_set *ls);

/* Judges a check (p: its buckets' parameters and costs); counts it towards the
 * tenant's rate either way. */
enum lease_verdict lease_check(struct lease_set *ls, const struct tg_limit_req *req,
                               const struct tg_bucket_param *p, struct tg_limit_result *res,
                               tg_limiter_cb cb, void *arg);
/* Applies each delta_u[i] of a bucket with a live lease to it and zeroes it there;
 * the rest is the caller's to settle. */
void lease_settle(struct lease_set *ls, const struct tg_limit_req *req, int64_t *delta_u);
void lease_cancel(struct lease_set *ls, void *arg);
/* Every sync_interval_ms: rates, auto mode's choice, the due syncs. */
void lease_tick(struct lease_set *ls);

#endif
