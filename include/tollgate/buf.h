/* Growable buffers: one doubling rule for every byte buffer and array that grows. */
#ifndef TOLLGATE_BUF_H
#define TOLLGATE_BUF_H

#include <stdlib.h>
#include <string.h>
#include "tollgate/common.h"

/* Makes room for `need` elements of `size` bytes in the array *p of *cap
 * elements: doubles *cap, starting from `min` (> 0), until it holds `need`,
 * and reallocates. Returns false, *p and *cap unchanged, when out of memory
 * or when the size would overflow. Nothing is done when *cap >= need. */
bool tg_grow(void *p, size_t *cap, size_t need, size_t size, size_t min) TG_WUR;

/* A byte buffer: `len` bytes in use of `cap`. Zero-initialised is empty. */
struct tg_buf {
    char *p;
    size_t len, cap;
};

/* Room for `more` bytes past len (first allocation: `min`). */
static inline bool tg_buf_reserve(struct tg_buf *b, size_t more, size_t min)
{
    if (b->cap - b->len >= more) return true;
    return more <= SIZE_MAX - b->len && tg_grow(&b->p, &b->cap, b->len + more, 1, min);
}

/* Appends n bytes; false (nothing appended) when out of memory. */
static inline bool tg_buf_append(struct tg_buf *b, const void *s, size_t n, size_t min)
{
    if (!tg_buf_reserve(b, n, min)) return false;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

static inline void tg_buf_free(struct tg_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

#endif
