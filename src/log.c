/* Logging: leveled lines to stderr and a queued access log written by its own thread. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "tollgate/buf.h"
#include "tollgate/log.h"

static volatile int log_level = TG_LOG_INFO;

void tg_log_set_level(enum tg_log_level level)
{
    __atomic_store_n(&log_level, (int)level, __ATOMIC_RELAXED);
}

static size_t format_ts(char *out, size_t cap)
{
    int64_t ms = tg_now_wall_ms();
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, cap - n, ".%03dZ", (int)(ms % 1000));
    return n;
}

static void write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        len -= (size_t)w;
    }
}

void tg_log(enum tg_log_level level, const char *fmt, ...)
{
    if ((int)level < __atomic_load_n(&log_level, __ATOMIC_RELAXED)) return;
    char line[2048];
    size_t n = format_ts(line, sizeof(line));
    static const char *const upper[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    n += (size_t)snprintf(line + n, sizeof(line) - n, " %s ", upper[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : (n + (size_t)m >= sizeof(line) - 1 ? sizeof(line) - 2 : n + (size_t)m);
    line[n++] = '\n';
    write_all(STDERR_FILENO, line, n);
}

/* The access log: workers append to a shared buffer; one thread writes it out. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool running, stop, reopen;
    int fd; /* STDERR_FILENO when path is "" */
    char *path;
    char *buf;
    size_t len, cap;
} acc = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fd = -1};

#define ACCESS_MAX_PENDING (16u * 1024 * 1024)
/* The writer wakes when this much is queued, or after ACCESS_FLUSH_MS: never
 * once per line, which would cost a thread switch per request. */
#define ACCESS_WAKE_BYTES (64u * 1024)
#define ACCESS_FLUSH_MS 20

static int open_path(const char *path)
{
    if (path[0] == '\0') return STDERR_FILENO;
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static void *access_writer(void *arg)
{
    char *out = NULL;
    size_t outcap = 0;
    pthread_mutex_lock(&acc.mu);
    for (;;) {
        while (acc.len == 0 && !acc.stop && !acc.reopen)
            pthread_cond_wait(&acc.cv, &acc.mu);
        if (acc.len < ACCESS_WAKE_BYTES && !acc.stop && !acc.reopen) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += ACCESS_FLUSH_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&acc.cv, &acc.mu, &ts);
        }
        if (acc.reopen) {
            acc.reopen = false;
            int fd = open_path(acc.path);
            if (fd >= 0) {
                if (acc.fd > STDERR_FILENO) close(acc.fd);
                acc.fd = fd;
            }
        }
        /* Swap buffers so workers never wait on the disk. */
        char *tmp = out;
        size_t tmpcap = outcap;
        out = acc.buf;
        outcap = acc.cap;
        size_t n = acc.len;
        acc.buf = tmp;
        acc.cap = tmpcap;
        acc.len = 0;
        int fd = acc.fd;
        bool stop = acc.stop;
        pthread_mutex_unlock(&acc.mu);
        if (n > 0 && fd >= 0) write_all(fd, out, n);
        pthread_mutex_lock(&acc.mu);
        if (stop && acc.len == 0) break;
    }
    pthread_mutex_unlock(&acc.mu);
    free(out);
    return arg;
}

int tg_log_access_open(const char *path, char err[TG_ERR_LEN])
{
    int fd = open_path(path);
    if (fd < 0) {
        snprintf(err, TG_ERR_LEN, "%s: %s", path, strerror(errno));
        return -1;
    }
    pthread_mutex_lock(&acc.mu);
    if (acc.fd > STDERR_FILENO) close(acc.fd);
    acc.fd = fd;
    char *copy = strdup(path);
    if (copy) { /* else the old path stays for reopens */
        free(acc.path);
        acc.path = copy;
    }
    bool start = !acc.running;
    acc.running = true;
    acc.stop = false;
    pthread_mutex_unlock(&acc.mu);
    if (start && pthread_create(&acc.thread, NULL, access_writer, NULL) != 0) {
        snprintf(err, TG_ERR_LEN, "access log: cannot start writer thread");
        pthread_mutex_lock(&acc.mu);
        acc.running = false;
        pthread_mutex_unlock(&acc.mu);
        return -1;
    }
    return 0;
}

void tg_log_access(const char *line, size_t len)
{
    pthread_mutex_lock(&acc.mu);
    if (!acc.running || acc.len + len + 1 > ACCESS_MAX_PENDING) {
        pthread_mutex_unlock(&acc.mu);
        return;
    }
    if (!tg_grow(&acc.buf, &acc.cap, acc.len + len + 1, 1, 65536)) {
        pthread_mutex_unlock(&acc.mu);
        return;
    }
    memcpy(acc.buf + acc.len, line, len);
    acc.buf[acc.len + len] = '\n';
    bool wake =
        acc.len == 0 || (acc.len < ACCESS_WAKE_BYTES && acc.len + len + 1 >= ACCESS_WAKE_BYTES);
    acc.len += len + 1;
    pthread_mutex_unlock(&acc.mu);
    if (wake) pthread_cond_signal(&acc.cv);
}

void tg_log_reopen(void)
{
    pthread_mutex_lock(&acc.mu);
    acc.reopen = acc.running;
    pthread_mutex_unlock(&acc.mu);
    pthread_cond_signal(&acc.cv);
}

void tg_log_shutdown(void)
{
    pthread_mutex_lock(&acc.mu);
    bool running = acc.running;
    acc.stop = true;
    pthread_mutex_unlock(&acc.mu);
    if (!running) return;
    pthread_cond_signal(&acc.cv);
    pthread_join(acc.thread, NULL);
    pthread_mutex_lock(&acc.mu);
    acc.running = false;
    if (acc.fd > STDERR_FILENO) close(acc.fd);
    acc.fd = -1;
    free(acc.buf);
    acc.buf = NULL;
    acc.len = acc.cap = 0;
    free(acc.path);
    acc.path = NULL;
    pthread_mutex_unlock(&acc.mu);
}
