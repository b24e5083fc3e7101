/* Benchmark: records/s through the usage serialiser, the file sink and the Kafka sink (in-process
 * mock cluster). */
#include <event2/buffer.h>
#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/usage.h"

static const char *const tenants[] = {"acme", "globex", "initech", "umbrella"};

static void fill(struct tg_usage_record *r, int i)
{
    memset(r, 0, sizeof(*r));
    tg_usage_new_id(r->id);
    r->ts_ms = tg_now_wall_ms();
    r->tenant = tenants[i & 3];
    strcpy(r->key, "9f86d0818884");
    r->route = "/v1/chat/completions";
    r->model = "gpt-4o";
    r->upstream = "openai";
    r->status = 200;
    r->stream = true;
    r->usage.prompt_tokens = 12;
    r->usage.completion_tokens = 30;
    r->usage.total_tokens = 42;
    r->estimated.u[TG_UNIT_REQUESTS] = TG_MICRO;
    r->estimated.u[TG_UNIT_TOKENS] = 4108 * TG_MICRO;
    r->actual.u[TG_UNIT_REQUESTS] = TG_MICRO;
    r->actual.u[TG_UNIT_TOKENS] = 42 * TG_MICRO;
    r->latency_ms = 123.4;
    r->upstream_ms = 120.1;
    r->bytes_in = 311;
    r->bytes_out = 2048;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double records_metric(const char *sink, const char *result)
{
    static const char *const any[] = {"bench", "bench", "0"};
    tg_metrics_add(TG_M_REQUESTS, any, 0); /* see test_sink_kafka.c */
    struct evbuffer *b = evbuffer_new();
    tg_metrics_render(b);
    evbuffer_add(b, "", 1);
    char needle[128];
    snprintf(needle, sizeof(needle), "tollgate_usage_records_total{sink=\"%s\",result=\"%s\"} ",
             sink, result);
    const char *p = strstr((const char *)evbuffer_pullup(b, -1), needle);
    double v = p ? strtod(p + strlen(needle), NULL) : 0;
    evbuffer_free(b);
    return v;
}

struct job {
    struct tg_sink *s;
    int n;
    int failed;
};

static void *submit_all(void *arg)
{
    struct job *j = arg;
    struct tg_usage_record r;
    for (int i = 0; i < j->n; i++) {
        while (!j->s->ops->accepting(j->s))
            usleep(100); /* what a 503 does to clients */
        fill(&r, i);
        if (tg_usage_emit(j->s, &r) != 0) j->failed++;
    }
    return NULL;
}

/* Records through: written to the file, or acknowledged by Kafka (live or
 * after a detour through the spool when the producer queue was full). */
static double done_count(const char *sink)
{
    if (strcmp(sink, "file") == 0) return records_metric(sink, "written");
    return records_metric(sink, "delivered") + records_metric(sink, "replayed");
}

/* Runs `threads` submitters; the calling thread drives `base` (if any) until
 * done_count(sink) has grown by n*threads. Returns records/s, or -1. */
static double run(struct tg_sink *s, struct event_base *base, const char *sink, int n, int threads,
                  double *submit_rate)
{
    double before = done_count(sink);
    pthread_t th[16];
    struct job jobs[16];
    double t0 = now_s();
    for (int t = 0; t < threads; t++) {
        jobs[t] = (struct job){s, n, 0};
        pthread_create(&th[t], NULL, submit_all, &jobs[t]);
    }
    int joined = 0;
    double t_submitted = 0, deadline = t0 + 120;
    double want = before + (double)n * threads;
    while (now_s() < deadline) {
        if (base) event_base_loop(base, EVLOOP_NONBLOCK);
        while (joined < threads && pthread_tryjoin_np(th[joined], NULL) == 0)
            if (++joined == threads) t_submitted = now_s();
        if (joined == threads && done_count(sink) >= want) break;
        usleep(base ? 200 : 2000);
    }
    double t1 = now_s();
    for (int t = 0; t < threads; t++)
        if (jobs[t].failed) fprintf(stderr, "%d submits failed\n", jobs[t].failed);
    *submit_rate = 0;
    if (done_count(sink) < want) return -1;
    *submit_rate = (double)n * threads / (t_submitted - t0);
    return (double)n * threads / (t1 - t0);
}

static void quiet(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200000;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (n <= 0 || threads <= 0 || threads > 16) {
        fprintf(stderr, "usage: %s [records per thread] [threads (1-16)]\n", argv[0]);
        return 2;
    }
    tg_log_set_level(TG_LOG_ERROR);
    printf("%d threads x %d records\n", threads, n);

    /* the serialiser alone */
    struct tg_usage_record r;
    fill(&r, 0);
    size_t len, total = 0;
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        char *j = tg_usage_to_json(&r, &len);
        total += len;
        free(j);
    }
    printf("tg_usage_to_json: %.0f records/s (one thread, %zu bytes each)\n", n / (now_s() - t0),
           total / (size_t)n);

    char dir[] = "/tmp/tg_bench_XXXXXX";
    if (mkdtemp(dir) == NULL) return 1;
    char path[128], err[TG_ERR_LEN];
    snprintf(path, sizeof(path), "%s/usage.jsonl", dir);
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));

    /* the file sink */
    cfg.usage.sink = TG_SINK_FILE;
    cfg.usage.file.path = path;
    struct tg_sink *s = tg_sink_create(&cfg, NULL, err);
    if (s == NULL) {
        fprintf(stderr, "file sink: %s\n", err);
        return 1;
    }
    double sub, rate = run(s, NULL, "file", n, threads, &sub);
    s->ops->destroy(s);
    printf("file sink: %.0f records/s written (submit %.0f/s)\n", rate, sub);

    /* the Kafka sink against an in-process mock cluster */
    char errstr[512];
    rd_kafka_conf_t *mconf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(mconf, quiet);
    rd_kafka_t *mrk = rd_kafka_new(RD_KAFKA_PRODUCER, mconf, errstr, sizeof(errstr));
    rd_kafka_mock_cluster_t *mc = mrk ? rd_kafka_mock_cluster_new(mrk, 1) : NULL;
    if (mc == NULL) {
        fprintf(stderr, "mock cluster: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_topic_create(mc, "tollgate.usage", 4, 1);
    struct event_base *base = event_base_new();
    cfg.usage.sink = TG_SINK_KAFKA;
    cfg.usage.kafka.brokers = (char *)rd_kafka_mock_cluster_bootstraps(mc);
    cfg.usage.kafka.topic = "tollgate.usage";
    char spool[128];
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    cfg.usage.kafka.spool_dir = spool;
    cfg.usage.kafka.spool_fsync = TG_SPOOL_FSYNC_INTERVAL;
    cfg.usage.kafka.spool_max_bytes = TG_DEFAULT_SPOOL_MAX_BYTES;
    s = tg_sink_create(&cfg, base, err);
    if (s == NULL) {
        fprintf(stderr, "kafka sink: %s\n", err);
        return 1;
    }
    rate = run(s, base, "kafka", n, threads, &sub);
    double spooled = records_metric("kafka", "spooled");
    s->ops->flush(s, 5000);
    s->ops->destroy(s);
    printf("kafka sink: %.0f records/s acknowledged by the broker (submit %.0f/s; %.0f went "
           "through the spool: producer queue full)\n",
           rate, sub, spooled);
    event_base_free(base);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mrk);
    snprintf(errstr, sizeof(errstr), "rm -rf '%s'", dir);
    return system(errstr) == 0 && rate > 0 ? 0 : 1;
}
