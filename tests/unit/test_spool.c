/* Tests of the disk spool: order, acknowledgement, roll-over, torn tails, reopening, the size cap.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "tollgate/spool.h"

struct fixture {
    char dir[64];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/tg_spool_XXXXXX");
    if (mkdtemp(f->dir) == NULL) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static struct tg_spool *open_spool(const char *dir, int64_t max, enum tg_spool_full full,
                                   int64_t seg)
{
    struct tg_spool_opts o = {.dir = dir,
                              .fsync = TG_SPOOL_FSYNC_INTERVAL,
                              .fsync_interval_ms = 20,
                              .max_bytes = max,
                              .full = full,
                              .segment_bytes = seg};
    char err[TG_ERR_LEN];
    struct tg_spool *sp = tg_spool_open(&o, err);
    if (sp == NULL) fail_msg("open: %s", err);
    return sp;
}

static void payload(int i, char *out, size_t cap)
{
    snprintf(out, cap, "{\"id\":\"rec-%04d\",\"pad\":\"%0120d\"}", i, i);
}

/* Appends records from .. from+n-1 with `flags`; their positions go to pos[0..n-1] (may be NULL). */
static void append_flags(struct tg_spool *sp, int from, int n, unsigned flags,
                         struct tg_spool_pos *pos, uint64_t *dropped)
{
    char buf[256], key[32], err[TG_ERR_LEN];
    for (int i = from; i < from + n; i++) {
        payload(i, buf, sizeof(buf));
        snprintf(key, sizeof(key), "tenant-%d", i % 3);
        uint64_t d = 0;
        if (tg_spool_append(sp, key, strlen(key), buf, strlen(buf), flags,
                            pos ? &pos[i - from] : NULL, &d, err) != 0)
            fail_msg("append %d: %s", i, err);
        if (dropped) *dropped += d;
    }
}

static void append_n(struct tg_spool *sp, int from, int n, uint64_t *dropped)
{
    append_flags(sp, from, n, 0, NULL, dropped);
}

/* Reads the next record and checks it is number `i`; returns its position. */
static struct tg_spool_pos expect_next(struct tg_spool *sp, int i)
{
    struct tg_spool_rec rec;
    char err[TG_ERR_LEN], want[256], key[32];
    int r = tg_spool_next(sp, &rec, err);
    if (r != 1) fail_msg("next (want record %d): %d %s", i, r, r < 0 ? err : "");
    payload(i, want, sizeof(want));
    snprintf(key, sizeof(key), "tenant-%d", i % 3);
    assert_int_equal(rec.len, strlen(want));
    assert_memory_equal(rec.data, want, rec.len);
    assert_int_equal(rec.klen, strlen(key));
    assert_memory_equal(rec.key, key, rec.klen);
    struct tg_spool_pos pos = rec.pos;
    free(rec.data);
    return pos;
}

static void expect_end(struct tg_spool *sp)
{
    struct tg_spool_rec rec;
    char err[TG_ERR_LEN];
    assert_int_equal(tg_spool_next(sp, &rec, err), 0);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".spool") != NULL;
    closedir(d);
    return n;
}

static struct tg_spool_stats stats(struct tg_spool *sp)
{
    struct tg_spool_stats st;
    tg_spool_stats(sp, &st);
    return st;
}

static void test_append_iterate_ack(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    expect_end(sp);
    /* one process per spool directory */
    struct tg_spool_opts o = {.dir = f->dir, .max_bytes = 1 << 20};
    char lerr[TG_ERR_LEN];
    assert_null(tg_spool_open(&o, lerr));
    assert_non_null(strstr(lerr, "in use by another process"));
    append_n(sp, 0, 10, NULL);
    assert_int_equal(stats(sp).records, 10);
    assert_int_equal(stats(sp).unread, 10);
    assert_int_equal(count_files(f->dir), 1);
    struct tg_spool_pos pos[10];
    for (int i = 0; i < 10; i++)
        pos[i] = expect_next(sp, i);
    expect_end(sp);
    assert_int_equal(stats(sp).unread, 0);
    for (int i = 0; i < 9; i++)
        tg_spool_ack(sp, pos[i]);
    assert_int_equal(stats(sp).records, 1);
    assert_int_equal(count_files(f->dir), 1);
    tg_spool_ack(sp, pos[9]);
    assert_int_equal(stats(sp).records, 0);
    assert_int_equal(stats(sp).bytes, 0);
    assert_int_equal(count_files(f->dir), 0);
    /* appending again starts a new segment, and the cursor follows */
    append_n(sp, 10, 2, NULL);
    expect_next(sp, 10);
    expect_next(sp, 11);
    expect_end(sp);
    char err[TG_ERR_LEN];
    assert_int_equal(tg_spool_sync(sp, err), 0);
    tg_spool_close(sp);
}

static void test_rollover(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 4096);
    append_n(sp, 0, 100, NULL);
    struct tg_spool_stats st = stats(sp);
    assert_true(st.segments >= 4);
    assert_int_equal(count_files(f->dir), (int)st.segments);
    char path[128];
    snprintf(path, sizeof(path), "%s/000000000001.spool", f->dir);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size <= 4096);
    /* the records of the first segment, acknowledged, delete its file only */
    struct tg_spool_pos first = expect_next(sp, 0);
    tg_spool_ack(sp, first);
    int i = 1;
    for (;; i++) {
        struct tg_spool_pos p = expect_next(sp, i);
        if (p.seg != first.seg) break;
        tg_spool_ack(sp, p);
    }
    assert_int_not_equal(stat(path, &sb), 0);
    assert_int_equal(count_files(f->dir), (int)st.segments - 1);
    for (i++; i < 100; i++)
        expect_next(sp, i);
    expect_end(sp);
    tg_spool_close(sp);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

static void test_torn_tail(void **state)
{
    struct fixture *f = *state;
    char path[128];
    snprintf(path, sizeof(path), "%s/000000000001.spool", f->dir);
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    append_n(sp, 0, 4, NULL);
    off_t four = file_size(path);
    append_n(sp, 4, 1, NULL);
    tg_spool_close(sp);
    /* a crash in the middle of writing record 4 */
    assert_int_equal(truncate(path, file_size(path) - 7), 0);
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    struct tg_spool_stats st = stats(sp);
    assert_int_equal(st.records, 4);
    assert_true(st.truncated_bytes > 0);
    assert_int_equal(file_size(path), four);
    append_n(sp, 5, 1, NULL);
    for (int i = 0; i < 4; i++)
        expect_next(sp, i);
    expect_next(sp, 5);
    expect_end(sp);
    tg_spool_close(sp);
}

static void test_corrupt_record(void **state)
{
    struct fixture *f = *state;
    char path[128];
    snprintf(path, sizeof(path), "%s/000000000001.spool", f->dir);
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    append_n(sp, 0, 2, NULL);
    off_t two = file_size(path);
    append_n(sp, 2, 3, NULL);
    tg_spool_close(sp);
    /* flip one byte inside record 2's body: it and everything after it go */
    int fd = open(path, O_RDWR);
    char c;
    assert_int_equal(pread(fd, &c, 1, two + 20), 1);
    c ^= 0x55;
    assert_int_equal(pwrite(fd, &c, 1, two + 20), 1);
    close(fd);
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    assert_int_equal(stats(sp).records, 2);
    assert_int_equal(file_size(path), two);
    expect_next(sp, 0);
    expect_next(sp, 1);
    expect_end(sp);
    tg_spool_close(sp);
    /* garbage that is not a spool at all is removed */
    snprintf(path, sizeof(path), "%s/000000000009.spool", f->dir);
    fd = open(path, O_CREAT | O_WRONLY, 0644);
    assert_int_equal(write(fd, "garbage!garbage!garbage!", 24), 24);
    close(fd);
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    assert_int_equal(stats(sp).records, 2);
    assert_int_not_equal(access(path, F_OK), 0);
    /* new segments are numbered after the highest seen */
    append_n(sp, 2, 1, NULL);
    snprintf(path, sizeof(path), "%s/000000000010.spool", f->dir);
    assert_int_equal(access(path, F_OK), 0);
    tg_spool_close(sp);
}

/* Damage in the segment still being written, found while reading it: what
 * comes after the damage is lost, and later records are not (they go to a new
 * segment instead of behind the damage). */
static void test_damage_in_open_segment(void **state)
{
    struct fixture *f = *state;
    char path[128];
    snprintf(path, sizeof(path), "%s/000000000001.spool", f->dir);
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    append_n(sp, 0, 1, NULL);
    off_t one = file_size(path);
    append_n(sp, 1, 2, NULL);
    int fd = open(path, O_RDWR);
    char c;
    assert_int_equal(pread(fd, &c, 1, one + 20), 1);
    c ^= 0x55;
    assert_int_equal(pwrite(fd, &c, 1, one + 20), 1);
    close(fd);
    expect_next(sp, 0);
    expect_end(sp); /* records 1 and 2 are behind the damage */
    append_n(sp, 3, 2, NULL);
    expect_next(sp, 3);
    expect_next(sp, 4);
    expect_end(sp);
    tg_spool_close(sp);
}

static void test_reopen_resume(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 4096);
    append_n(sp, 0, 60, NULL);
    /* deliver the first segment entirely and part of the second */
    struct tg_spool_pos first = expect_next(sp, 0);
    tg_spool_ack(sp, first);
    int i = 1;
    struct tg_spool_pos p;
    while ((p = expect_next(sp, i)).seg == first.seg) {
        tg_spool_ack(sp, p);
        i++;
    }
    int second_start = i;
    tg_spool_ack(sp, p);
    expect_next(sp, ++i);
    tg_spool_close(sp);
    /* after a restart: the second segment from its first record not
     * acknowledged (the acknowledged one is marked in its frame and not sent
     * again; the one handed out and not acknowledged is), then the rest */
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 4096);
    assert_int_equal(stats(sp).records, 60 - second_start - 1);
    append_n(sp, 60, 3, NULL);
    for (i = second_start + 1; i < 63; i++)
        expect_next(sp, i);
    expect_end(sp);
    tg_spool_close(sp);
}

static void test_max_bytes_reject(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 8192, TG_SPOOL_FULL_REJECT, 0);
    int n = 0;
    while (tg_spool_accepting(sp)) {
        append_n(sp, n++, 1, NULL);
        assert_true(n < 1000);
    }
    struct tg_spool_stats st = stats(sp);
    assert_int_equal(st.records, n); /* the record that crossed the line is kept */
    assert_true(st.bytes >= 8192);
    assert_true(st.bytes < 8192 + 256);
    assert_int_equal(st.dropped, 0);
    /* still appends past the cap: the caller decides to refuse new work */
    append_n(sp, n, 1, NULL);
    assert_int_equal(stats(sp).records, n + 1);
    /* delivering the oldest segment makes room */
    struct tg_spool_pos first = expect_next(sp, 0);
    tg_spool_ack(sp, first);
    for (int i = 1;; i++) {
        struct tg_spool_pos p = expect_next(sp, i);
        if (p.seg != first.seg) break;
        tg_spool_ack(sp, p);
    }
    assert_true(tg_spool_accepting(sp));
    tg_spool_close(sp);
}

static void test_drop_oldest(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 8192, TG_SPOOL_FULL_DROP_OLDEST, 2048);
    uint64_t dropped = 0;
    append_n(sp, 0, 200, &dropped);
    struct tg_spool_stats st = stats(sp);
    assert_true(dropped > 0);
    assert_int_equal(st.dropped, dropped);
    assert_true(tg_spool_accepting(sp));
    assert_true(st.bytes <= 8192);
    assert_int_equal((uint64_t)st.records + dropped, 200);
    /* what is left are the newest records, in order */
    for (int i = (int)dropped; i < 200; i++)
        expect_next(sp, i);
    expect_end(sp);
    tg_spool_close(sp);
}

/* drop_oldest deleting the segment the cursor is reading: the cursor moves on.
 * The record handed out before is not counted as dropped: its reader still
 * has it (and delivers it or appends it again). */
static void test_drop_under_cursor(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 8192, TG_SPOOL_FULL_DROP_OLDEST, 2048);
    append_n(sp, 0, 5, NULL);
    struct tg_spool_pos p0 = expect_next(sp, 0);
    uint64_t dropped = 0;
    append_n(sp, 5, 100, &dropped);
    tg_spool_ack(sp, p0); /* for a deleted segment: ignored */
    assert_true(dropped > 0);
    /* records 1 .. dropped were deleted unread; the next is the one after */
    int i = (int)dropped + 1;
    expect_next(sp, i);
    struct tg_spool_stats st = stats(sp);
    assert_int_equal(st.dropped, dropped);
    /* 105 appended: one handed out, `dropped` deleted, the rest still to be acknowledged */
    assert_int_equal((uint64_t)st.records + dropped + 1, 105);
    tg_spool_close(sp);
}

/* Acknowledgements in any order, and twice: only the records acknowledged
 * are gone, the segment stays until the last of them, and a reopened spool
 * hands out exactly the records not acknowledged (acks are marked in the
 * file). */
static void test_out_of_order_acks(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    append_n(sp, 0, 10, NULL);
    struct tg_spool_pos pos[10];
    for (int i = 0; i < 10; i++)
        pos[i] = expect_next(sp, i);
    static const int order[] = {9, 2, 7, 0, 4};
    for (size_t k = 0; k < TG_ARRAY_LEN(order); k++)
        tg_spool_ack(sp, pos[order[k]]);
    tg_spool_ack(sp, pos[2]); /* again: ignored */
    tg_spool_ack(sp, pos[9]);
    assert_int_equal(stats(sp).records, 5);
    assert_int_equal(stats(sp).handed_out, 5);
    assert_int_equal(count_files(f->dir), 1);
    tg_spool_close(sp);
    /* a restart: 1, 3, 5, 6, 8 (not acknowledged), in order */
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    assert_int_equal(stats(sp).records, 5);
    assert_int_equal(stats(sp).unread, 5);
    static const int left[] = {1, 3, 5, 6, 8};
    struct tg_spool_pos lp[5];
    for (int k = 0; k < 5; k++)
        lp[k] = expect_next(sp, left[k]);
    expect_end(sp);
    /* acknowledged backwards, with duplicates in between: the file goes with the last */
    for (int k = 4; k >= 1; k--) {
        tg_spool_ack(sp, lp[k]);
        tg_spool_ack(sp, lp[k]);
    }
    assert_int_equal(stats(sp).records, 1);
    assert_int_equal(count_files(f->dir), 1);
    tg_spool_ack(sp, lp[0]);
    assert_int_equal(stats(sp).records, 0);
    assert_int_equal(stats(sp).bytes, 0);
    assert_int_equal(count_files(f->dir), 0);
    tg_spool_close(sp);
}

/* Write-ahead: records appended as handed out are on disk but not handed
 * out by tg_spool_next; one released comes back (before later unread ones),
 * skipping those still in flight; acks delete the segment. */
static void test_write_ahead_release(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    struct tg_spool_pos pos[5];
    append_flags(sp, 0, 5, TG_SPOOL_HANDED_OUT, pos, NULL);
    struct tg_spool_stats st = stats(sp);
    assert_int_equal(st.records, 5);
    assert_int_equal(st.unread, 0);
    assert_int_equal(st.handed_out, 5);
    assert_true(st.bytes > 5 * 100);
    assert_int_equal(count_files(f->dir), 1);
    expect_end(sp);
    append_n(sp, 5, 2, NULL); /* two unread ones (Kafka down) */
    struct tg_spool_pos p5 = expect_next(sp, 5);
    /* two deliveries failed, out of order: they come back, oldest first, then 6 */
    assert_int_equal(tg_spool_release(sp, pos[2]), 0);
    assert_int_equal(tg_spool_release(sp, pos[0]), 0);
    assert_int_equal(stats(sp).unread, 3);
    struct tg_spool_pos r0 = expect_next(sp, 0);
    struct tg_spool_pos r2 = expect_next(sp, 2);
    struct tg_spool_pos p6 = expect_next(sp, 6);
    expect_end(sp);
    assert_int_equal(r0.off, pos[0].off);
    assert_int_equal(r2.idx, pos[2].idx);
    append_n(sp, 7, 1, NULL);
    expect_next(sp, 7);
    expect_end(sp);
    struct tg_spool_pos all[] = {pos[1], pos[3], pos[4], p5, r0, r2, p6};
    for (size_t k = 0; k < TG_ARRAY_LEN(all); k++)
        tg_spool_ack(sp, all[k]);
    /* releasing one already acknowledged changes nothing */
    assert_int_equal(tg_spool_release(sp, pos[1]), 0);
    expect_end(sp);
    assert_int_equal(stats(sp).records, 1); /* 7 */
    assert_int_equal(count_files(f->dir), 1);
    tg_spool_close(sp);
    /* only record 7 was never acknowledged */
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 0);
    assert_int_equal(stats(sp).records, 1);
    struct tg_spool_pos p7 = expect_next(sp, 7);
    expect_end(sp);
    tg_spool_ack(sp, p7);
    assert_int_equal(count_files(f->dir), 0);
    assert_int_equal(stats(sp).bytes, 0);
    tg_spool_close(sp);
}

/* A process killed (SIGKILL) right after its appends, in interval mode and
 * well inside the interval: every record it appended, handed out or not, is
 * there for the next process, except those it acknowledged. */
static void test_sigkill_keeps_written_records(void **state)
{
    struct fixture *f = *state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct tg_spool_opts o = {.dir = f->dir,
                                  .fsync = TG_SPOOL_FSYNC_INTERVAL,
                                  .fsync_interval_ms = 60000,
                                  .max_bytes = 1 << 20,
                                  .segment_bytes = 4096};
        char err[TG_ERR_LEN];
        struct tg_spool *sp = tg_spool_open(&o, err);
        if (sp == NULL) _exit(3);
        struct tg_spool_pos pos[40];
        append_flags(sp, 0, 40, TG_SPOOL_HANDED_OUT, pos, NULL);
        append_n(sp, 40, 10, NULL);
        for (int i = 0; i < 40; i += 3) /* delivered: 0, 3, ..., 39 */
            tg_spool_ack(sp, pos[i]);
        raise(SIGKILL);
        _exit(4);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    struct tg_spool *sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 4096);
    assert_int_equal(stats(sp).records, 50 - 14);
    assert_int_equal(stats(sp).truncated_bytes, 0);
    for (int i = 0; i < 50; i++)
        if (i >= 40 || i % 3 != 0) expect_next(sp, i);
    expect_end(sp);
    tg_spool_close(sp);
}

/* drop_oldest deleting a segment with records in flight: they are not
 * counted as dropped, their release fails (the caller appends them again)
 * and their acks are ignored. */
static void test_drop_with_records_in_flight(void **state)
{
    struct fixture *f = *state;
    struct tg_spool *sp = open_spool(f->dir, 8192, TG_SPOOL_FULL_DROP_OLDEST, 2048);
    struct tg_spool_pos pos[3];
    append_flags(sp, 0, 3, TG_SPOOL_HANDED_OUT, pos, NULL);
    append_n(sp, 3, 2, NULL);
    uint64_t dropped = 0;
    append_n(sp, 5, 100, &dropped);
    assert_true(dropped > 0);
    assert_int_equal(tg_spool_release(sp, pos[0]), -1);
    tg_spool_ack(sp, pos[1]);
    struct tg_spool_stats st = stats(sp);
    assert_int_equal(st.handed_out, 0);
    assert_int_equal(st.dropped, dropped);
    /* 105 appended: 3 with their callers, `dropped` deleted unread, the rest kept */
    assert_int_equal((uint64_t)st.records + dropped + 3, 105);
    for (int i = 3 + (int)dropped; i < 105; i++)
        expect_next(sp, i);
    expect_end(sp);
    tg_spool_close(sp);
}

struct appender {
    struct tg_spool *sp;
    int from, n;
};

static void *append_thread(void *arg)
{
    struct appender *a = arg;
    append_flags(a->sp, a->from, a->n, TG_SPOOL_HANDED_OUT, NULL, NULL);
    return NULL;
}

/* fsync mode always with appenders on several threads (they share
 * fdatasyncs): every record is there, whole. */
static void test_fsync_always_concurrent(void **state)
{
    struct fixture *f = *state;
    struct tg_spool_opts o = {.dir = f->dir,
                              .fsync = TG_SPOOL_FSYNC_ALWAYS,
                              .max_bytes = 1 << 20,
                              .segment_bytes = 8192};
    char err[TG_ERR_LEN];
    struct tg_spool *sp = tg_spool_open(&o, err);
    assert_non_null(sp);
    pthread_t th[4];
    struct appender a[4];
    for (int t = 0; t < 4; t++) {
        a[t] = (struct appender){sp, t * 100, 100};
        assert_int_equal(pthread_create(&th[t], NULL, append_thread, &a[t]), 0);
    }
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    assert_int_equal(stats(sp).records, 400);
    assert_int_equal(stats(sp).handed_out, 400);
    tg_spool_close(sp);
    sp = open_spool(f->dir, 1 << 20, TG_SPOOL_FULL_REJECT, 8192);
    assert_int_equal(stats(sp).records, 400);
    bool seen[400] = {false};
    struct tg_spool_rec rec;
    int r;
    while ((r = tg_spool_next(sp, &rec, err)) == 1) {
        int i = -1;
        assert_int_equal(sscanf(rec.data, "{\"id\":\"rec-%d\"", &i), 1);
        assert_true(i >= 0 && i < 400 && !seen[i]);
        seen[i] = true;
        char want[256];
        payload(i, want, sizeof(want));
        assert_int_equal(rec.len, strlen(want));
        assert_memory_equal(rec.data, want, rec.len);
        free(rec.data);
    }
    assert_int_equal(r, 0);
    for (int i = 0; i < 400; i++)
        assert_true(seen[i]);
    tg_spool_close(sp);
}

static void test_fsync_always_and_limits(void **state)
{
    struct fixture *f = *state;
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/a/b/c/", f->dir);
    struct tg_spool_opts o = {.dir = sub, .fsync = TG_SPOOL_FSYNC_ALWAYS, .max_bytes = 1 << 20};
    char err[TG_ERR_LEN];
    struct tg_spool *sp = tg_spool_open(&o, err);
    assert_non_null(sp);
    append_n(sp, 0, 3, NULL);
    char *big = calloc(1, TG_SPOOL_MAX_RECORD + 1);
    assert_int_equal(tg_spool_append(sp, "k", 1, big, TG_SPOOL_MAX_RECORD + 1, 0, NULL, NULL, err),
                     -1);
    assert_non_null(strstr(err, "too large"));
    free(big);
    /* an empty key is fine */
    assert_int_equal(tg_spool_append(sp, NULL, 0, "x", 1, TG_SPOOL_DEFER_SYNC, NULL, NULL, err), 0);
    for (int i = 0; i < 3; i++)
        expect_next(sp, i);
    struct tg_spool_rec rec;
    assert_int_equal(tg_spool_next(sp, &rec, err), 1);
    assert_int_equal(rec.klen, 0);
    assert_int_equal(rec.len, 1);
    free(rec.data);
    tg_spool_close(sp);
    /* a directory that cannot be made */
    o.dir = "/proc/tg-spool-test";
    assert_null(tg_spool_open(&o, err));
    assert_non_null(strstr(err, "/proc/tg-spool-test"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_iterate_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damage_in_open_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_bytes_reject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_under_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_order_acks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_ahead_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigkill_keeps_written_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_with_records_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_always_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_always_and_limits, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
