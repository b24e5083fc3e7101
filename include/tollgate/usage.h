/* Usage records: one per request, serialised as JSON, handed to the configured sink. */
#ifndef TOLLGATE_USAGE_H
#define TOLLGATE_USAGE_H

#include "tollgate/config.h"
#include "tollgate/cost.h"
#include "tollgate/limiter.h"
#include "tollgate/sink.h"

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
    const char *requested_model; /* the alias the client named, NULL if none */
    const char *upstream; /* NULL if not forwarded */
    int status;
    bool stream;
    enum tg_priority priority; /* the request's class */
    enum tg_decision decision;
    const char *limit; /* the bucket that limited, or NULL */
    bool fallback;     /* judged by the local limiter in place of Redis */
    enum tg_paid_by paid_by;  /* what paid an allowed request; NONE: not admitted */
    bool credits;             /* the balance paid: credits_charged and ledger_seq are set */
    int64_t credits_charged;  /* micro-credits the balance was charged */
    int64_t ledger_seq;       /* seq of the hold's ledger event */
    struct tg_usage usage;
    struct tg_cost estimated;
    struct tg_cost actual;
    double latency_ms;
    double upstream_ms; /* < 0: not forwarded */
    int64_t bytes_in;
    int64_t bytes_out;
};

/* Serialises a record as one line of JSON (the schema of docs/usage-records.md,
 * no trailing newline) into a malloc'd string; *len gets its length. NULL on OOM. */
char *tg_usage_to_json(const struct tg_usage_record *r, size_t *len) TG_WUR;

/* The access log line of a record (one JSON object, no newline): ts, id,
 * tenant, route, model, status, decision, priority, latency_ms, upstream_ms, bytes_in,
 * bytes_out; strings past 256 bytes are cut. Writes into out, which must hold
 * TG_USAGE_ACCESS_LINE_MAX bytes, and returns the length (0 if cap is smaller). */
#define TG_USAGE_ACCESS_LINE_MAX (512 + 6 * (TG_REQUEST_ID_LEN + 3 * 256))
size_t tg_usage_access_line(const struct tg_usage_record *r, char *out, size_t cap);

/* Writes a new unique request id: 32 lowercase hex chars. Thread-safe. */
void tg_usage_new_id(char out[TG_REQUEST_ID_LEN]);

/* Builds the JSON of `r` and submits it. Returns the sink's result, for tests:
 * a record that cannot be kept is counted and logged by the time this returns,
 * so the request path has nothing left to do with it. A `rejected` record
 * while the sink is not accepting is not submitted but counted
 * (tollgate_usage_records_total{result="skipped"}) and 0 returned. */
int tg_usage_emit(struct tg_sink *s, const struct tg_usage_record *r);

#endif
