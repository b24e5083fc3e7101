/* The disk spool: records appended (write-ahead of the Kafka producer), handed out in order,
 * acknowledged or released, under the fsync mode; the segment files they live in are
 * spool_segment.c's. */
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
#include "tollgate/sink.h"
#include "tollgate/spool.h"
#include "spool_segment.h"

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
            spool_set_err(err, "spool %s: dup: %s", sp->dir, strerror(errno));
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
            spool_set_err(err, "spool %s: %s: %s", sp->dir, what, strerror(e));
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
    spool_format_init();
    struct tg_spool *sp = calloc(1, sizeof(*sp));
    if (sp == NULL || (sp->dir = strdup(opts->dir)) == NULL) {
        spool_set_err(err, "spool: out of memory");
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
        spool_set_err(err, "spool %s: %s", sp->dir, strerror(errno));
        goto error;
    }
    if (flock(sp->dirfd, LOCK_EX | LOCK_NB) < 0) {
        spool_set_err(err, "spool %s: %s", sp->dir,
                errno == EWOULDBLOCK ? "in use by another process" : strerror(errno));
        goto error;
    }
    if (spool_load_dir(sp, err) < 0) goto error;
    if (sp->nsegs) sp->cur_seq = sp->segs[0].seq;
    spool_update_full(sp);
    if (sp->opts.fsync == TG_SPOOL_FSYNC_INTERVAL) {
        int e = pthread_create(&sp->syncer, NULL, syncer_main, sp);
        if (e != 0) {
            spool_set_err(err, "spool %s: thread: %s", sp->dir, strerror(e));
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
    spool_close_writer(sp);
    if (sp->dirfd >= 0) spool_sync_dir(sp);
    for (size_t i = 0; i < sp->nsegs; i++) {
        spool_close_seg_fd(&sp->segs[i]);
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
        spool_set_err(err, "spool %s: record of %zu bytes is too large", sp->dir, len + klen);
        return -1;
    }
    int64_t frame = FRAME_HDR + (int64_t)(len + klen);
    unsigned char hdr[FRAME_HDR];
    put_le32(hdr, (uint32_t)(len + klen));
    hdr[4] = (unsigned char)klen;
    hdr[5] = (unsigned char)(klen >> 8);
    hdr[6] = hdr[7] = 0;
    put_le32(hdr + 8, spool_frame_crc(hdr, data, len, key, klen));

    int rc = -1;
    pthread_mutex_lock(&sp->mu);
    if (sp->opts.full == TG_SPOOL_FULL_DROP_OLDEST) {
        uint64_t before = sp->dropped;
        while (sp->nsegs > 0 && sp->bytes + frame > sp->opts.max_bytes)
            spool_remove_seg(sp, 0);
        if (dropped) *dropped = sp->dropped - before;
    }
    struct seg *s = sp->wfd >= 0 ? last_seg(sp) : NULL;
    if (s == NULL || (s->nrec > 0 && s->size + frame > sp->opts.segment_bytes)) {
        if (spool_open_writer(sp, err) < 0) goto out;
        s = last_seg(sp);
    }
    if (spool_reserve_state(s) < 0) {
        spool_set_err(err, "spool %s: out of memory", sp->dir);
        goto out;
    }
    struct iovec iov[3] = {{hdr, FRAME_HDR}, {(void *)data, len}, {(void *)key, klen}};
    if (spool_write_all_at(sp->wfd, iov, 3, s->size) < 0) {
        spool_set_err(err, "spool %s: write: %s", sp->dir, strerror(errno));
        if (ftruncate(sp->wfd, s->size) < 0) spool_close_writer(sp); /* next append starts afresh */
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
    spool_update_full(sp);
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
    if (i + 1 == sp->nsegs) spool_close_writer(sp);
    if (s->nacked >= s->nrec && (i + 1 < sp->nsegs || sp->wfd < 0)) spool_remove_seg(sp, i);
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
            if (s->nout == 0) spool_close_seg_fd(s);
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
        if (spool_seg_fd(sp, s) < 0) {
            char path[4096];
            spool_seg_path(sp, s->seq, path, sizeof(path));
            spool_set_err(err, "spool %s: open: %s", path, strerror(errno));
            rc = -1;
            break;
        }
        unsigned char hdr[FRAME_HDR];
        size_t klen;
        int64_t blen = -1;
        if (read_full(s->fd, hdr, FRAME_HDR, sp->cur_off) == FRAME_HDR &&
            (blen = spool_frame_body_len(hdr, &klen)) >= 0 &&
            sp->cur_off + FRAME_HDR + blen <= s->size) {
            if (s->st[sp->cur_idx] != REC_UNREAD) { /* in flight or delivered: skip it */
                sp->cur_off += FRAME_HDR + blen;
                sp->cur_idx++;
                continue;
            }
            char *body = malloc((size_t)blen + 1);
            if (body == NULL) {
                spool_set_err(err, "spool %s: out of memory", sp->dir);
                rc = -1;
                break;
            }
            if (read_full(s->fd, body, (size_t)blen, sp->cur_off + FRAME_HDR) == blen &&
                spool_frame_crc(hdr, body, (size_t)blen, NULL, 0) == get_le32(hdr + 8)) {
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
    ssize_t i = spool_find_seg(sp, pos.seg);
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
            spool_remove_seg(sp, i);
            spool_update_full(sp);
        } else {
            /* Marked in the file, so that a restart does not send it again.
             * Not synced: after a power loss a delivered record may be. */
            static const unsigned char acked = FRAME_ACKED;
            int fd = is_writer(sp, i) ? sp->wfd : spool_seg_fd(sp, s);
            if (fd >= 0) (void)!pwrite(fd, &acked, 1, (off_t)pos.off + FRAME_FLAGS_AT);
            if (s->nout == 0 && s->seq != sp->cur_seq) spool_close_seg_fd(s);
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
            spool_set_err(err, "spool %s: fdatasync: %s", sp->dir, strerror(errno));
            rc = -1;
        } else {
            sp->dirty = false;
            sp->synced = sp->wseq;
        }
    }
    if (rc == 0 && spool_sync_dir(sp) < 0) {
        spool_set_err(err, "spool %s: fsync: %s", sp->dir, strerror(errno));
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
