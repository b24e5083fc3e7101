/* Prometheus metrics: each declared once; per-thread counters summed at scrape. */
#ifndef TOLLGATE_METRICS_H
#define TOLLGATE_METRICS_H

#include <stdio.h>
#include "tollgate/common.h"

struct evbuffer;

/* X(ENUM, type, name, labels, help): type is counter|gauge|histogram; labels a
 * comma-separated list (or ""). This one list generates the enum, the
 * # HELP/# TYPE lines and docs/metrics.md (`tollgate --metrics-doc`). */
#define TG_METRICS(X)                                                                              \
    X(REQUESTS, counter, "tollgate_requests_total", "route,tenant,code",                           \
      "Requests answered, by route, tenant and HTTP status code.")                                 \
    X(RATELIMITED, counter, "tollgate_ratelimited_total", "tenant,limit",                          \
      "Requests denied by a rate limit, by tenant and the limit that denied.")                     \
    X(COST_UNITS, counter, "tollgate_cost_units_total", "tenant,unit,phase",                       \
      "Cost units charged, by tenant, unit and phase (estimated at admission, actual after "       \
      "the reply).")                                                                               \
    X(TOKENS, counter, "tollgate_tokens_total", "tenant,model,kind",                               \
      "Tokens reported by upstreams, by tenant, model and kind (prompt|completion).")              \
    X(VIDEO_SECONDS, counter, "tollgate_video_seconds_total", "tenant,model",                      \
      "Video seconds generated, by tenant and model.")                                             \
    X(REQUEST_DURATION, histogram, "tollgate_request_duration_seconds", "route",                   \
      "Time from the first byte of a request to the last byte of its reply.")                      \
    X(UPSTREAM_DURATION, histogram, "tollgate_upstream_duration_seconds", "upstream",              \
      "Time from forwarding a request to the last byte of the upstream reply.")                    \
    X(LIMITER_DURATION, histogram, "tollgate_limiter_duration_seconds", "backend",                 \
      "Time of one limiter check.")                                                                \
    X(REDIS_ERRORS, counter, "tollgate_redis_errors_total", "kind",                                \
      "Redis failures, by kind (timeout|connect|reply|noscript).")                                 \
    X(REDIS_CALLS, counter, "tollgate_redis_script_calls_total", "script",                         \
      "Lua script calls sent to Redis, by script (bucket|settle|lease|hold|commit).")                          \
    X(WAIT_QUEUE, gauge, "tollgate_wait_queue_requests", "class",                               \
      "Requests waiting for room in their tenant's wait queue, by class "                        \
      "(interactive|background).")                                                               \
    X(WAIT_SECONDS, histogram, "tollgate_wait_seconds", "class",                                  \
      "Time a request waited in its tenant's wait queue, by class.")                              \
    X(SLOTS_IN_USE, gauge, "tollgate_slots_in_use", "tenant",                                    \
      "Concurrency slots held by this gateway's requests in flight, by tenant.")                 \
    X(SLOTS_EXPIRED, counter, "tollgate_slots_expired_total", "tenant",                          \
      "Concurrency slots found lapsed in Redis (a gateway stopped refreshing them).")            \
    X(UPSTREAM_QUEUE, gauge, "tollgate_upstream_queue_requests", "upstream",                     \
      "Requests waiting for a place of an upstream with max_inflight, by upstream.")             \
    X(LIMITER_DECISIONS, counter, "tollgate_limiter_decisions_total", "where",                     \
      "Redis-backend checks by where they were decided (lease: on this gateway's lease, "          \
      "redis: by a script call).")                                                                 \
    X(LEASE_EVENTS, counter, "tollgate_lease_events_total", "event",                               \
      "Lease events (granted|returned|expired): grants and returns made by lease calls, leases "  \
      "found written off by Redis.")                                                               \
    X(LEASE_UNITS, counter, "tollgate_lease_units_total", "unit,event",                            \
      "Units moved by lease calls, by unit and event (granted|returned|expired).")                 \
    X(CREDIT_DECISIONS, counter, "tollgate_credit_decisions_total", "tenant,outcome",             \
      "Checks of tenants that pay with credits, by outcome (rate_limit: the buckets paid; "      \
      "credits: the balance paid; denied: a bucket denied; insufficient: the balance was short; " \
      "error: no answer).")                                                                      \
    X(CREDITS_CHARGED, counter, "tollgate_credits_charged_total", "tenant",                       \
      "Credits charged for the actual cost of finished requests.")                                \
    X(LEDGER_EVENTS, counter, "tollgate_ledger_events_total", "reason",                           \
      "Ledger events shipped, by reason (topup|adjustment|hold|settle|hold_expired).")            \
    X(USAGE_RECORDS, counter, "tollgate_usage_records_total", "sink,result",                       \
      "Usage records, by sink and result "                                                         \
      "(written|delivered|spooled|replayed|dropped|skipped|error).")                               \
    X(SPOOL_BYTES, gauge, "tollgate_spool_bytes", "", "Bytes in the Kafka spool on disk.")         \
    X(KAFKA_QUEUE, gauge, "tollgate_kafka_queue_messages", "",                                     \
      "Records in the Kafka producer's queue, not yet acknowledged.")                              \
    X(CONNECTIONS, gauge, "tollgate_connections", "side",                                          \
      "Open connections, by side (client|upstream).")                                              \
    X(IDLE_CLOSED, counter, "tollgate_idle_connections_closed_total", "",                          \
      "Idle client connections closed because a worker held server.max_idle_connections.")      \
    X(CONFIG_RELOADS, counter, "tollgate_config_reloads_total", "result",                          \
      "Configuration reloads, by result (ok|error).")                                              \
    X(BUILD_INFO, gauge, "tollgate_build_info", "version",                                         \
      "Always 1; the version label says which build.")

enum tg_metric {
#define TG_METRIC_ENUM(e, t, n, l, h) TG_M_##e,
    TG_METRICS(TG_METRIC_ENUM)
#undef TG_METRIC_ENUM
        TG_M_COUNT
};

/* Adds `v` to a counter or gauge of the calling thread. `labels` are the values
 * in the declared order (as many as declared; NULL is written as "other").
 * Lock-free on the hot path: each thread owns its series. */
void tg_metrics_add(enum tg_metric m, const char *const *labels, double v);
/* Records one observation (seconds) in a histogram of the calling thread. */
void tg_metrics_observe(enum tg_metric m, const char *const *labels, double v);
/* One series of the calling thread: a metric with one set of label values.
 * Callers may keep it to skip the look-up by labels on later updates. */
struct tg_metric_series;
/* Returns the calling thread's series of `m` with these label values (as for
 * tg_metrics_add), creating it on first use: from then on it is on the page,
 * zero until updated. The handle stays valid for the life of the process but
 * belongs to the calling thread: only that thread may update through it. The
 * label values are copied; the caller's strings may go away. */
struct tg_metric_series *tg_metrics_series(enum tg_metric m, const char *const *labels) TG_WUR;
/* tg_metrics_add through a handle of the calling thread (counter or gauge). */
void tg_metrics_series_add(struct tg_metric_series *s, double v);
/* tg_metrics_observe through a handle of the calling thread (histogram). */
void tg_metrics_series_observe(struct tg_metric_series *s, double v);
/* Sets a process-wide gauge (not per thread), e.g. spool bytes. Any thread. */
void tg_metrics_set(enum tg_metric m, const char *const *labels, double v);

/* Renders every metric of every thread in the Prometheus text format. */
void tg_metrics_render(struct evbuffer *out);
/* Writes the Markdown table of docs/metrics.md to stdout. */
void tg_metrics_print_doc(void);
/* Writes the same table to `out` (tests compare it with docs/metrics.md). */
void tg_metrics_write_doc(FILE *out);

#endif
