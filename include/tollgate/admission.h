/* Admission: the step between the limiter and forwarding that may hold a request back — a
 * concurrency slot of each of its tenant's `unit: concurrent` limits — and lets it go at its
 * end. A request the limiter allowed acquires admission before it is forwarded and releases
 * it exactly once when it finishes, however it ends (completion, client gone, upstream
 * error or timeout).
 *
 * Slots: with the local limiter, counters in this process; with Redis, one sorted set per
 * tenant and limit of the slot ids in flight across all gateways, each with an expiry that
 * the holding gateway refreshes while the request lives (limiter.slot_ttl_ms bounds how long
 * a crashed gateway's slots stay taken). A request over a limit waits, when its route allows
 * (routes[].max_wait_ms; tried again every few ms), or is refused. */
#ifndef TOLLGATE_ADMISSION_H
#define TOLLGATE_ADMISSION_H

#include "tollgate/common.h"
#include "tollgate/config.h"

struct event_base;
struct slot_call;

enum tg_admit_status {
    TG_ADMIT_OK = 0,  /* forward it */
    TG_ADMIT_BUSY,    /* no slot and no room to wait: 429 */
    TG_ADMIT_TIMEOUT, /* waited as long as allowed: 429 */
    TG_ADMIT_ERROR,   /* the slots' Redis is unreachable and on_redis_error is deny: 503 */
};

/* Called once per acquire, unless cancelled first; possibly before
 * tg_admission_acquire returns. */
typedef void (*tg_admit_cb)(void *arg, enum tg_admit_status status);

struct tg_admission;

/* One request's hold on admission. Zeroed by tg_admission_acquire. */
struct tg_admit_ticket {
    const struct tg_tenant *tenant; /* (ref) */
    bool waiting;                   /* acquired, not yet answered */
    bool held;                      /* answered TG_ADMIT_OK, not yet released */
    /* slots */
    struct tg_admission *a;
    struct tg_admit_ticket *prev, *next; /* a's waiting or holding list */
    bool listed, asking;                 /* in a list; a Redis call under way */
    bool slots;                          /* holds slots (to release) */
    char slot_id[33];
    struct slot_call *call; /* the Redis call under way for it */
    int64_t deadline_ms; /* a waiter gives up then */
    int64_t next_try_ms;
    tg_admit_cb cb;
    void *arg;
};

/* One worker's admission state. Zero-initialised it admits everything at once (no slots);
 * tg_admission_init gives it the config's slot backend. */
struct tg_admission {
    int64_t held;     /* tickets held now */
    uint64_t granted; /* tickets answered TG_ADMIT_OK since creation */
    struct slot_backend *sb; /* NULL: no slots (tests) */
};

/* Sets `a` up on the worker's loop for `cfg` (the Redis connection of the slots, with the
 * Redis limiter). Returns 0, or -1 with err set. */
int tg_admission_init(struct tg_admission *a, struct event_base *base, const struct tg_config *cfg,
                      char err[TG_ERR_LEN]) TG_WUR;
/* False while the slots' Redis connection (made when some tenant has a concurrency limit)
 * is down and on_redis_error is deny: /readyz says not ready. Any thread may ask. */
bool tg_admission_ready(const struct tg_admission *a);
/* Releases what is held (best effort) and frees the backend. */
void tg_admission_deinit(struct tg_admission *a);

/* Asks for admission of a request of `tenant` on `route`: a slot of each of the tenant's
 * concurrency limits, all or none. Calls `cb` exactly once, unless tg_admission_cancel
 * comes first. */
void tg_admission_acquire(struct tg_admission *a, struct tg_admit_ticket *t,
                          const struct tg_tenant *tenant, const struct tg_route *route,
                          tg_admit_cb cb, void *arg);

/* Withdraws a ticket still waiting: its callback will not be called. */
void tg_admission_cancel(struct tg_admission *a, struct tg_admit_ticket *t);

/* Lets go of a held ticket (its request finished); a ticket not held is
 * ignored, so the end of a request may call it whatever happened before. */
void tg_admission_release(struct tg_admission *a, struct tg_admit_ticket *t);

#endif
