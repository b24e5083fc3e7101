/* Definitions shared by every module: unit names, clocks, thread scheduling, growing buffers. */
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include "tollgate/buf.h"
#include "tollgate/common.h"

static const char *const unit_names[TG_UNIT_COUNT] = {"requests", "tokens", "video_seconds"};

const char *tg_unit_name(enum tg_unit u)
{
    return (unsigned)u < TG_UNIT_COUNT ? unit_names[u] : "unknown";
}

int64_t tg_now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tg_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *tg_fmt_int(char buf[24], long long v, size_t *len)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233"
                                "34353637383940414243444546474849505152535455565758596061626364656667"
                                "6869707172737475767778798081828384858687888990919293949596979899";
    size_t n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    while (u >= 100) { /* two digits per division */
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        buf[23 - n++] = pairs[d + 1];
        buf[23 - n++] = pairs[d];
    }
    if (u >= 10) {
        buf[23 - n++] = pairs[u * 2 + 1];
        buf[23 - n++] = pairs[u * 2];
    } else {
        buf[23 - n++] = (char)('0' + u);
    }
    if (v < 0) buf[23 - n++] = '-';
    *len = n;
    return buf + 24 - n;
}

void tg_thread_background(void)
{
    struct sched_param sp = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
}

void tg_thread_foreground(void)
{
    struct sched_param sp = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp);
}

bool tg_grow(void *p, size_t *cap, size_t need, size_t size, size_t min)
{
    if (need <= *cap) return true;
    size_t ncap = *cap ? *cap : (min ? min : 1);
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2) return false;
        ncap *= 2;
    }
    if (size && ncap > SIZE_MAX / size) return false;
    void **slot = p;
    void *np = realloc(*slot, ncap * size);
    if (np == NULL) return false;
    *slot = np;
    *cap = ncap;
    return true;
}
