/* Tests of the Kafka sink against librdkafka's in-process mock cluster: delivery, spooling, replay,
 * the spool cap. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/usage.h"

#define TOPIC "tollgate.usage"
#define PARTITIONS 3
#define APIKEY_INIT_PRODUCER_ID 22

struct fx {
    rd_kafka_t *mock_rk;
    rd_kafka_mock_cluster_t *mc;
    char bootstraps[128];
    char dir[64];
    struct event_base *base;
    struct tg_config cfg;
    struct tg_kv props[4];
};

static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    f->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (f->mock_rk == NULL) return -1;
    f->mc = rd_kafka_mock_cluster_new(f->mock_rk, 1);
    if (f->mc == NULL) return -1;
    snprintf(f->bootstraps, sizeof(f->bootstraps), "%s", rd_kafka_mock_cluster_bootstraps(f->mc));
    rd_kafka_mock_topic_create(f->mc, TOPIC, PARTITIONS, 1);
    strcpy(f->dir, "/tmp/tg_kafka_XXXXXX");
    if (mkdtemp(f->dir) == NULL) return -1;
    f->base = event_base_new();
    f->cfg.usage.sink = TG_SINK_KAFKA;
    f->cfg.usage.kafka.brokers = f->bootstraps;
    f->cfg.usage.kafka.topic = TOPIC;
    f->cfg.usage.kafka.spool_dir = f->dir;
    f->cfg.usage.kafka.spool_fsync = TG_SPOOL_FSYNC_INTERVAL;
    f->cfg.usage.kafka.spool_fsync_interval_ms = 100;
    f->cfg.usage.kafka.spool_max_bytes = 64 << 20;
    f->cfg.usage.kafka.spool_full = TG_SPOOL_FULL_REJECT;
    /* fail fast and reconnect fast: the test has seconds, not minutes */
    f->props[0] = (struct tg_kv){"message.timeout.ms", "1500"};
    f->props[1] = (struct tg_kv){"reconnect.backoff.max.ms", "200"};
    f->props[2] = (struct tg_kv){"retry.backoff.ms", "50"};
    f->cfg.usage.kafka.properties = f->props;
    f->cfg.usage.kafka.nproperties = 3;
    tg_log_set_level(TG_LOG_ERROR);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    rd_kafka_mock_cluster_destroy(f->mc);
    rd_kafka_destroy(f->mock_rk);
    event_base_free(f->base);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static double metric(const char *line_prefix)
{
    /* tg_metrics_render hands qsort a NULL array while the first metric has
     * no series (UBSan stops on it): give it one. */
    static const char *const any[] = {"test", "test", "0"};
    tg_metrics_add(TG_M_REQUESTS, any, 0);
    struct evbuffer *b = evbuffer_new();
    tg_metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    const char *p = strstr(text, line_prefix);
    double v = p ? strtod(p + strlen(line_prefix), NULL) : 0;
    evbuffer_free(b);
    return v;
}

static double records(const char *result)
{
    char k[128];
    snprintf(k, sizeof(k), "tollgate_usage_records_total{sink=\"kafka\",result=\"%s\"} ", result);
    return metric(k);
}

static double spool_bytes(void)
{
    return metric("\ntollgate_spool_bytes ");
}

/* Counters at the start of a test, so each test reads its own deltas. */
struct counts {
    double delivered, spooled, replayed, dropped, error;
};

static struct counts counts_now(void)
{
    return (struct counts){records("delivered"), records("spooled"), records("replayed"),
                           records("dropped"), records("error")};
}

static struct counts counts_since(struct counts c0)
{
    struct counts c = counts_now();
    return (struct counts){c.delivered - c0.delivered, c.spooled - c0.spooled,
                           c.replayed - c0.replayed, c.dropped - c0.dropped, c.error - c0.error};
}

/* Runs the main loop until cond(arg) or `ms` pass; returns cond's last value. */
static bool drive(struct event_base *base, int ms, bool (*cond)(void *), void *arg)
{
    int64_t until = tg_now_mono_ms() + ms;
    while (tg_now_mono_ms() < until) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (cond && cond(arg)) return true;
        usleep(2000);
    }
    return cond ? cond(arg) : true;
}

struct want {
    struct counts c0;
    double delivered, spooled, replayed; /* < 0: don't care */
};

static bool reached(void *arg)
{
    struct want *w = arg;
    struct counts d = counts_since(w->c0);
    return (w->delivered < 0 || d.delivered >= w->delivered) &&
           (w->spooled < 0 || d.spooled >= w->spooled) &&
           (w->replayed < 0 || d.replayed >= w->replayed);
}

static struct tg_sink *make_sink(struct fx *f)
{
    char err[TG_ERR_LEN];
    struct tg_sink *s = tg_sink_create(&f->cfg, f->base, err);
    if (s == NULL) fail_msg("create: %s", err);
    assert_string_equal(s->ops->name, "kafka");
    return s;
}

/* The last has no tenant (an unauthenticated request): its message has no key. */
static const char *const tenants[] = {"acme", "globex", "initech", "umbrella", NULL};

/* Emits n records; ids are recorded in `ids` (an object: id -> tenant or null). */
static void emit(struct tg_sink *s, int n, json_t *ids)
{
    for (int i = 0; i < n; i++) {
        struct tg_usage_record r;
        memset(&r, 0, sizeof(r));
        tg_usage_new_id(r.id);
        r.ts_ms = tg_now_wall_ms();
        r.tenant = tenants[i % TG_ARRAY_LEN(tenants)];
        r.status = r.tenant ? 200 : 401;
        r.upstream_ms = -1;
        assert_int_equal(tg_usage_emit(s, &r), 0);
        json_object_set_new(ids, r.id, r.tenant ? json_string(r.tenant) : json_null());
    }
}

/* Reads the topic from the start. Returns the number of messages; every
 * message must be one of `ids` with key == its tenant (no key without a
 * tenant); `distinct` gets the number of different ids seen. */
static int consume(struct fx *f, json_t *ids, int want_distinct, int ms, int *distinct)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set(conf, "bootstrap.servers", f->bootstraps, errstr, sizeof(errstr));
    rd_kafka_conf_set(conf, "group.id", "test", errstr, sizeof(errstr));
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr));
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    assert_non_null(c);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(PARTITIONS);
    for (int p = 0; p < PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(parts, TOPIC, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(c, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);
    json_t *seen = json_object();
    int n = 0;
    int64_t until = tg_now_mono_ms() + ms, quiet_until = 0;
    while (tg_now_mono_ms() < until) {
        if ((int)json_object_size(seen) >= want_distinct) {
            /* a little longer, to see duplicates or strays arrive */
            if (quiet_until == 0) quiet_until = tg_now_mono_ms() + 300;
            if (tg_now_mono_ms() > quiet_until) break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 50);
        if (m == NULL) continue;
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        json_error_t e;
        json_t *o = json_loadb(m->payload, m->len, 0, &e);
        assert_non_null(o);
        const char *id = json_string_value(json_object_get(o, "id"));
        const char *tenant = json_string_value(json_object_get(o, "tenant"));
        json_t *known = json_object_get(ids, id);
        if (known == NULL) fail_msg("unexpected record %.*s", (int)m->len, (char *)m->payload);
        if (json_is_null(known)) {
            assert_true(json_is_null(json_object_get(o, "tenant")));
            assert_null(m->key);
            assert_int_equal(m->key_len, 0);
        } else {
            assert_non_null(tenant);
            assert_string_equal(json_string_value(known), tenant);
            assert_int_equal(m->key_len, strlen(tenant));
            assert_memory_equal(m->key, tenant, m->key_len);
        }
        json_object_set_new(seen, id, json_true());
        json_decref(o);
        rd_kafka_message_destroy(m);
        n++;
    }
    *distinct = (int)json_object_size(seen);
    json_decref(seen);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return n;
}

static int spool_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".spool") != NULL;
    closedir(d);
    return n;
}

static void test_delivery(void **state)
{
    struct fx *f = *state;
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    assert_true(s->ops->accepting(s));
    json_t *ids = json_object();
    emit(s, 1000, ids);
    struct want w = {c0, 1000, -1, -1};
    assert_true(drive(f->base, 10000, reached, &w));
    struct counts d = counts_since(c0);
    assert_true(d.delivered == 1000);
    assert_true(d.spooled == 0);
    assert_true(d.error == 0);
    s->ops->flush(s, 1000);
    assert_true(spool_bytes() == 0);
    s->ops->destroy(s);
    int distinct;
    assert_int_equal(consume(f, ids, 1000, 10000, &distinct), 1000);
    assert_int_equal(distinct, 1000);
    json_decref(ids);
}

/* How many of the ids in `ids` appear in the spool's segment files (each
 * record's JSON holds its id). */
static int ids_in_spool(const char *dir, json_t *ids)
{
    size_t cap = 1 << 20, len = 0;
    char *all = malloc(cap);
    DIR *d = opendir(dir);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strstr(de->d_name, ".spool") == NULL) continue;
        char path[512];
        snprintf(path, sizeof(path), "%.200s/%.200s", dir, de->d_name);
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        size_t n;
        while ((n = fread(all + len, 1, cap - len, fp)) > 0) {
            len += n;
            if (len == cap) all = realloc(all, cap *= 2);
        }
        fclose(fp);
    }
    closedir(d);
    int found = 0;
    const char *id;
    json_t *v;
    json_object_foreach(ids, id, v)
    {
        found += memmem(all, len, id, strlen(id)) != NULL;
    }
    free(all);
    return found;
}

/* Write-ahead: a record handed to the producer is in the spool before
 * tg_usage_emit returns and stays there while Kafka has not acknowledged it
 * (a slow broker); the acknowledgements delete the segment. Nothing is
 * counted as spooled and Kafka gets each record once. */
static void test_write_ahead_until_delivered(void **state)
{
    struct fx *f = *state;
    rd_kafka_mock_broker_set_rtt(f->mc, 1, 400);
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    emit(s, 60, ids);
    assert_true(spool_files(f->dir) > 0);
    assert_int_equal(ids_in_spool(f->dir, ids), 60);
    drive(f->base, 250, NULL, NULL); /* the broker has not answered yet */
    assert_true(counts_since(c0).delivered == 0);
    assert_true(spool_bytes() > 0);
    assert_int_equal(ids_in_spool(f->dir, ids), 60);
    rd_kafka_mock_broker_set_rtt(f->mc, 1, 0);
    struct want w = {c0, 60, -1, -1};
    assert_true(drive(f->base, 10000, reached, &w));
    drive(f->base, 120, NULL, NULL); /* the gauge is sampled by the sink's timer */
    struct counts d = counts_since(c0);
    assert_true(d.delivered == 60 && d.spooled == 0 && d.replayed == 0 && d.error == 0);
    assert_int_equal(spool_files(f->dir), 0);
    assert_true(spool_bytes() == 0);
    /* and again, on a new segment */
    emit(s, 10, ids);
    assert_int_equal(spool_files(f->dir), 1);
    w = (struct want){c0, 70, -1, -1};
    assert_true(drive(f->base, 10000, reached, &w));
    assert_int_equal(spool_files(f->dir), 0);
    s->ops->destroy(s);
    int distinct;
    assert_int_equal(consume(f, ids, 70, 10000, &distinct), 70);
    assert_int_equal(distinct, 70);
    json_decref(ids);
}

/* The sink is destroyed while its records are in flight and the broker does
 * not answer (as a crash would leave them, but for the flush): a new sink on
 * the same spool delivers every one of them. */
static void test_in_flight_at_destroy_replayed(void **state)
{
    struct fx *f = *state;
    rd_kafka_mock_broker_set_rtt(f->mc, 1, 3000);
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    emit(s, 40, ids);
    drive(f->base, 100, NULL, NULL);
    s->ops->flush(s, 50); /* too short for the broker: purged, left in the spool */
    s->ops->destroy(s);
    assert_true(counts_since(c0).delivered == 0);
    assert_int_equal(ids_in_spool(f->dir, ids), 40);
    rd_kafka_mock_broker_set_rtt(f->mc, 1, 0);
    c0 = counts_now();
    s = make_sink(f);
    struct want w = {c0, -1, -1, 40};
    assert_true(drive(f->base, 15000, reached, &w));
    s->ops->destroy(s);
    assert_int_equal(spool_files(f->dir), 0);
    int distinct;
    consume(f, ids, 40, 10000, &distinct);
    assert_int_equal(distinct, 40);
    json_decref(ids);
}

static void test_broker_down_then_up(void **state)
{
    struct fx *f = *state;
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    emit(s, 10, ids);
    struct want w = {c0, 10, -1, -1};
    assert_true(drive(f->base, 5000, reached, &w));

    rd_kafka_mock_broker_set_down(f->mc, 1);
    emit(s, 300, ids);
    w = (struct want){c0, -1, 300, -1};
    assert_true(drive(f->base, 8000, reached, &w)); /* message.timeout.ms, then to disk */
    drive(f->base, 120, NULL, NULL);                /* the gauge is sampled by the sink's timer */
    assert_true(spool_bytes() > 0);
    assert_true(spool_files(f->dir) > 0);
    assert_true(counts_since(c0).error == 0);
    emit(s, 50, ids); /* brokers known down: straight to the spool */
    w = (struct want){c0, -1, 350, -1};
    assert_true(drive(f->base, 3000, reached, &w));

    rd_kafka_mock_broker_set_up(f->mc, 1);
    w = (struct want){c0, -1, -1, 350};
    assert_true(drive(f->base, 15000, reached, &w));
    struct counts d = counts_since(c0);
    assert_true(d.delivered + d.replayed >= 360);
    s->ops->flush(s, 1000);
    assert_true(spool_bytes() == 0);
    assert_int_equal(spool_files(f->dir), 0);
    s->ops->destroy(s);
    int distinct;
    int n = consume(f, ids, 360, 10000, &distinct);
    assert_int_equal(distinct, 360); /* every record, perhaps some twice */
    assert_true(n >= 360);
    json_decref(ids);
}

static void test_destroy_while_down(void **state)
{
    struct fx *f = *state;
    struct counts c0 = counts_now();
    rd_kafka_mock_broker_set_down(f->mc, 1);
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    emit(s, 200, ids);
    drive(f->base, 100, NULL, NULL);
    /* brokers known down: the flush spools what is left at once, without
     * waiting for message.timeout.ms (1500) or its own timeout */
    int64_t t0 = tg_now_mono_ms();
    s->ops->flush(s, 10000);
    assert_true(tg_now_mono_ms() - t0 < 1000);
    s->ops->destroy(s);
    struct counts d = counts_since(c0);
    assert_true(d.spooled == 200);
    assert_true(d.delivered == 0);
    assert_true(spool_files(f->dir) > 0);

    /* a new process finds the spool and replays it */
    rd_kafka_mock_broker_set_up(f->mc, 1);
    c0 = counts_now();
    s = make_sink(f);
    struct want w = {c0, -1, -1, 200};
    assert_true(drive(f->base, 15000, reached, &w));
    s->ops->destroy(s);
    assert_int_equal(spool_files(f->dir), 0);
    int distinct;
    consume(f, ids, 200, 10000, &distinct);
    assert_int_equal(distinct, 200);
    json_decref(ids);
}

static void test_spool_cap_reject(void **state)
{
    struct fx *f = *state;
    f->cfg.usage.kafka.spool_max_bytes = 16384;
    f->cfg.usage.kafka.spool_fsync = TG_SPOOL_FSYNC_ALWAYS;
    rd_kafka_mock_broker_set_down(f->mc, 1);
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    int n = 0;
    int64_t until = tg_now_mono_ms() + 8000;
    while (s->ops->accepting(s) && tg_now_mono_ms() < until) {
        emit(s, 10, ids);
        n += 10;
        drive(f->base, 20, NULL, NULL);
    }
    assert_false(s->ops->accepting(s));
    /* every record of an answered request is still kept */
    s->ops->flush(s, 100);
    struct counts d = counts_since(c0);
    assert_true(d.spooled == n);
    assert_true(d.dropped == 0 && d.error == 0);

    rd_kafka_mock_broker_set_up(f->mc, 1);
    struct want w = {c0, -1, -1, n};
    assert_true(drive(f->base, 15000, reached, &w));
    assert_true(s->ops->accepting(s));
    s->ops->destroy(s);
    int distinct;
    consume(f, ids, n, 10000, &distinct);
    assert_int_equal(distinct, n);
    json_decref(ids);
}

static void test_spool_drop_oldest(void **state)
{
    struct fx *f = *state;
    f->cfg.usage.kafka.spool_max_bytes = 16384;
    f->cfg.usage.kafka.spool_full = TG_SPOOL_FULL_DROP_OLDEST;
    rd_kafka_mock_broker_set_down(f->mc, 1);
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    emit(s, 500, ids);
    s->ops->flush(s, 100);
    assert_true(s->ops->accepting(s));
    struct counts d = counts_since(c0);
    assert_true(d.spooled == 500);
    assert_true(d.dropped > 0);
    assert_true(spool_bytes() <= 16384);
    s->ops->destroy(s);
    json_decref(ids);
}

/* A fatal producer error: the producer is replaced and nothing is lost. */
static void test_fatal_error_recreates(void **state)
{
    struct fx *f = *state;
    rd_kafka_mock_push_request_errors(f->mc, APIKEY_INIT_PRODUCER_ID, 1,
                                      RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED);
    struct counts c0 = counts_now();
    struct tg_sink *s = make_sink(f);
    json_t *ids = json_object();
    emit(s, 100, ids);
    drive(f->base, 300, NULL, NULL);
    emit(s, 100, ids);
    struct want w = {c0, -1, -1, -1};
    bool done = false;
    int64_t until = tg_now_mono_ms() + 15000;
    while (!done && tg_now_mono_ms() < until) {
        drive(f->base, 50, NULL, NULL);
        struct counts d = counts_since(w.c0);
        done = d.delivered + d.replayed >= 200 && spool_bytes() == 0;
    }
    assert_true(done);
    s->ops->destroy(s);
    int distinct;
    consume(f, ids, 200, 10000, &distinct);
    assert_int_equal(distinct, 200);
    json_decref(ids);
}

static void test_bad_property(void **state)
{
    struct fx *f = *state;
    f->props[3] = (struct tg_kv){"no.such.property", "1"};
    f->cfg.usage.kafka.nproperties = 4;
    char err[TG_ERR_LEN];
    assert_null(tg_sink_create(&f->cfg, f->base, err));
    assert_non_null(strstr(err, "usage.kafka.properties.no.such.property"));
    f->cfg.usage.kafka.nproperties = 3;
    assert_null(tg_sink_kafka_create(&f->cfg, NULL, err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_ahead_until_delivered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_flight_at_destroy_replayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_down_then_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_while_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_cap_reject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_drop_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fatal_error_recreates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_property, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
