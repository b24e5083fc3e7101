/* Tests for metrics.c: per-thread series summed at scrape, handles, the text format, the docs
 * table. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/buffer.h>
#include "tollgate/metrics.h"

static char *render(void)
{
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    tg_metrics_render(b);
    size_t len = evbuffer_get_length(b);
    char *s = malloc(len + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, len);
    s[len] = '\0';
    evbuffer_free(b);
    return s;
}

/* How many lines of `text` equal `line` exactly. */
static int count_line(const char *text, const char *line)
{
    int n = 0;
    size_t ll = strlen(line);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == ll && memcmp(p, line, ll) == 0) n++;
        p += len + (e != NULL);
    }
    return n;
}

/* The value of the sample line starting with `series` followed by a space; fails if absent. */
static double sample(const char *text, const char *series)
{
    size_t sl = strlen(series);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > sl && memcmp(p, series, sl) == 0 && p[sl] == ' ') return strtod(p + sl + 1, NULL);
        p += len + (e != NULL);
    }
    fail_msg("no sample %s in:\n%s", series, text);
    return -1;
}

/* Every sample line (name+labels) appears once; HELP and TYPE once per family. */
static void assert_no_duplicates(const char *text)
{
    char *copy = strdup(text);
    size_t cap = 1024, n = 0;
    char **keys = calloc(cap, sizeof(*keys));
    for (char *save = NULL, *line = strtok_r(copy, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char *key = line;
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            char *sp = strchr(line + 7, ' ');
            assert_non_null(sp);
            *sp = '\0';
        } else {
            char *sp = strrchr(line, ' ');
            assert_non_null(sp);
            *sp = '\0';
        }
        for (size_t i = 0; i < n; i++)
            if (strcmp(keys[i], key) == 0) fail_msg("rendered twice: %s", key);
        assert_true(n < cap);
        keys[n++] = key;
    }
    free(keys);
    free(copy);
}

/* Pipes `text` through `promtool check metrics`; fails on any complaint. */
static void promtool_check(const char *text)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        /* scripts/install-deps.sh installs it (package prometheus). */
        const char *ci = getenv("CI");
        if (ci && strcmp(ci, "true") == 0) fail_msg("promtool not installed");
        print_message("promtool not found: skipping the promtool check\n");
        return;
    }
    char path[] = "/tmp/tg_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t got = fread(out, 1, sizeof(out) - 1, p);
    out[got] = '\0';
    int rc = pclose(p);
    unlink(path);
    if (rc != 0 || got != 0) fail_msg("promtool check metrics (status %d):\n%s", rc, out);
}

/* Runs first: nothing recorded yet. Every family renders HELP and TYPE; a
 * family without labels shows its zero series; a labelled one shows none. */
static void test_empty_families_render_cleanly(void **state)
{
    char *s = render();
    assert_int_equal(count_line(s, "# TYPE tollgate_requests_total counter"), 1);
    assert_int_equal(count_line(s, "# TYPE tollgate_request_duration_seconds histogram"), 1);
    assert_int_equal(count_line(s, "# TYPE tollgate_spool_bytes gauge"), 1);
    assert_int_equal(count_line(s, "tollgate_spool_bytes 0"), 1);
    assert_int_equal(count_line(s, "tollgate_kafka_queue_messages 0"), 1);
    assert_null(strstr(s, "tollgate_requests_total{"));
    assert_null(strstr(s, "_bucket"));
    assert_no_duplicates(s);
    promtool_check(s);
    free(s);
}

struct adder {
    int times;
    const char *code;
};

static void *add_requests(void *arg)
{
    const struct adder *a = arg;
    const char *labels[] = {"/v1/chat/completions", "threads", a->code};
    for (int i = 0; i < a->times; i++)
        tg_metrics_add(TG_M_REQUESTS, labels, 1);
    const char *side[] = {"client"};
    tg_metrics_add(TG_M_CONNECTIONS, side, 5);
    return NULL;
}

static void test_counters_summed_across_threads(void **state)
{
    pthread_t t[3];
    struct adder a[3] = {{1000, "200"}, {2500, "200"}, {7, "429"}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, add_requests, &a[i]), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    const char *labels[] = {"/v1/chat/completions", "threads", "200"};
    tg_metrics_add(TG_M_REQUESTS, labels, 1);
    const char *side[] = {"client"};
    tg_metrics_add(TG_M_CONNECTIONS, side, -3);

    char *s = render();
    const char *ok =
        "tollgate_requests_total{route=\"/v1/chat/completions\",tenant=\"threads\",code=\"200\"}";
    assert_int_equal(count_line(s, "tollgate_requests_total{route=\"/v1/chat/completions\","
                                   "tenant=\"threads\",code=\"200\"} 3501"),
                     1);
    assert_true(sample(s, ok) == 3501);
    assert_int_equal(count_line(s, "tollgate_requests_total{route=\"/v1/chat/completions\","
                                   "tenant=\"threads\",code=\"429\"} 7"),
                     1);
    /* A gauge added from four threads is one series: 3*5 - 3. */
    assert_int_equal(count_line(s, "tollgate_connections{side=\"client\"} 12"), 1);
    assert_no_duplicates(s);
    free(s);
}

static void test_labels_escaped(void **state)
{
    const char *labels[] = {"quote\"back\\slash\nnewline", "limit|x"};
    tg_metrics_add(TG_M_RATELIMITED, labels, 2);
    const char *nulls[] = {NULL, NULL};
    tg_metrics_add(TG_M_RATELIMITED, nulls, 1);
    char *s = render();
    assert_int_equal(
        count_line(s, "tollgate_ratelimited_total{tenant=\"quote\\\"back\\\\slash\\nnewline\","
                      "limit=\"limit|x\"} 2"),
        1);
    assert_int_equal(
        count_line(s, "tollgate_ratelimited_total{tenant=\"other\",limit=\"other\"} 1"), 1);
    promtool_check(s);
    free(s);
}

static void test_long_labels_truncated(void **state)
{
    char big[3][700];
    for (int i = 0; i < 3; i++) {
        memset(big[i], 'a' + i, sizeof(big[i]) - 1);
        big[i][sizeof(big[i]) - 1] = '\0';
    }
    const char *labels[] = {big[0], big[1], big[2]};
    tg_metrics_add(TG_M_TOKENS, labels, 1);
    tg_metrics_add(TG_M_TOKENS, labels, 1);
    char *s = render();
    char *p = strstr(s, "tollgate_tokens_total{tenant=\"aaaa");
    assert_non_null(p);
    char *e = strchr(p, '\n');
    assert_non_null(e);
    assert_true(e - p < 700);
    assert_true(strncmp(e - 2, " 2", 2) == 0);
    assert_no_duplicates(s);
    promtool_check(s);
    free(s);
}

static void *observe_some(void *arg)
{
    const char *route[] = {"/hist"};
    tg_metrics_observe(TG_M_REQUEST_DURATION, route, 0.003);
    tg_metrics_observe(TG_M_REQUEST_DURATION, route, 1000);
    return arg;
}

static void test_histogram_cumulative(void **state)
{
    const char *route[] = {"/hist"};
    tg_metrics_observe(TG_M_REQUEST_DURATION, route, 0.0003);
    tg_metrics_observe(TG_M_REQUEST_DURATION, route, 0.7);
    tg_metrics_observe(TG_M_REQUEST_DURATION, route, 0.001); /* on a bound: le is inclusive */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, observe_some, NULL), 0);
    pthread_join(t, NULL);

    char *s = render();
    const char *pre = "tollgate_request_duration_seconds_bucket{route=\"/hist\",le=";
    char name[128];
#define BUCKET(le) (snprintf(name, sizeof(name), "%s\"%s\"}", pre, le), sample(s, name))
    assert_true(BUCKET("0.0005") == 1);
    assert_true(BUCKET("0.001") == 2);
    assert_true(BUCKET("0.0025") == 2);
    assert_true(BUCKET("0.005") == 3);
    assert_true(BUCKET("0.5") == 3);
    assert_true(BUCKET("1") == 4);
    assert_true(BUCKET("300") == 4);
    assert_true(BUCKET("+Inf") == 5);
#undef BUCKET
    assert_true(sample(s, "tollgate_request_duration_seconds_count{route=\"/hist\"}") == 5);
    double sum = sample(s, "tollgate_request_duration_seconds_sum{route=\"/hist\"}");
    assert_true(sum > 1000.7042 && sum < 1000.7044);

    /* Buckets never decrease along le. */
    double prev = -1;
    int nb = 0;
    for (const char *p = strstr(s, pre); p && strncmp(p, pre, strlen(pre)) == 0;) {
        const char *sp = strchr(p, ' ');
        double v = strtod(sp + 1, NULL);
        assert_true(v >= prev);
        prev = v;
        nb++;
        p = strchr(p, '\n') + 1;
    }
    assert_int_equal(nb, 18);
    promtool_check(s);
    free(s);
}

static void *set_gauge(void *arg)
{
    tg_metrics_set(TG_M_SPOOL_BYTES, NULL, 4096);
    return arg;
}

static void test_gauges_set_not_summed(void **state)
{
    tg_metrics_set(TG_M_SPOOL_BYTES, NULL, 123);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, set_gauge, NULL), 0);
    pthread_join(t, NULL);
    tg_metrics_set(TG_M_KAFKA_QUEUE, NULL, 7);
    tg_metrics_set(TG_M_KAFKA_QUEUE, NULL, 1e20);
    const char *version[] = {"0.1.0"};
    tg_metrics_set(TG_M_BUILD_INFO, version, 1);
    tg_metrics_set(TG_M_BUILD_INFO, version, 1);

    char *s = render();
    assert_int_equal(count_line(s, "tollgate_spool_bytes 4096"), 1);
    assert_int_equal(count_line(s, "tollgate_kafka_queue_messages 1e+20"), 1);
    assert_int_equal(count_line(s, "tollgate_build_info{version=\"0.1.0\"} 1"), 1);
    assert_no_duplicates(s);
    free(s);
}

/* Every line of `text` that contains `needle`, each occurrence replaced by
 * `with`, joined in page order (malloc'd). */
static char *lines_with(const char *text, const char *needle, const char *with)
{
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    assert_non_null(f);
    size_t nl = strlen(needle);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (memmem(p, len, needle, nl)) {
            for (const char *q = p, *end = p + len; q < end;) {
                const char *hit = memmem(q, (size_t)(end - q), needle, nl);
                if (hit == NULL) hit = end;
                fwrite(q, 1, (size_t)(hit - q), f);
                if (hit < end) fputs(with, f);
                q = hit < end ? hit + nl : end;
            }
            fputc('\n', f);
        }
        p += len + (e != NULL);
    }
    fclose(f);
    return out;
}

/* The same updates by labels and through handles give the same page lines. */
static void test_handles_render_as_labels(void **state)
{
    static const double lat[] = {0.0003, 0.001, 0.0042, 0.7, 3, 1000, 0.02, 0.0005};
    const char *tenants[] = {"via-labels", "via-handle"};
    const char *routes[] = {"/via-labels", "/via-handle"};
    for (int k = 0; k < 2; k++) {
        char code[4] = "200";
        const char *req[] = {routes[k], tenants[k], code};
        const char *route[] = {routes[k]};
        const char *tok[] = {tenants[k], NULL, "prompt"};
        struct tg_metric_series *h_req = tg_metrics_series(TG_M_REQUESTS, req);
        struct tg_metric_series *h_dur = tg_metrics_series(TG_M_REQUEST_DURATION, route);
        struct tg_metric_series *h_tok = tg_metrics_series(TG_M_TOKENS, tok);
        for (int i = 0; i < 40; i++) {
            double v = lat[i % 8];
            if (k == 0) {
                tg_metrics_add(TG_M_REQUESTS, req, 1);
                tg_metrics_observe(TG_M_REQUEST_DURATION, route, v);
                tg_metrics_add(TG_M_TOKENS, tok, 12.5);
            } else {
                tg_metrics_series_add(h_req, 1);
                tg_metrics_series_observe(h_dur, v);
                tg_metrics_series_add(h_tok, 12.5);
            }
        }
        /* A handle and the labels reach the same series, whichever comes first. */
        memcpy(code, "429", 4);
        tg_metrics_add(TG_M_REQUESTS, req, 1);
        struct tg_metric_series *h429 = tg_metrics_series(TG_M_REQUESTS, req);
        assert_ptr_equal(h429, tg_metrics_series(TG_M_REQUESTS, req));
        assert_ptr_not_equal(h429, h_req);
        tg_metrics_series_add(h429, 2);
    }
    char *s = render();
    char *a = lines_with(s, "via-labels", "X");
    char *b = lines_with(s, "via-handle", "X");
    assert_true(strlen(a) > 0);
    assert_string_equal(a, b);
    const char *l =
        "tollgate_requests_total{route=\"/via-handle\",tenant=\"via-handle\",code=\"200\"} 40";
    assert_int_equal(count_line(s, l), 1);
    l = "tollgate_requests_total{route=\"/via-handle\",tenant=\"via-handle\",code=\"429\"} 3";
    assert_int_equal(count_line(s, l), 1);
    l = "tollgate_tokens_total{tenant=\"via-handle\",model=\"other\",kind=\"prompt\"} 500";
    assert_int_equal(count_line(s, l), 1);
    assert_true(sample(s, "tollgate_request_duration_seconds_count{route=\"/via-handle\"}") == 40);
    assert_no_duplicates(s);
    promtool_check(s);
    free(a);
    free(b);
    free(s);
}

/* A series exists from its first look-up (zero until updated), and a handle
 * stays good while the thread's table grows under it. */
static void test_series_created_on_first_use(void **state)
{
    const char *first[] = {"first-use", "rpm"};
    char *s = render();
    assert_null(strstr(s, "first-use"));
    free(s);
    struct tg_metric_series *h = tg_metrics_series(TG_M_RATELIMITED, first);
    assert_non_null(h);
    s = render();
    assert_int_equal(
        count_line(s, "tollgate_ratelimited_total{tenant=\"first-use\",limit=\"rpm\"} 0"), 1);
    free(s);
    for (int i = 0; i < 300; i++) { /* the table grows several times */
        char tenant[32];
        snprintf(tenant, sizeof(tenant), "grow-%d", i);
        const char *l[] = {tenant, "rpm"};
        tg_metrics_add(TG_M_RATELIMITED, l, 1);
        tg_metrics_series_add(h, 1);
    }
    assert_ptr_equal(h, tg_metrics_series(TG_M_RATELIMITED, first));
    s = render();
    assert_int_equal(
        count_line(s, "tollgate_ratelimited_total{tenant=\"first-use\",limit=\"rpm\"} 300"), 1);
    assert_int_equal(
        count_line(s, "tollgate_ratelimited_total{tenant=\"grow-299\",limit=\"rpm\"} 1"), 1);
    free(s);
}

/* One buffer, rewritten between updates: the labels are its contents, not its
 * address (status digits and model names come in per-request buffers). */
static void test_same_pointer_new_contents(void **state)
{
    char tenant[16], limit[16];
    const char *l[] = {tenant, limit};
    static const char *const names[][2] = {{"buf-a", "x"}, {"buf-b", "x"}, {"buf-a", "y"},
                                           {"buf-a", "x"}, {"buf-b", "x"}, {"buf-a", "x"}};
    for (size_t i = 0; i < TG_ARRAY_LEN(names); i++) {
        strcpy(tenant, names[i][0]);
        strcpy(limit, names[i][1]);
        tg_metrics_add(TG_M_RATELIMITED, l, 1);
        tg_metrics_add(TG_M_RATELIMITED, l, 1);
    }
    char *s = render();
    assert_int_equal(count_line(s, "tollgate_ratelimited_total{tenant=\"buf-a\",limit=\"x\"} 6"),
                     1);
    assert_int_equal(count_line(s, "tollgate_ratelimited_total{tenant=\"buf-b\",limit=\"x\"} 4"),
                     1);
    assert_int_equal(count_line(s, "tollgate_ratelimited_total{tenant=\"buf-a\",limit=\"y\"} 2"),
                     1);
    free(s);
}

#define HANDLE_THREADS 8
#define HANDLE_TIMES 20000

/* Each thread takes its own handles (by labels in a buffer of its own) and
 * mixes them with updates by labels while another thread scrapes. */
static void *handle_worker(void *arg)
{
    intptr_t id = (intptr_t)arg;
    char tenant[16];
    snprintf(tenant, sizeof(tenant), "%s", "many");
    const char *req[] = {"/many", tenant, "200"};
    const char *up[] = {"many-up"};
    struct tg_metric_series *h = tg_metrics_series(TG_M_REQUESTS, req);
    struct tg_metric_series *hu = tg_metrics_series(TG_M_UPSTREAM_DURATION, up);
    assert_ptr_equal(h, tg_metrics_series(TG_M_REQUESTS, req));
    for (int i = 0; i < HANDLE_TIMES; i++) {
        if ((i + id) % 3 == 0)
            tg_metrics_add(TG_M_REQUESTS, req, 1);
        else
            tg_metrics_series_add(h, 1);
        tg_metrics_series_observe(hu, i % 2 ? 0.002 : 0.2);
    }
    return h;
}

static void *scraper(void *arg)
{
    volatile int *stop = arg;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        char *s = render();
        free(s);
    }
    return NULL;
}

static void test_handles_many_threads(void **state)
{
    pthread_t t[HANDLE_THREADS], sc;
    int stop = 0;
    assert_int_equal(pthread_create(&sc, NULL, scraper, &stop), 0);
    for (intptr_t i = 0; i < HANDLE_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, handle_worker, (void *)i), 0);
    void *h[HANDLE_THREADS];
    for (int i = 0; i < HANDLE_THREADS; i++)
        pthread_join(t[i], &h[i]);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(sc, NULL);
    /* Every thread had a series of its own. */
    for (int i = 0; i < HANDLE_THREADS; i++)
        for (int j = i + 1; j < HANDLE_THREADS; j++)
            assert_ptr_not_equal(h[i], h[j]);
    char *s = render();
    char line[160];
    snprintf(line, sizeof(line),
             "tollgate_requests_total{route=\"/many\",tenant=\"many\",code=\"200\"} %d",
             HANDLE_THREADS * HANDLE_TIMES);
    assert_int_equal(count_line(s, line), 1);
    const char *up = "tollgate_upstream_duration_seconds_bucket{upstream=\"many-up\",le=";
    snprintf(line, sizeof(line), "%s\"0.0025\"}", up);
    assert_true(sample(s, line) == HANDLE_THREADS * HANDLE_TIMES / 2);
    snprintf(line, sizeof(line), "%s\"+Inf\"}", up);
    assert_true(sample(s, line) == HANDLE_THREADS * HANDLE_TIMES);
    assert_no_duplicates(s);
    free(s);
}

/* After every test above: the whole page, as Prometheus would scrape it. */
static void test_full_page_passes_promtool(void **state)
{
    const char *cu[] = {"acme", "tokens", "estimated"};
    tg_metrics_add(TG_M_COST_UNITS, cu, 4108);
    const char *vs[] = {"acme", "sora"};
    tg_metrics_add(TG_M_VIDEO_SECONDS, vs, 2.5);
    const char *up[] = {"demo"};
    tg_metrics_observe(TG_M_UPSTREAM_DURATION, up, 0.02);
    const char *be[] = {"redis"};
    tg_metrics_observe(TG_M_LIMITER_DURATION, be, 0.0004);
    const char *kind[] = {"timeout"};
    tg_metrics_add(TG_M_REDIS_ERRORS, kind, 1);
    const char *ur[] = {"kafka", "spooled"};
    tg_metrics_add(TG_M_USAGE_RECORDS, ur, 3);
    const char *res[] = {"ok"};
    tg_metrics_add(TG_M_CONFIG_RELOADS, res, 1);

    char *s = render();
    /* Every family has HELP and TYPE exactly once. */
    const char *marks[] = {"# HELP ", "# TYPE "};
    for (int k = 0; k < 2; k++) {
        int seen = 0;
        for (const char *p = strstr(s, marks[k]); p; p = strstr(p + 1, marks[k]))
            seen++;
        assert_int_equal(seen, TG_M_COUNT);
    }
    assert_true(sample(s, "tollgate_video_seconds_total{tenant=\"acme\",model=\"sora\"}") == 2.5);
    assert_no_duplicates(s);
    promtool_check(s);
    free(s);
}

/* docs/metrics.md holds the table tg_metrics_print_doc writes: they cannot drift. */
static void test_docs_table_matches(void **state)
{
    char *doc = NULL;
    size_t doclen = 0;
    FILE *mem = open_memstream(&doc, &doclen);
    assert_non_null(mem);
    tg_metrics_write_doc(mem);
    fclose(mem);
    assert_non_null(
        strstr(doc, "| `tollgate_requests_total` | counter | `route`, `tenant`, `code` |"));
    assert_non_null(strstr(doc, "(prompt\\|completion)"));

    FILE *f = fopen(TG_SOURCE_DIR "/docs/metrics.md", "r");
    assert_non_null(f);
    char *table = NULL;
    size_t tablelen = 0;
    FILE *tm = open_memstream(&table, &tablelen);
    char line[2048];
    bool in_table = false, done = false;
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '|' && !done) {
            in_table = true;
            fputs(line, tm);
        } else if (in_table) {
            done = true;
        }
    }
    fclose(f);
    fclose(tm);
    if (strcmp(doc, table) != 0)
        fail_msg("docs/metrics.md is out of date; regenerate its table with "
                 "`tollgate --metrics-doc`.\nexpected:\n%s\nfound:\n%s",
                 doc, table);
    free(doc);
    free(table);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_families_render_cleanly),
        cmocka_unit_test(test_counters_summed_across_threads),
        cmocka_unit_test(test_labels_escaped),
        cmocka_unit_test(test_long_labels_truncated),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_gauges_set_not_summed),
        cmocka_unit_test(test_handles_render_as_labels),
        cmocka_unit_test(test_series_created_on_first_use),
        cmocka_unit_test(test_same_pointer_new_contents),
        cmocka_unit_test(test_handles_many_threads),
        cmocka_unit_test(test_full_page_passes_promtool),
        cmocka_unit_test(test_docs_table_matches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
