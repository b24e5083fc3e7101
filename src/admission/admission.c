/* Admission between the limiter and forwarding: a slot of each of the tenant's concurrency
 * limits, counted in this process (local limiter) or in Redis sorted sets with expiring,
 * refreshed entries (Redis limiter); a request over a limit waits (tried again every few ms)
 * when its route allows, else is refused. */
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "tollgate/admission.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/redis.h"
#include "tollgate/usage.h"

extern const char tg_lua_slots[];

#define RETRY_MS 25     /* a waiting request asks again this often */
#define LOCAL_SLOTS 256 /* hash buckets of the in-process counters (power of two) */

/* ---- the in-process counters (local limiter): one table for the process ---- */

struct local_slot {
    struct local_slot *next;
    int n;
    char key[]; /* tenant '\0' limit name */
};

static struct {
    pthread_mutex_t mu;
    struct local_slot *b[LOCAL_SLOTS];
} local_slots = {.mu = PTHREAD_MUTEX_INITIALIZER};

static struct local_slot *local_find(const char *tenant, const char *name)
{
    size_t tl = strlen(tenant), nl = strlen(name);
    uint64_t h = tg_fnv1a(tg_fnv1a(tg_fnv1a(TG_FNV_SEED, tenant, tl), "", 1), name, nl);
    struct local_slot **head = &local_slots.b[h & (LOCAL_SLOTS - 1)];
    for (struct local_slot *s = *head; s; s = s->next)
        if (strcmp(s->key, tenant) == 0 && strcmp(s->key + tl + 1, name) == 0) return s;
    struct local_slot *s = calloc(1, sizeof(*s) + tl + nl + 2);
    if (!s) return NULL;
    memcpy(s->key, tenant, tl + 1);
    memcpy(s->key + tl + 1, name, nl + 1);
    s->next = *head;
    *head = s;
    return s;
}

/* All of the tenant's slots or none. */
static bool local_take(const struct tg_tenant *t)
{
    pthread_mutex_lock(&local_slots.mu);
    struct local_slot *s[TG_MAX_LIMITS_PER_TENANT];
    bool ok = true;
    for (size_t i = 0; i < t->nslots && ok; i++) {
        s[i] = local_find(t->name, t->slots[i].name);
        ok = s[i] && s[i]->n < t->slots[i].max;
    }
    if (ok)
        for (size_t i = 0; i < t->nslots; i++)
            s[i]->n++;
    pthread_mutex_unlock(&local_slots.mu);
    return ok;
}

static void local_give(const struct tg_tenant *t)
{
    pthread_mutex_lock(&local_slots.mu);
    for (size_t i = 0; i < t->nslots; i++) {
        struct local_slot *s = local_find(t->name, t->slots[i].name);
        if (s && s->n > 0) s->n--;
    }
    pthread_mutex_unlock(&local_slots.mu);
}

/* ---- the backend of one worker ---- */

struct slot_backend {
    struct tg_admission *a;
    struct event_base *base;
    bool use_redis;          /* the Redis limiter: slots in Redis */
    struct tg_redis *redis;  /* connected once some tenant has a concurrency limit */
    char ip[64], *password;
    int port, db, timeout_ms;
    char *prefix;
    int ttl_ms;
    bool deny; /* on_redis_error: deny */
    struct tg_admit_ticket *waiting, *holding;
    struct event *retry_ev, *refresh_ev;
};

/* A call to Redis for a ticket; the ticket may be gone by the answer (t = NULL). */
struct slot_call {
    struct slot_backend *sb;
    struct tg_admit_ticket *t;
    const struct tg_tenant *tenant; /* for an acquire answered after a cancel: to give back */
    char slot_id[33];
    bool acquire;
    struct tg_resp cmd;
};

static void list_add(struct tg_admit_ticket **head, struct tg_admit_ticket *t)
{
    t->prev = NULL;
    t->next = *head;
    if (*head) (*head)->prev = t;
    *head = t;
    t->listed = true;
}

static void list_del(struct tg_admit_ticket **head, struct tg_admit_ticket *t)
{
    if (!t->listed) return;
    if (t->prev)
        t->prev->next = t->next;
    else
        *head = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
    t->listed = false;
}

static void count_in_use(const struct tg_tenant *t, double d)
{
    tg_metrics_add(TG_M_SLOTS_IN_USE, (const char *const[]){t->name}, d);
}

static void send_slots(struct slot_backend *sb, const struct tg_tenant *tenant, const char *op,
                       const char *slot_id, struct slot_call *call);

static void granted(struct slot_backend *sb, struct tg_admit_ticket *t, bool slots)
{
    t->waiting = false;
    t->held = true;
    t->slots = slots;
    t->a->held++;
    t->a->granted++;
    if (slots) {
        count_in_use(t->tenant, 1);
        if (sb->use_redis) list_add(&sb->holding, t);
        if (sb->use_redis && !evtimer_pending(sb->refresh_ev, NULL)) {
            int ms = sb->ttl_ms / 3;
            struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
            evtimer_add(sb->refresh_ev, &tv);
        }
    }
    t->cb(t->arg, TG_ADMIT_OK);
}

static void denied(struct slot_backend *sb, struct tg_admit_ticket *t)
{
    int64_t now = tg_now_mono_ms();
    if (now + RETRY_MS <= t->deadline_ms) {
        t->waiting = true;
        t->next_try_ms = now + RETRY_MS;
        list_add(&sb->waiting, t);
        if (!evtimer_pending(sb->retry_ev, NULL)) {
            struct timeval tv = {0, RETRY_MS * 1000};
            evtimer_add(sb->retry_ev, &tv);
        }
        return;
    }
    t->waiting = false;
    t->cb(t->arg, t->deadline_ms > 0 ? TG_ADMIT_TIMEOUT : TG_ADMIT_BUSY);
}

/* The slots' connection, made when the first tenant with a concurrency limit is seen (at
 * start, or after a reload that added one): a gateway without them keeps one connection. */
static bool ensure_redis(struct slot_backend *sb)
{
    if (sb->redis) return true;
    static const char *const scripts[] = {tg_lua_slots};
    struct tg_redis_options o = {
        .host = sb->ip,
        .port = sb->port,
        .password = sb->password,
        .db = sb->db,
        .timeout_ms = sb->timeout_ms,
        .scripts = scripts,
        .nscripts = 1,
        .unavailable_note = sb->deny ? "concurrency slots answered by on_redis_error=deny"
                                     : "concurrency slots answered by on_redis_error=allow",
    };
    struct tg_redis *r = tg_redis_create(sb->base, &o);
    __atomic_store_n(&sb->redis, r, __ATOMIC_RELEASE); /* /readyz reads it from the main thread */
    return r != NULL;
}

static void try_take(struct slot_backend *sb, struct tg_admit_ticket *t)
{
    if (!sb->use_redis) {
        if (local_take(t->tenant))
            granted(sb, t, true);
        else
            denied(sb, t);
        return;
    }
    if (!ensure_redis(sb) || !tg_redis_up(sb->redis)) {
        if (sb->deny) {
            t->waiting = false;
            t->cb(t->arg, TG_ADMIT_ERROR);
        } else {
            granted(sb, t, false); /* on_redis_error: allow: admitted without a slot */
        }
        return;
    }
    struct slot_call *call = calloc(1, sizeof(*call));
    if (!call) {
        t->waiting = false;
        t->cb(t->arg, TG_ADMIT_ERROR);
        return;
    }
    call->t = t;
    call->acquire = true;
    t->call = call;
    t->asking = true;
    t->waiting = true;
    send_slots(sb, t->tenant, "acquire", t->slot_id, call);
}

static void on_slots_reply(void *arg, const redisReply *r)
{
    struct slot_call *call = arg;
    struct slot_backend *sb = call->sb;
    struct tg_admit_ticket *t = call->t;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
              r->element[0]->type == REDIS_REPLY_INTEGER;
    if (r && !ok) tg_metrics_add(TG_M_REDIS_ERRORS, (const char *const[]){"reply"}, 1);
    if (call->acquire) {
        bool got = ok && r->element[0]->integer == 1;
        if (ok && r->element[2]->type == REDIS_REPLY_INTEGER && r->element[2]->integer > 0)
            tg_metrics_add(TG_M_SLOTS_EXPIRED, (const char *const[]){call->tenant->name},
                           (double)r->element[2]->integer);
        if (!t) { /* cancelled while asked: what it got goes back */
            if (got) send_slots(sb, call->tenant, "release", call->slot_id, NULL);
        } else {
            t->asking = false;
            t->call = NULL;
            if (!r && sb->deny) {
                t->waiting = false;
                t->cb(t->arg, TG_ADMIT_ERROR);
            } else if (!r) {
                granted(sb, t, false);
            } else if (got) {
                granted(sb, t, true);
            } else {
                denied(sb, t);
            }
        }
    }
    tg_buf_free(&call->cmd.b);
    free(call);
}

/* EVALSHA slots.lua `op` for the tenant's slot keys. `call` NULL: fire and forget. */
static void send_slots(struct slot_backend *sb, const struct tg_tenant *tenant, const char *op,
                       const char *slot_id, struct slot_call *call)
{
    if (!call) {
        call = calloc(1, sizeof(*call));
        if (!call) return;
    }
    call->sb = sb;
    call->tenant = tenant;
    snprintf(call->slot_id, sizeof(call->slot_id), "%s", slot_id);
    struct tg_resp *b = &call->cmd;
    size_t n = tenant->nslots;
    tg_resp_head(b, '*', 3 + n + 4 + n);
    tg_resp_bulk(b, "EVALSHA", 7);
    tg_resp_bulk(b, tg_redis_sha(sb->redis, 0), 40);
    tg_resp_bulk_int(b, (int64_t)n);
    for (size_t i = 0; i < n; i++)
        tg_resp_tenant_key(b, sb->prefix, tenant->name, "$slots:", tenant->slots[i].name);
    tg_resp_bulk(b, "", 0);
    tg_resp_bulk(b, op, strlen(op));
    tg_resp_bulk(b, call->slot_id, strlen(call->slot_id));
    tg_resp_bulk_int(b, sb->ttl_ms);
    for (size_t i = 0; i < n; i++)
        tg_resp_bulk_int(b, tenant->slots[i].max);
    if (tg_redis_send(sb->redis, b, 0, on_slots_reply, call) != 0) on_slots_reply(call, NULL);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct slot_backend *sb = arg;
    struct tg_admit_ticket *list = sb->waiting;
    sb->waiting = NULL;
    while (list) {
        struct tg_admit_ticket *t = list;
        list = t->next;
        t->prev = t->next = NULL;
        t->listed = false;
        try_take(sb, t);
    }
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
    struct slot_backend *sb = arg;
    for (struct tg_admit_ticket *t = sb->holding; t; t = t->next)
        send_slots(sb, t->tenant, "refresh", t->slot_id, NULL);
    if (sb->holding) {
        int ms = sb->ttl_ms / 3;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(sb->refresh_ev, &tv);
    }
}

/* ---- the interface ---- */

int tg_admission_init(struct tg_admission *a, struct event_base *base, const struct tg_config *cfg,
                      char err[TG_ERR_LEN])
{
    memset(a, 0, sizeof(*a));
    struct slot_backend *sb = calloc(1, sizeof(*sb));
    if (!sb) goto oom;
    sb->a = a;
    sb->ttl_ms = cfg->limiter.slot_ttl_ms > 0 ? cfg->limiter.slot_ttl_ms : TG_DEFAULT_SLOT_TTL_MS;
    sb->deny = cfg->limiter.on_redis_error == TG_REDIS_ERROR_DENY;
    sb->retry_ev = evtimer_new(base, on_retry, sb);
    sb->refresh_ev = evtimer_new(base, on_refresh, sb);
    if (!sb->retry_ev || !sb->refresh_ev) goto oom;
    sb->base = base;
    if (cfg->limiter.backend == TG_LIMITER_REDIS) {
        sb->use_redis = true;
        tg_redis_address(cfg, sb->ip, sizeof(sb->ip), &sb->port);
        sb->db = cfg->limiter.redis.db;
        sb->timeout_ms = cfg->limiter.redis.timeout_ms > 0 ? cfg->limiter.redis.timeout_ms
                                                           : TG_DEFAULT_REDIS_TIMEOUT_MS;
        sb->password = strdup(cfg->limiter.redis.password ? cfg->limiter.redis.password : "");
        sb->prefix = strdup(cfg->limiter.redis.key_prefix ? cfg->limiter.redis.key_prefix
                                                          : TG_DEFAULT_REDIS_KEY_PREFIX);
        if (!sb->prefix || !sb->password) goto oom;
        bool any = false;
        for (size_t i = 0; i < cfg->ntenants && !any; i++)
            any = cfg->tenants[i].nslots > 0;
        if (any && !ensure_redis(sb)) goto oom; /* connected before the first request */
    }
    a->sb = sb;
    return 0;
oom:
    snprintf(err, TG_ERR_LEN, "admission: out of memory");
    a->sb = sb;
    tg_admission_deinit(a);
    return -1;
}

bool tg_admission_ready(const struct tg_admission *a)
{
    const struct slot_backend *sb = a->sb;
    if (!sb || !sb->deny) return true;
    struct tg_redis *r = __atomic_load_n(&sb->redis, __ATOMIC_ACQUIRE);
    return !r || tg_redis_up(r);
}

void tg_admission_deinit(struct tg_admission *a)
{
    struct slot_backend *sb = a->sb;
    if (!sb) return;
    while (sb->holding) { /* give back what is held (best effort: they expire anyway) */
        struct tg_admit_ticket *t = sb->holding;
        list_del(&sb->holding, t);
        if (sb->use_redis && sb->redis) send_slots(sb, t->tenant, "release", t->slot_id, NULL);
    }
    tg_redis_destroy(sb->redis); /* sends them; pending calls answer NULL */
    if (sb->retry_ev) event_free(sb->retry_ev);
    if (sb->refresh_ev) event_free(sb->refresh_ev);
    free(sb->prefix);
    free(sb->password);
    free(sb);
    a->sb = NULL;
}

void tg_admission_acquire(struct tg_admission *a, struct tg_admit_ticket *t,
                          const struct tg_tenant *tenant, const struct tg_route *route,
                          tg_admit_cb cb, void *arg)
{
    memset(t, 0, sizeof(*t));
    t->tenant = tenant;
    t->a = a;
    t->cb = cb;
    t->arg = arg;
    if (!a->sb || tenant->nslots == 0) {
        t->held = true;
        a->held++;
        a->granted++;
        cb(arg, TG_ADMIT_OK);
        return;
    }
    char id[TG_REQUEST_ID_LEN];
    tg_usage_new_id(id); /* 32 hex digits */
    memcpy(t->slot_id, id, sizeof(t->slot_id) - 1);
    t->slot_id[sizeof(t->slot_id) - 1] = '\0';
    t->deadline_ms = route && route->max_wait_ms > 0 ? tg_now_mono_ms() + route->max_wait_ms : 0;
    try_take(a->sb, t);
}

void tg_admission_cancel(struct tg_admission *a, struct tg_admit_ticket *t)
{
    if (!t->waiting) return;
    t->waiting = false;
    if (a->sb) list_del(&a->sb->waiting, t);
    if (t->call) { /* the call's answer finds no ticket: a slot it got is given back */
        t->call->t = NULL;
        t->call = NULL;
        t->asking = false;
    }
}

void tg_admission_release(struct tg_admission *a, struct tg_admit_ticket *t)
{
    if (!t->held) return;
    t->held = false;
    a->held--;
    if (!t->slots || !a->sb) return;
    t->slots = false;
    count_in_use(t->tenant, -1);
    if (a->sb->use_redis) {
        list_del(&a->sb->holding, t);
        if (a->sb->redis) send_slots(a->sb, t->tenant, "release", t->slot_id, NULL);
    } else {
        local_give(t->tenant);
    }
}
