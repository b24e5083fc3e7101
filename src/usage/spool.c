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
 * (u32 body length, u16 key length, u16 zero, u32 CRC-32 of the first 8 header
 * bytes and the body; little-endian) and the body: payload then key. */
static const char seg_magic[8] = {'T', 'G', 'S', 'P', 'O', 'O', 'L', '1'};
#define SEG_HDR ((int64_t)sizeof(seg_magic))
#define FRAME_HDR 12
#define SEG_NAME_FMT "%012" PRIu64 ".spool"
#define SEG_NAME_LEN 18

struct seg {
    uint64_t seq;
    int64_t size;  /* bytes of the file that hold valid frames */
    int64_t nrec;  /* records in it */
    int64_t nread; /* handed out by tg_spool_next */
    int64_t nacked;
    int rfd; /* for reading; -1 until the cursor gets here */
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
    uint64_t cur_seq; /* the read cursor */
    int64_t cur_off;
    int64_t bytes, records, unread;
    uint64_t dropped, truncated;
    bool dirty; /* written since the last fdatasync */
    bool full;  /* read without the lock by tg_spool_accepting */
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
    if (h[6] != 0 || h[7] != 0 || len > TG_SPOOL_MAX_RECORD || *klen > len) return -1;
    return len;
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
    *s = (struct seg){.seq = seq, .size = SEG_HDR, .rfd = -1};
    return s;
}

/* Deletes segment i (its file and its bookkeeping). Records in it not yet
 * handed out are counted as dropped; those handed out and not acknowledged
 * are with the caller, who delivers or appends them again (their acks are
 * then ignored). */
static void remove_seg(struct tg_spool *sp, size_t i)
{
    struct seg *s = &sp->segs[i];
    char path[4096];
    seg_path(sp, s->seq, path, sizeof(path));
    if (s->rfd >= 0) close(s->rfd);
    if (i == sp->nsegs - 1 && sp->wfd >= 0) {
        close(sp->wfd);
        sp->wfd = -1;
        sp->dirty = false;
    }
    unlink(path);
    sp->dropped += (uint64_t)(s->nrec - s->nread);
    sp->records -= s->nrec - s->nacked;
    sp->unread -= s->nrec - s->nread;
    sp->bytes -= s->size;
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

/* Closes the segment being written (synced first in interval mode, so that a
 * rolled segment is as durable as the interval promises). */
static int close_writer(struct tg_spool *sp)
{
    int rc = 0;
    if (sp->wfd < 0) return 0;
    if (sp->dirty && fdatasync(sp->wfd) < 0) rc = -1;
    close(sp->wfd);
    sp->wfd = -1;
    sp->dirty = false;
    return rc;
}

/* Starts a new segment file for appends. */
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
    fsync(sp->dirfd); /* the new name itself must survive a crash */
    sp->wfd = fd;
    sp->bytes += SEG_HDR;
    return 0;
error:
    set_err(err, "spool %s: %s: %s", sp->dir, errpos, strerror(errno));
    return -1;
}

/* Checks one existing segment frame by frame, truncating a torn or corrupt
 * tail. Keeps it if it holds records, deletes it otherwise. */
static int load_seg(struct tg_spool *sp, uint64_t seq, char err[TG_ERR_LEN])
{
    char path[4096];
    seg_path(sp, seq, path, sizeof(path));
    const char *errpos = "open";
    unsigned char *map = MAP_FAILED;
    struct stat st;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) goto error;
    errpos = "stat";
    if (fstat(fd, &st) < 0) goto error;
    int64_t size = st.st_size, end = 0, nrec = 0;
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
                uint32_t crc = crc_update(0, map + end, 8);
                crc = crc_update(crc, map + end + FRAME_HDR, (size_t)blen);
                if (crc != get_le32(map + end + 8)) break;
                end += FRAME_HDR + blen;
                nrec++;
            }
        }
        munmap(map, (size_t)size);
    }
    if (nrec == 0) {
        sp->truncated += (uint64_t)(end ? size - end : size);
        close(fd);
        unlink(path);
        return 0;
    }
    if (end < size) {
        errpos = "truncate";
        if (ftruncate(fd, end) < 0 || fdatasync(fd) < 0) goto error;
        sp->truncated += (uint64_t)(size - end);
    }
    close(fd);
    errpos = "alloc";
    struct seg *s = push_seg(sp, seq);
    if (s == NULL) goto error_nofd;
    s->size = end;
    s->nrec = nrec;
    sp->bytes += end;
    sp->records += nrec;
    sp->unread += nrec;
    return 0;
error:
    if (fd >= 0) close(fd);
error_nofd:
    set_err(err, "spool %s: %s: %s", path, errpos, strerror(errno));
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
        if (sp->stop || !sp->dirty || sp->wfd < 0) continue;
        int fd = dup(sp->wfd);
        if (fd < 0) continue;
        sp->dirty = false;
        pthread_mutex_unlock(&sp->mu);
        int rc = fdatasync(fd);
        close(fd);
        pthread_mutex_lock(&sp->mu);
        if (rc < 0) sp->dirty = true;
    }
    pthread_mutex_unlock(&sp->mu);
    return NULL;
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
    for (size_t i = 0; i < sp->nsegs; i++)
        if (sp->segs[i].rfd >= 0) close(sp->segs[i].rfd);
    if (sp->dirfd >= 0) close(sp->dirfd);
    if (sp->dir) {
        pthread_mutex_destroy(&sp->mu);
        pthread_cond_destroy(&sp->cv);
    }
    free(sp->segs);
    free(sp->dir);
    free(sp);
}

int tg_spool_append(struct tg_spool *sp, const char *key, size_t klen, const char *data, size_t len,
                    bool defer_sync, uint64_t *dropped, char err[TG_ERR_LEN])
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
    uint32_t crc = crc_update(0, hdr, 8);
    crc = crc_update(crc, data, len);
    crc = crc_update(crc, key, klen);
    put_le32(hdr + 8, crc);

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
    struct iovec iov[3] = {{hdr, FRAME_HDR}, {(void *)data, len}, {(void *)key, klen}};
    if (write_all_at(sp->wfd, iov, 3, s->size) < 0) {
        set_err(err, "spool %s: write: %s", sp->dir, strerror(errno));
        if (ftruncate(sp->wfd, s->size) < 0) close_writer(sp); /* next append starts afresh */
        goto out;
    }
    s->size += frame;
    s->nrec++;
    sp->bytes += frame;
    sp->records++;
    sp->unread++;
    sp->dirty = true;
    rc = 0;
    if (sp->opts.fsync == TG_SPOOL_FSYNC_ALWAYS && !defer_sync) {
        if (fdatasync(sp->wfd) < 0) {
            set_err(err, "spool %s: fdatasync: %s", sp->dir, strerror(errno));
            rc = -1;
        } else {
            sp->dirty = false;
        }
    }
out:
    update_full(sp);
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

/* The segment the cursor is in (the first at or after cur_seq), or NULL. */
static size_t cursor_seg(struct tg_spool *sp)
{
    size_t i = 0;
    while (i < sp->nsegs && sp->segs[i].seq < sp->cur_seq)
        i++;
    if (i < sp->nsegs && sp->segs[i].seq != sp->cur_seq) {
        sp->cur_seq = sp->segs[i].seq;
        sp->cur_off = SEG_HDR;
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

int tg_spool_next(struct tg_spool *sp, struct tg_spool_rec *rec, char err[TG_ERR_LEN])
{
    int rc = 0;
    char path[4096];
    pthread_mutex_lock(&sp->mu);
    for (;;) {
        size_t i = cursor_seg(sp);
        if (i == sp->nsegs) break;
        struct seg *s = &sp->segs[i];
        if (s->nread >= s->nrec) {
            if (s->rfd >= 0) close(s->rfd);
            s->rfd = -1;
            if (i + 1 == sp->nsegs) break;
            sp->cur_seq = sp->segs[i + 1].seq;
            sp->cur_off = SEG_HDR;
            continue;
        }
        if (s->rfd < 0) {
            seg_path(sp, s->seq, path, sizeof(path));
            s->rfd = open(path, O_RDONLY | O_CLOEXEC);
            if (s->rfd < 0) {
                set_err(err, "spool %s: open: %s", path, strerror(errno));
                rc = -1;
                break;
            }
        }
        unsigned char hdr[FRAME_HDR];
        size_t klen;
        int64_t blen = -1;
        char *body = NULL;
        if (read_full(s->rfd, hdr, FRAME_HDR, sp->cur_off) == FRAME_HDR &&
            (blen = frame_body_len(hdr, &klen)) >= 0 && (body = malloc((size_t)blen + 1)) &&
            read_full(s->rfd, body, (size_t)blen, sp->cur_off + FRAME_HDR) == blen &&
            crc_update(crc_update(0, hdr, 8), body, (size_t)blen) == get_le32(hdr + 8)) {
            body[blen] = '\0';
            rec->pos = (struct tg_spool_pos){s->seq, (uint64_t)sp->cur_off};
            rec->data = body;
            rec->len = (size_t)blen - klen;
            rec->key = body + rec->len;
            rec->klen = klen;
            sp->cur_off += FRAME_HDR + blen;
            s->nread++;
            sp->unread--;
            rc = 1;
            break;
        }
        /* Damaged after it was written: the rest of this segment is lost. */
        free(body);
        int64_t lost = s->nrec - s->nread;
        sp->truncated += (uint64_t)(s->size - sp->cur_off);
        sp->dropped += (uint64_t)lost;
        sp->records -= lost;
        sp->unread -= lost;
        s->nrec = s->nread;
        /* Records appended after the damage would sit behind it: new ones go
         * to a fresh segment. */
        if (i + 1 == sp->nsegs) close_writer(sp);
        if (s->nacked >= s->nrec && (i + 1 < sp->nsegs || sp->wfd < 0)) {
            s->nacked = s->nrec;
            remove_seg(sp, i);
        }
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

void tg_spool_ack(struct tg_spool *sp, struct tg_spool_pos pos)
{
    pthread_mutex_lock(&sp->mu);
    for (size_t i = 0; i < sp->nsegs; i++) {
        struct seg *s = &sp->segs[i];
        if (s->seq < pos.seg) continue;
        if (s->seq == pos.seg && s->nacked < s->nread) {
            s->nacked++;
            sp->records--;
            if (s->nacked == s->nrec) remove_seg(sp, i);
            update_full(sp);
        }
        break;
    }
    pthread_mutex_unlock(&sp->mu);
}

int tg_spool_sync(struct tg_spool *sp, char err[TG_ERR_LEN])
{
    int rc = 0;
    pthread_mutex_lock(&sp->mu);
    if (sp->wfd >= 0 && sp->dirty) {
        if (fdatasync(sp->wfd) < 0) {
            set_err(err, "spool %s: fdatasync: %s", sp->dir, strerror(errno));
            rc = -1;
        } else {
            sp->dirty = false;
        }
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
        .dropped = sp->dropped,
        .truncated_bytes = sp->truncated,
        .segments = (uint32_t)sp->nsegs,
    };
    pthread_mutex_unlock(&sp->mu);
}
