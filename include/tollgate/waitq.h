/* The wait queue: requests a rate limit denied that may wait for room (routes[].max_wait_ms),
 * one queue per tenant on each worker, ordered by class (every interactive waiter before
 * every background one), then by arrival. A queue is woken when its head's bucket will hold
 * enough for it (the denial's retry time, computed from rate and deficit), not by polling:
 * the head is judged again, and when it passes the next head is judged at once. Across
 * gateways each has its own queue and the head's new check decides. */
#ifndef TOLLGATE_WAITQ_H
#define TOLLGATE_WAITQ_H

#include "tollgate/common.h"
#include "tollgate/config.h"

struct event_base;
struct tg_waitq;
struct tg_waitq_tenant;

enum tg_wake {
    TG_WAKE_TRY,   /* the waiter's bucket should have room: judge it again */
    TG_WAKE_DRAIN, /* the gateway is stopping: answer it 503 */
};

/* One request's place. Zeroed before its first tg_waitq_enter; the owner embeds it. */
struct tg_waiter {
    struct tg_waiter *prev, *next;
    struct tg_waitq_tenant *q; /* NULL: not queued */
    enum tg_priority prio;
    bool trying;      /* woken, being judged again (out of the lists) */
    int64_t since_ms; /* when it entered (for the wait-time histogram) */
    void (*wake)(struct tg_waiter *w, enum tg_wake why);
};

/* A worker's queues on its loop; at most `max_total` waiters (server.max_waiting). */
struct tg_waitq *tg_waitq_create(struct event_base *base, int max_total) TG_WUR;
void tg_waitq_destroy(struct tg_waitq *q);
void tg_waitq_set_max_total(struct tg_waitq *q, int max_total);

/* True when a new request of `tenant` with class `prio` should queue behind waiters already
 * there (some waiter of its class or a higher one) rather than be judged first. */
bool tg_waitq_busy(const struct tg_waitq *q, const char *tenant, enum tg_priority prio);

/* Queues `w` for `tenant` (name copied) with its class; the queue is woken `retry_ms` from
 * now unless it already waits for an earlier time. Returns 0, or -1 when the tenant's queue
 * holds `max_queue` or the worker `max_total` waiters (the caller answers 429). */
int tg_waitq_enter(struct tg_waitq *q, struct tg_waiter *w, const char *tenant,
                   enum tg_priority prio, int64_t retry_ms, int max_queue) TG_WUR;
/* A woken waiter judged again: `admitted` — it leaves, and the next head is woken at once;
 * otherwise it goes back to the front of its class and the queue sleeps `retry_ms`. */
void tg_waitq_done(struct tg_waitq *q, struct tg_waiter *w, bool admitted, int64_t retry_ms);
/* A waiter that gives up (its client left, its max_wait_ms passed). No-op when not queued. */
void tg_waitq_leave(struct tg_waitq *q, struct tg_waiter *w);
/* Wakes every waiter with TG_WAKE_DRAIN (SIGTERM). */
void tg_waitq_drain(struct tg_waitq *q);

/* Waiters queued now on this worker, by class (for tests and metrics). */
int tg_waitq_depth(const struct tg_waitq *q, enum tg_priority prio);

#endif
