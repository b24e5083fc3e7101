/* The in-process limiter: buckets in a mutex-striped hash table keyed by tenant and limit name. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/limiter.h"

#define STRIPES 64 /* power of two */
#define STRIPE_MIN_SLOTS 16

/* One bucket; key = tenant '\0' limit name. */
struct entry {
    struct entry *next;
    uint64_t hash;
    struct tg_bucket b;
    size_t klen;
    char key[];
};

struct stripe {
    pthread_mutex_t mu;
    struct entry **slots;
    size_t cap, n; /* cap: power of two */
} __attribute__((aligned(64)));

struct local {
    struct tg_limiter base;
    int divisor;
    struct stripe s[STRIPES];
};

static uint64_t key_hash(const char *tenant, size_t tlen, const char *name, size_t nlen)
{
    uint64_t h = tg_fnv1a(tg_fnv1a(TG_FNV_SEED, tenant, tlen), "", 1); /* a NUL between */
    h = tg_fnv1a(h, name, nlen);
    return h ^ (h >> 29);
}

static unsigned stripe_of(uint64_t hash)
{
    return (unsigned)(hash >> 58) & (STRIPES - 1);
}

static bool grow(struct stripe *s)
{
    size_t ncap = s->cap ? s->cap * 2 : STRIPE_MIN_SLOTS;
    struct entry **slots = calloc(ncap, sizeof(*slots));
    if (!slots) return false;
    for (size_t i = 0; i < s->cap; i++) {
        for (struct entry *e = s->slots[i], *next; e; e = next) {
            next = e->next;
            e->next = slots[e->hash & (ncap - 1)];
            slots[e->hash & (ncap - 1)] = e;
        }
    }
    free(s->slots);
    s->slots = slots;
    s->cap = ncap;
    return true;
}

/* The bucket of tenant/name in stripe `s` (locked), created full if new; NULL on OOM. */
static struct tg_bucket *lookup(struct stripe *s, uint64_t hash, const char *tenant, size_t tlen,
                                const char *name, size_t nlen)
{
    size_t klen = tlen + 1 + nlen;
    if (s->cap) {
        for (struct entry *e = s->slots[hash & (s->cap - 1)]; e; e = e->next)
            if (e->hash == hash && e->klen == klen && memcmp(e->key, tenant, tlen) == 0 &&
                memcmp(e->key + tlen + 1, name, nlen) == 0)
                return &e->b;
    }
    if ((s->n + 1) * 4 > s->cap * 3 && !grow(s)) return NULL;
    struct entry *e = malloc(sizeof(*e) + klen);
    if (!e) return NULL;
    e->hash = hash;
    e->b = TG_BUCKET_FULL;
    e->klen = klen;
    memcpy(e->key, tenant, tlen);
    e->key[tlen] = '\0';
    memcpy(e->key + tlen + 1, name, nlen);
    e->next = s->slots[hash & (s->cap - 1)];
    s->slots[hash & (s->cap - 1)] = e;
    s->n++;
    return &e->b;
}

/* The buckets of one request, with their stripes locked. */
struct locked {
    unsigned stripes[TG_MAX_BUCKETS];
    size_t nstripes;
    struct tg_bucket *b[TG_MAX_BUCKETS];
};

static void unlock_all(struct local *lc, struct locked *k)
{
    for (size_t i = k->nstripes; i-- > 0;)
        pthread_mutex_unlock(&lc->s[k->stripes[i]].mu);
}

/* Locks the stripes of every bucket of `req` in ascending order (no deadlock)
 * and finds the buckets. Returns false (nothing locked) when out of memory. */
static bool lock_buckets(struct local *lc, const struct tg_limit_req *req, struct locked *k)
{
    uint64_t hash[TG_MAX_BUCKETS];
    size_t nlen[TG_MAX_BUCKETS];
    size_t tlen = strlen(req->tenant);
    k->nstripes = 0;
    for (size_t i = 0; i < req->n; i++) {
        nlen[i] = strlen(req->b[i].limit->name);
        hash[i] = key_hash(req->tenant, tlen, req->b[i].limit->name, nlen[i]);
        unsigned st = stripe_of(hash[i]);
        size_t j = k->nstripes;
        while (j > 0 && k->stripes[j - 1] > st)
            j--;
        if (j > 0 && k->stripes[j - 1] == st) continue;
        memmove(&k->stripes[j + 1], &k->stripes[j], (k->nstripes - j) * sizeof(unsigned));
        k->stripes[j] = st;
        k->nstripes++;
    }
    for (size_t i = 0; i < k->nstripes; i++)
        pthread_mutex_lock(&lc->s[k->stripes[i]].mu);
    for (size_t i = 0; i < req->n; i++) {
        k->b[i] = lookup(&lc->s[stripe_of(hash[i])], hash[i], req->tenant, tlen,
                         req->b[i].limit->name, nlen[i]);
        if (!k->b[i]) {
            unlock_all(lc, k);
            return false;
        }
    }
    return true;
}

/* A tenant that pays with credits: the buckets and the balance in one decision, the
 * buckets' stripes locked across both (the store has a lock of its own, always taken after
 * them). Overflow: the buckets decide, and what they would deny the balance pays (the
 * buckets untouched). Prepaid: the buckets must allow, and the balance pays. */
static void local_check_credit(struct local *lc, const struct tg_limit_req *req,
                               struct tg_limit_result *res)
{
    struct tg_ledger_store *st = tg_ledger_store_default();
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    int64_t level[TG_MAX_BUCKETS];
    struct locked k;
    tg_bucket_params(req, lc->divisor, p);
    if (!st || !lock_buckets(lc, req, &k)) {
        *res = (struct tg_limit_result){.status = TG_LIMIT_ERROR, .denied = -1};
        return;
    }
    int64_t now = tg_now_mono_ms();
    /* The buckets' answer on copies first: charged only once the whole answer is known. */
    struct tg_bucket copy[TG_MAX_BUCKETS], *cp[TG_MAX_BUCKETS];
    for (size_t i = 0; i < req->n; i++) {
        copy[i] = *k.b[i];
        cp[i] = &copy[i];
    }
    int denied = tg_bucket_check(cp, p, req->n, now, level);
    bool overflow = req->credit.mode == TG_CREDITS_OVERFLOW;
    struct tg_ledger_event ev = {0};
    int held = 0;
    if (overflow && denied < 0) {
        for (size_t i = 0; i < req->n; i++)
            *k.b[i] = copy[i];
        tg_limiter_result_fill(p, level, req->n, -1, res);
        res->paid_by = TG_PAID_RATE_LIMIT;
        unlock_all(lc, &k);
        int64_t held_now, seq;
        res->credits_known = true;
        tg_ledger_store_get(st, req->tenant, &res->balance, &held_now, &seq);
        return;
    }
    if (!overflow && denied >= 0) {
        unlock_all(lc, &k);
        tg_limiter_result_fill(p, level, req->n, denied, res);
        int64_t held_now, seq;
        res->credits_known = true;
        tg_ledger_store_get(st, req->tenant, &res->balance, &held_now, &seq);
        return;
    }
    held = tg_ledger_store_hold(st, req->tenant, req->credit.hold_id, req->credit.request_id,
                                req->credit.price, &ev);
    if (held == 1 && !overflow)
        for (size_t i = 0; i < req->n; i++)
            *k.b[i] = copy[i];
    unlock_all(lc, &k);
    if (held < 0) {
        *res = (struct tg_limit_result){.status = TG_LIMIT_ERROR, .denied = -1};
        return;
    }
    /* Overflow got here denied: its levels are the buckets' as they are. Prepaid's were
     * charged on the copies: without the hold, nothing was charged. */
    if (!overflow && held != 1)
        for (size_t i = 0; i < req->n; i++)
            level[i] += p[i].cost_u;
    tg_limiter_result_fill(p, level, req->n, -1, res);
    res->status = held == 1 ? TG_LIMIT_ALLOWED : TG_LIMIT_NO_CREDIT;
    res->paid_by = held == 1 ? TG_PAID_CREDITS : TG_PAID_NONE;
    res->credits_known = true;
    res->balance = ev.balance;
    res->held = held == 1 ? req->credit.price : 0;
    res->ledger_seq = ev.seq;
}

static int local_check(struct tg_limiter *l, const struct tg_limit_req *req, tg_limiter_cb cb,
                       void *arg)
{
    struct local *lc = (struct local *)l;
    if (req->credit.mode != TG_CREDITS_OFF) {
        struct tg_limit_result res;
        local_check_credit(lc, req, &res);
        tg_limiter_count_credit(req->tenant, &res);
        cb(arg, &res);
        return 0;
    }
    struct tg_limit_result res;
    struct tg_bucket_param p[TG_MAX_BUCKETS];
    int64_t level[TG_MAX_BUCKETS];
    struct locked k;
    tg_bucket_params(req, lc->divisor, p);
    if (lock_buckets(lc, req, &k)) {
        int denied = tg_bucket_check(k.b, p, req->n, tg_now_mono_ms(), level);
        unlock_all(lc, &k);
        tg_limiter_result_fill(p, level, req->n, denied, &res);
    } else {
        res = (struct tg_limit_result){.status = TG_LIMIT_ERROR, .denied = -1};
    }
    cb(arg, &res);
    return 0;
}

static void local_settle(struct tg_limiter *l, const struct tg_limit_req *req,
                         const int64_t *delta_u)
{
    struct local *lc = (struct local *)l;
    struct locked k;
    if (req->credit.mode != TG_CREDITS_OFF && req->credit.paid_by == TG_PAID_CREDITS) {
        struct tg_ledger_store *st = tg_ledger_store_default();
        if (st)
            tg_ledger_store_settle(st, req->tenant, req->credit.hold_id, req->credit.request_id,
                                   req->credit.actual);
    }
    if (!lock_buckets(lc, req, &k)) return;
    int64_t now = tg_now_mono_ms();
    for (size_t i = 0; i < req->n; i++) {
        if (delta_u[i] == 0) continue;
        struct tg_bucket_param p;
        tg_bucket_param_init(&p, req->b[i].limit, lc->divisor, delta_u[i]);
        tg_bucket_settle(k.b[i], &p, now);
    }
    unlock_all(lc, &k);
}

static void local_cancel(struct tg_limiter *l, void *arg)
{
    (void)l;
    (void)arg;
}

static bool local_ready(struct tg_limiter *l)
{
    (void)l;
    return true;
}

static void local_destroy(struct tg_limiter *l)
{
    struct local *lc = (struct local *)l;
    for (size_t i = 0; i < STRIPES; i++) {
        struct stripe *s = &lc->s[i];
        for (size_t j = 0; j < s->cap; j++) {
            for (struct entry *e = s->slots[j], *next; e; e = next) {
                next = e->next;
                free(e);
            }
        }
        free(s->slots);
        pthread_mutex_destroy(&s->mu);
    }
    free(lc);
}

static const struct tg_limiter_ops local_ops = {
    .name = "local",
    .check = local_check,
    .settle = local_settle,
    .cancel = local_cancel,
    .ready = local_ready,
    .destroy = local_destroy,
};

struct tg_limiter *tg_limiter_local_create(int divisor)
{
    struct local *lc = aligned_alloc(64, sizeof(*lc));
    if (!lc) return NULL;
    memset(lc, 0, sizeof(*lc));
    lc->base.ops = &local_ops;
    lc->divisor = divisor < 1 ? 1 : divisor;
    for (size_t i = 0; i < STRIPES; i++)
        pthread_mutex_init(&lc->s[i].mu, NULL);
    return &lc->base;
}
