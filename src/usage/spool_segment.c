/* The spool's segment files: the frame format, CRCs, creating, loading, truncating and
 * deleting segments, the writer's file. */
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
#include "tollgate/buf.h"
#include "tollgate/sink.h"
#include "tollgate/spool.h"
#include "spool_segment.h"

static const char seg_magic[8] = {'T', 'G', 'S', 'P', 'O', 'O', 'L', '1'};
_Static_assert(sizeof(seg_magic) == SEG_HDR, "SEG_HDR is the magic's length");

/* snprintf into an error buffer, where a long path may cut the message short. */
TG_PRINTF(2, 3) void spool_set_err(char err[TG_ERR_LEN], const char *fmt, ...)
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

void spool_format_init(void)
{
    pthread_once(&crc_once, crc_init);
}

static uint32_t crc_update(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* A frame header's lengths, if they are plausible: returns the body length or -1. */
int64_t spool_frame_body_len(const unsigned char *h, size_t *klen)
{
    uint32_t len = get_le32(h);
    *klen = (size_t)h[4] | (size_t)h[5] << 8;
    if ((h[FRAME_FLAGS_AT] & ~FRAME_ACKED) != 0 || h[7] != 0 || len > TG_SPOOL_MAX_RECORD ||
        *klen > len)
        return -1;
    return len;
}

/* The CRC of a frame's header (flags as zero) and its body, given in two parts. */
uint32_t spool_frame_crc(const unsigned char *hdr, const void *a, size_t alen, const void *b,
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

void spool_seg_path(const struct tg_spool *sp, uint64_t seq, char *out, size_t cap)
{
    snprintf(out, cap, "%s/" SEG_NAME_FMT, sp->dir, seq);
}



/* The index of segment `seq`, or -1 (binary search: segs are by seq). */
ssize_t spool_find_seg(const struct tg_spool *sp, uint64_t seq)
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
    if (!tg_grow(&sp->segs, &sp->cap, sp->nsegs + 1, sizeof(*sp->segs), 16)) return NULL;
    struct seg *s = &sp->segs[sp->nsegs++];
    *s = (struct seg){.seq = seq, .size = SEG_HDR, .fd = -1};
    return s;
}

/* Room for one more record's state. */
int spool_reserve_state(struct seg *s)
{
    return tg_grow(&s->st, &s->cap, (size_t)s->nrec + 1, 1, 256) ? 0 : -1;
}

void spool_close_seg_fd(struct seg *s)
{
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
}

int spool_seg_fd(struct tg_spool *sp, struct seg *s)
{
    if (s->fd < 0) {
        char path[4096];
        spool_seg_path(sp, s->seq, path, sizeof(path));
        s->fd = open(path, O_RDWR | O_CLOEXEC);
    }
    return s->fd;
}

/* Deletes segment i (its file and its bookkeeping). Unread records in it are
 * counted as dropped; those handed out and not acknowledged are with the
 * caller, who delivers them or, as tg_spool_release fails for them, appends
 * them again (their acks are ignored). */
void spool_remove_seg(struct tg_spool *sp, size_t i)
{
    struct seg *s = &sp->segs[i];
    char path[4096];
    spool_seg_path(sp, s->seq, path, sizeof(path));
    spool_close_seg_fd(s);
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

void spool_update_full(struct tg_spool *sp)
{
    bool full = sp->opts.full == TG_SPOOL_FULL_REJECT && sp->bytes >= sp->opts.max_bytes;
    __atomic_store_n(&sp->full, full, __ATOMIC_RELAXED);
}

int spool_write_all_at(int fd, struct iovec *iov, int iovcnt, off_t off)
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
int spool_sync_dir(struct tg_spool *sp)
{
    if (!sp->dir_dirty) return 0;
    if (fsync(sp->dirfd) < 0) return -1;
    sp->dir_dirty = false;
    return 0;
}

/* Closes the segment being written, synced first (so that a rolled segment
 * is as durable as the mode promises, and `synced` covers every append to
 * it). */
int spool_close_writer(struct tg_spool *sp)
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
int spool_open_writer(struct tg_spool *sp, char err[TG_ERR_LEN])
{
    char path[4096];
    const char *errpos = "close";
    if (spool_close_writer(sp) < 0) goto error;
    uint64_t seq = sp->next_seq++;
    spool_seg_path(sp, seq, path, sizeof(path));
    errpos = "open";
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) goto error;
    struct iovec iov = {(void *)seg_magic, sizeof(seg_magic)};
    errpos = "write";
    if (spool_write_all_at(fd, &iov, 1, 0) < 0 || push_seg(sp, seq) == NULL) {
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
    spool_set_err(err, "spool %s: %s: %s", sp->dir, errpos, strerror(errno));
    return -1;
}

/* Checks one existing segment frame by frame, truncating a torn or corrupt
 * tail. Keeps it if it holds records not marked acknowledged, deletes it
 * otherwise. */
static int load_seg(struct tg_spool *sp, uint64_t seq, char err[TG_ERR_LEN])
{
    char path[4096];
    spool_seg_path(sp, seq, path, sizeof(path));
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
                int64_t blen = spool_frame_body_len(map + end, &klen);
                if (blen < 0 || end + FRAME_HDR + blen > size) break;
                if (spool_frame_crc(map + end, map + end + FRAME_HDR, (size_t)blen, NULL, 0) !=
                    get_le32(map + end + 8))
                    break;
                errpos = "alloc";
                if (spool_reserve_state(&tmp) < 0) {
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
    spool_set_err(err, "spool %s: %s: %s", path, errpos, strerror(errno));
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
int spool_load_dir(struct tg_spool *sp, char err[TG_ERR_LEN])
{
    uint64_t *seqs = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;
    DIR *d = opendir(sp->dir);
    if (d == NULL) {
        spool_set_err(err, "spool %s: opendir: %s", sp->dir, strerror(errno));
        return -1;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t seq;
        if (!parse_seg_name(de->d_name, &seq)) continue;
        if (!tg_grow(&seqs, &cap, n + 1, sizeof(*seqs), 16)) {
            spool_set_err(err, "spool %s: out of memory", sp->dir);
            goto out;
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

