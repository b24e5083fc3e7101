/* The Kafka sink: an idempotent librdkafka producer driven from the main loop, backed by the disk
 * spool. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/spool.h"
#include "tollgate/sink.h"

/* Spooled records replayed at once while the producer is healthy (one while
 * it is not: that record probes the broker). */
#define KAFKA_REPLAY_INFLIGHT 1000
/* The main-loop timer: replay, gauges, retries. */
#define KAFKA_TICK_MS 50
/* destroy() without a prior flush waits this long for acknowledgements. */
#define KAFKA_DESTROY_FLUSH_MS 5000
/* A flush looks this often whether the brokers are still there. */
#define KAFKA_FLUSH_SLICE_MS 100
/* After a purge, how long to keep polling for the purged delivery reports. */
#define KAFKA_PURGE_POLL_MS 1000

/* Every message's context (its opaque): where the record sits in the spool.
 * Every record is written to the spool before it is produced (write-ahead)
 * and acknowledged there when Kafka has it, so that a record in librdkafka's
 * memory is on disk too and a crash cannot lose it. */
struct msg_ctx {
    struct tg_spool_pos pos;
    bool in_spool; /* false: the spool could not take it (then a failed delivery appends it) */
    bool replay;   /* produced by replay(), counted in `inflight` */
};

struct ksink {
    struct tg_sink base;
    /* Workers hold it shared around producev; the main thread holds it
     * exclusively to replace a producer after a fatal error. */
    pthread_rwlock_t lock;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    struct event_base *evb; /* (ref) the main loop */
    struct event *ev_dr, *ev_tick;
    int pipefd[2]; /* librdkafka writes to [1] when reports are queued */
    struct tg_spool *spool;
    char *brokers, *topic;
    struct tg_kv *props;
    size_t nprops;
    int healthy; /* atomic: the last delivery succeeded */
    bool fatal;  /* main thread: the producer must be replaced */
    /* Main thread only: */
    int inflight;             /* replays produced and not yet reported */
    struct tg_spool_rec next; /* read from the spool, not yet produced */
    bool have_next;
    bool unsynced; /* delivery reports appended records without fdatasync */
    enum tg_spool_fsync spool_fsync;
    uint64_t n_delivered, n_replayed, n_spooled, n_failed;
    rd_kafka_resp_err_t last_fail;
    int64_t last_fail_log_ms;
    int64_t last_warn_log_ms;
    int64_t last_down_log_ms; /* its own clock: other warnings must not hide it */
    int64_t last_err_log_ms;  /* atomic: any thread */
    int64_t last_drop_log_ms;
    uint64_t dropped_unlogged; /* atomic: any thread adds, the main thread logs */
};

static const char *const lbl_delivered[] = {"kafka", "delivered"};
static const char *const lbl_spooled[] = {"kafka", "spooled"};
static const char *const lbl_replayed[] = {"kafka", "replayed"};
static const char *const lbl_dropped[] = {"kafka", "dropped"};
static const char *const lbl_error[] = {"kafka", "error"};

/* snprintf into an error buffer, where a long path may cut the message short. */
static TG_PRINTF(2, 3) void set_err(char err[TG_ERR_LEN], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, TG_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* Writes one record to the spool (flags: TG_SPOOL_*); counts what
 * drop_oldest deleted for it and logs a failure (a record written whose
 * fdatasync failed returns 0: it is in the spool). Returns 0 or -1, which the
 * caller counts. Any thread. */
static int spool_write(struct ksink *ks, const void *key, size_t klen, const void *data,
                       size_t len, unsigned flags, struct tg_spool_pos *pos)
{
    char err[TG_ERR_LEN];
    uint64_t dropped = 0;
    int rc = tg_spool_append(ks->spool, key, klen, data, len, flags, pos, &dropped, err);
    if (dropped) {
        tg_metrics_add(TG_M_USAGE_RECORDS, lbl_dropped, (double)dropped);
        __atomic_add_fetch(&ks->dropped_unlogged, dropped, __ATOMIC_RELAXED);
    }
    if (rc > 0 && tg_usage_log_due(&ks->last_err_log_ms))
        tg_log_error("usage spool: %s; the record is written but may not survive a power loss",
                     err);
    if (rc < 0 && tg_usage_log_due(&ks->last_err_log_ms))
        tg_log_error("usage spool: %s", err);
    return rc < 0 ? -1 : 0;
}

/* A record that only Kafka had and Kafka could not take: to the spool, for
 * replay. `batch`: from the delivery reports of one poll, synced together
 * after it. Returns 0, or -1 if it is lost (counted and logged). */
static int spool_record(struct ksink *ks, const void *key, size_t klen, const void *data,
                        size_t len, bool batch)
{
    int rc = spool_write(ks, key, klen, data, len, batch ? TG_SPOOL_DEFER_SYNC : 0, NULL);
    if (rc < 0) {
        tg_metrics_add(TG_M_USAGE_RECORDS, lbl_error, 1);
        if (tg_usage_log_due(&ks->last_err_log_ms))
            tg_log_error("usage record lost: neither Kafka nor the spool could take it");
    }
    return rc;
}

/* ---- librdkafka callbacks (delivery reports and errors run on the main
 * thread, inside rd_kafka_poll/flush; logs on librdkafka's threads) ---- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct ksink *ks = opaque;
    struct msg_ctx *ctx = m->_private;
    if (ctx == NULL) return; /* every message has one */
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        __atomic_store_n(&ks->healthy, 1, __ATOMIC_RELAXED);
        if (ctx->in_spool) tg_spool_ack(ks->spool, ctx->pos);
        if (ctx->replay)
            ks->n_replayed++;
        else
            ks->n_delivered++;
    } else {
        if (m->err != RD_KAFKA_RESP_ERR__PURGE_QUEUE &&
            m->err != RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
            __atomic_store_n(&ks->healthy, 0, __ATOMIC_RELAXED);
            ks->n_failed++;
            ks->last_fail = m->err;
        }
        /* The record is in the spool already: it is unread there again, and
         * replayed. Unless the spool no longer holds it (drop_oldest deleted
         * its segment, or its write had failed): then it is appended. */
        int rc = 0;
        if (!ctx->in_spool || tg_spool_release(ks->spool, ctx->pos) < 0) {
            rc = spool_record(ks, m->key, m->key_len, m->payload, m->len, true);
            ks->unsynced = true;
        }
        if (!ctx->replay && rc == 0) ks->n_spooled++;
    }
    if (ctx->replay) ks->inflight--;
    free(ctx);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct ksink *ks = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof(why));
        tg_log_error("kafka: fatal producer error: %s; recreating the producer", why);
        ks->fatal = true;
        __atomic_store_n(&ks->healthy, 0, __ATOMIC_RELAXED);
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        __atomic_store_n(&ks->healthy, 0, __ATOMIC_RELAXED);
        if (tg_usage_log_due(&ks->last_down_log_ms))
            tg_log_warn("kafka: all brokers are down (%s); records go to the spool", reason);
    } else if (tg_usage_log_due(&ks->last_warn_log_ms)) {
        tg_log_warn("kafka: %s: %s", rd_kafka_err2str((rd_kafka_resp_err_t)err), reason);
    }
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    enum tg_log_level l = level <= 2   ? TG_LOG_ERROR
                          : level <= 4 ? TG_LOG_WARN
                          : level <= 6 ? TG_LOG_INFO
                                       : TG_LOG_DEBUG;
    tg_log(l, "kafka: %s: %s", fac, buf);
}

/* ---- the producer ---- */

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char err[TG_ERR_LEN])
{
    char why[512];
    if (rd_kafka_conf_set(conf, k, v, why, sizeof(why)) == RD_KAFKA_CONF_OK) return 0;
    set_err(err, "usage.kafka: %s=%s: %s", k, v, why);
    return -1;
}

/* Creates rk and rkt with the defaults, then cfg's properties as they are. */
static int producer_new(struct ksink *ks, char err[TG_ERR_LEN])
{
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", ks->brokers, err) < 0 ||
        conf_set(conf, "enable.idempotence", "true", err) < 0 ||
        conf_set(conf, "linger.ms", "5", err) < 0)
        goto error;
    /* lz4 only when this librdkafka was built with it. */
    rd_kafka_conf_set(conf, "compression.type", "lz4", why, sizeof(why));
    for (size_t i = 0; i < ks->nprops; i++) {
        if (rd_kafka_conf_set(conf, ks->props[i].key, ks->props[i].value, why, sizeof(why)) !=
            RD_KAFKA_CONF_OK) {
            set_err(err, "usage.kafka.properties.%s: %s", ks->props[i].key, why);
            goto error;
        }
    }
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    ks->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (ks->rk == NULL) {
        set_err(err, "usage.kafka: %s", why);
        goto error;
    }
    conf = NULL; /* rk owns it */
    ks->rkt = rd_kafka_topic_new(ks->rk, ks->topic, NULL);
    if (ks->rkt == NULL) {
        set_err(err, "usage.kafka.topic: %s: %s", ks->topic,
                rd_kafka_err2str(rd_kafka_last_error()));
        rd_kafka_destroy(ks->rk);
        ks->rk = NULL;
        goto error;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(ks->rk);
    rd_kafka_queue_io_event_enable(q, ks->pipefd[1], "1", 1);
    rd_kafka_queue_destroy(q);
    return 0;
error:
    if (conf) rd_kafka_conf_destroy(conf);
    return -1;
}

/* After a poll: syncs what the delivery reports appended (rarely: records
 * the spool no longer held; fsync mode always syncs once per poll, not once
 * per record), and publishes counts. */
static void publish_counts(struct ksink *ks)
{
    char err[TG_ERR_LEN];
    if (ks->unsynced && ks->spool_fsync == TG_SPOOL_FSYNC_ALWAYS &&
        tg_spool_sync(ks->spool, err) < 0 && tg_usage_log_due(&ks->last_err_log_ms))
        tg_log_error("kafka: %s", err);
    ks->unsynced = false;
    if (ks->n_delivered) tg_metrics_add(TG_M_USAGE_RECORDS, lbl_delivered, (double)ks->n_delivered);
    if (ks->n_replayed) tg_metrics_add(TG_M_USAGE_RECORDS, lbl_replayed, (double)ks->n_replayed);
    if (ks->n_spooled) tg_metrics_add(TG_M_USAGE_RECORDS, lbl_spooled, (double)ks->n_spooled);
    ks->n_delivered = ks->n_replayed = ks->n_spooled = 0;
    uint64_t dropped = __atomic_load_n(&ks->dropped_unlogged, __ATOMIC_RELAXED);
    if (dropped && tg_usage_log_due(&ks->last_drop_log_ms)) {
        __atomic_sub_fetch(&ks->dropped_unlogged, dropped, __ATOMIC_RELAXED);
        tg_log_error("usage spool full (drop_oldest): deleted the oldest %llu records",
                     (unsigned long long)dropped);
    }
    if (ks->n_failed && tg_usage_log_due(&ks->last_fail_log_ms)) {
        tg_log_warn("kafka: %llu records not delivered (%s); kept in the spool",
                    (unsigned long long)ks->n_failed, rd_kafka_err2str(ks->last_fail));
        ks->n_failed = 0;
    }
}

/* Purges everything the producer holds and serves the purged delivery
 * reports, which leave the records unread in the spool. Main thread. */
static void purge_into_spool(struct ksink *ks)
{
    rd_kafka_purge(ks->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    int64_t until = tg_now_mono_ms() + KAFKA_PURGE_POLL_MS;
    do {
        rd_kafka_poll(ks->rk, 0);
        if (rd_kafka_outq_len(ks->rk) == 0 && ks->inflight == 0) break;
        rd_kafka_poll(ks->rk, 10);
    } while (tg_now_mono_ms() < until);
    publish_counts(ks);
}

static void producer_destroy(struct ksink *ks)
{
    if (ks->rk == NULL) return;
    purge_into_spool(ks);
    rd_kafka_topic_destroy(ks->rkt);
    rd_kafka_destroy(ks->rk);
    ks->rk = NULL;
    ks->rkt = NULL;
}

/* After a fatal error: drains the broken producer into the spool and makes a
 * new one. Workers wait on the lock meanwhile (they never see a freed rk). */
static void producer_replace(struct ksink *ks)
{
    char err[TG_ERR_LEN];
    pthread_rwlock_wrlock(&ks->lock);
    producer_destroy(ks);
    ks->fatal = false;
    ks->inflight = 0;
    if (producer_new(ks, err) < 0 && tg_usage_log_due(&ks->last_err_log_ms))
        tg_log_error("kafka: cannot recreate the producer: %s; records go to the spool", err);
    pthread_rwlock_unlock(&ks->lock);
}

/* Produces spooled records, oldest first, while fewer than the bound are in
 * flight. Main thread. */
static void replay(struct ksink *ks)
{
    char err[TG_ERR_LEN];
    if (ks->rk == NULL) return;
    int max = __atomic_load_n(&ks->healthy, __ATOMIC_RELAXED) ? KAFKA_REPLAY_INFLIGHT : 1;
    while (ks->inflight < max) {
        if (!ks->have_next) {
            int r = tg_spool_next(ks->spool, &ks->next, err);
            if (r < 0 && tg_usage_log_due(&ks->last_err_log_ms))
                tg_log_error("kafka replay: %s", err);
            if (r <= 0) return;
            ks->have_next = true;
        }
        struct msg_ctx *ctx = malloc(sizeof(*ctx));
        if (ctx == NULL) return;
        *ctx = (struct msg_ctx){.pos = ks->next.pos, .in_spool = true, .replay = true};
        rd_kafka_resp_err_t e = rd_kafka_producev(
            ks->rk, RD_KAFKA_V_RKT(ks->rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
            RD_KAFKA_V_VALUE(ks->next.data, ks->next.len),
            RD_KAFKA_V_KEY(ks->next.klen ? ks->next.key : NULL, ks->next.klen),
            RD_KAFKA_V_OPAQUE(ctx), RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            free(ctx); /* keep `next` for the next tick */
            return;
        }
        ks->have_next = false;
        ks->inflight++;
    }
}

static void update_gauges(struct ksink *ks)
{
    struct tg_spool_stats st;
    tg_spool_stats(ks->spool, &st);
    tg_metrics_set(TG_M_SPOOL_BYTES, NULL, (double)st.bytes);
    tg_metrics_set(TG_M_KAFKA_QUEUE, NULL, ks->rk ? (double)rd_kafka_outq_len(ks->rk) : 0);
}

static void serve(struct ksink *ks)
{
    if (ks->rk) rd_kafka_poll(ks->rk, 0);
    publish_counts(ks);
    if (ks->fatal || ks->rk == NULL) producer_replace(ks);
    replay(ks);
}

static void on_reports(evutil_socket_t fd, short what, void *arg)
{
    char drain[256];
    while (read(fd, drain, sizeof(drain)) > 0) {
    }
    serve(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    serve(arg);
    update_gauges(arg);
}

/* ---- the sink ---- */

/* Every record goes to the spool first (write-ahead: written, and in fsync
 * mode always synced, before this returns and so before the client gets the
 * last bytes of its answer), then to the producer, which acknowledges it in
 * the spool once Kafka has it. While the brokers are known to be down it is
 * only spooled, unread: replay() sends it when they are back, rather than it
 * waiting in memory for message.timeout.ms. */
static int kafka_submit(struct tg_sink *s, const char *json, size_t len, const char *key)
{
    struct ksink *ks = (struct ksink *)s;
    size_t klen = strlen(key);
    struct msg_ctx *ctx = NULL;
    if (__atomic_load_n(&ks->healthy, __ATOMIC_RELAXED)) ctx = malloc(sizeof(*ctx));
    if (ctx == NULL) {
        int rc = spool_write(ks, key, klen, json, len, 0, NULL);
        tg_metrics_add(TG_M_USAGE_RECORDS, rc == 0 ? lbl_spooled : lbl_error, 1);
        return rc;
    }
    *ctx = (struct msg_ctx){.in_spool = true};
    if (spool_write(ks, key, klen, json, len, TG_SPOOL_HANDED_OUT, &ctx->pos) < 0)
        ctx->in_spool = false; /* Kafka may still take it (logged) */
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__STATE;
    pthread_rwlock_rdlock(&ks->lock);
    if (ks->rk)
        e = rd_kafka_producev(ks->rk, RD_KAFKA_V_RKT(ks->rkt),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_VALUE((void *)json, len),
                              RD_KAFKA_V_KEY(klen ? key : NULL, klen), RD_KAFKA_V_OPAQUE(ctx),
                              RD_KAFKA_V_END);
    pthread_rwlock_unlock(&ks->lock);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
    /* Queue full or producer broken: the spool has it; replay() sends it. */
    int rc = 0;
    if (!ctx->in_spool || tg_spool_release(ks->spool, ctx->pos) < 0)
        rc = spool_record(ks, key, klen, json, len, false);
    free(ctx);
    if (rc == 0) tg_metrics_add(TG_M_USAGE_RECORDS, lbl_spooled, 1);
    return rc;
}

static bool kafka_accepting(struct tg_sink *s)
{
    return tg_spool_accepting(((struct ksink *)s)->spool);
}

static void kafka_flush(struct tg_sink *s, int timeout_ms)
{
    struct ksink *ks = (struct ksink *)s;
    char err[TG_ERR_LEN];
    if (ks->rk) {
        /* Waits for acknowledgements while the brokers answer; once they are
         * known to be down, what is left goes to the spool at once instead of
         * waiting for message.timeout.ms or the whole timeout. */
        int64_t until = tg_now_mono_ms() + timeout_ms;
        while (rd_kafka_outq_len(ks->rk) > 0 && __atomic_load_n(&ks->healthy, __ATOMIC_RELAXED)) {
            int64_t left = until - tg_now_mono_ms();
            if (left <= 0) break;
            rd_kafka_flush(ks->rk,
                           (int)(left < KAFKA_FLUSH_SLICE_MS ? left : KAFKA_FLUSH_SLICE_MS));
        }
        purge_into_spool(ks);
    }
    publish_counts(ks);
    if (tg_spool_sync(ks->spool, err) < 0) tg_log_error("kafka flush: %s", err);
    update_gauges(ks);
}

static void kafka_reopen(struct tg_sink *s) {}

static void kafka_destroy(struct tg_sink *s)
{
    struct ksink *ks = (struct ksink *)s;
    if (ks->ev_dr) event_free(ks->ev_dr);
    if (ks->ev_tick) event_free(ks->ev_tick);
    if (ks->rk && ks->spool) kafka_flush(s, KAFKA_DESTROY_FLUSH_MS);
    producer_destroy(ks);
    if (ks->have_next) free(ks->next.data); /* still in the spool, unacknowledged */
    tg_spool_close(ks->spool);
    for (int i = 0; i < 2; i++)
        if (ks->pipefd[i] >= 0) close(ks->pipefd[i]);
    for (size_t i = 0; i < ks->nprops; i++) {
        free(ks->props[i].key);
        free(ks->props[i].value);
    }
    free(ks->props);
    free(ks->brokers);
    free(ks->topic);
    pthread_rwlock_destroy(&ks->lock);
    free(ks);
}

static const struct tg_sink_ops kafka_ops = {
    .name = "kafka",
    .submit = kafka_submit,
    .accepting = kafka_accepting,
    .flush = kafka_flush,
    .reopen = kafka_reopen,
    .destroy = kafka_destroy,
};

static char *dup_or(const char *s, const char *dflt)
{
    return strdup(s ? s : dflt);
}

struct tg_sink *tg_sink_kafka_create(const struct tg_config *cfg, struct event_base *base,
                                     char err[TG_ERR_LEN])
{
    const typeof(cfg->usage.kafka) *kc = &cfg->usage.kafka;
    if (base == NULL) {
        set_err(err, "usage.kafka: the sink needs the main event loop");
        return NULL;
    }
    struct ksink *ks = calloc(1, sizeof(*ks));
    if (ks == NULL) {
        set_err(err, "usage.kafka: out of memory");
        return NULL;
    }
    ks->base.ops = &kafka_ops;
    ks->evb = base;
    ks->pipefd[0] = ks->pipefd[1] = -1;
    ks->healthy = 1;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&ks->lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    ks->brokers = dup_or(kc->brokers, TG_DEFAULT_KAFKA_BROKERS);
    ks->topic = dup_or(kc->topic, TG_DEFAULT_KAFKA_TOPIC);
    ks->props = calloc(kc->nproperties ? kc->nproperties : 1, sizeof(*ks->props));
    if (ks->brokers == NULL || ks->topic == NULL || ks->props == NULL) goto oom;
    for (size_t i = 0; i < kc->nproperties; i++, ks->nprops++) {
        ks->props[i].key = strdup(kc->properties[i].key);
        ks->props[i].value = strdup(kc->properties[i].value);
        if (ks->props[i].key == NULL || ks->props[i].value == NULL) {
            ks->nprops++;
            goto oom;
        }
    }
    struct tg_spool_opts so = {
        .dir = kc->spool_dir ? kc->spool_dir : TG_DEFAULT_SPOOL_DIR,
        .fsync = kc->spool_fsync,
        .fsync_interval_ms = kc->spool_fsync_interval_ms,
        .max_bytes = kc->spool_max_bytes > 0 ? kc->spool_max_bytes : TG_DEFAULT_SPOOL_MAX_BYTES,
        .full = kc->spool_full,
    };
    char serr[TG_ERR_LEN];
    ks->spool_fsync = so.fsync;
    ks->spool = tg_spool_open(&so, serr);
    if (ks->spool == NULL) {
        set_err(err, "usage.kafka.spool_dir: %s", serr);
        goto error;
    }
    struct tg_spool_stats st;
    tg_spool_stats(ks->spool, &st);
    if (st.truncated_bytes)
        tg_log_warn("usage spool %s: cut off %llu bytes of torn or damaged records", so.dir,
                    (unsigned long long)st.truncated_bytes);
    if (st.records)
        tg_log_info("usage spool %s: %lld records left from before; replaying them", so.dir,
                    (long long)st.records);
    if (pipe2(ks->pipefd, O_NONBLOCK | O_CLOEXEC) < 0) {
        set_err(err, "usage.kafka: pipe: %s", strerror(errno));
        goto error;
    }
    if (producer_new(ks, err) < 0) goto error;
    ks->ev_dr = event_new(base, ks->pipefd[0], EV_READ | EV_PERSIST, on_reports, ks);
    ks->ev_tick = event_new(base, -1, EV_PERSIST, on_tick, ks);
    struct timeval tick = {0, KAFKA_TICK_MS * 1000};
    if (ks->ev_dr == NULL || ks->ev_tick == NULL || event_add(ks->ev_dr, NULL) < 0 ||
        event_add(ks->ev_tick, &tick) < 0) {
        set_err(err, "usage.kafka: cannot add events to the main loop");
        goto error;
    }
    replay(ks);
    update_gauges(ks);
    return &ks->base;
oom:
    set_err(err, "usage.kafka: out of memory");
error:
    kafka_destroy(&ks->base);
    return NULL;
}
