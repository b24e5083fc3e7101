/* The upstream gate: at most upstreams[].max_inflight requests of one upstream in flight on
 * this gateway (all workers together), with a queue in front on each worker — interactive
 * requests before background ones, each class in arrival order — bounded by the upstream's
 * queue_timeout_ms, after which the request is answered 503 with Retry-After. A waiter asks
 * again every few ms (a place freed on another worker is seen then). */
#ifndef TOLLGATE_GATE_H
#define TOLLGATE_GATE_H

#include "tollgate/common.h"
#include "tollgate/config.h"

struct event_base;
struct tg_gate;

enum tg_gate_status { TG_GATE_OK, TG_GATE_TIMEOUT };

/* One request's place at a gate. Zeroed by tg_gate_enter. */
struct tg_gate_ticket {
    struct tg_gate_ticket *prev, *next;
    struct tg_gate *g;
    char upstream[128]; /* the upstream's name (its counter outlives reloads) */
    int max;
    enum tg_priority prio;
    int64_t deadline_ms;
    bool waiting, held;
    void (*cb)(void *arg, enum tg_gate_status status);
    void *arg;
};

struct tg_gate *tg_gate_create(struct event_base *base) TG_WUR;
void tg_gate_destroy(struct tg_gate *g);

/* Takes a place of upstream `u` for a request of class `prio`: cb(OK) at once when there is
 * room (or the upstream has no max_inflight), else later — OK when a place frees, TIMEOUT
 * after u->queue_timeout_ms. cb may run before this returns. */
void tg_gate_enter(struct tg_gate *g, struct tg_gate_ticket *t, const struct tg_upstream *u,
                   enum tg_priority prio, void (*cb)(void *arg, enum tg_gate_status), void *arg);
/* Gives the place back (the request ended) or withdraws a waiter; no-op otherwise. */
void tg_gate_leave(struct tg_gate *g, struct tg_gate_ticket *t);

/* Requests of upstream `name` in flight on this gateway now (tests, metrics). */
int tg_gate_inflight(const char *name);

#endif
