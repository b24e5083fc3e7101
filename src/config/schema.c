/* The schema: each section's table of keys (type, bounds, default) and its cross-field checks. */
#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "loader.h"

/* Bounds of the settings (their defaults are in config.h). */
#define MAX_WORKERS 1024
#define MAX_MS_HOUR 3600000
#define MAX_MS_DAY 86400000
#define MAX_TOKENS 100000000
#define MAX_RATE 1000000000000LL /* 1e12 units: keeps micro-units within int64 */
#define MAX_BODY_BYTES (1LL << 40)
#define MIN_SPOOL_BYTES (1LL << 20)
#define MAX_SPOOL_BYTES (1LL << 50)

/* ---- errors of the checks: at the key's value if it was written, else at the mapping ---- */

static uint32_t seen_node(const struct section *sec, const uint32_t *seen, const char *name,
                          uint32_t fallback)
{
    for (size_t i = 0; i < sec->nkeys; i++) {
        if (strcmp(sec->keys[i].name, name) == 0 && seen[i] != NONE) return seen[i];
    }
    return fallback;
}

/* An error about key `name` of the section being checked: at its value if it was written,
 * else at the mapping. */
TG_PRINTF(6, 7)
static int fail_key(struct loader *ld, const struct section *sec, const uint32_t *seen,
                    uint32_t map, const char *name, const char *fmt, ...)
{
    uint32_t id = seen_node(sec, seen, name, map);
    path_key(ld, name, strlen(name));
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, id == NONE ? 1 : N(ld, id)->line + 1, id == NONE ? 1 : N(ld, id)->col + 1, fmt,
             ap);
    va_end(ap);
    return -1;
}

/* ---- cross-field checks ---- */

static int check_server(struct loader *ld, const struct section *sec, uint32_t map,
                        const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->server.workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->server.workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
    }
    return 0;
}

static int check_redis(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->limiter.backend != TG_LIMITER_REDIS) return 0;
    char host[256];
    const char *h = c->limiter.redis.host;
    size_t mark = path_key(ld, "host", 4);
    uint32_t at = seen_node(sec, seen, "host", map);
    if (split_host_port(h, strlen(h), false, 0, 1, host, sizeof(host)) != 0)
        return fail_got(ld, at, h, strlen(h), "must be a host name or address");
    if (resolve(ld, at, host, c->limiter.redis.port, &c->limiter.redis.addr,
                &c->limiter.redis.addrlen) < 0)
        return -1;
    path_pop(ld, mark);
    return 0;
}

static int check_file(struct loader *ld, const struct section *sec, uint32_t map,
                      const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->usage.sink == TG_SINK_FILE && !c->usage.file.path[0])
        return fail_key(ld, sec, seen, map, "path", "must not be empty when usage.sink is file");
    return 0;
}

static int check_kafka(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->usage.sink != TG_SINK_KAFKA) return 0;
    if (!c->usage.kafka.brokers[0])
        return fail_key(ld, sec, seen, map, "brokers",
                        "must not be empty when usage.sink is kafka");
    if (!c->usage.kafka.topic[0])
        return fail_key(ld, sec, seen, map, "topic", "must not be empty when usage.sink is kafka");
    if (!c->usage.kafka.spool_dir[0])
        return fail_key(ld, sec, seen, map, "spool_dir",
                        "must not be empty when usage.sink is kafka");
    return 0;
}

static int parse_url(struct loader *ld, uint32_t id, struct tg_upstream *u)
{
    const char *s = u->url, *p;
    char host[256];
    if (strncasecmp(s, "http://", 7) == 0) {
        p = s + 7;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        u->tls = true;
        p = s + 8;
    } else {
        goto bad;
    }
    size_t alen = strcspn(p, "/");
    const char *path = p + alen;
    if (strpbrk(p, "?#")) return fail(ld, id, "may not have a query or a fragment");
    if (memchr(p, '@', alen))
        return fail(ld, id, "may not contain user:password@; set an Authorization header");
    int def_port = u->tls ? 443 : 80;
    u->port = split_host_port(p, alen, false, def_port, 1, host, sizeof(host));
    if (u->port < 0) goto bad;
    size_t plen = strlen(path);
    for (size_t i = 0; i < plen; i++) {
        if (!isgraph((unsigned char)path[i])) goto bad;
    }
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    bool v6 = strchr(host, ':') != NULL;
    char hh[300];
    if (u->port == def_port)
        snprintf(hh, sizeof(hh), v6 ? "[%s]" : "%s", host);
    else
        snprintf(hh, sizeof(hh), v6 ? "[%s]:%d" : "%s:%d", host, u->port);
    if (!(u->host = ld_strdup(ld, host, strlen(host))) ||
        !(u->base_path = ld_strdup(ld, path, plen)) ||
        !(u->host_header = ld_strdup(ld, hh, strlen(hh))))
        return -1;
    return resolve(ld, id, host, u->port, &u->addr, &u->addrlen);
bad:
    return fail(ld, id, "must be http:// or https:// followed by host[:port][/base/path]");
}

static int check_upstream(struct loader *ld, const struct section *sec, uint32_t map,
                          const uint32_t *seen, void *base)
{
    struct tg_upstream *u = base;
    u->index = ld->item;
    bool added;
    const struct strset_slot *e =
        strset_add(&ld->upstream_names, u->name, strlen(u->name), (uint32_t)ld->item, &added);
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    if (!added)
        return fail_key(ld, sec, seen, map, "name",
                        "upstream %s is already defined at upstreams[%u]", u->name, e->val);
    size_t mark = path_key(ld, "url", 3);
    if (parse_url(ld, seen_node(sec, seen, "url", map), u) < 0) return -1;
    path_pop(ld, mark);
    return 0;
}

static int check_route(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_route *r = base;
    r->path_len = strlen(r->path);
    if (!r->upstream && r->nmodels == 0)
        return fail_key(ld, sec, seen, map, "upstream",
                        "is required (or models: routing requests by their model)");
    if (r->default_max_tokens == 0) r->default_max_tokens = ld->cfg->costs.default_max_tokens;
    bool added;
    const struct strset_slot *e =
        strset_add(&ld->route_paths, r->path, r->path_len, (uint32_t)ld->item, &added);
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    if (!added)
        return fail_key(ld, sec, seen, map, "path", "route %s is already defined at routes[%u]",
                        r->path, e->val);
    return 0;
}

static int check_limit(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_limit *l = base;
    const struct tg_limit *all = ld->items;
    bool concurrent = (int)l->unit == TG_UNIT_COUNT;
    static const char *const bucket_keys[] = {"rate", "per", "burst", "reserve", "models"};
    if (concurrent) {
        if (seen_node(sec, seen, "max", NONE) == NONE)
            return fail_key(ld, sec, seen, map, "max",
                            "is required for a concurrent limit (requests in flight at once)");
        for (size_t i = 0; i < TG_ARRAY_LEN(bucket_keys); i++)
            if (seen_node(sec, seen, bucket_keys[i], NONE) != NONE)
                return fail_key(ld, sec, seen, map, bucket_keys[i],
                                "does not apply to a concurrent limit (it has only max)");
    } else {
        if (seen_node(sec, seen, "max", NONE) != NONE)
            return fail_key(ld, sec, seen, map, "max",
                            "applies only to unit: concurrent (a bucket has rate, per, burst)");
        if (seen_node(sec, seen, "rate", NONE) == NONE)
            return fail_key(ld, sec, seen, map, "rate", "is required");
        if (seen_node(sec, seen, "per", NONE) == NONE)
            return fail_key(ld, sec, seen, map, "per", "is required");
    }
    for (size_t i = 0; i < ld->item; i++) {
        if (strcmp(all[i].name, l->name) == 0)
            return fail_key(ld, sec, seen, map, "name",
                            "limit %s is already defined in this tenant at limits[%zu]", l->name,
                            i);
    }
    if (concurrent) return 0;
    if (l->burst == 0) l->burst = l->rate;
    if (l->reserve >= 1)
        return fail_key(ld, sec, seen, map, "reserve",
                        "must be a fraction of burst from 0 up to (not including) 1");
    if (l->unit == TG_UNIT_REQUESTS && l->burst < 1)
        return fail_key(ld, sec, seen, map,
                        seen_node(sec, seen, "burst", NONE) != NONE ? "burst" : "rate",
                        "a requests limit needs a burst of at least 1 (one request costs 1)");
    return 0;
}

/* ---- the schema (docs/configuration.md); keys are applied in table order ---- */

const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const backend_names[] = {"local", "redis", NULL};
const char *const on_error_names[] = {"allow", "deny", NULL};
const char *const lease_mode_names[] = {"off", "always", "auto", NULL};
static const char *const sink_names[] = {"file", "kafka", "none", NULL};
const char *const fsync_names[] = {"always", "interval", NULL};
const char *const full_names[] = {"reject", "drop_oldest", NULL};
const char *const cost_names[] = {"requests", "tokens", "video", NULL};
static const char *const unit_names[] = {"requests", "tokens", "video_seconds", NULL};
/* A limit's unit: the bucket units, and `concurrent` (== TG_UNIT_COUNT) for slots. */
static const char *const limit_unit_names[] = {"requests", "tokens", "video_seconds", "concurrent",
                                               NULL};
const char *const credit_mode_names[] = {"off", "overflow", "prepaid", NULL};
const char *const priority_names[] = {"interactive", "background", NULL};

_Static_assert(TG_LOG_ERROR == 3 && TG_LIMITER_REDIS == 1 && TG_REDIS_ERROR_DENY == 1 &&
                   TG_SINK_NONE == 2 && TG_SPOOL_FSYNC_INTERVAL == 1 &&
                   TG_SPOOL_FULL_DROP_OLDEST == 1 && TG_COST_VIDEO == 2 &&
                   TG_UNIT_VIDEO_SECONDS == 2 && sizeof(enum tg_unit) == sizeof(int),
               "choice tables follow the enums of config.h");

#define KEY(n, type, setter, offset) .name = n, .node = type, .set = setter, .off = offset
#define CFG(f) offsetof(struct tg_config, f)
/* A section's table, checked at compile time to fit apply_section's arrays. */
#define SECTION(keys, check)                                                                       \
    {                                                                                              \
        keys,                                                                                      \
            TG_ARRAY_LEN(keys) + 0 * sizeof(char[TG_ARRAY_LEN(keys) <= MAX_DIRECTIVES ? 1 : -1]),  \
            check                                                                                  \
    }

static const struct directive server_keys[] = {
    {KEY("listen", N_SCALAR, set_listen, CFG(server.listen)), .store = ST_LISTEN,
     .defs = TG_DEFAULT_LISTEN},
    {KEY("workers", N_SCALAR, set_int, CFG(server.workers)), .store = ST_INT,
     .defi = TG_DEFAULT_WORKERS, .min = 0, .max = MAX_WORKERS},
    {KEY("max_body_bytes", N_SCALAR, set_i64, CFG(server.max_body_bytes)), .store = ST_I64,
     .defi = TG_DEFAULT_MAX_BODY_BYTES, .min = 1, .max = MAX_BODY_BYTES, .reload_safe = true},
    {KEY("header_timeout_ms", N_SCALAR, set_int, CFG(server.header_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_HEADER_TIMEOUT_MS, .min = 1, .max = MAX_MS_HOUR, .reload_safe = true},
    {KEY("idle_timeout_ms", N_SCALAR, set_int, CFG(server.idle_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_IDLE_TIMEOUT_MS, .min = 1, .max = MAX_MS_DAY, .reload_safe = true},
    {KEY("drain_timeout_ms", N_SCALAR, set_int, CFG(server.drain_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_DRAIN_TIMEOUT_MS, .min = 0, .max = MAX_MS_HOUR, .reload_safe = true},
    {KEY("max_idle_connections", N_SCALAR, set_int, CFG(server.max_idle_connections)),
     .store = ST_INT, .defi = TG_DEFAULT_MAX_IDLE_CONNECTIONS, .min = 1, .max = 1000000,
     .reload_safe = true},
    {KEY("max_waiting", N_SCALAR, set_int, CFG(server.max_waiting)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_WAITING, .min = 0, .max = 10000000, .reload_safe = true},
};

static const struct directive admin_keys[] = {
    {KEY("listen", N_SCALAR, set_listen, CFG(admin.listen)), .store = ST_LISTEN,
     .defs = TG_DEFAULT_ADMIN_LISTEN},
    {KEY("token", N_SCALAR, set_str, CFG(admin.token)), .store = ST_STR,
     .defs = TG_DEFAULT_ADMIN_TOKEN, .reload_safe = true},
};

static const struct directive log_keys[] = {
    {KEY("level", N_SCALAR, set_enum, CFG(log.level)), .store = ST_ENUM,
     .defs = TG_DEFAULT_LOG_LEVEL, .choices = level_names, .reload_safe = true},
    {KEY("access_path", N_SCALAR, set_str, CFG(log.access_path)), .store = ST_STR,
     .defs = TG_DEFAULT_ACCESS_PATH},
};

static const struct directive redis_keys[] = {
    {KEY("host", N_SCALAR, set_str, CFG(limiter.redis.host)), .store = ST_STR,
     .defs = TG_DEFAULT_REDIS_HOST},
    {KEY("port", N_SCALAR, set_int, CFG(limiter.redis.port)), .store = ST_INT,
     .defi = TG_DEFAULT_REDIS_PORT, .min = 1, .max = 65535},
    {KEY("password", N_SCALAR, set_str, CFG(limiter.redis.password)), .store = ST_STR,
     .defs = TG_DEFAULT_REDIS_PASSWORD},
    {KEY("db", N_SCALAR, set_int, CFG(limiter.redis.db)), .store = ST_INT,
     .defi = TG_DEFAULT_REDIS_DB, .min = 0, .max = 65535},
    {KEY("timeout_ms", N_SCALAR, set_int, CFG(limiter.redis.timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_REDIS_TIMEOUT_MS, .min = 1, .max = 60000},
    {KEY("key_prefix", N_SCALAR, set_str, CFG(limiter.redis.key_prefix)), .store = ST_STR,
     .defs = TG_DEFAULT_REDIS_KEY_PREFIX},
};
static const struct section redis_section = SECTION(redis_keys, check_redis);

static int check_lease(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->limiter.lease.ttl_ms < 2 * c->limiter.lease.sync_interval_ms)
        return fail_key(ld, sec, seen, map, "ttl_ms",
                        "must be at least twice sync_interval_ms (a lease outlives a missed sync)");
    return 0;
}

static const struct directive lease_keys[] = {
    {KEY("mode", N_SCALAR, set_enum, CFG(limiter.lease.mode)), .store = ST_ENUM,
     .defs = TG_DEFAULT_LEASE_MODE, .choices = lease_mode_names},
    {KEY("ttl_ms", N_SCALAR, set_int, CFG(limiter.lease.ttl_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_LEASE_TTL_MS, .min = 10, .max = 600000},
    {KEY("sync_interval_ms", N_SCALAR, set_int, CFG(limiter.lease.sync_interval_ms)),
     .store = ST_INT, .defi = TG_DEFAULT_LEASE_SYNC_INTERVAL_MS, .min = 1, .max = 60000},
    {KEY("min_rate", N_SCALAR, set_num, CFG(limiter.lease.min_rate)), .store = ST_DBL,
     .defd = TG_DEFAULT_LEASE_MIN_RATE, .min = 0, .max = 1000000000},
};
static const struct section lease_section = SECTION(lease_keys, check_lease);

static const struct directive limiter_keys[] = {
    {KEY("backend", N_SCALAR, set_enum, CFG(limiter.backend)), .store = ST_ENUM,
     .defs = TG_DEFAULT_LIMITER_BACKEND, .choices = backend_names},
    {KEY("redis", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &redis_section},
    {KEY("on_redis_error", N_SCALAR, set_enum, CFG(limiter.on_redis_error)), .store = ST_ENUM,
     .defs = TG_DEFAULT_ON_REDIS_ERROR, .choices = on_error_names},
    {KEY("expected_gateways", N_SCALAR, set_int, CFG(limiter.expected_gateways)), .store = ST_INT,
     .defi = TG_DEFAULT_EXPECTED_GATEWAYS, .min = 1, .max = 1000},
    {KEY("lease", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &lease_section},
    {KEY("slot_ttl_ms", N_SCALAR, set_int, CFG(limiter.slot_ttl_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_SLOT_TTL_MS, .min = 1000, .max = MAX_MS_HOUR},
};

static const struct directive costs_keys[] = {
    {KEY("chars_per_token", N_SCALAR, set_int, CFG(costs.chars_per_token)), .store = ST_INT,
     .defi = TG_DEFAULT_CHARS_PER_TOKEN, .min = 1, .max = 1000, .reload_safe = true},
    {KEY("default_max_tokens", N_SCALAR, set_int, CFG(costs.default_max_tokens)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_TOKENS, .min = 1, .max = MAX_TOKENS, .reload_safe = true},
};

static const struct directive file_keys[] = {
    {KEY("path", N_SCALAR, set_str, CFG(usage.file.path)), .store = ST_STR,
     .defs = TG_DEFAULT_USAGE_FILE},
    {KEY("ledger_path", N_SCALAR, set_str, CFG(usage.file.ledger_path)), .store = ST_STR,
     .defs = TG_DEFAULT_LEDGER_EVENTS_FILE},
};
static const struct section file_section = SECTION(file_keys, check_file);

static const struct directive kafka_keys[] = {
    {KEY("brokers", N_SCALAR, set_str, CFG(usage.kafka.brokers)), .store = ST_STR,
     .defs = TG_DEFAULT_KAFKA_BROKERS},
    {KEY("topic", N_SCALAR, set_str, CFG(usage.kafka.topic)), .store = ST_STR,
     .defs = TG_DEFAULT_KAFKA_TOPIC},
    {KEY("ledger_topic", N_SCALAR, set_str, CFG(usage.kafka.ledger_topic)), .store = ST_STR,
     .defs = TG_DEFAULT_KAFKA_LEDGER_TOPIC},
    {KEY("spool_dir", N_SCALAR, set_str, CFG(usage.kafka.spool_dir)), .store = ST_STR,
     .defs = TG_DEFAULT_SPOOL_DIR},
    {KEY("spool_fsync", N_SCALAR, set_enum, CFG(usage.kafka.spool_fsync)), .store = ST_ENUM,
     .defs = TG_DEFAULT_SPOOL_FSYNC, .choices = fsync_names},
    {KEY("spool_fsync_interval_ms", N_SCALAR, set_int, CFG(usage.kafka.spool_fsync_interval_ms)),
     .store = ST_INT, .defi = TG_DEFAULT_SPOOL_FSYNC_INTERVAL_MS, .min = 1, .max = 60000},
    {KEY("spool_max_bytes", N_SCALAR, set_i64, CFG(usage.kafka.spool_max_bytes)), .store = ST_I64,
     .defi = TG_DEFAULT_SPOOL_MAX_BYTES, .min = MIN_SPOOL_BYTES, .max = MAX_SPOOL_BYTES},
    {KEY("spool_full", N_SCALAR, set_enum, CFG(usage.kafka.spool_full)), .store = ST_ENUM,
     .defs = TG_DEFAULT_SPOOL_FULL, .choices = full_names},
    {KEY("properties", N_MAP, set_props, CFG(usage.kafka.properties)), .store = ST_KV,
     .off_n = CFG(usage.kafka.nproperties)},
};
static const struct section kafka_section = SECTION(kafka_keys, check_kafka);

static const struct directive usage_keys[] = {
    {KEY("sink", N_SCALAR, set_enum, CFG(usage.sink)), .store = ST_ENUM,
     .defs = TG_DEFAULT_USAGE_SINK, .choices = sink_names},
    {KEY("file", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &file_section},
    {KEY("kafka", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &kafka_section},
};

#define UP(f) offsetof(struct tg_upstream, f)
static const struct directive upstream_keys[] = {
    {KEY("name", N_SCALAR, set_name, UP(name)), .store = ST_STR, .required = true},
    {KEY("url", N_SCALAR, set_str, UP(url)), .store = ST_STR, .required = true},
    {KEY("headers", N_MAP, set_headers, UP(headers)), .store = ST_KV, .off_n = UP(nheaders)},
    {KEY("connect_timeout_ms", N_SCALAR, set_int, UP(connect_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_CONNECT_TIMEOUT_MS, .min = 1, .max = MAX_MS_HOUR},
    {KEY("response_timeout_ms", N_SCALAR, set_int, UP(response_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_RESPONSE_TIMEOUT_MS, .min = 1, .max = MAX_MS_DAY},
    {KEY("max_connections", N_SCALAR, set_int, UP(max_connections)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_CONNECTIONS, .min = 1, .max = 65536},
    {KEY("tls_verify", N_SCALAR, set_bool, UP(tls_verify)), .store = ST_BOOL,
     .defi = TG_DEFAULT_TLS_VERIFY},
    {KEY("max_inflight", N_SCALAR, set_int, UP(max_inflight)), .store = ST_INT, .defi = 0,
     .min = 0, .max = 1000000},
    {KEY("queue_timeout_ms", N_SCALAR, set_int, UP(queue_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_QUEUE_TIMEOUT_MS, .min = 1, .max = MAX_MS_HOUR},
};
static const struct section upstream_section = SECTION(upstream_keys, check_upstream);

#define RT(f) offsetof(struct tg_route, f)
static const struct directive route_keys[] = {
    {KEY("path", N_SCALAR, set_path, RT(path)), .store = ST_STR, .required = true},
    {KEY("upstream", N_SCALAR, set_route_upstream, RT(upstream))}, /* or models (check_route) */
    {KEY("models", N_MAP, set_route_models, 0)},
    {KEY("model_aliases", N_MAP, set_props, RT(aliases)), .store = ST_KV, .off_n = RT(naliases)},
    {KEY("cost", N_SCALAR, set_enum, RT(cost)), .store = ST_ENUM, .choices = cost_names,
     .required = true},
    {KEY("default_max_tokens", N_SCALAR, set_int, RT(default_max_tokens)), .store = ST_INT,
     .min = 1, .max = MAX_TOKENS}, /* default: costs.default_max_tokens */
    {KEY("max_wait_ms", N_SCALAR, set_int, RT(max_wait_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_WAIT_MS, .min = 0, .max = 600000},
};
static const struct section route_section = SECTION(route_keys, check_route);

#define LIM(f) offsetof(struct tg_limit, f)
static const struct directive limit_keys[] = {
    {KEY("name", N_SCALAR, set_name, LIM(name)), .store = ST_STR, .required = true},
    {KEY("unit", N_SCALAR, set_enum, LIM(unit)), .store = ST_ENUM, .choices = limit_unit_names,
     .required = true},
    {KEY("rate", N_SCALAR, set_num, LIM(rate)), .store = ST_DBL, .min = 0, .min_excl = true,
     .max = MAX_RATE}, /* required but for concurrent (check_limit) */
    {KEY("per", N_SCALAR, set_per, LIM(per_ms)), .store = ST_I64},
    {KEY("max", N_SCALAR, set_int, LIM(max)), .store = ST_INT, .min = 1, .max = 1000000},
    {KEY("burst", N_SCALAR, set_num, LIM(burst)), .store = ST_DBL, .min = 0, .min_excl = true,
     .max = MAX_RATE}, /* default: rate */
    {KEY("models", N_SEQ, set_strlist, LIM(models)), .off_n = LIM(nmodels)},
    {KEY("reserve", N_SCALAR, set_num, LIM(reserve)), .store = ST_DBL, .min = 0, .max = 1,
     .defd = 0},
};
static const struct section limit_section = SECTION(limit_keys, check_limit);

static int check_tenant_credits(struct loader *ld, const struct section *sec, uint32_t map,
                                const uint32_t *seen, void *base)
{
    const struct tg_tenant *t = base;
    if (t->credits.mode != TG_CREDITS_OFF && !ld->cfg->credits.enabled)
        return fail_key(ld, sec, seen, map, "mode",
                        "needs credits.enabled: true (and credits.prices) to be anything but off");
    return 0;
}

#define TEN(f) offsetof(struct tg_tenant, f)
/* Concurrent limits go to the tenant's slots; limits[] keeps the buckets. */
static int check_tenant(struct loader *ld, const struct section *sec, uint32_t map,
                        const uint32_t *seen, void *base)
{
    struct tg_tenant *t = base;
    size_t n = 0;
    for (size_t i = 0; i < t->nlimits; i++)
        n += (int)t->limits[i].unit == TG_UNIT_COUNT;
    if (n == 0) return 0;
    t->slots = ld_alloc(ld, n * sizeof(*t->slots));
    if (!t->slots) return -1;
    size_t k = 0;
    for (size_t i = 0; i < t->nlimits; i++) {
        if ((int)t->limits[i].unit == TG_UNIT_COUNT) {
            t->slots[t->nslots].name = t->limits[i].name;
            t->slots[t->nslots++].max = t->limits[i].max;
        } else {
            t->limits[k++] = t->limits[i];
        }
    }
    t->nlimits = k;
    return 0;
}

static const struct directive tenant_credit_keys[] = {
    {KEY("mode", N_SCALAR, set_enum, TEN(credits.mode)), .store = ST_ENUM,
     .defs = TG_DEFAULT_CREDITS_MODE, .choices = credit_mode_names},
};
static const struct section tenant_credit_section =
    SECTION(tenant_credit_keys, check_tenant_credits);

static const struct directive tenant_keys[] = {
    {KEY("name", N_SCALAR, set_tenant_name, TEN(name)), .store = ST_STR, .required = true},
    {KEY("keys", N_SEQ, set_keys, 0)}, /* into the config's key table */
    {KEY("limits", N_SEQ, set_list, TEN(limits)), .off_n = TEN(nlimits), .sub = &limit_section,
     .item_size = sizeof(struct tg_limit), .max = TG_MAX_LIMITS_PER_TENANT},
    {KEY("credits", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &tenant_credit_section},
    {KEY("max_queue", N_SCALAR, set_int, TEN(max_queue)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_QUEUE, .min = 0, .max = 1000000},
};
static const struct section tenant_section = SECTION(tenant_keys, check_tenant);

#define PR(f) offsetof(struct tg_price, f)
static const struct directive price_keys[] = {
    {KEY("unit", N_SCALAR, set_enum, PR(unit)), .store = ST_ENUM, .choices = unit_names,
     .required = true},
    {KEY("price", N_SCALAR, set_price, PR(pico)), .store = ST_I64, .max = 1000000,
     .required = true},
    {KEY("models", N_SEQ, set_strlist, PR(models)), .off_n = PR(nmodels)},
};
static const struct section price_section = SECTION(price_keys, NULL);

static int check_credits(struct loader *ld, const struct section *sec, uint32_t map,
                         const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (!c->credits.enabled) return 0;
    if (c->credits.nprices == 0)
        return fail_key(ld, sec, seen, map, "prices",
                        "must list at least one price when credits are enabled");
    if (!c->admin.token[0]) {
        path_pop(ld, 0);
        path_key(ld, "admin", 5);
        path_key(ld, "token", 5);
        return fail_at(ld, map == NONE ? 1 : N(ld, map)->line + 1,
                       map == NONE ? 1 : N(ld, map)->col + 1,
                       "must be set when credits are enabled (the credits API moves money)");
    }
    if (c->limiter.backend == TG_LIMITER_LOCAL && !c->credits.ledger_file[0])
        return fail_key(ld, sec, seen, map, "ledger_file",
                        "must not be empty with the local limiter (it holds the balances)");
    /* The usage section came first: its credits-only keys are checked here, where both are
     * known. */
    const char *clash = NULL;
    if (c->usage.sink == TG_SINK_FILE && !c->usage.file.ledger_path[0])
        clash = "usage.file.ledger_path must not be empty when usage.sink is file";
    else if (c->usage.sink == TG_SINK_FILE &&
             strcmp(c->usage.file.path, c->usage.file.ledger_path) == 0)
        clash = "usage.file.ledger_path must not be usage.file.path";
    else if (c->usage.sink == TG_SINK_KAFKA && !c->usage.kafka.ledger_topic[0])
        clash = "usage.kafka.ledger_topic must not be empty when usage.sink is kafka";
    else if (c->usage.sink == TG_SINK_KAFKA &&
             strcmp(c->usage.kafka.topic, c->usage.kafka.ledger_topic) == 0)
        clash = "usage.kafka.ledger_topic must not be usage.kafka.topic";
    else if (c->usage.sink == TG_SINK_FILE && c->limiter.backend == TG_LIMITER_LOCAL &&
             strcmp(c->usage.file.ledger_path, c->credits.ledger_file) == 0)
        clash = "usage.file.ledger_path must not be credits.ledger_file (the balances' own file)";
    if (clash)
        return fail_key(ld, sec, seen, map, "enabled", "credits are on, so %s", clash);
    return 0;
}

static const struct directive credits_keys[] = {
    {KEY("enabled", N_SCALAR, set_bool, CFG(credits.enabled)), .store = ST_BOOL, .defi = false},
    {KEY("hold_ttl_ms", N_SCALAR, set_int, CFG(credits.hold_ttl_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_CREDITS_HOLD_TTL_MS, .min = 1000, .max = MAX_MS_DAY,
     .reload_safe = true},
    {KEY("ledger_file", N_SCALAR, set_str, CFG(credits.ledger_file)), .store = ST_STR,
     .defs = TG_DEFAULT_CREDITS_LEDGER_FILE},
    {KEY("prices", N_SEQ, set_list, CFG(credits.prices)), .off_n = CFG(credits.nprices),
     .sub = &price_section, .item_size = sizeof(struct tg_price), .max = TG_MAX_PRICES,
     .reload_safe = true},
};
static const struct section credits_section = SECTION(credits_keys, check_credits);

static const struct section server_section = SECTION(server_keys, check_server);
static const struct section admin_section = SECTION(admin_keys, NULL);
static const struct section log_section = SECTION(log_keys, NULL);
static const struct section limiter_section = SECTION(limiter_keys, NULL);
static const struct section costs_section = SECTION(costs_keys, NULL);
static const struct section usage_section = SECTION(usage_keys, NULL);

static const struct directive root_keys[] = {
    {KEY("server", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &server_section},
    {KEY("admin", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &admin_section},
    {KEY("log", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &log_section},
    {KEY("limiter", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &limiter_section},
    {KEY("costs", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &costs_section},
    {KEY("usage", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &usage_section},
    {KEY("credits", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &credits_section},
    {KEY("upstreams", N_SEQ, set_list, CFG(upstreams)), .off_n = CFG(nupstreams),
     .sub = &upstream_section, .item_size = sizeof(struct tg_upstream), .reload_safe = true},
    {KEY("routes", N_SEQ, set_list, CFG(routes)), .off_n = CFG(nroutes), .sub = &route_section,
     .item_size = sizeof(struct tg_route), .reload_safe = true},
    {KEY("tenants", N_SEQ, set_list, CFG(tenants)), .off_n = CFG(ntenants), .sub = &tenant_section,
     .item_size = sizeof(struct tg_tenant), .reload_safe = true},
};
const struct section root_section = SECTION(root_keys, NULL);
