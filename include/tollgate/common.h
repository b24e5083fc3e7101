/* Small definitions every tollgate module shares. */
#ifndef TOLLGATE_COMMON_H
#define TOLLGATE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define TG_WUR __attribute__((warn_unused_result))
#define TG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define TG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Size of the error buffers computing modules fill (they report, they never log). */
#define TG_ERR_LEN 256

/* Costs and bucket levels are integers in micro-units: 1 unit = 1e6 micro-units.
 * Video seconds weighted by resolution are fractional; this keeps them exact
 * enough and keeps the C and Lua bucket math identical. */
#define TG_MICRO 1000000LL

/* FNV-1a: the hash of n bytes at p, continuing from h (TG_FNV_SEED to start). */
#define TG_FNV_SEED 1469598103934665603ULL
static inline uint64_t tg_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

/* What a request is charged in: the `unit` of a limit. */
enum tg_unit { TG_UNIT_REQUESTS = 0, TG_UNIT_TOKENS, TG_UNIT_VIDEO_SECONDS, TG_UNIT_COUNT };

/* Names as they appear in config, headers and records:
 * "requests", "tokens", "video_seconds". */
const char *tg_unit_name(enum tg_unit u);

/* Writes the decimal digits of v at the end of buf and returns where they
 * start; *len gets their count. No NUL. For hot paths that avoid printf. */
char *tg_fmt_int(char buf[24], long long v, size_t *len);

/* Monotonic and wall clock in milliseconds. */
int64_t tg_now_mono_ms(void);
int64_t tg_now_wall_ms(void);

/* Scheduling of the calling thread, best effort. Background threads (the main
 * loop, the file sink's writer, librdkafka's threads, which inherit it from
 * the main thread) run as SCHED_BATCH: their wake-ups never preempt a worker
 * on its CPU; they run on an idle CPU or at the worker's next tick. Workers
 * run as SCHED_OTHER. Neither needs privileges. */
void tg_thread_background(void);
void tg_thread_foreground(void);

#endif
