/* Test helper: reads a Kafka topic from the beginning and prints key<TAB>value lines;
 * with --produce, writes key<TAB>value lines from stdin to the topic instead. */
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#define MAX_PARTITIONS 1024

static bool verbose;
static volatile sig_atomic_t stop;
static long delivered, failed;

static void on_signal(int sig)
{
    stop = 1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    if (verbose) fprintf(stderr, "kafka_consume: %d %s: %s\n", level, fac, buf);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err) {
        failed++;
        if (verbose)
            fprintf(stderr, "kafka_consume: delivery failed: %s\n", rd_kafka_err2str(m->err));
    } else {
        delivered++;
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: kafka_consume -b BOOTSTRAP -t TOPIC [-n N] [--timeout-ms MS] [--verbose]\n"
            "       kafka_consume -b BOOTSTRAP -t TOPIC --produce [--timeout-ms MS] < lines\n"
            "  consume: prints <key>\\t<value> per message from the beginning; exits after N\n"
            "  messages or when none arrived for MS (default 5000); exit 0\n"
            "  produce: each stdin line <key>\\t<value> (or <value>) becomes a message; prints\n"
            "  PRODUCED <n> and exits 0 when all were delivered within MS, else 1\n");
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *bootstrap, char *errstr, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[64];
    snprintf(group, sizeof(group), "kafka_consume-%d-%ld", (int)getpid(), (long)time(NULL));
    rd_kafka_conf_set_log_cb(conf, log_cb);
    struct {
        const char *k, *v;
    } props[] = {
        {"bootstrap.servers", bootstrap},  {"group.id", group},
        {"auto.offset.reset", "earliest"}, {"enable.auto.commit", "false"},
        {"enable.partition.eof", "false"}, {"topic.metadata.refresh.interval.ms", "1000"},
    };
    size_t np = type == RD_KAFKA_CONSUMER ? sizeof(props) / sizeof(props[0]) : 1;
    for (size_t i = 0; i < np; i++) {
        if (rd_kafka_conf_set(conf, props[i].k, props[i].v, errstr, errlen) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    if (type == RD_KAFKA_PRODUCER) rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, errlen);
    if (!rk) rd_kafka_conf_destroy(conf);
    return rk;
}

static int produce(const char *bootstrap, const char *topic, int timeout_ms)
{
    char errstr[512];
    rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, bootstrap, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "kafka_consume: %s\n", errstr);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long queued = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        char *tab = memchr(line, '\t', (size_t)len);
        const char *key = tab ? line : NULL;
        size_t klen = tab ? (size_t)(tab - line) : 0;
        const char *val = tab ? tab + 1 : line;
        size_t vlen = tab ? (size_t)len - klen - 1 : (size_t)len;
        rd_kafka_resp_err_t err;
        do {
            err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, klen),
                                    RD_KAFKA_V_VALUE((void *)val, vlen),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) rd_kafka_poll(rk, 100);
        } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL);
        if (err) {
            fprintf(stderr, "kafka_consume: produce: %s\n", rd_kafka_err2str(err));
            failed++;
        } else {
            queued++;
        }
    }
    free(line);
    rd_kafka_flush(rk, timeout_ms);
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(rk, 0);
    rd_kafka_destroy(rk);
    printf("PRODUCED %ld\n", delivered);
    fflush(stdout);
    return failed == 0 && delivered == queued ? 0 : 1;
}

/* Assigns every partition of the topic from its beginning; retries the metadata
 * until the deadline. Returns 0 on success. */
static int assign_all(rd_kafka_t *rk, const char *topic, int64_t deadline)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    int rc = -1;
    while (!stop && now_ms() < deadline) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 1000);
        if (!err && md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0) {
            int n = md->topics[0].partition_cnt;
            rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(n);
            for (int i = 0; i < n && i < MAX_PARTITIONS; i++)
                rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[i].id)
                    ->offset = RD_KAFKA_OFFSET_BEGINNING;
            err = rd_kafka_assign(rk, parts);
            rd_kafka_topic_partition_list_destroy(parts);
            rd_kafka_metadata_destroy(md);
            if (!err) {
                rc = 0;
                break;
            }
            fprintf(stderr, "kafka_consume: assign: %s\n", rd_kafka_err2str(err));
            break;
        }
        if (md) rd_kafka_metadata_destroy(md);
        usleep(100 * 1000);
    }
    rd_kafka_topic_destroy(rkt);
    return rc;
}

static int consume(const char *bootstrap, const char *topic, long want, int timeout_ms)
{
    char errstr[512];
    rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, bootstrap, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "kafka_consume: %s\n", errstr);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    long got = 0;
    int64_t last = now_ms();
    if (assign_all(rk, topic, last + timeout_ms) != 0) {
        if (verbose) fprintf(stderr, "kafka_consume: no metadata for %s\n", topic);
        goto out;
    }
    while (!stop && (want <= 0 || got < want) && now_ms() - last < timeout_ms) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) continue;
        if (m->err) {
            if (verbose) fprintf(stderr, "kafka_consume: %s\n", rd_kafka_message_errstr(m));
        } else {
            fwrite(m->key ? m->key : "", 1, m->key ? m->key_len : 0, stdout);
            fputc('\t', stdout);
            fwrite(m->payload ? m->payload : "", 1, m->payload ? m->len : 0, stdout);
            fputc('\n', stdout);
            fflush(stdout);
            got++;
            last = now_ms();
        }
        rd_kafka_message_destroy(m);
    }
out:
    if (verbose) fprintf(stderr, "kafka_consume: %ld message(s)\n", got);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}

int main(int argc, char **argv)
{
    const char *bootstrap = NULL, *topic = NULL;
    long n = 0;
    int timeout_ms = 5000;
    bool producing = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-b") == 0 && i + 1 < argc)
            bootstrap = argv[++i];
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            topic = argv[++i];
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = atol(argv[++i]);
        else if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc)
            timeout_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--produce") == 0)
            producing = true;
        else if (strcmp(argv[i], "--verbose") == 0)
            verbose = true;
        else {
            usage();
            return 2;
        }
    }
    if (!bootstrap || !topic || timeout_ms <= 0) {
        usage();
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    return producing ? produce(bootstrap, topic, timeout_ms)
                     : consume(bootstrap, topic, n, timeout_ms);
}
