/* Private to src/limiter/: the Redis backend's pending settles (settles.c), coalesced per
 * key until they are flushed or ride in a check call. */
#ifndef TOLLGATE_LIMITER_SETTLES_H
#define TOLLGATE_LIMITER_SETTLES_H

#include "tollgate/buf.h"
#include "tollgate/limiter.h"

#define SETTLES_MAX 128

/* One coalesced settle: its key and hash tag ("{tenant}") live in the table's arena. */
struct pending_settle {
    uint64_t hash, tag_hash;
    uint32_t key_off, key_len, tag_off, tag_len;
    struct tg_bucket_param p; /* p.cost_u = the summed delta; 0: taken or nothing */
};

struct settles {
    struct pending_settle ps[SETTLES_MAX];
    size_t n;
    struct tg_buf arena;
};

/* Adds p->cost_u for `key`, whose hash tag is key[tag_off, +tag_len), with p's latest
 * parameters. Returns the number of keys pending, or -1 (out of memory: dropped). */
int settles_add(struct settles *st, const char *key, size_t key_len, size_t tag_off,
                size_t tag_len, const struct tg_bucket_param *p);
/* Takes the delta pending for `key` (0 if none): it is the caller's to send. */
int64_t settles_take(struct settles *st, const char *key, size_t key_len);
/* Whether two pending settles share their hash tag (one call can carry both). */
bool settles_same_tag(const struct settles *st, size_t i, size_t j);
static inline const char *settles_key(const struct settles *st, size_t i)
{
    return st->arena.p + st->ps[i].key_off;
}
/* Forgets everything pending (after a flush). */
static inline void settles_clear(struct settles *st)
{
    st->n = 0;
    st->arena.len = 0;
}

#endif
