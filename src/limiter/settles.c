/* The Redis backend's pending settles: one entry per key, deltas summed. */
#include <string.h>
#include "settles.h"

static uint64_t fnv(const char *s, size_t len)
{
    return tg_fnv1a(TG_FNV_SEED, s, len);
}

static struct pending_settle *find(struct settles *st, const char *key, size_t key_len,
                                   uint64_t h)
{
    for (size_t i = 0; i < st->n; i++) {
        struct pending_settle *ps = &st->ps[i];
        if (ps->hash == h && ps->key_len == key_len &&
            memcmp(st->arena.p + ps->key_off, key, key_len) == 0)
            return ps;
    }
    return NULL;
}

int settles_add(struct settles *st, const char *key, size_t key_len, size_t tag_off,
                size_t tag_len, const struct tg_bucket_param *p)
{
    uint64_t h = fnv(key, key_len);
    struct pending_settle *ps = find(st, key, key_len, h);
    if (ps) {
        int64_t sum = ps->p.cost_u + p->cost_u;
        ps->p = *p;
        ps->p.cost_u = sum;
        return (int)st->n;
    }
    size_t off = st->arena.len;
    if (!tg_buf_append(&st->arena, key, key_len, 512)) return -1;
    ps = &st->ps[st->n++];
    ps->hash = h;
    ps->key_off = (uint32_t)off;
    ps->key_len = (uint32_t)key_len;
    ps->tag_off = (uint32_t)(off + tag_off);
    ps->tag_len = (uint32_t)tag_len;
    ps->tag_hash = fnv(key + tag_off, tag_len);
    ps->p = *p;
    return (int)st->n;
}

int64_t settles_take(struct settles *st, const char *key, size_t key_len)
{
    if (st->n == 0) return 0;
    struct pending_settle *ps = find(st, key, key_len, fnv(key, key_len));
    if (!ps) return 0;
    int64_t d = ps->p.cost_u;
    ps->p.cost_u = 0; /* the flush skips it */
    return d;
}

bool settles_same_tag(const struct settles *st, size_t i, size_t j)
{
    const struct pending_settle *a = &st->ps[i], *b = &st->ps[j];
    return a->tag_hash == b->tag_hash && a->tag_len == b->tag_len &&
           memcmp(st->arena.p + a->tag_off, st->arena.p + b->tag_off, a->tag_len) == 0;
}
