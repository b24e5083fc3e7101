/* The loaded configuration: an immutable, reference-counted snapshot of one YAML file. */
#ifndef TOLLGATE_CONFIG_H
#define TOLLGATE_CONFIG_H

#include <sys/socket.h>
#include <stdio.h>
#include "tollgate/common.h"

/* Defaults: named constants, never literals in code. */
#define TG_DEFAULT_LISTEN "0.0.0.0:8080"
#define TG_DEFAULT_WORKERS 0
#define TG_DEFAULT_MAX_BODY_BYTES (10 * 1024 * 1024)
#define TG_DEFAULT_HEADER_TIMEOUT_MS 10000
#define TG_DEFAULT_IDLE_TIMEOUT_MS 60000
#define TG_DEFAULT_DRAIN_TIMEOUT_MS 30000
#define TG_DEFAULT_MAX_IDLE_CONNECTIONS 16384 /* per worker */
#define TG_DEFAULT_ADMIN_LISTEN "127.0.0.1:9090"
#define TG_DEFAULT_LOG_LEVEL "info"
#define TG_DEFAULT_REDIS_HOST "127.0.0.1"
#define TG_DEFAULT_REDIS_PORT 6379
#define TG_DEFAULT_REDIS_TIMEOUT_MS 50
#define TG_DEFAULT_REDIS_KEY_PREFIX "tg:"
#define TG_DEFAULT_EXPECTED_GATEWAYS 1
#define TG_DEFAULT_LEASE_MODE "auto"
#define TG_DEFAULT_LEASE_TTL_MS 2000
#define TG_DEFAULT_LEASE_SYNC_INTERVAL_MS 50
#define TG_DEFAULT_LEASE_MIN_RATE 50.0 /* requests/s of a tenant on one gateway */
#define TG_DEFAULT_CHARS_PER_TOKEN 4
#define TG_DEFAULT_MAX_TOKENS 4096
#define TG_DEFAULT_USAGE_FILE "var/usage.jsonl"
#define TG_DEFAULT_KAFKA_BROKERS "127.0.0.1:9092"
#define TG_DEFAULT_KAFKA_TOPIC "tollgate.usage"
#define TG_DEFAULT_SPOOL_DIR "var/spool"
#define TG_DEFAULT_SPOOL_FSYNC_INTERVAL_MS 100
#define TG_DEFAULT_SPOOL_MAX_BYTES (1024LL * 1024 * 1024)
#define TG_DEFAULT_CONNECT_TIMEOUT_MS 2000
#define TG_DEFAULT_RESPONSE_TIMEOUT_MS 600000
#define TG_DEFAULT_MAX_CONNECTIONS 256
#define TG_DEFAULT_ADMIN_TOKEN ""
#define TG_DEFAULT_ACCESS_PATH ""
#define TG_DEFAULT_LIMITER_BACKEND "local"
#define TG_DEFAULT_ON_REDIS_ERROR "allow"
#define TG_DEFAULT_REDIS_PASSWORD ""
#define TG_DEFAULT_REDIS_DB 0
#define TG_DEFAULT_USAGE_SINK "file"
#define TG_DEFAULT_SPOOL_FSYNC "interval"
#define TG_DEFAULT_SPOOL_FULL "reject"
#define TG_DEFAULT_TLS_VERIFY true
#define TG_DEFAULT_MAX_WAIT_MS 0
#define TG_MAX_LIMITS_PER_TENANT 32
#define TG_DEFAULT_CREDITS_HOLD_TTL_MS 900000 /* 15 minutes: longer than a request lives */
#define TG_DEFAULT_CREDITS_LEDGER_FILE "var/ledger.jsonl"
#define TG_DEFAULT_KAFKA_LEDGER_TOPIC "tollgate.ledger"
#define TG_DEFAULT_LEDGER_EVENTS_FILE "var/ledger-events.jsonl"
#define TG_DEFAULT_CREDITS_MODE "off"
#define TG_MAX_PRICES 64
#define TG_TENANT_NAME_MAX 128
#define TG_DEFAULT_MAX_QUEUE 64
#define TG_DEFAULT_MAX_WAITING 10000
#define TG_DEFAULT_SLOT_TTL_MS 10000
#define TG_DEFAULT_QUEUE_TIMEOUT_MS 5000

enum tg_log_level { TG_LOG_DEBUG, TG_LOG_INFO, TG_LOG_WARN, TG_LOG_ERROR };
enum tg_limiter_backend { TG_LIMITER_LOCAL, TG_LIMITER_REDIS };
/* limiter.lease.mode: never, for every tenant, or for tenants busy on this gateway */
enum tg_lease_mode { TG_LEASE_OFF, TG_LEASE_ALWAYS, TG_LEASE_AUTO };
enum tg_on_redis_error { TG_REDIS_ERROR_ALLOW, TG_REDIS_ERROR_DENY };
enum tg_sink_kind { TG_SINK_FILE, TG_SINK_KAFKA, TG_SINK_NONE };
enum tg_spool_fsync { TG_SPOOL_FSYNC_ALWAYS, TG_SPOOL_FSYNC_INTERVAL };
enum tg_spool_full { TG_SPOOL_FULL_REJECT, TG_SPOOL_FULL_DROP_OLDEST };
/* tenants[].credits.mode: no balance; the balance pays what the rate limits would deny;
 * the balance pays every request (the rate limits still cap it). */
enum tg_credit_mode { TG_CREDITS_OFF, TG_CREDITS_OVERFLOW, TG_CREDITS_PREPAID };
/* A request's class: interactive (the default) goes before background in every queue, and
 * only interactive requests may take a limit's reserve. */
enum tg_priority { TG_PRIO_INTERACTIVE, TG_PRIO_BACKGROUND };
/* How a route is charged: `cost:` of a route. */
enum tg_cost_model { TG_COST_REQUESTS, TG_COST_TOKENS, TG_COST_VIDEO };

/* Private to src/config/: the memory and the name index behind one config. */
struct tg_arena;
struct tg_strset;

struct tg_kv {
    char *key;
    char *value;
};

/* A host:port to listen on, resolved at load time. */
struct tg_listen {
    char *text; /* as written */
    struct sockaddr_storage addr;
    socklen_t addrlen;
};

struct tg_upstream {
    char *name;
    char *url;
    bool tls;   /* https:// */
    char *host; /* host part of url, for Host: and SNI */
    int port;
    char *base_path;              /* path part of url without trailing '/', "" if none */
    char *host_header;            /* "host" or "host:port" when not the scheme default */
    struct sockaddr_storage addr; /* resolved once at load */
    socklen_t addrlen;
    struct tg_kv *headers; /* set on the forwarded request */
    size_t nheaders;
    int connect_timeout_ms;
    int response_timeout_ms;
    int max_connections; /* per worker */
    int max_inflight;     /* per gateway (all workers); 0: no limit */
    int queue_timeout_ms; /* how long a request waits for a place when max_inflight is reached */
    bool tls_verify;
    size_t index; /* position in tg_config.upstreams */
};

/* routes[].models: requests for a model matching `pattern` (fnmatch) go to `upstream`. */
struct tg_model_route {
    char *pattern;
    struct tg_upstream *upstream; /* (ref) into the same config */
};

struct tg_route {
    char *path; /* prefix */
    size_t path_len;
    struct tg_upstream *upstream; /* (ref) the default; NULL: only `models` route */
    struct tg_model_route *models; /* the first matching entry wins, in the file's order */
    size_t nmodels;
    struct tg_kv *aliases; /* model_aliases: a requested name -> the model forwarded */
    size_t naliases;
    enum tg_cost_model cost;
    int default_max_tokens; /* route override, else costs.default_max_tokens */
    int max_wait_ms;        /* >0: a denied request waits up to this long for room */
};

struct tg_limit {
    char *name;
    enum tg_unit unit;
    double rate;    /* units per `per_ms` */
    int64_t per_ms; /* 1000, 60000, 3600000, 86400000 */
    double burst;   /* capacity in units; default = rate */
    char **models;  /* empty = applies to every model */
    size_t nmodels;
    double reserve; /* fraction of burst only interactive requests may take, [0, 1) */
    int max;        /* unit: concurrent only (the unit is then TG_UNIT_COUNT until load moves it) */
};

/* One entry of credits.prices: what one unit costs, for some models or all. */
struct tg_price {
    enum tg_unit unit;
    int64_t pico; /* 1e-12 credits per unit (prices have at most 12 decimals) */
    char **models; /* glob patterns (fnmatch); empty = every model */
    size_t nmodels;
};

/* A concurrency limit (`unit: concurrent`): at most `max` of a tenant's requests in flight
 * across all gateways; each holds a slot from admission until its end. */
struct tg_slot_limit {
    char *name;
    int max;
};

struct tg_tenant {
    char *name;
    struct tg_limit *limits; /* token buckets (every unit but concurrent) */
    size_t nlimits;
    struct tg_slot_limit *slots; /* concurrency limits, moved out of `limits:` at load */
    size_t nslots;
    struct {
        enum tg_credit_mode mode;
    } credits;
    int max_queue; /* denied requests that may wait for room, per gateway worker */
    size_t index; /* position in tg_config.tenants */
};

/* One API key. Plain keys are hashed at load; only digests are kept. */
struct tg_key {
    uint8_t digest[32];
    struct tg_tenant *tenant; /* (ref) */
    bool was_plain;
    enum tg_priority priority; /* the class of the key's requests (a header may lower it) */
};

struct tg_config {
    char *path; /* file it came from, "" for embedded defaults */
    struct {
        struct tg_listen listen;
        int workers; /* resolved: 0 became the CPU count */
        int64_t max_body_bytes;
        int header_timeout_ms;
        int idle_timeout_ms;
        int drain_timeout_ms;
        int max_idle_connections; /* per worker */
        int max_waiting;          /* per worker: requests waiting for room, all tenants */
    } server;
    struct {
        struct tg_listen listen;
        char *token; /* "" = no auth */
    } admin;
    struct {
        enum tg_log_level level;
        char *access_path; /* "" = stderr */
    } log;
    struct {
        enum tg_limiter_backend backend;
        struct {
            char *host;
            int port;
            struct sockaddr_storage addr; /* resolved once at load */
            socklen_t addrlen;
            char *password;
            int db;
            int timeout_ms;
            char *key_prefix;
        } redis;
        enum tg_on_redis_error on_redis_error;
        int expected_gateways;
        struct {
            enum tg_lease_mode mode;
            int ttl_ms;
            int sync_interval_ms;
            double min_rate; /* requests/s */
        } lease;
        int slot_ttl_ms; /* a crashed gateway's concurrency slots are taken at most this long */
    } limiter;
    struct {
        int chars_per_token;
        int default_max_tokens;
    } costs;
    struct {
        enum tg_sink_kind sink;
        struct {
            char *path;
            char *ledger_path; /* ledger events with the file sink */
        } file;
        struct {
            char *brokers;
            char *topic;
            char *ledger_topic;
            char *spool_dir;
            enum tg_spool_fsync spool_fsync;
            int spool_fsync_interval_ms;
            int64_t spool_max_bytes;
            enum tg_spool_full spool_full;
            struct tg_kv *properties;
            size_t nproperties;
        } kafka;
    } usage;
    struct {
        bool enabled;
        int hold_ttl_ms;
        char *ledger_file; /* the local backend's balances, replayed at start */
        struct tg_price *prices; /* the first entry matching unit and model wins */
        size_t nprices;
    } credits;
    struct tg_upstream *upstreams;
    size_t nupstreams;
    struct tg_route *routes; /* sorted by path length, longest first */
    size_t nroutes;
    struct tg_tenant *tenants;
    size_t ntenants;
    struct tg_key *keys; /* open-addressing table keyed by digest */
    size_t keys_cap;     /* power of two */
    size_t nkeys;
    size_t nplain_keys;             /* keys written in plain text (--check warns) */
    int refs;                       /* atomic */
    struct tg_strset *tenant_index; /* tenant name -> index, for tg_config_tenant */
    struct tg_arena *arena;         /* owns every string and array above except `keys` */
};

/* Loads and validates FILE. Returns a config with one reference, or NULL with
 * `err` filled as "FILE:LINE:COLUMN: key.path: reason". `${VAR}` in scalars is
 * expanded from the environment; an unset variable is an error. */
struct tg_config *tg_config_load(const char *path, char err[TG_ERR_LEN]) TG_WUR;

/* Same, from a string in memory; `name` stands for the file name in errors. */
struct tg_config *tg_config_load_string(const char *name, const char *text, size_t len,
                                        char err[TG_ERR_LEN]) TG_WUR;

/* Reference counting (atomic; any thread). The last unref frees. */
struct tg_config *tg_config_ref(struct tg_config *cfg);
void tg_config_unref(struct tg_config *cfg);

/* Longest path-prefix match of `path` (up to '?'); NULL if no route matches.
 * A prefix matches at a segment boundary: "/v1/models" matches "/v1/models"
 * and "/v1/models/x", not "/v1/modelsx". */
const struct tg_route *tg_config_route(const struct tg_config *cfg, const char *path, size_t len);

/* The tenant by name, or NULL. */
const struct tg_tenant *tg_config_tenant(const struct tg_config *cfg, const char *name);

/* Compares two configs over the settings that a reload cannot apply (listen
 * addresses, workers, limiter backend and Redis, usage sink, ...; the tables in
 * src/config/schema.c mark them and docs/configuration.md lists them). Returns 0 when
 * none differ, else 1 with `what` set to the key path of the first that does,
 * e.g. "server.listen". */
int tg_config_restart_needed(const struct tg_config *old, const struct tg_config *cur,
                             char what[TG_ERR_LEN]);

/* Writes the effective routes, tenants and limits (never keys) to `out`, as
 * `tollgate --check` prints them, with a warning line per plain-text key. */
void tg_config_print(const struct tg_config *cfg, FILE *out);

#endif
