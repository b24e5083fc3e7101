/* The file sink: records appended as JSON lines by a writer thread; failed writes are kept and
 * retried. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "tollgate/buf.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/sink.h"

/* Past this many queued bytes the sink stops accepting (the proxy answers 503). */
#define FILE_MAX_PENDING (64u * 1024 * 1024)
/* The writer waits this long after a wake-up, or until this much is queued. */
#define FILE_BATCH_MS 5
#define FILE_BATCH_BYTES (256 * 1024)
/* Only requests already admitted add past the bound; this catches a caller
 * that ignores accepting(). */
#define FILE_HARD_MAX (2 * FILE_MAX_PENDING)
/* After a write error: first retry, doubling up to the last. */
#define FILE_RETRY_MIN_MS 100
#define FILE_RETRY_MAX_MS 5000
/* destroy() waits this long for the queue to drain. */
#define FILE_DESTROY_FLUSH_MS 5000
/* A batch buffer bigger than this is freed after use rather than kept. */
#define FILE_KEEP_BUFFER (4u * 1024 * 1024)

struct fsink {
    struct tg_sink base;
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* the writer: new data, reopen, stop, flush */
    pthread_cond_t drained; /* flush(): the writer finished a batch */
    pthread_t thread;
    char *path;
    int fd;             /* owned by the writer once it runs */
    struct tg_buf pending; /* appended by submit() */
    struct tg_buf batch;   /* being written by the writer */
    size_t batch_off;   /* bytes of batch already written */
    size_t batch_left;  /* batch.len - batch_off, as the writer last saw it */
    bool idle, stop, reopen;
    uint64_t failures; /* failed write attempts so far */
    int64_t last_drop_log_ms;
    bool accepting; /* read without the lock */
};

static const char *const lbl_written[] = {"file", "written"};
static const char *const lbl_error[] = {"file", "error"};
static const char *const lbl_dropped[] = {"file", "dropped"};

static size_t count_lines(const char *p, size_t n)
{
    size_t c = 0;
    const char *end = p + n;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        c++;
        p++;
    }
    return c;
}

static int open_file(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash && slash != path && (size_t)(slash - path) < sizeof(dir)) {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
        if (tg_usage_mkdirs(dir) < 0) return -1;
    }
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* Writes what is left of the batch. Returns 0, or the errno of the failed write. */
static int write_batch(struct fsink *f)
{
    int e = 0;
    size_t lines = 0;
    while (f->batch_off < f->batch.len) {
        ssize_t w = write(f->fd, f->batch.p + f->batch_off, f->batch.len - f->batch_off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            break;
        }
        lines += count_lines(f->batch.p + f->batch_off, (size_t)w);
        f->batch_off += (size_t)w;
    }
    if (lines) tg_metrics_add(TG_M_USAGE_RECORDS, lbl_written, (double)lines);
    return e;
}

static void do_reopen(struct fsink *f)
{
    int fd = open_file(f->path);
    if (fd < 0) {
        tg_log_error("usage file %s: reopen: %s; still writing to the old file", f->path,
                     strerror(errno));
        return;
    }
    close(f->fd);
    f->fd = fd;
}

static void set_accepting(struct fsink *f)
{
    bool ok = f->pending.len + f->batch_left <= FILE_MAX_PENDING;
    __atomic_store_n(&f->accepting, ok, __ATOMIC_RELAXED);
}

static void wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (int64_t)ms * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(cv, mu, &ts);
}

/* While a batch keeps failing: moves what is pending behind its unwritten
 * part, so that every queued record is tried (and counted) on the retry.
 * Returns 0, or -1 (out of memory: the pending records wait). */
static int merge(struct fsink *f)
{
    size_t left = f->batch.len - f->batch_off, need = left + f->pending.len;
    if (!tg_grow(&f->batch.p, &f->batch.cap, need, 1, 4096)) return -1;
    memmove(f->batch.p, f->batch.p + f->batch_off, left);
    memcpy(f->batch.p + left, f->pending.p, f->pending.len);
    f->batch.len = need;
    f->batch_left = need;
    f->pending.len = 0;
    return 0;
}

static void *writer_main(void *arg)
{
    struct fsink *f = arg;
    tg_thread_background(); /* woken by workers: it must not preempt them */
    int backoff = 0;       /* ms; 0 while writes succeed */
    size_t counted_to = 0; /* failed records of the batch up to here are counted */
    pthread_mutex_lock(&f->mu);
    for (;;) {
        if (f->reopen) {
            f->reopen = false;
            pthread_mutex_unlock(&f->mu);
            do_reopen(f);
            pthread_mutex_lock(&f->mu);
        }
        if (f->batch.len == 0 && f->pending.len > 0) {
            struct tg_buf t = f->batch;
            f->batch = f->pending;
            f->pending = t;
            f->batch_off = 0;
            f->batch_left = f->batch.len;
            counted_to = 0;
        } else if (f->batch.len > 0 && f->pending.len > 0 && merge(f) == 0) {
            counted_to = counted_to > f->batch_off ? counted_to - f->batch_off : 0;
            f->batch_off = 0;
        }
        if (f->batch.len == 0) {
            if (f->stop) break;
            f->idle = true;
            pthread_cond_broadcast(&f->drained);
            pthread_cond_wait(&f->wake, &f->mu);
            f->idle = false;
            /* Gather more records before writing: one write (and one wake-up)
             * per batch, not per request. */
            if (!f->stop && f->pending.len < FILE_BATCH_BYTES)
                wait_ms(&f->wake, &f->mu, FILE_BATCH_MS);
            continue;
        }
        pthread_mutex_unlock(&f->mu);
        int e = write_batch(f);
        pthread_mutex_lock(&f->mu);
        f->batch_left = f->batch.len - f->batch_off;
        if (e == 0) {
            f->batch.len = f->batch_off = 0;
            if (f->batch.cap > FILE_KEEP_BUFFER) {
                free(f->batch.p);
                f->batch = (struct tg_buf){0};
            }
            backoff = 0;
        }
        set_accepting(f);
        pthread_cond_broadcast(&f->drained);
        if (e == 0) continue;
        f->failures++;
        size_t from = counted_to > f->batch_off ? counted_to : f->batch_off;
        size_t n = count_lines(f->batch.p + from, f->batch.len - from);
        if (n) tg_metrics_add(TG_M_USAGE_RECORDS, lbl_error, (double)n);
        counted_to = f->batch.len;
        if (f->stop) break;
        backoff = backoff ? (backoff * 2 > FILE_RETRY_MAX_MS ? FILE_RETRY_MAX_MS : backoff * 2)
                          : FILE_RETRY_MIN_MS;
        tg_log_error("usage file %s: write: %s; %zu records kept, retrying in %d ms", f->path,
                     strerror(e),
                     count_lines(f->batch.p + f->batch_off, f->batch_left) +
                         count_lines(f->pending.p, f->pending.len),
                     backoff);
        wait_ms(&f->wake, &f->mu, backoff);
    }
    size_t lost = count_lines(f->batch.p + f->batch_off, f->batch.len - f->batch_off) +
                  count_lines(f->pending.p, f->pending.len);
    if (lost) {
        tg_metrics_add(TG_M_USAGE_RECORDS, lbl_dropped, (double)lost);
        tg_log_error("usage file %s: shutting down with %zu records that could not be written",
                     f->path, lost);
    }
    f->idle = true;
    pthread_cond_broadcast(&f->drained);
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static int file_submit(struct tg_sink *s, const char *json, size_t len, const char *key)
{
    struct fsink *f = (struct fsink *)s;
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    size_t queued = f->pending.len + f->batch_left;
    size_t need = f->pending.len + len + 1;
    if (queued + len + 1 > FILE_HARD_MAX) {
        rc = -1;
    } else if (!tg_grow(&f->pending.p, &f->pending.cap, need, 1, 4096)) {
        rc = -1;
    }
    if (rc == 0) {
        memcpy(f->pending.p + f->pending.len, json, len);
        f->pending.p[f->pending.len + len] = '\n';
        f->pending.len = need;
        if (queued + len + 1 > FILE_MAX_PENDING)
            __atomic_store_n(&f->accepting, false, __ATOMIC_RELAXED);
        if (f->idle) pthread_cond_signal(&f->wake);
    }
    pthread_mutex_unlock(&f->mu);
    if (rc < 0) {
        tg_metrics_add(TG_M_USAGE_RECORDS, lbl_dropped, 1);
        if (tg_usage_log_due(&f->last_drop_log_ms))
            tg_log_error("usage file %s: %zu bytes queued and the sink was not accepting: "
                         "records dropped (see tollgate_usage_records_total)",
                         f->path, queued);
    }
    return rc;
}

static bool file_accepting(struct tg_sink *s)
{
    return __atomic_load_n(&((struct fsink *)s)->accepting, __ATOMIC_RELAXED);
}

/* Waits until everything queued is written, or the timeout passes, or a
 * write attempt made after the call began fails (the writer retries at once
 * when woken: a disk that is still failing ends the wait). */
static void file_flush(struct tg_sink *s, int timeout_ms)
{
    struct fsink *f = (struct fsink *)s;
    int64_t deadline = tg_now_mono_ms() + timeout_ms;
    pthread_mutex_lock(&f->mu);
    uint64_t failures = f->failures;
    pthread_cond_signal(&f->wake);
    while ((f->pending.len + f->batch_left > 0 || !f->idle) && f->failures == failures) {
        int64_t left = deadline - tg_now_mono_ms();
        if (left <= 0) break;
        wait_ms(&f->drained, &f->mu, (int)left);
    }
    pthread_mutex_unlock(&f->mu);
}

static void file_reopen(struct tg_sink *s)
{
    struct fsink *f = (struct fsink *)s;
    pthread_mutex_lock(&f->mu);
    f->reopen = true;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->mu);
}

static void file_destroy(struct tg_sink *s)
{
    struct fsink *f = (struct fsink *)s;
    file_flush(s, FILE_DESTROY_FLUSH_MS);
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    close(f->fd);
    pthread_cond_destroy(&f->wake);
    pthread_cond_destroy(&f->drained);
    pthread_mutex_destroy(&f->mu);
    free(f->pending.p);
    free(f->batch.p);
    free(f->path);
    free(f);
}

static const struct tg_sink_ops file_ops = {
    .name = "file",
    .submit = file_submit,
    .accepting = file_accepting,
    .flush = file_flush,
    .reopen = file_reopen,
    .destroy = file_destroy,
};

struct tg_sink *tg_sink_file_create(const struct tg_config *cfg, char err[TG_ERR_LEN])
{
    const char *path = cfg->usage.file.path ? cfg->usage.file.path : TG_DEFAULT_USAGE_FILE;
    struct fsink *f = calloc(1, sizeof(*f));
    if (f == NULL || (f->path = strdup(path)) == NULL) {
        snprintf(err, TG_ERR_LEN, "usage.file.path: out of memory");
        goto error;
    }
    f->fd = open_file(path);
    if (f->fd < 0) {
        snprintf(err, TG_ERR_LEN, "usage.file.path: %s: %s", path, strerror(errno));
        goto error;
    }
    f->base.ops = &file_ops;
    f->accepting = true;
    pthread_mutex_init(&f->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->wake, &ca);
    pthread_cond_init(&f->drained, &ca);
    pthread_condattr_destroy(&ca);
    int e = pthread_create(&f->thread, NULL, writer_main, f);
    if (e != 0) {
        snprintf(err, TG_ERR_LEN, "usage file sink: thread: %s", strerror(e));
        close(f->fd);
        pthread_cond_destroy(&f->wake);
        pthread_cond_destroy(&f->drained);
        pthread_mutex_destroy(&f->mu);
        goto error;
    }
    return &f->base;
error:
    if (f) free(f->path);
    free(f);
    return NULL;
}
