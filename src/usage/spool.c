/* The disk spool: CRC-framed records in append-only segment files, handed out in order and deleted
 * once acknowledged. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "tollgate/spool.h"
#include "tollgate/sink.h"

/* Segment file: the 8-byte magic, then frames. A frame is a 12-byte header
 * (u32 body length, u16 key length, u8 flags, u8 zero, u32 CRC-32 of the
 * first 8 header bytes with the flags byte as zero, and the body;
 * little-endian) and the body: payload then key. The one flag, FRAME_ACKED,
 * is set in place when the record is acknowledged, so that a restart does not
 * replay it; the CRC does not cover it. */
static const char seg_magic[8] = {'T', 'G', 'S', 'P', 'O', 'O', 'L', '1'};
#define SEG_HDR ((int64_t)sizeof(seg_magic))
#define FRAME_HDR 12
#define FRAME_FLAGS_AT 6
#define FRAME_ACKED 1u
#define SEG_NAME_FMT "%012" PRIu64 ".spool"
#define SEG_NAME_LEN 18

/* A record's state, one byte per record of a segment. */
enum { REC_UNREAD, REC_OUT, REC_ACKED };

struct seg {
    uint64_t seq;
    int64_t size;    /* bytes of the file that hold valid frames */
    int64_t nrec;    /* records in it */
    int64_t nunread; /* REC_UNREAD */
    int64_t nout;    /* REC_OUT: handed out, not yet acknowledged or released */
    int64_t nacked;  /* REC_ACKED */
    uint8_t *st;     /* nrec states (cap of them allocated) */
    int64_t cap;
    int fd; /* read-write, for reading and ack marks; -1 until needed */
};

struct tg_spool {
    pthread_mutex_t mu;
    char *dir;
    int dirfd;
    struct tg_spool_opts opts; /* opts.dir points at `dir` */
    struct seg *segs;          /* by seq, oldest first */
    size_t nsegs, cap;
    int wfd; /* the last segment, open for appending; -1 if none */
    uint64_t next_seq;
    /* The read cursor: no unread record is before it. */
    uint64_t cur_seq;
    int64_t cur_off, cur_idx;
    int64_t bytes, records, unread, out;
    uint64_t dropped, truncated;
    bool dirty;     /* written since the last fdatasync */
    bool dir_dirty; /* a segment was created since the directory's last fsync */
    bool full;      /* read without the lock by tg_spool_accepting */
    /* fsync mode always: appends are numbered; an appender waits until
     * `synced` reaches its number. One fdatasync at a time (`syncing`) covers
     * every append before it started. */
    uint64_t wseq, synced;
    bool syncing;
    pthread_cond_t sync_cv;
    /* fsync every opts.fsync_interval_ms (interval mode) */
    pthread_t syncer;
    pthread_cond_t cv;
    bool syncer_running, stop;
};

/* snprintf into an error buffer, where a long path may cut the message short. */
static TG_PRINTF(2, 3) void set_err(char err[TG_ERR_LEN], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, TG_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* ---- CRC-32 (IEEE, as zlib) ---- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A frame header's lengths, if they are plausible: returns the body length or -1. */
static int64_t frame_body_len(const unsigned char *h, size_t *klen)
{
    uint32_t len = get_le32(h);
    *klen = (size_t)h[4] | (size_t)h[5] << 8;
    if ((h[FRAME_FLAGS_AT] & ~FRAME_ACKED) != 0 || h[7] != 0 || len > TG_SPOOL_MAX_RECORD ||
        *klen > len)
        return -1;
    return len;
}

/* The CRC of a frame's header (flags as zero) and its body, given in two parts. */
static uint32_t frame_crc(const unsigned char *hdr, const void *a, size_t alen, const void *b,
                          size_t blen)
{
    unsigned char h[8];
    memcpy(h, hdr, 8);
    h[FRAME_FLAGS_AT] = 0;
    uint32_t crc = crc_update(0, h, 8);
    crc = crc_update(crc, a, alen);
    return crc_update(crc, b, blen);
}

/* ---- segments ---- */

static void seg_path(const struct tg_spool *sp, uint64_t seq, char *out, size_t cap)
{
    snprintf(out, cap, "%s/" SEG_NAME_FMT, sp->dir, seq);
}

static struct seg *last_seg(struct tg_spool *sp)
{
    return sp->nsegs ? &sp->segs[sp->nsegs - 1] : NULL;
}

static bool is_writer(const struct tg_spool *sp, size_t i)
{
    return i + 1 == sp->nsegs && sp->wfd >= 0;
}

/* The index of segment `seq`, or -1 (binary search: segs are by seq). */
static ssize_t find_seg(const struct tg_spool *sp, uint64_t seq)
{
    size_t lo = 0, hi = sp->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp->segs[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < sp->nsegs && sp->segs[lo].seq == seq ? (ssize_t)lo : -1;
}

static struct seg *push_seg(struct tg_spool *sp, uint64_t seq)
{
    if (sp->nsegs == sp->cap) {
        size_t ncap = sp->cap ? sp->cap * 2 : 16;
        struct seg *n = realloc(sp->segs, ncap * sizeof(*n));
        if (n == NULL) return NULL;
        sp->segs = n;
        sp->cap = ncap;
    }
    struct seg *s = &sp->segs[sp->nsegs++];
    *s = (struct seg){.seq = seq, .size = SEG_HDR, .fd = -1};
    return s;
}

/* Room for one more record's state. */
static int reserve_state(struct seg *s)
{
    if (s->nrec < s->cap) return 0;
    int64_t ncap = s->cap ? s->cap * 2 : 256;
    uint8_t *n = realloc(s->st, (size_t)ncap);
    if (n == NULL) return -1;
    s->st = n;
    s->cap = ncap;
    return 0;
}

static void close_seg_fd(struct seg *s)
{
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
}

static int seg_fd(struct tg_spool *sp, struct seg *s)
{
    if (s->fd < 0) {
        char path[4096];
        seg_path(sp, s->seq, path, sizeof(path));
        s->fd = open(path, O_RDWR | O_CLOEXEC);
    }
    return s->fd;
}

/* Deletes segment i (its file and its bookkeeping). Unread records in it are
 * counted as dropped; those handed out and not acknowledged are with the
 * caller, who delivers them or, as tg_spool_release fails for them, appends
 * them again (their acks are ignored). */
static void remove_seg(struct tg_spool *sp, size_t i)
{
    struct seg *s = &sp->segs[i];
    char path[4096];
    seg_path(sp, s->seq, path, sizeof(path));
    close_seg_fd(s);
    if (is_writer(sp, i)) {
        close(sp->wfd);
        sp->wfd = -1;
        sp->dirty = false;
        sp->synced = sp->wseq; /* what is left was synced when its segments rolled over */
    }
    unlink(path);
    sp->dropped += (uint64_t)s->nunread;
    sp->records -= s->nrec - s->nacked;
    sp->unread -= s->nunread;
    sp->out -= s->nout;
    sp->bytes -= s->size;
    free(s->st);
    memmove(&sp->segs[i], &sp->segs[i + 1], (sp->nsegs - i - 1) * sizeof(*s));
    sp->nsegs--;
}

static void update_full(struct tg_spool *sp)
{
    bool full = sp->opts.full == TG_SPOOL_FULL_REJECT && sp->bytes >= sp->opts.max_bytes;
    __atomic_store_n(&sp->full, full, __ATOMIC_RELAXED);
}

static int write_all_at(int fd, struct iovec *iov, int iovcnt, off_t off)
{
    while (iovcnt > 0) {
        ssize_t w = pwritev(fd, iov, iovcnt, off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        off += w;
        while (iovcnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* fsyncs the directory if a segment was created since its last fsync, so that
 * the new names survive a power loss. Lock held. */
static int sync_dir(struct tg_spool *sp)
{
    if (!sp->dir_dirty) return 0;
    if (fsync(sp->dirfd) < 0) return -1;
    sp->dir_dirty = false;
    return 0;
}

/* Closes the segment being written, synced first (so that a rolled segment
 * is as durable as the mode promises, and `synced` covers every append to
 * it). */
static int close_writer(struct tg_spool *sp)
{
    int rc = 0;
    if (sp->wfd < 0) return 0;
    if ((sp->dirty || sp->synced < sp->wseq) && fdatasync(sp->wfd) < 0) rc = -1;
    close(sp->wfd);
    sp->wfd = -1;
    sp->dirty = false;
    sp->synced = sp->wseq;
    return rc;
}

/* Starts a new segment file for appends. The directory is fsynced later: by
 * the interval thread, or before an append in fsync mode always returns. */
static int open_writer(struct tg_spool *sp, char err[TG_ERR_LEN])
{
    char path[4096];
    const char *errpos = "close";
    if (close_writer(sp) < 0) goto error;
    uint64_t seq = sp->next_seq++;
    seg_path(sp, seq, path, sizeof(path));
    errpos = "open";
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) goto error;
    struct iovec iov = {(void *)seg_magic, sizeof(seg_magic)};
    errpos = "write";
    if (write_all_at(fd, &iov, 1, 0) < 0 || push_seg(sp, seq) == NULL) {
        int e = errno;
        close(fd);
        unlink(path);
        errno = e ? e : ENOMEM;
        goto error;
    }
    sp->dir_dirty = true;
    sp->dirty = true;
    sp->wfd = fd;
    sp->bytes += SEG_HDR;
    return 0;
error:
    set_err(err, "spool %s: %s: %s", sp->dir, errpos, strerror(errno));
    return -1;
}

/* Checks one existing segment frame by frame, truncating a torn or corrupt
 * tail. Keeps it if it holds records not marked acknowledged, deletes it
 * otherwise. */
static int load_seg(struct tg_spool *sp, uint64_t seq, char err[TG_ERR_LEN])
{
    char path[4096];
    seg_path(sp, seq, path, sizeof(path));
    const char *errpos = "open";
    unsigned char *map = MAP_FAILED;
    struct stat st;
    struct seg tmp = {.seq = seq, .size = SEG_HDR, .fd = -1};
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) goto error;
    errpos = "stat";
    if (fstat(fd, &st) < 0) goto error;
    int64_t size = st.st_size, end = 0;
    if (size >= SEG_HDR) {
        errpos = "mmap";
        map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) goto error;
        if (memcmp(map, seg_magic, sizeof(seg_magic)) == 0) {
            end = SEG_HDR;
            while (end + FRAME_HDR <= size) {
                size_t klen;
                int64_t blen = frame_body_len(map + end, &klen);
                if (blen < 0 || end + FRAME_HDR + blen > size) break;
                if (frame_crc(map + end, map + end + FRAME_HDR, (size_t)blen, NULL, 0) !=
                    get_le32(map + end + 8))
                    break;
                errpos = "alloc";
                if (reserve_state(&tmp) < 0) {
                    munmap(map, (size_t)size);
                    goto error;
                }
                bool acked = map[end + FRAME_FLAGS_AT] & FRAME_ACKED;
                tmp.st[tmp.nrec++] = acked ? REC_ACKED : REC_UNREAD;
                if (acked)
                    tmp.nacked++;
                else
                    tmp.nunread++;
                end += FRAME_HDR + blen;
            }
        }
        munmap(map, (size_t)size);
    }
    if (tmp.nrec == 0 || tmp.nunread == 0) {
        /* nothing valid, or everything in it delivered */
        if (tmp.nrec == 0) sp->truncated += (uint64_t)(end ? size - end : size);
        close(fd);
        unlink(path);
        free(tmp.st);
        return 0;
    }
    if (end < size) {
        errpos = "truncate";
        if (ftruncate(fd, end) < 0 || fdatasync(fd) < 0) goto error;
        sp->truncated += (uint64_t)(size - end);
    }
    close(fd);
    fd = -1;
    errpos = "alloc";
    struct seg *s = push_seg(sp, seq);
    if (s == NULL) goto error;
    tmp.size = end;
    *s = tmp;
    sp->bytes += end;
    sp->records += tmp.nunread;
    sp->unread += tmp.nunread;
    return 0;
error:
    set_err(err, "spool %s: %s: %s", path, errpos, strerror(errno));
    if (fd >= 0) close(fd);
    free(tmp.st);
    return -1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool parse_seg_name(const char *name, uint64_t *seq)
{
    if (strlen(name) != SEG_NAME_LEN || strcmp(name + 12, ".spool") != 0) return false;
    uint64_t v = 0;
    for (int i = 0; i < 12; i++) {
        if (name[i] < '0' || name[i] > '9') return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *seq = v;
    return true;
}

/* Reads the directory and loads its segments, oldest first. */
static int load_dir(struct tg_spool *sp, char err[TG_ERR_LEN])
{
    uint64_t *seqs = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;
    DIR *d = opendir(sp->dir);
    if (d == NULL) {
        set_err(err, "spool %s: opendir: %s", sp->dir, strerror(errno));
        return -1;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t seq;
        if (!parse_seg_name(de->d_name, &seq)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *ns = realloc(seqs, cap * sizeof(*ns));
            if (ns == NULL) {
                set_err(err, "spool %s: out of memory", sp->dir);
                goto out;
            }
            seqs = ns;
        }
        seqs[n++] = seq;
    }
    if (n) qsort(seqs, n, sizeof(*seqs), cmp_u64);
    for (size_t i = 0; i < n; i++) {
        if (load_seg(sp, seqs[i], err) < 0) goto out;
        if (seqs[i] >= sp->next_seq) sp->next_seq = seqs[i] + 1;
    }
    rc = 0;
out:
    closedir(d);
    free(seqs);
    return rc;
}

/* ---- the fsync thread (interval mode) ---- */

static void *syncer_main(void *arg)
{
    struct tg_spool *sp = arg;
    pthread_mutex_lock(&sp->mu);
    while (!sp->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + (int64_t)sp->opts.fsync_interval_ms * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&sp->cv, &sp->mu, &ts);
        if (sp->stop) continue;
        bool dir = sp->dir_dirty;
        if ((!sp->dirty || sp->wfd < 0) && !dir) continue;
        int fd = sp->dirty && sp->wfd >= 0 ? dup(sp->wfd) : -1;
        sp->dirty = false;
        sp->dir_dirty = false;
        pthread_mutex_unlock(&sp->mu);
        int rc = fd >= 0 ? fdatasync(fd) : 0;
        if (fd >= 0) close(fd);
        int drc = dir ? fsync(sp->dirfd) : 0;
        pthread_mutex_lock(&sp->mu);
        if (rc < 0) sp->dirty = true;
        if (drc < 0) sp->dir_dirty = true;
    }
    pthread_mutex_unlock(&sp->mu);
    return NULL;
}

/* fsync mode always: returns once every append up to number `target` is
 * fdatasync'd (and the directory, if a segment was created). The first waiter
 * syncs for everyone who appended before it started; the others wait for it.
 * Lock held (released while syncing). */
static int sync_upto(struct tg_spool *sp, uint64_t target, char err[TG_ERR_LEN])
{
    while (sp->synced < target) {
        if (sp->syncing) {
            pthread_cond_wait(&sp->sync_cv, &sp->mu);
            continue;
        }
        if (sp->wfd < 0) { /* closed: close_writer synced it */
            sp->synced = sp->wseq;
            break;
        }
        uint64_t upto = sp->wseq;
        bool dir = sp->dir_dirty;
        int fd = dup(sp->wfd);
        if (fd < 0) {
            set_err(err, "spool %s: dup: %s", sp->dir, strerror(errno));
            return -1;
        }
        sp->syncing = true;
        sp->dir_dirty = false;
        pthread_mutex_unlock(&sp->mu);
        const char *what = "fdatasync";
        int rc = fdatasync(fd);
        int e = errno;
        close(fd);
        if (rc == 0 && dir && fsync(sp->dirfd) < 0) {
            rc = -1;
            e = errno;
            what = "fsync";
        }
        pthread_mutex_lock(&sp->mu);
        sp->syncing = false;
        pthread_cond_broadcast(&sp->sync_cv);
        if (rc < 0) {
            if (dir) sp->dir_dirty = true;
            set_err(err, "spool %s: %s: %s", sp->dir, what, strerror(e));
            return -1;
        }
        if (upto > sp->synced) sp->synced = upto;
        if (sp->synced == sp->wseq) sp->dirty = false;
    }
    return 0;
}

/* ---- API ---- */

struct tg_spool *tg_spool_open(const struct tg_spool_opts *opts, char err[TG_ERR_LEN])
{
    pthread_once(&crc_once, crc_init);
    struct tg_spool *sp = calloc(1, sizeof(*sp));
    if (sp == NULL || (sp->dir = strdup(opts->dir)) == NULL) {
        set_err(err, "spool: out of memory");
        goto error;
    }
    size_t dl = strlen(sp->dir);
    while (dl > 1 && sp->dir[dl - 1] == '/')
        sp->dir[--dl] = '\0';
    sp->opts = *opts;
    sp->opts.dir = sp->dir;
    if (sp->opts.segment_bytes <= 0) {
        int64_t seg = sp->opts.max_bytes / 8;
        if (seg > TG_SPOOL_SEGMENT_BYTES) seg = TG_SPOOL_SEGMENT_BYTES;
        if (seg < TG_SPOOL_MIN_SEGMENT) seg = TG_SPOOL_MIN_SEGMENT;
        sp->opts.segment_bytes = seg;
    }
    if (sp->opts.fsync_interval_ms <= 0)
        sp->opts.fsync_interval_ms = TG_DEFAULT_SPOOL_FSYNC_INTERVAL_MS;
    sp->wfd = -1;
    sp->dirfd = -1;
    sp->next_seq = 1;
    sp->cur_off = SEG_HDR;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sp->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&sp->sync_cv, NULL);
    if (tg_usage_mkdirs(sp->dir) < 0 ||
        (sp->dirfd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        set_err(err, "spool %s: %s", sp->dir, strerror(errno));
        goto error;
    }
    if (flock(sp->dirfd, LOCK_EX | LOCK_NB) < 0) {
        set_err(err, "spool %s: %s", sp->dir,
                errno == EWOULDBLOCK ? "in use by another process" : strerror(errno));
        goto error;
    }
    if (load_dir(sp, err) < 0) goto error;
    if (sp->nsegs) sp->cur_seq = sp->segs[0].seq;
    update_full(sp);
    if (sp->opts.fsync == TG_SPOOL_FSYNC_INTERVAL) {
        int e = pthread_create(&sp->syncer, NULL, syncer_main, sp);
        if (e != 0) {
            set_err(err, "spool %s: thread: %s", sp->dir, strerror(e));
            goto error;
        }
        sp->syncer_running = true;
    }
    return sp;
error:
    tg_spool_close(sp);
    return NULL;
}

void tg_spool_close(struct tg_spool *sp)
{
    if (sp == NULL) return;
    if (sp->syncer_running) {
        pthread_mutex_lock(&sp->mu);
        sp->stop = true;
        pthread_cond_signal(&sp->cv);
        pthread_mutex_unlock(&sp->mu);
        pthread_join(sp->syncer, NULL);
    }
    close_writer(sp);
    if (sp->dirfd >= 0) sync_dir(sp);
    for (size_t i = 0; i < sp->nsegs; i++) {
        close_seg_fd(&sp->segs[i]);
        free(sp->segs[i].st);
    }
    if (sp->dirfd >= 0) close(sp->dirfd);
    if (sp->dir) {
        pthread_mutex_destroy(&sp->mu);
        pthread_cond_destroy(&sp->cv);
        pthread_cond_destroy(&sp->sync_cv);
    }
    free(sp->segs);
    free(sp->dir);
    free(sp);
}

int tg_spool_append(struct tg_spool *sp, const char *key, size_t klen, const char *data, size_t len,
                    unsigned flags, struct tg_spool_pos *pos, uint64_t *dropped,
                    char err[TG_ERR_LEN])
{
    if (dropped) *dropped = 0;
    if (klen > 0xFFFF || len + klen > TG_SPOOL_MAX_RECORD) {
        set_err(err, "spool %s: record of %zu bytes is too large", sp->dir, len + klen);
        return -1;
    }
    int64_t frame = FRAME_HDR + (int64_t)(len + klen);
    unsigned char hdr[FRAME_HDR];
    put_le32(hdr, (uint32_t)(len + klen));
    hdr[4] = (unsigned char)klen;
    hdr[5] = (unsigned char)(klen >> 8);
    hdr[6] = hdr[7] = 0;
    put_le32(hdr + 8, frame_crc(hdr, data, len, key, klen));

    int rc = -1;
    pthread_mutex_lock(&sp->mu);
    if (sp->opts.full == TG_SPOOL_FULL_DROP_OLDEST) {
        uint64_t before = sp->dropped;
        while (sp->nsegs > 0 && sp->bytes + frame > sp->opts.max_bytes)
            remove_seg(sp, 0);
        if (dropped) *dropped = sp->dropped - before;
    }
    struct seg *s = sp->wfd >= 0 ? last_seg(sp) : NULL;
    if (s == NULL || (s->nrec > 0 && s->size + frame > sp->opts.segment_bytes)) {
        if (open_writer(sp, err) < 0) goto out;
        s = last_seg(sp);
    }
    if (reserve_state(s) < 0) {
        set_err(err, "spool %s: out of memory", sp->dir);
        goto out;
    }
    struct iovec iov[3] = {{hdr, FRAME_HDR}, {(void *)data, len}, {(void *)key, klen}};
    if (write_all_at(sp->wfd, iov, 3, s->size) < 0) {
        set_err(err, "spool %s: write: %s", sp->dir, strerror(errno));
        if (ftruncate(sp->wfd, s->size) < 0) close_writer(sp); /* next append starts afresh */
        goto out;
    }
    struct tg_spool_pos p = {s->seq, (uint64_t)s->size, (uint64_t)s->nrec};
    if (pos) *pos = p;
    if (flags & TG_SPOOL_HANDED_OUT) {
        s->st[s->nrec] = REC_OUT;
        s->nout++;
        sp->out++;
        /* Nothing is waiting to be read: the cursor may skip what is in flight. */
        if (sp->unread == 0) {
            sp->cur_seq = s->seq;
            sp->cur_off = s->size + frame;
            sp->cur_idx = s->nrec + 1;
        }
    } else {
        s->st[s->nrec] = REC_UNREAD;
        s->nunread++;
        sp->unread++;
    }
    s->size += frame;
    s->nrec++;
    sp->bytes += frame;
    sp->records++;
    sp->dirty = true;
    uint64_t my = ++sp->wseq;
    rc = 0;
    if (sp->opts.fsync == TG_SPOOL_FSYNC_ALWAYS && !(flags & TG_SPOOL_DEFER_SYNC) &&
        sync_upto(sp, my, err) < 0)
        rc = 1;
out:
    update_full(sp);
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

/* The segment the cursor is in (the first at or after cur_seq), or nsegs. */
static size_t cursor_seg(struct tg_spool *sp)
{
    size_t i = 0;
    while (i < sp->nsegs && sp->segs[i].seq < sp->cur_seq)
        i++;
    if (i < sp->nsegs && sp->segs[i].seq != sp->cur_seq) {
        sp->cur_seq = sp->segs[i].seq;
        sp->cur_off = SEG_HDR;
        sp->cur_idx = 0;
    }
    return i;
}

static ssize_t read_full(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r < 0 ? -1 : (ssize_t)got;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Segment i cannot be read from record `idx` on (damaged after it was
 * written): those records are forgotten. Unread ones are lost (dropped);
 * handed-out ones are with their callers (tg_spool_release fails for them). */
static void cut_seg(struct tg_spool *sp, size_t i, int64_t idx, int64_t off)
{
    struct seg *s = &sp->segs[i];
    for (int64_t j = idx; j < s->nrec; j++) {
        switch (s->st[j]) {
        case REC_UNREAD:
            s->nunread--;
            sp->unread--;
            sp->records--;
            sp->dropped++;
            break;
        case REC_OUT:
            s->nout--;
            sp->out--;
            sp->records--;
            break;
        default:
            s->nacked--;
            break;
        }
    }
    s->nrec = idx;
    sp->truncated += (uint64_t)(s->size - off);
    /* Records appended after the damage would sit behind it: new ones go to a
     * fresh segment. */
    if (i + 1 == sp->nsegs) close_writer(sp);
    if (s->nacked >= s->nrec && (i + 1 < sp->nsegs || sp->wfd < 0)) remove_seg(sp, i);
}

int tg_spool_next(struct tg_spool *sp, struct tg_spool_rec *rec, char err[TG_ERR_LEN])
{
    int rc = 0;
    bool rescanned = false;
    pthread_mutex_lock(&sp->mu);
    while (sp->unread > 0) {
        size_t i = cursor_seg(sp);
        if (i == sp->nsegs) {
            /* Unread records exist but not after the cursor: cannot happen;
             * look once from the start rather than lose them. */
            if (rescanned || sp->nsegs == 0) break;
            rescanned = true;
            sp->cur_seq = sp->segs[0].seq;
            sp->cur_off = SEG_HDR;
            sp->cur_idx = 0;
            continue;
        }
        struct seg *s = &sp->segs[i];
        if (s->nunread == 0 || sp->cur_idx >= s->nrec) {
            if (s->nout == 0) close_seg_fd(s);
            if (i + 1 < sp->nsegs) {
                sp->cur_seq = sp->segs[i + 1].seq;
                sp->cur_off = SEG_HDR;
                sp->cur_idx = 0;
                continue;
            }
            sp->cur_off = s->size; /* the end, where the next append goes */
            sp->cur_idx = s->nrec;
            if (rescanned) break;
            rescanned = true; /* as above */
            sp->cur_seq = sp->segs[0].seq;
            sp->cur_off = SEG_HDR;
            sp->cur_idx = 0;
            continue;
        }
        if (seg_fd(sp, s) < 0) {
            char path[4096];
            seg_path(sp, s->seq, path, sizeof(path));
            set_err(err, "spool %s: open: %s", path, strerror(errno));
            rc = -1;
            break;
        }
        unsigned char hdr[FRAME_HDR];
        size_t klen;
        int64_t blen = -1;
        if (read_full(s->fd, hdr, FRAME_HDR, sp->cur_off) == FRAME_HDR &&
            (blen = frame_body_len(hdr, &klen)) >= 0 &&
            sp->cur_off + FRAME_HDR + blen <= s->size) {
            if (s->st[sp->cur_idx] != REC_UNREAD) { /* in flight or delivered: skip it */
                sp->cur_off += FRAME_HDR + blen;
                sp->cur_idx++;
                continue;
            }
            char *body = malloc((size_t)blen + 1);
            if (body == NULL) {
                set_err(err, "spool %s: out of memory", sp->dir);
                rc = -1;
                break;
            }
            if (read_full(s->fd, body, (size_t)blen, sp->cur_off + FRAME_HDR) == blen &&
                frame_crc(hdr, body, (size_t)blen, NULL, 0) == get_le32(hdr + 8)) {
                body[blen] = '\0';
                rec->pos = (struct tg_spool_pos){s->seq, (uint64_t)sp->cur_off,
                                                 (uint64_t)sp->cur_idx};
                rec->data = body;
                rec->len = (size_t)blen - klen;
                rec->key = body + rec->len;
                rec->klen = klen;
                s->st[sp->cur_idx] = REC_OUT;
                s->nunread--;
                s->nout++;
                sp->unread--;
                sp->out++;
                sp->cur_off += FRAME_HDR + blen;
                sp->cur_idx++;
                rc = 1;
                break;
            }
            free(body);
        }
        /* Damaged after it was written: the rest of this segment is lost. */
        cut_seg(sp, i, sp->cur_idx, sp->cur_off);
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

/* The record at pos if this spool still holds it: its segment's index in *si. */
static bool find_rec(struct tg_spool *sp, struct tg_spool_pos pos, size_t *si)
{
    ssize_t i = find_seg(sp, pos.seg);
    if (i < 0 || pos.idx >= (uint64_t)sp->segs[i].nrec) return false;
    *si = (size_t)i;
    return true;
}

void tg_spool_ack(struct tg_spool *sp, struct tg_spool_pos pos)
{
    size_t i;
    pthread_mutex_lock(&sp->mu);
    if (find_rec(sp, pos, &i) && sp->segs[i].st[pos.idx] == REC_OUT) {
        struct seg *s = &sp->segs[i];
        s->st[pos.idx] = REC_ACKED;
        s->nout--;
        s->nacked++;
        sp->out--;
        sp->records--;
        if (s->nacked == s->nrec) {
            remove_seg(sp, i);
            update_full(sp);
        } else {
            /* Marked in the file, so that a restart does not send it again.
             * Not synced: after a power loss a delivered record may be. */
            static const unsigned char acked = FRAME_ACKED;
            int fd = is_writer(sp, i) ? sp->wfd : seg_fd(sp, s);
            if (fd >= 0) (void)!pwrite(fd, &acked, 1, (off_t)pos.off + FRAME_FLAGS_AT);
            if (s->nout == 0 && s->seq != sp->cur_seq) close_seg_fd(s);
        }
    }
    pthread_mutex_unlock(&sp->mu);
}

int tg_spool_release(struct tg_spool *sp, struct tg_spool_pos pos)
{
    size_t i;
    int rc = -1;
    pthread_mutex_lock(&sp->mu);
    if (find_rec(sp, pos, &i)) {
        struct seg *s = &sp->segs[i];
        rc = 0;
        if (s->st[pos.idx] == REC_OUT) {
            s->st[pos.idx] = REC_UNREAD;
            s->nout--;
            s->nunread++;
            sp->out--;
            sp->unread++;
            if (pos.seg < sp->cur_seq || (pos.seg == sp->cur_seq && pos.idx < (uint64_t)sp->cur_idx)) {
                sp->cur_seq = pos.seg;
                sp->cur_off = (int64_t)pos.off;
                sp->cur_idx = (int64_t)pos.idx;
            }
        }
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

int tg_spool_sync(struct tg_spool *sp, char err[TG_ERR_LEN])
{
    int rc = 0;
    pthread_mutex_lock(&sp->mu);
    if (sp->wfd >= 0 && (sp->dirty || sp->synced < sp->wseq)) {
        if (fdatasync(sp->wfd) < 0) {
            set_err(err, "spool %s: fdatasync: %s", sp->dir, strerror(errno));
            rc = -1;
        } else {
            sp->dirty = false;
            sp->synced = sp->wseq;
        }
    }
    if (rc == 0 && sync_dir(sp) < 0) {
        set_err(err, "spool %s: fsync: %s", sp->dir, strerror(errno));
        rc = -1;
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

bool tg_spool_accepting(struct tg_spool *sp)
{
    return !__atomic_load_n(&sp->full, __ATOMIC_RELAXED);
}

void tg_spool_stats(struct tg_spool *sp, struct tg_spool_stats *out)
{
    pthread_mutex_lock(&sp->mu);
    *out = (struct tg_spool_stats){
        .bytes = sp->bytes,
        .records = sp->records,
        .unread = sp->unread,
        .handed_out = sp->out,
        .dropped = sp->dropped,
        .truncated_bytes = sp->truncated,
        .segments = (uint32_t)sp->nsegs,
    };
    pthread_mutex_unlock(&sp->mu);
}
