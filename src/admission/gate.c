/* The upstream gate: a process-wide count of each upstream's requests in flight, and on each
 * worker a queue in front of it, interactive first, asked again every few ms. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "tollgate/gate.h"
#include "tollgate/metrics.h"

#define RETRY_MS 5
#define NCLASS 2

/* ---- the process-wide counters, by upstream name ---- */

struct counter {
    struct counter *next;
    int n;
    char name[];
};

static struct {
    pthread_mutex_t mu;
    struct counter *list;
} counters = {.mu = PTHREAD_MUTEX_INITIALIZER};

static struct counter *counter_of(const char *name)
{
    for (struct counter *c = counters.list; c; c = c->next)
        if (strcmp(c->name, name) == 0) return c;
    size_t n = strlen(name) + 1;
    struct counter *c = calloc(1, sizeof(*c) + n);
    if (!c) return NULL;
    memcpy(c->name, name, n);
    c->next = counters.list;
    counters.list = c;
    return c;
}

static bool take(const char *name, int max)
{
    pthread_mutex_lock(&counters.mu);
    struct counter *c = counter_of(name);
    bool ok = c && c->n < max;
    if (ok) c->n++;
    pthread_mutex_unlock(&counters.mu);
    return ok;
}

static void give(const char *name)
{
    pthread_mutex_lock(&counters.mu);
    struct counter *c = counter_of(name);
    if (c && c->n > 0) c->n--;
    pthread_mutex_unlock(&counters.mu);
}

int tg_gate_inflight(const char *name)
{
    pthread_mutex_lock(&counters.mu);
    struct counter *c = counter_of(name);
    int n = c ? c->n : 0;
    pthread_mutex_unlock(&counters.mu);
    return n;
}

/* ---- a worker's queues ---- */

struct tg_gate {
    struct tg_gate_ticket *head[NCLASS], *tail[NCLASS]; /* every upstream's waiters */
    struct event *timer;
};

static void unlink_ticket(struct tg_gate *g, struct tg_gate_ticket *t)
{
    int c = t->prio;
    if (t->prev)
        t->prev->next = t->next;
    else
        g->head[c] = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        g->tail[c] = t->prev;
    t->prev = t->next = NULL;
    t->waiting = false;
    tg_metrics_add(TG_M_UPSTREAM_QUEUE, (const char *const[]){t->upstream}, -1);
}

static void arm(struct tg_gate *g)
{
    if (evtimer_pending(g->timer, NULL)) return;
    struct timeval tv = {0, RETRY_MS * 1000};
    evtimer_add(g->timer, &tv);
}

/* Interactive waiters first: each class in order; a waiter whose upstream is full waits on,
 * one whose time is up is answered TIMEOUT. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct tg_gate *g = arg;
    int64_t now = tg_now_mono_ms();
    for (int c = 0; c < NCLASS; c++) {
        for (struct tg_gate_ticket *t = g->head[c], *next; t; t = next) {
            next = t->next;
            if (take(t->upstream, t->max)) {
                unlink_ticket(g, t);
                t->held = true;
                t->cb(t->arg, TG_GATE_OK);
            } else if (now >= t->deadline_ms) {
                unlink_ticket(g, t);
                t->cb(t->arg, TG_GATE_TIMEOUT);
            }
        }
    }
    if (g->head[0] || g->head[1]) arm(g);
}

struct tg_gate *tg_gate_create(struct event_base *base)
{
    struct tg_gate *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    g->timer = evtimer_new(base, on_timer, g);
    if (!g->timer) {
        free(g);
        return NULL;
    }
    return g;
}

void tg_gate_destroy(struct tg_gate *g)
{
    if (!g) return;
    for (int c = 0; c < NCLASS; c++)
        while (g->head[c])
            unlink_ticket(g, g->head[c]);
    event_free(g->timer);
    free(g);
}

void tg_gate_enter(struct tg_gate *g, struct tg_gate_ticket *t, const struct tg_upstream *u,
                   enum tg_priority prio, void (*cb)(void *arg, enum tg_gate_status), void *arg)
{
    memset(t, 0, sizeof(*t));
    t->g = g;
    if (u->max_inflight <= 0) {
        cb(arg, TG_GATE_OK);
        return;
    }
    size_t n = strnlen(u->name, sizeof(t->upstream) - 1);
    memcpy(t->upstream, u->name, n);
    t->upstream[n] = '\0';
    t->max = u->max_inflight;
    t->prio = prio;
    t->cb = cb;
    t->arg = arg;
    /* Queued behind waiters of its class or a higher one, else straight in when there is room. */
    bool ahead = g->head[TG_PRIO_INTERACTIVE] || (prio == TG_PRIO_BACKGROUND && g->head[prio]);
    if (!ahead && take(t->upstream, t->max)) {
        t->held = true;
        cb(arg, TG_GATE_OK);
        return;
    }
    t->deadline_ms = tg_now_mono_ms() + u->queue_timeout_ms;
    t->waiting = true;
    int c = prio;
    t->prev = g->tail[c];
    if (g->tail[c]) g->tail[c]->next = t;
    g->tail[c] = t;
    if (!g->head[c]) g->head[c] = t;
    tg_metrics_add(TG_M_UPSTREAM_QUEUE, (const char *const[]){t->upstream}, 1);
    arm(g);
}

void tg_gate_leave(struct tg_gate *g, struct tg_gate_ticket *t)
{
    if (t->waiting) unlink_ticket(g, t);
    if (t->held) {
        t->held = false;
        give(t->upstream);
    }
}
