/* The memory of a config: an arena of chunks that owns its strings and arrays, and a string set. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "loader.h"

#define ARENA_CHUNK (64 * 1024)

/* ---- memory: every string and array of a config lives in its arena ---- */

struct tg_arena {
    struct tg_arena *next;
    size_t used, cap;
    max_align_t data[];
};

/* Zeroed memory aligned to `align` (a power of two up to that of max_align_t) that lives
 * until arena_free; NULL if out of memory. */
void *arena_alloc_aligned(struct tg_arena **a, size_t n, size_t align)
{
    struct tg_arena *c = *a;
    if (c) {
        size_t at = (c->used + align - 1) & ~(align - 1);
        if (at <= c->cap && c->cap - at >= n) {
            c->used = at + n;
            return (unsigned char *)c->data + at;
        }
    }
    size_t cap = n > ARENA_CHUNK / 4 ? n : ARENA_CHUNK;
    c = calloc(1, sizeof(*c) + cap);
    if (!c) return NULL;
    c->cap = cap;
    c->used = n;
    if (cap == n && *a) { /* a large block gets its own chunk; keep filling the current one */
        c->next = (*a)->next;
        (*a)->next = c;
    } else {
        c->next = *a;
        *a = c;
    }
    return c->data;
}

void *arena_alloc(struct tg_arena **a, size_t n)
{
    return arena_alloc_aligned(a, n, sizeof(max_align_t));
}

char *arena_strndup(struct tg_arena **a, const char *s, size_t n)
{
    char *p = arena_alloc_aligned(a, n + 1, 1);
    if (p) memcpy(p, s, n);
    return p;
}

void arena_free(struct tg_arena *a)
{
    while (a) {
        struct tg_arena *next = a->next;
        free(a);
        a = next;
    }
}

/* ---- string set: open addressing over borrowed strings ---- */

static uint32_t hash_str(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static struct strset_slot *strset_probe(struct strset_slot *slots, size_t cap, const char *s,
                                        size_t len, uint32_t h)
{
    for (size_t i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        struct strset_slot *e = &slots[i];
        if (!e->s || (e->hash == h && e->len == len && memcmp(e->s, s, len) == 0)) return e;
    }
}

const struct strset_slot *strset_find(const struct tg_strset *set, const char *s, size_t len)
{
    if (!set || set->cap == 0) return NULL;
    const struct strset_slot *e = strset_probe(set->slots, set->cap, s, len, hash_str(s, len));
    return e->s ? e : NULL;
}

/* Finds `s` or adds it with `val` (`s` is borrowed: it must outlive the set). Returns the
 * slot, *added telling which happened; NULL if out of memory. */
struct strset_slot *strset_add(struct tg_strset *set, const char *s, size_t len, uint32_t val,
                               bool *added)
{
    if ((set->n + 1) * 2 > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        struct strset_slot *slots = calloc(cap, sizeof(*slots));
        if (!slots) return NULL;
        for (size_t i = 0; i < set->cap; i++) {
            const struct strset_slot *e = &set->slots[i];
            if (e->s) *strset_probe(slots, cap, e->s, e->len, e->hash) = *e;
        }
        free(set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    uint32_t h = hash_str(s, len);
    struct strset_slot *e = strset_probe(set->slots, set->cap, s, len, h);
    *added = e->s == NULL;
    if (*added) {
        *e = (struct strset_slot){s, (uint32_t)len, h, val};
        set->n++;
    }
    return e;
}

void strset_deinit(struct tg_strset *set)
{
    free(set->slots);
    *set = (struct tg_strset){0};
}
