/* Usage records: one per request, serialised as JSON, handed to the configured sink. */
#ifndef TOLLGATE_USAGE_H
#define TOLLGATE_USAGE_H

#include "tollgate/config.h"
#include "tollgate/cost.h"

struct event_base;

#define TG_REQUEST_ID_LEN 64

enum tg_decision {
    TG_DECISION_ALLOWED,
    TG_DECISION_LIMITED,
    TG_DECISION_REJECTED,
    TG_DECISION_ERROR
};

/* Everything a record says, filled along the request path. Strings are (ref). */
struct tg_usage_record {
    char id[TG_REQUEST_ID_LEN];
    int64_t ts_ms;        /* wall clock when the request arrived */
    const char *tenant;   /* NULL before authentication */
    char key[13];         /* first 12 hex of the key's SHA-256, "" if none */
    const char *route;    /* the route's path, or NULL */
    const char *model;    /* "" if none */
    const char *upstream; /* NULL if not forwarded */
    int status;
    bool stream;
    enum tg_decision decision;
    const char *limit; /* the bucket that limited, or NULL */
    bool fallback;     /* judged by the local limiter in place of Redis */
    struct tg_usage usage;
    struct tg_cost estimated;
    struct tg_cost actual;
    double latency_ms;
    double upstream_ms; /* < 0: not forwarded */
    int64_t bytes_in;
    int64_t bytes_out;
};

/* Serialises a record as one line of JSON (DESIGN.md schema, no trailing
 * newline) into a malloc'd string; *len gets its length. NULL on OOM. */
char *tg_usage_to_json(const struct tg_usage_record *r, size_t *len);

/* The access log line of a record (one JSON object, no newline): ts, id,
 * tenant, route, model, status, decision, latency_ms, upstream_ms, bytes_in,
 * bytes_out; strings past 256 bytes are cut. Writes into out, which must hold
 * TG_USAGE_ACCESS_LINE_MAX bytes, and returns the length (0 if cap is smaller). */
#define TG_USAGE_ACCESS_LINE_MAX (512 + 6 * (TG_REQUEST_ID_LEN + 3 * 256))
size_t tg_usage_access_line(const struct tg_usage_record *r, char *out, size_t cap);

/* Writes a new unique request id: 32 lowercase hex chars. Thread-safe. */
void tg_usage_new_id(char out[TG_REQUEST_ID_LEN]);

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
struct tg_sink *tg_sink_none_create(void);

/* Creates directory `dir` and its missing parents (mode 0755). Returns 0, or -1
 * with errno set. Used by the file sink and the spool. */
int tg_usage_mkdirs(const char *dir) TG_WUR;

/* For the sinks' repeated failures: true at most once per TG_USAGE_LOG_EVERY_MS
 * for the clock `*last_ms` (starts at 0), so that a failure per record does
 * not become a log line per record. Any thread. */
#define TG_USAGE_LOG_EVERY_MS 1000
bool tg_usage_log_due(int64_t *last_ms);

/* Builds the JSON of `r` and submits it. Returns the sink's result. A
 * `rejected` record while the sink is not accepting is not submitted but
 * counted (tollgate_usage_records_total{result="skipped"}) and 0 returned. */
int tg_usage_emit(struct tg_sink *s, const struct tg_usage_record *r);

#endif
