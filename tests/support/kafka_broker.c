/* Kafka-protocol broker for tests: librdkafka's mock cluster in a process of its own. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_TOPICS 16

static bool verbose;

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    if (verbose) fprintf(stderr, "kafka_broker: %d %s: %s\n", level, fac, buf);
}

static void usage(void)
{
    fprintf(stderr, "usage: kafka_broker --topic T [--topic T2 ...] [--partitions 3] [--brokers 1] "
                    "[--rtt MS] [--verbose]\n"
                    "  --rtt: every broker answers MS milliseconds late (records stay in flight)\n"
                    "  prints BOOTSTRAP host:port,... when ready; SIGUSR1 takes every broker down\n"
                    "  (prints DOWN), SIGUSR2 brings them up (prints UP), SIGTERM/SIGINT exit\n");
}

static void set_all(rd_kafka_mock_cluster_t *mc, int brokers, bool up)
{
    for (int id = 1; id <= brokers; id++) {
        rd_kafka_resp_err_t err =
            up ? rd_kafka_mock_broker_set_up(mc, id) : rd_kafka_mock_broker_set_down(mc, id);
        if (err)
            fprintf(stderr, "kafka_broker: broker %d %s: %s\n", id, up ? "up" : "down",
                    rd_kafka_err2str(err));
    }
    printf("%s\n", up ? "UP" : "DOWN");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *topics[MAX_TOPICS];
    int ntopics = 0, partitions = 3, brokers = 1, rtt_ms = 0, rc = 1;
    char errstr[512];
    rd_kafka_t *rk = NULL;
    rd_kafka_mock_cluster_t *mc = NULL;
    int sfd = -1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc && ntopics < MAX_TOPICS) {
            topics[ntopics++] = argv[++i];
        } else if (strcmp(argv[i], "--partitions") == 0 && i + 1 < argc) {
            partitions = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
            brokers = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--rtt") == 0 && i + 1 < argc) {
            rtt_ms = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--verbose") == 0) {
            verbose = true;
        } else {
            usage();
            return 2;
        }
    }
    if (ntopics == 0 || partitions < 1 || brokers < 1 || brokers > 32 || rtt_ms < 0) {
        usage();
        return 2;
    }

    /* Block the signals before librdkafka starts its threads so that they inherit the mask
     * and every signal is read from the signalfd by this thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0 ||
        (sfd = signalfd(-1, &set, SFD_CLOEXEC)) < 0) {
        fprintf(stderr, "kafka_broker: signalfd: %s\n", strerror(errno));
        goto out;
    }

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, log_cb);
    if (rd_kafka_conf_set(conf, "client.id", "kafka_broker", errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kafka_broker: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        goto out;
    }
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "kafka_broker: rd_kafka_new: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        goto out;
    }
    mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "kafka_broker: cannot create the mock cluster\n");
        goto out;
    }
    int rf = brokers < 3 ? brokers : 3;
    for (int i = 0; i < ntopics; i++) {
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, topics[i], partitions, rf);
        if (err) {
            fprintf(stderr, "kafka_broker: topic %s: %s\n", topics[i], rd_kafka_err2str(err));
            goto out;
        }
    }
    for (int id = 1; rtt_ms > 0 && id <= brokers; id++)
        rd_kafka_mock_broker_set_rtt(mc, id, rtt_ms);
    printf("BOOTSTRAP %s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    for (;;) {
        struct signalfd_siginfo si;
        ssize_t n = read(sfd, &si, sizeof(si));
        if (n < 0 && errno == EINTR) continue;
        if (n != (ssize_t)sizeof(si)) {
            fprintf(stderr, "kafka_broker: signalfd read: %s\n", strerror(errno));
            goto out;
        }
        if (si.ssi_signo == SIGUSR1)
            set_all(mc, brokers, false);
        else if (si.ssi_signo == SIGUSR2)
            set_all(mc, brokers, true);
        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            break;
    }
    rc = 0;
out:
    if (mc) rd_kafka_mock_cluster_destroy(mc);
    if (rk) rd_kafka_destroy(rk);
    if (sfd >= 0) close(sfd);
    return rc;
}
