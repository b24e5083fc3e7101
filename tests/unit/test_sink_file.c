/* Tests of the file sink: lines on disk, reopening, write errors counted and kept, the queue bound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tollgate/metrics.h"
#include "tollgate/usage.h"

/* The value of tollgate_usage_records_total{sink="file",result=...}, 0 if absent. */
static double records_metric(const char *result)
{
    /* tg_metrics_render hands qsort a NULL array while the first metric has
     * no series (UBSan stops on it): give it one. */
    static const char *const any[] = {"test", "test", "0"};
    tg_metrics_add(TG_M_REQUESTS, any, 0);
    struct evbuffer *b = evbuffer_new();
    tg_metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    char needle[128];
    snprintf(needle, sizeof(needle), "tollgate_usage_records_total{sink=\"file\",result=\"%s\"} ",
             result);
    const char *p = strstr(text, needle);
    double v = p ? strtod(p + strlen(needle), NULL) : 0;
    evbuffer_free(b);
    return v;
}

static bool wait_metric(const char *result, double want, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (records_metric(result) >= want) return true;
        usleep(10000);
    }
    return records_metric(result) >= want;
}

static struct tg_sink *make_sink(const char *path)
{
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.usage.sink = TG_SINK_FILE;
    cfg.usage.file.path = (char *)path;
    char err[TG_ERR_LEN];
    struct tg_sink *s = tg_sink_create(&cfg, NULL, err);
    if (s == NULL) fail_msg("create: %s", err);
    assert_string_equal(s->ops->name, "file");
    return s;
}

static void record(struct tg_usage_record *r, const char *tenant)
{
    memset(r, 0, sizeof(*r));
    tg_usage_new_id(r->id);
    r->ts_ms = tg_now_wall_ms();
    r->tenant = tenant;
    r->status = 200;
    r->upstream_ms = -1;
}

struct worker {
    struct tg_sink *s;
    int n;
};

static void *emit_many(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        struct tg_usage_record r;
        record(&r, "line\nbreak");
        if (tg_usage_emit(w->s, &r) != 0) return (void *)1;
    }
    return NULL;
}

/* Reads a JSONL file: returns the number of lines, checks each parses and
 * that the ids are distinct. */
static int check_lines(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    json_t *seen = json_object();
    ssize_t len;
    while ((len = getline(&line, &cap, fp)) > 0) {
        assert_int_equal(line[len - 1], '\n');
        json_error_t e;
        json_t *o = json_loadb(line, (size_t)len, 0, &e);
        if (o == NULL) fail_msg("line %d: %s", n + 1, e.text);
        const char *id = json_string_value(json_object_get(o, "id"));
        assert_non_null(id);
        assert_null(json_object_get(seen, id));
        json_object_set_new(seen, id, json_true());
        assert_string_equal(json_string_value(json_object_get(o, "tenant")), "line\nbreak");
        json_decref(o);
        n++;
    }
    free(line);
    fclose(fp);
    json_decref(seen);
    return n;
}

static void test_lines_and_reopen(void **state)
{
    char dir[] = "/tmp/tg_sinkfile_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], moved[256];
    snprintf(path, sizeof(path), "%s/a/b/usage.jsonl", dir);
    snprintf(moved, sizeof(moved), "%s/a/b/usage.jsonl.1", dir);
    double written0 = records_metric("written");

    struct tg_sink *s = make_sink(path);
    assert_true(s->ops->accepting(s));
    pthread_t th[4];
    struct worker w = {s, 2500};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, emit_many, &w), 0);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    s->ops->flush(s, 5000);
    assert_int_equal(check_lines(path), 10000);
    assert_true(records_metric("written") - written0 == 10000);

    /* logrotate: move the file away, SIGUSR1 → reopen, new lines in a new file */
    assert_int_equal(rename(path, moved), 0);
    s->ops->reopen(s);
    w.n = 7;
    assert_null(emit_many(&w));
    s->ops->flush(s, 5000);
    assert_int_equal(check_lines(path), 7);
    assert_int_equal(check_lines(moved), 10000);
    /* destroy writes what is still queued */
    w.n = 3;
    assert_null(emit_many(&w));
    s->ops->destroy(s);
    assert_int_equal(check_lines(path), 10);

    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* A full disk: the error is logged and counted, records stay queued, and
 * past the bound the sink stops accepting. */
static void test_write_error(void **state)
{
    char logpath[] = "/tmp/tg_sinkfile_log_XXXXXX";
    int logfd = mkstemp(logpath);
    assert_true(logfd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(logfd, STDERR_FILENO);

    double err0 = records_metric("error"), drop0 = records_metric("dropped");
    struct tg_sink *s = make_sink("/dev/full");
    struct worker w = {s, 5};
    assert_null(emit_many(&w));
    bool counted = wait_metric("error", err0 + 5, 3000);
    usleep(400000); /* retries (100, 200 ms) fail again: each record counts once */
    double errors = records_metric("error") - err0;
    assert_true(s->ops->accepting(s));

    /* 1 MiB records until past the 64 MiB bound: all kept, then refused */
    int big = 0;
    while (s->ops->accepting(s) && big < 100) {
        size_t n = 1u << 20;
        char *json = malloc(n);
        memset(json, 'x', n);
        assert_int_equal(s->ops->submit(s, json, n, "acme"), 0);
        free(json);
        big++;
    }
    bool refused = !s->ops->accepting(s);
    s->ops->destroy(s);

    dup2(saved, STDERR_FILENO);
    close(saved);
    char buf[4096] = "";
    ssize_t got = pread(logfd, buf, sizeof(buf) - 1, 0);
    close(logfd);
    unlink(logpath);
    assert_true(got > 0);
    assert_true(counted);
    assert_true(errors == 5);
    assert_true(refused);
    assert_true(big >= 63 && big <= 65); /* 64 MiB */
    assert_non_null(strstr(buf, "usage file /dev/full: write: No space left on device"));
    /* at shutdown, what could never be written is reported, not hidden */
    assert_true(records_metric("dropped") - drop0 == 5 + big);
    assert_non_null(strstr(buf, "could not be written"));
}

static void test_bad_path(void **state)
{
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.usage.sink = TG_SINK_FILE;
    cfg.usage.file.path = "/proc/tg-no-such/usage.jsonl";
    char err[TG_ERR_LEN] = "";
    assert_null(tg_sink_create(&cfg, NULL, err));
    assert_non_null(strstr(err, "/proc/tg-no-such/usage.jsonl"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_and_reopen),
        cmocka_unit_test(test_write_error),
        cmocka_unit_test(test_bad_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
