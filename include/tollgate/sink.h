/* Usage sinks: where records go (a JSONL file, Kafka with its spool, nowhere),
 * behind one table of functions. A sink knows bytes and keys, not records:
 * usage.h builds the records and hands them here. */
#ifndef TOLLGATE_SINK_H
#define TOLLGATE_SINK_H

#include "tollgate/config.h"

struct event_base;

/* A usage sink. Thread-safe: any worker submits; the sink does its I/O on its
 * own thread or on the main loop, never blocking the caller. */
struct tg_sink;
struct tg_sink_ops {
    const char *name; /* "file", "kafka", "none" */
    bool discards;    /* keeps nothing: tg_usage_emit does not even build records */
    /* Borrows `json` for the call: a sink copies what it keeps. `key` is the
     * tenant ("" if none). Returns 0, or -1 if the record could not be kept
     * (it is counted and logged). */
    int (*submit)(struct tg_sink *s, const char *json, size_t len, const char *key);
    /* false while the sink cannot take records without losing them (spool
     * full in reject mode): new requests get 503. */
    bool (*accepting)(struct tg_sink *s);
    /* Delivers or spools everything pending, waiting up to timeout_ms. */
    void (*flush)(struct tg_sink *s, int timeout_ms);
    /* SIGUSR1: reopen files. */
    void (*reopen)(struct tg_sink *s);
    void (*destroy)(struct tg_sink *s);
};
struct tg_sink {
    const struct tg_sink_ops *ops;
};

/* Creates the sink `cfg` names. The Kafka sink drives its delivery reports and
 * spool from `base` (the main thread's loop). NULL with err set on failure. */
struct tg_sink *tg_sink_create(const struct tg_config *cfg, struct event_base *base,
                               char err[TG_ERR_LEN]) TG_WUR;
struct tg_sink *tg_sink_file_create(const struct tg_config *cfg, char err[TG_ERR_LEN]) TG_WUR;
struct tg_sink *tg_sink_kafka_create(const struct tg_config *cfg, struct event_base *base,
                                     char err[TG_ERR_LEN]) TG_WUR;
struct tg_sink *tg_sink_none_create(void) TG_WUR;

/* Creates directory `dir` and its missing parents (mode 0755). Returns 0, or -1
 * with errno set. Used by the file sink and the spool. */
int tg_usage_mkdirs(const char *dir) TG_WUR;

/* For the sinks' repeated failures: true at most once per TG_USAGE_LOG_EVERY_MS
 * for the clock `*last_ms` (starts at 0), so that a failure per record does
 * not become a log line per record. Any thread. */
#define TG_USAGE_LOG_EVERY_MS 1000
bool tg_usage_log_due(int64_t *last_ms);

static inline const char *tg_sink_name(const struct tg_sink *s)
{
    return s->ops->name;
}

static inline bool tg_sink_accepting(struct tg_sink *s)
{
    return s->ops->accepting(s);
}

static inline void tg_sink_flush(struct tg_sink *s, int timeout_ms)
{
    s->ops->flush(s, timeout_ms);
}

static inline void tg_sink_reopen(struct tg_sink *s)
{
    if (s->ops->reopen) s->ops->reopen(s);
}

static inline void tg_sink_destroy(struct tg_sink *s)
{
    if (s) s->ops->destroy(s);
}

#endif
