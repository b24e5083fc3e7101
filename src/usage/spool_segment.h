/* Private to src/usage/: the spool's state and its segment files (spool_segment.c),
 * shared with the record stream over them (spool.c). */
#ifndef TOLLGATE_USAGE_SPOOL_SEGMENT_H
#define TOLLGATE_USAGE_SPOOL_SEGMENT_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include "tollgate/spool.h"

/* Segment file: the 8-byte magic, then frames. A frame is a 12-byte header
 * (u32 body length, u16 key length, u8 flags, u8 zero, u32 CRC-32 of the
 * first 8 header bytes with the flags byte as zero, and the body;
 * little-endian) and the body: payload then key. The one flag, FRAME_ACKED,
 * is set in place when the record is acknowledged, so that a restart does not
 * replay it; the CRC does not cover it. */
#define SEG_HDR ((int64_t)8) /* the magic */
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
    size_t cap;      /* states allocated */
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

static inline void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline struct seg *last_seg(struct tg_spool *sp)
{
    return sp->nsegs ? &sp->segs[sp->nsegs - 1] : NULL;
}

static inline bool is_writer(const struct tg_spool *sp, size_t i)
{
    return i + 1 == sp->nsegs && sp->wfd >= 0;
}

/* The CRC table, once per process: before any frame is read or written. */
void spool_format_init(void);
/* snprintf into an error buffer, where a long path may cut the message short. */
TG_PRINTF(2, 3) void spool_set_err(char err[TG_ERR_LEN], const char *fmt, ...);
/* A frame header's lengths, if they are plausible: returns the body length or -1. */
int64_t spool_frame_body_len(const unsigned char *h, size_t *klen);
/* The CRC of a frame's header (flags as zero) and its body, given in two parts. */
uint32_t spool_frame_crc(const unsigned char *hdr, const void *a, size_t alen, const void *b,
                         size_t blen);

/* Segments; the lock is held for all of these. */
void spool_seg_path(const struct tg_spool *sp, uint64_t seq, char *out, size_t cap);
/* The index of segment `seq`, or -1. */
ssize_t spool_find_seg(const struct tg_spool *sp, uint64_t seq);
/* Room for one more record's state: 0, or -1 when out of memory. */
int spool_reserve_state(struct seg *s);
void spool_close_seg_fd(struct seg *s);
/* The segment's read-write descriptor, opened on first use; -1 on failure. */
int spool_seg_fd(struct tg_spool *sp, struct seg *s);
/* Deletes segment i, its file and its bookkeeping; its unread records count as dropped. */
void spool_remove_seg(struct tg_spool *sp, size_t i);
/* Recomputes `full`: in reject mode, whether the bytes held reached max_bytes. */
void spool_update_full(struct tg_spool *sp);
/* pwritev until all is written: 0, or -1 with errno. */
int spool_write_all_at(int fd, struct iovec *iov, int iovcnt, off_t off);
/* fsyncs the directory if a segment was created since its last fsync. */
int spool_sync_dir(struct tg_spool *sp);
/* Closes the segment being written, synced first. */
int spool_close_writer(struct tg_spool *sp);
/* Starts a new segment file for appends. */
int spool_open_writer(struct tg_spool *sp, char err[TG_ERR_LEN]);
/* Reads the directory and loads its segments, oldest first. */
int spool_load_dir(struct tg_spool *sp, char err[TG_ERR_LEN]);

#endif
