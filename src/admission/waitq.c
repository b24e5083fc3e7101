/* The wait queue of one worker: per tenant, interactive waiters before background ones, each
 * class in arrival order, one timer per tenant set for when its head's bucket has room. */
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "tollgate/metrics.h"
#include "tollgate/waitq.h"

#define NCLASS 2

struct tg_waitq_tenant {
    struct tg_waitq_tenant *next;
    struct tg_waitq *q;
    struct tg_waiter *head[NCLASS], *tail[NCLASS];
    int n;               /* waiters in the lists */
    bool trying;         /* a woken head is being judged: the next waits for its answer */
    struct event *timer; /* wakes the head */
    char name[];
};

struct tg_waitq {
    struct event_base *base;
    struct tg_waitq_tenant *tenants;
    int total, max_total;
    int depth[NCLASS];
};

static const char *const class_name[NCLASS] = {"interactive", "background"};

static void count_depth(struct tg_waitq *q, enum tg_priority p, int d)
{
    q->depth[p] += d;
    tg_metrics_add(TG_M_WAIT_QUEUE, (const char *const[]){class_name[p]}, d);
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

static struct tg_waitq_tenant *find(const struct tg_waitq *q, const char *tenant)
{
    for (struct tg_waitq_tenant *t = q->tenants; t; t = t->next)
        if (strcmp(t->name, tenant) == 0) return t;
    return NULL;
}

static void drop_if_empty(struct tg_waitq_tenant *t)
{
    if (t->n > 0 || t->trying) return;
    struct tg_waitq *q = t->q;
    for (struct tg_waitq_tenant **pp = &q->tenants; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    event_free(t->timer);
    free(t);
}

static void push(struct tg_waitq_tenant *t, struct tg_waiter *w, bool front)
{
    int c = w->prio;
    w->q = t;
    w->prev = w->next = NULL;
    if (front) {
        w->next = t->head[c];
        if (t->head[c]) t->head[c]->prev = w;
        t->head[c] = w;
        if (!t->tail[c]) t->tail[c] = w;
    } else {
        w->prev = t->tail[c];
        if (t->tail[c]) t->tail[c]->next = w;
        t->tail[c] = w;
        if (!t->head[c]) t->head[c] = w;
    }
    t->n++;
    count_depth(t->q, w->prio, 1);
}

static void unlink_waiter(struct tg_waitq_tenant *t, struct tg_waiter *w)
{
    int c = w->prio;
    if (w->prev)
        w->prev->next = w->next;
    else
        t->head[c] = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        t->tail[c] = w->prev;
    w->prev = w->next = NULL;
    t->n--;
    count_depth(t->q, w->prio, -1);
}

static void arm(struct tg_waitq_tenant *t, int64_t ms)
{
    if (ms < 0) ms = 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t->timer, &tv);
}

/* Wakes the head (interactive first): it is judged again and answers through done(). */
static void wake_head(struct tg_waitq_tenant *t)
{
    if (t->trying) return;
    struct tg_waiter *w = t->head[TG_PRIO_INTERACTIVE] ? t->head[TG_PRIO_INTERACTIVE]
                                                       : t->head[TG_PRIO_BACKGROUND];
    if (!w) {
        drop_if_empty(t);
        return;
    }
    unlink_waiter(t, w);
    w->trying = true;
    t->trying = true;
    w->wake(w, TG_WAKE_TRY); /* may call done() or leave() before it returns */
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    wake_head(arg);
}

struct tg_waitq *tg_waitq_create(struct event_base *base, int max_total)
{
    struct tg_waitq *q = calloc(1, sizeof(*q));
    if (!q) return NULL;
    q->base = base;
    q->max_total = max_total;
    return q;
}

void tg_waitq_set_max_total(struct tg_waitq *q, int max_total)
{
    q->max_total = max_total;
}

void tg_waitq_destroy(struct tg_waitq *q)
{
    if (!q) return;
    while (q->tenants) {
        struct tg_waitq_tenant *t = q->tenants;
        q->tenants = t->next;
        for (int c = 0; c < NCLASS; c++)
            for (struct tg_waiter *w = t->head[c]; w; w = w->next)
                w->q = NULL;
        event_free(t->timer);
        free(t);
    }
    for (int c = 0; c < NCLASS; c++)
        if (q->depth[c]) tg_metrics_add(TG_M_WAIT_QUEUE, (const char *const[]){class_name[c]},
                                        -q->depth[c]);
    free(q);
}

bool tg_waitq_busy(const struct tg_waitq *q, const char *tenant, enum tg_priority prio)
{
    const struct tg_waitq_tenant *t = find(q, tenant);
    if (!t) return false;
    if (t->head[TG_PRIO_INTERACTIVE]) return true;
    return prio == TG_PRIO_BACKGROUND && t->head[TG_PRIO_BACKGROUND] != NULL;
}

int tg_waitq_enter(struct tg_waitq *q, struct tg_waiter *w, const char *tenant,
                   enum tg_priority prio, int64_t retry_ms, int max_queue)
{
    struct tg_waitq_tenant *t = find(q, tenant);
    if ((t && t->n >= max_queue) || max_queue <= 0 || q->total >= q->max_total) return -1;
    if (!t) {
        size_t n = strlen(tenant) + 1;
        t = calloc(1, sizeof(*t) + n);
        if (!t) return -1;
        memcpy(t->name, tenant, n);
        t->q = q;
        t->timer = evtimer_new(q->base, on_timer, t);
        if (!t->timer) {
            free(t);
            return -1;
        }
        t->next = q->tenants;
        q->tenants = t;
    }
    w->prio = prio;
    w->trying = false;
    w->since_ms = tg_now_mono_ms();
    bool was_empty = t->n == 0 && !t->trying;
    push(t, w, false);
    q->total++;
    /* The queue sleeps until its head's time; a new waiter never delays it, and an empty
     * queue sleeps until this one's. */
    if (was_empty) arm(t, retry_ms);
    return 0;
}

static void observe_wait(const struct tg_waiter *w)
{
    double s = (double)(tg_now_mono_ms() - w->since_ms) / 1000.0;
    tg_metrics_observe(TG_M_WAIT_SECONDS, (const char *const[]){class_name[w->prio]}, s);
}

void tg_waitq_done(struct tg_waitq *q, struct tg_waiter *w, bool admitted, int64_t retry_ms)
{
    struct tg_waitq_tenant *t = w->q;
    if (!t || !w->trying) return;
    w->trying = false;
    t->trying = false;
    if (admitted) {
        observe_wait(w);
        w->q = NULL;
        q->total--;
        if (t->n > 0)
            arm(t, 0); /* the next head, at once: the bucket may have room for more */
        else
            drop_if_empty(t);
        return;
    }
    push(t, w, true);
    arm(t, retry_ms);
}

void tg_waitq_leave(struct tg_waitq *q, struct tg_waiter *w)
{
    struct tg_waitq_tenant *t = w->q;
    if (!t) return;
    observe_wait(w);
    if (w->trying) {
        w->trying = false;
        t->trying = false;
        if (t->n > 0) arm(t, 0); /* the head gave up while judged: the next one's turn */
    } else {
        unlink_waiter(t, w);
    }
    w->q = NULL;
    q->total--;
    drop_if_empty(t);
}

void tg_waitq_drain(struct tg_waitq *q)
{
    for (struct tg_waitq_tenant *t = q->tenants, *next; t; t = next) {
        next = t->next;
        for (int c = 0; c < NCLASS; c++) {
            while (t->head[c]) {
                struct tg_waiter *w = t->head[c];
                unlink_waiter(t, w);
                w->q = NULL;
                q->total--;
                w->wake(w, TG_WAKE_DRAIN);
            }
        }
        drop_if_empty(t);
    }
}

int tg_waitq_depth(const struct tg_waitq *q, enum tg_priority prio)
{
    return q->depth[prio];
}
