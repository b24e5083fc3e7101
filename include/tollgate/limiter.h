/* The limiter: one all-or-nothing check over every bucket a request touches,
 * then a settle of actual − estimate. Backends sit behind a table of functions. */
#ifndef TOLLGATE_LIMITER_H
#define TOLLGATE_LIMITER_H

#include "tollgate/config.h"
#include "tollgate/cost.h"
#include "tollgate/ledger.h"

struct event_base;

#define TG_MAX_BUCKETS TG_MAX_LIMITS_PER_TENANT

/* One bucket a request is charged against. */
struct tg_bucket_ref {
    const struct tg_limit *limit; /* (ref) into the request's config */
    int64_t cost_u;               /* micro-units */
};

/* What paid for an allowed request. */
enum tg_paid_by { TG_PAID_NONE, TG_PAID_RATE_LIMIT, TG_PAID_CREDITS };

/* The credits side of a check (mode TG_CREDITS_OFF: none; the rest is then unused). */
struct tg_credit_req {
    enum tg_credit_mode mode;
    bool enabled;           /* credits are on in the config: replies name what paid */
    int64_t price;          /* micro-credits the estimate costs */
    int64_t actual;         /* set by the caller before settle: what the actual cost costs */
    int hold_ttl_ms;        /* an unsettled hold is refunded after this */
    const char *request_id; /* (ref) */
    char hold_id[TG_HOLD_ID_LEN];
    enum tg_paid_by paid_by; /* set by the caller from the check's result before settle */
};

/* What one check asks for. */
struct tg_limit_req {
    const char *tenant; /* (ref) */
    bool fallback;      /* set by the caller from the check's result before settle */
    bool background;    /* a background request: it may not take a limit's reserve */
    size_t n;
    struct tg_bucket_ref b[TG_MAX_BUCKETS];
    struct tg_credit_req credit;
};

enum tg_limit_status {
    TG_LIMIT_ALLOWED = 0,
    TG_LIMIT_DENIED,    /* some bucket has not enough: 429 */
    TG_LIMIT_TOO_LARGE, /* cost exceeds a bucket's capacity: never passes (400-class) */
    TG_LIMIT_ERROR,     /* backend unreachable and on_redis_error: deny: 503 */
    TG_LIMIT_NO_CREDIT, /* the balance does not cover the price: 429 insufficient_quota */
};

/* Per bucket, after the check (whether allowed or not). */
struct tg_bucket_state {
    int64_t limit_u;     /* capacity */
    int64_t remaining_u; /* level after this check (never below 0 in replies) */
    int64_t reset_ms;    /* time until full */
};

struct tg_limit_result {
    enum tg_limit_status status;
    int denied;       /* index into req.b of the bucket that denied, else -1 */
    int64_t retry_ms; /* for a denial: time until the request could pass */
    bool fallback;    /* judged by the local limiter because Redis failed */
    size_t n;
    struct tg_bucket_state b[TG_MAX_BUCKETS];
    /* credits (req.credit.mode != OFF) */
    enum tg_paid_by paid_by; /* ALLOWED: the buckets or the balance */
    bool credits_known;      /* the balance below was read */
    int64_t balance;         /* micro-credits left after this check */
    int64_t held;            /* micro-credits this check held (0: none) */
    int64_t ledger_seq;      /* seq of the hold's ledger event (0: none) */
};

/* Called once per check, possibly before tg_limiter_check returns. */
typedef void (*tg_limiter_cb)(void *arg, const struct tg_limit_result *res);

struct tg_limiter;

struct tg_limiter_ops {
    const char *name; /* "local", "redis" */
    /* Returns 0 and calls `cb` exactly once (maybe before returning), unless
     * the check is cancelled first. `req` is copied; what it points to must
     * stay valid until the callback or the cancel. Called through
     * tg_limiter_check only: req has at least one bucket and no cost above a
     * capacity. */
    int (*check)(struct tg_limiter *l, const struct tg_limit_req *req, tg_limiter_cb cb, void *arg);
    /* delta_u[i] = actual − estimate for req->b[i]; positive charges, negative refunds. */
    void (*settle)(struct tg_limiter *l, const struct tg_limit_req *req, const int64_t *delta_u);
    /* Cancels a pending check: its callback will not be called. */
    void (*cancel)(struct tg_limiter *l, void *arg);
    bool (*ready)(struct tg_limiter *l); /* backend reachable (or in its fallback) */
    void (*destroy)(struct tg_limiter *l);
    /* For backends that work on timers (a lease's periodic sync): when set,
     * the owning worker calls it every tick_ms of the instance on its loop. */
    void (*tick)(struct tg_limiter *l);
};

struct tg_limiter {
    const struct tg_limiter_ops *ops;
    int tick_ms; /* the period of ops->tick; 0: no tick */
};

/* ---- the backends ---- */

/* What a worker's limiter is made from. */
struct tg_limiter_env {
    struct event_base *base;     /* the worker's loop */
    const struct tg_config *cfg; /* the config at start-up */
    struct tg_limiter *local;    /* (ref) the process-wide local limiter */
    struct tg_limiter *fallback; /* (ref) answers when a remote backend fails */
};

/* One backend: an entry in the table, chosen by limiter.backend. */
struct tg_limiter_backend_def {
    enum tg_limiter_backend backend;
    const char *name; /* as in the config and the metrics' backend label */
    /* true: every worker shares env->local, never destroyed by a worker;
     * false: create makes one per worker, on that worker's loop. */
    bool shared;
    struct tg_limiter *(*create)(const struct tg_limiter_env *env);
};

/* The table entry for `backend` (never NULL for a value config.h names). */
const struct tg_limiter_backend_def *tg_limiter_backend_def(enum tg_limiter_backend backend);

/* A worker's limiter for its config: the shared one (*own = false) or a new
 * one it owns and destroys (*own = true). NULL with `err` set on failure. */
struct tg_limiter *tg_limiter_for_worker(const struct tg_limiter_env *env, bool *own,
                                         char err[TG_ERR_LEN]) TG_WUR;

/* Pure token-bucket math shared by the local backend and tests: the C twin of
 * src/limiter/lua/bucket.lua, operation for operation. */
struct tg_bucket {
    int64_t level_u; /* may be negative (debt) */
    int64_t updated_ms;
};

/* A bucket never seen (or whose Redis key expired): full at any time. */
#define TG_BUCKET_FULL ((struct tg_bucket){INT64_MAX, 0})

/* One bucket's numbers for one call, exactly as they are passed to the Lua
 * scripts: capacity and cost in micro-units, refill `rate` units per `per_ms`. */
struct tg_bucket_param {
    int64_t cap_u;
    double rate;
    int64_t per_ms;
    int64_t cost_u; /* cost of a check; for a settle, the delta (actual − estimate) */
    int64_t floor_u; /* a check passes only if level − cost stays at or above this: the
                      * limit's reserve for a background request, else 0 */
};

/* Capacity of a limit in micro-units: burst (or rate when burst is unset) × 1e6. */
int64_t tg_bucket_capacity_u(const struct tg_limit *l);
/* Fills `p` for limit `l` with `divisor` (>= 1) dividing rate and capacity
 * (limiter.expected_gateways in fallback) and the given cost or delta; floor_u 0. */
void tg_bucket_param_init(struct tg_bucket_param *p, const struct tg_limit *l, int divisor,
                          int64_t cost_u);
/* The parameters of every bucket of a check: as tg_bucket_param_init with each bucket's
 * cost, and for a background request each limit's reserve (reserve × capacity) as floor. */
void tg_bucket_params(const struct tg_limit_req *req, int divisor, struct tg_bucket_param *p);
/* Whether some bucket of a background request has a reserve (it is then judged where the
 * reserve is known: never on a lease). */
bool tg_limiter_reserve_applies(const struct tg_limit_req *req);
/* Level after refilling from b->updated_ms to now_ms (now earlier than updated
 * counts as no time passed), capped at capacity. */
int64_t tg_bucket_refill(const struct tg_bucket *b, int64_t now_ms, double rate, int64_t per_ms,
                         int64_t cap_u);
/* Milliseconds until `level_u` reaches `target_u` at this rate (0 if already):
 * the least whole ms after which tg_bucket_refill has added enough. */
int64_t tg_bucket_time_to(int64_t level_u, int64_t target_u, double rate, int64_t per_ms);
/* The all-or-nothing check over n buckets, the C twin of src/limiter/lua/bucket.lua:
 * refills every *b[i] to now_ms into level_u[i]; if every level >= its cost + floor,
 * charges them all (level_u[i] and *b[i] become level − cost, updated now_ms)
 * and returns -1; otherwise leaves every *b[i] untouched and returns the index
 * of the first bucket whose level is below its cost. */
int tg_bucket_check(struct tg_bucket *const *b, const struct tg_bucket_param *p, size_t n,
                    int64_t now_ms, int64_t *level_u);
/* Settles one bucket, the C twin of src/limiter/lua/settle.lua: level = min(cap,
 * refill − p->cost_u) (a charge may leave debt), updated = now_ms. Returns the level. */
int64_t tg_bucket_settle(struct tg_bucket *b, const struct tg_bucket_param *p, int64_t now_ms);
/* Fills `res` from the levels after a check (charged when denied < 0, refilled
 * otherwise): status, denied, per bucket limit/remaining (clamped at 0)/time to
 * full, and for a denial retry_ms = the longest wait of any bucket below its cost. */
void tg_limiter_result_fill(const struct tg_bucket_param *p, const int64_t *level_u, size_t n,
                            int denied, struct tg_limit_result *res);
/* If some bucket's cost exceeds its capacity, fills `res` as TG_LIMIT_TOO_LARGE
 * (denied = the first such bucket; every b[i].limit_u set, nothing else read)
 * and returns true; returns false otherwise. Backends call it before touching
 * any state. */
bool tg_limiter_too_large(const struct tg_limit_req *req, struct tg_limit_result *res);

/* The process-wide in-process limiter (src/limiter/local.c); buckets are keyed by
 * tenant and limit name so they survive config reloads. `divisor` >= 1 divides
 * every rate and burst (fallback for Redis with expected_gateways). Thread-safe. */
struct tg_limiter *tg_limiter_local_create(int divisor) TG_WUR;

/* The Redis limiter of one worker (src/limiter/redis.c) on that worker's loop.
 * `fallback` (ref) answers when Redis fails and on_redis_error is allow. */
struct tg_limiter *tg_limiter_redis_create(struct event_base *base, const struct tg_config *cfg,
                                           struct tg_limiter *fallback) TG_WUR;
/* Tests only: every later script call of this Redis limiter passes `now_ms` as
 * a fixed clock (the extra last ARGV) instead of the server's TIME; a negative
 * value goes back to TIME. Production never calls it. No-op on other backends. */
void tg_limiter_redis_set_clock(struct tg_limiter *l, int64_t now_ms);

/* Fills `req` with every bucket of `tenant` that applies to a request of this
 * cost and model: requests limits always; tokens/video limits when their cost
 * is > 0; limits with `models` only for a listed model. */
void tg_limiter_plan(const struct tg_tenant *tenant, const struct tg_cost *cost, const char *model,
                     struct tg_limit_req *req);

/* Appends the rate-limit headers of a checked request to `out` as
 * "Name: value\r\n" lines: x-ratelimit-{limit,remaining,reset}-{requests,tokens,
 * video-seconds} for the tightest bucket of each unit, RateLimit-Policy and
 * RateLimit (IETF draft), and for a denial Retry-After (whole seconds, rounded
 * up) and retry-after-ms. Nothing for TOO_LARGE and ERROR (no bucket was read).
 * Returns the length written (truncated at cap-1, NUL terminated). */
size_t tg_limiter_format_headers(const struct tg_limit_req *req, const struct tg_limit_result *res,
                                 char *out, size_t cap);

/* Writes the OpenAI-shaped error body for a DENIED or TOO_LARGE result, e.g.
 * {"error":{"message":"Rate limit reached for tokens per minute (tpm) for tenant
 * acme: limit 200000, remaining 120, requested 4096. Please try again in
 * 1.574s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}
 * (TOO_LARGE: code "limit_exceeds_capacity", type "invalid_request_error";
 * ERROR: code "rate_limiter_unavailable", type "server_error"; ALLOWED: "").
 * Returns the length written (truncated at cap-1, NUL terminated). */
size_t tg_limiter_format_error(const struct tg_limit_req *req, const struct tg_limit_result *res,
                               char *out, size_t cap);

/* Formats a duration as OpenAI does: "120ms", "1s", "1.5s", "6m0s", "1h2m3s". */
size_t tg_limiter_format_duration(int64_t ms, char *out, size_t cap);

/* Counts a Redis-backend check in tollgate_limiter_decisions_total: decided on this
 * gateway's lease, or by a script call. Per thread, no lookup after the first. */
void tg_limiter_count_decision(bool on_lease);

/* Counts a credit tenant's check in tollgate_credit_decisions_total by its outcome (every
 * backend calls it once per such check). */
void tg_limiter_count_credit(const char *tenant, const struct tg_limit_result *res);

/* Checks a request: a cost above some bucket's capacity (TOO_LARGE) and a
 * request with no buckets (ALLOWED) are answered here, for every backend;
 * the rest goes to the backend. The callback may run before this returns. */
int tg_limiter_check(struct tg_limiter *l, const struct tg_limit_req *req, tg_limiter_cb cb,
                     void *arg) TG_WUR;

static inline void tg_limiter_settle(struct tg_limiter *l, const struct tg_limit_req *req,
                                     const int64_t *delta_u)
{
    l->ops->settle(l, req, delta_u);
}

static inline void tg_limiter_cancel(struct tg_limiter *l, void *arg)
{
    l->ops->cancel(l, arg);
}

static inline bool tg_limiter_ready(struct tg_limiter *l)
{
    return l->ops->ready(l);
}

static inline const char *tg_limiter_name(const struct tg_limiter *l)
{
    return l->ops->name;
}

/* The period of the backend's tick in ms, or 0 when it has none. */
static inline int tg_limiter_tick_ms(const struct tg_limiter *l)
{
    return l->ops->tick ? l->tick_ms : 0;
}

static inline void tg_limiter_tick(struct tg_limiter *l)
{
    l->ops->tick(l);
}

static inline void tg_limiter_destroy(struct tg_limiter *l)
{
    if (l) l->ops->destroy(l);
}

#endif
