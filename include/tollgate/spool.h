/* The disk spool: an append-only queue of records, kept in segment files, replayed in order. */
#ifndef TOLLGATE_SPOOL_H
#define TOLLGATE_SPOOL_H

#include "tollgate/config.h"

/* Segments roll over at this size (smaller when max_bytes is small: max_bytes / 8,
 * at least TG_SPOOL_MIN_SEGMENT). */
#define TG_SPOOL_SEGMENT_BYTES (16LL * 1024 * 1024)
#define TG_SPOOL_MIN_SEGMENT 4096LL
/* A frame whose length says more than this is garbage. */
#define TG_SPOOL_MAX_RECORD (64u * 1024 * 1024)

struct tg_spool_opts {
    const char *dir; /* created (with parents) if missing */
    enum tg_spool_fsync fsync;
    int fsync_interval_ms;   /* TG_SPOOL_FSYNC_INTERVAL: a thread fdatasyncs this often */
    int64_t max_bytes;       /* spool_max_bytes */
    enum tg_spool_full full; /* what happens at max_bytes */
    int64_t segment_bytes;   /* 0: derived from max_bytes as above */
};

/* Where a record is: its segment's number, its byte offset and its index
 * (0, 1, ...) in that segment. Valid for the life of one tg_spool. */
struct tg_spool_pos {
    uint64_t seg;
    uint64_t off;
    uint64_t idx;
};

/* One record read for replay. `data` is one malloc'd block that the reader
 * owns: the payload, then the key (`key` points into the same block). */
struct tg_spool_rec {
    struct tg_spool_pos pos;
    char *data;
    size_t len;
    const char *key;
    size_t klen;
};

struct tg_spool_stats {
    int64_t bytes;            /* on disk, all segments */
    int64_t records;          /* kept and not yet acknowledged */
    int64_t unread;           /* waiting to be handed out by tg_spool_next */
    int64_t handed_out;       /* handed out (tg_spool_next, TG_SPOOL_HANDED_OUT), not yet acknowledged */
    uint64_t dropped;         /* records deleted unread (drop_oldest, damage) since open */
    uint64_t truncated_bytes; /* torn or corrupt tails cut off at open or read */
    uint32_t segments;
};

struct tg_spool;

/* Opens the spool in opts->dir, locking the directory (flock) against a second
 * process. Existing segments are checked frame by frame;
 * a torn or corrupt tail is truncated (counted in truncated_bytes), never
 * returned. Every surviving record not marked acknowledged is unread, so a
 * replay starts from the oldest. NULL with `err` set if the directory or a
 * segment cannot be used. */
struct tg_spool *tg_spool_open(const struct tg_spool_opts *opts, char err[TG_ERR_LEN]) TG_WUR;

/* Syncs, stops the fsync thread, closes the files and frees. Segments stay on
 * disk. NULL is fine. */
void tg_spool_close(struct tg_spool *sp);

/* tg_spool_append flags. */
/* A batch: no fdatasync in fsync mode always; the caller calls tg_spool_sync
 * after its last append. */
#define TG_SPOOL_DEFER_SYNC 1u
/* Write-ahead: the caller delivers the record itself and then acknowledges
 * (tg_spool_ack) or releases (tg_spool_release) it; tg_spool_next does not
 * hand it out meanwhile. Without it the record is unread. */
#define TG_SPOOL_HANDED_OUT 2u

/* Appends one record (payload + key) and returns once it is written to the
 * file (write(2): in the page cache, so it survives the process being
 * killed), and in fsync mode always also fdatasync'd (unless
 * TG_SPOOL_DEFER_SYNC; concurrent appenders share one fdatasync). *pos (may
 * be NULL) gets its position. Past max_bytes: in reject mode the record is
 * still written (a slight overshoot) and tg_spool_accepting turns false; in
 * drop_oldest mode the oldest segments are deleted first and the number of
 * unread records they held is stored in *dropped (may be NULL); records they
 * held that were handed out are with their callers (tg_spool_release then
 * fails for them). Returns 0; 1 if the record was written but its fdatasync
 * failed (`err` set: it is in the spool, *pos is valid, but it may not
 * survive a power loss); -1 with `err` set if it was not written. Any
 * thread. */
int tg_spool_append(struct tg_spool *sp, const char *key, size_t klen, const char *data, size_t len,
                    unsigned flags, struct tg_spool_pos *pos, uint64_t *dropped,
                    char err[TG_ERR_LEN]) TG_WUR;

/* Hands out the next unread record, oldest first (a released record comes
 * again before the unread records after it). Returns 1 with *rec filled
 * (free rec->data), 0 when no record is unread, -1 with `err` set on a read
 * error. A record stays in the spool until acknowledged. */
int tg_spool_next(struct tg_spool *sp, struct tg_spool_rec *rec, char err[TG_ERR_LEN]) TG_WUR;

/* Acknowledges one handed-out record: it is delivered and never handed out
 * again, by this process or (marked in its frame) the next one. Acks may come
 * in any order; a second ack of a record, or an ack of a record whose segment
 * drop_oldest or damage already deleted, is ignored. A segment whose records
 * are all acknowledged is deleted. Any thread. */
void tg_spool_ack(struct tg_spool *sp, struct tg_spool_pos pos);

/* Gives back a handed-out record that was not delivered: it is unread again
 * (no second copy is written). Returns 0, or -1 if the spool no longer holds
 * it (drop_oldest or damage deleted it): the caller has the only copy. Any
 * thread. */
int tg_spool_release(struct tg_spool *sp, struct tg_spool_pos pos) TG_WUR;

/* fdatasyncs the segment being written. Returns 0 or -1 with err set. */
int tg_spool_sync(struct tg_spool *sp, char err[TG_ERR_LEN]) TG_WUR;

/* false while the spool is at max_bytes in reject mode. */
bool tg_spool_accepting(struct tg_spool *sp);

void tg_spool_stats(struct tg_spool *sp, struct tg_spool_stats *out);

#endif
