/* Unit tests of src/config/: error fixtures, the shipped configs, routing, ${VAR}, reloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <arpa/inet.h>
#include <glob.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "tollgate/auth.h"
#include "tollgate/config.h"

extern const char tg_embedded_tollgate[]; /* config/tollgate.yaml, built in */

static struct tg_config *load_text(const char *text, char err[TG_ERR_LEN])
{
    return tg_config_load_string("t.yaml", text, strlen(text), err);
}

static struct tg_config *must_load_text(const char *text)
{
    char err[TG_ERR_LEN];
    struct tg_config *cfg = load_text(text, err);
    if (!cfg) fail_msg("%s", err);
    return cfg;
}

static struct tg_config *must_load(const char *path)
{
    char err[TG_ERR_LEN];
    struct tg_config *cfg = tg_config_load(path, err);
    if (!cfg) fail_msg("%s", err);
    return cfg;
}

static void assert_load_error(const char *text, const char *expected)
{
    char err[TG_ERR_LEN];
    struct tg_config *cfg = load_text(text, err);
    if (cfg) fail_msg("loaded, expected %s", expected);
    assert_string_equal(err, expected);
}

static int port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static const struct tg_upstream *upstream_named(const struct tg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (strcmp(cfg->upstreams[i].name, name) == 0) return &cfg->upstreams[i];
    }
    fail_msg("no upstream %s", name);
    return NULL;
}

/* Every tests/unit/fixtures/bad_*.yaml fails with exactly the line of its bad_*.err. */
static void test_bad_fixtures(void **state)
{
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(TG_FIXTURES), 0);
    unsetenv("TG_TEST_UNSET_VARIABLE");
    glob_t g;
    assert_int_equal(glob("bad_*.yaml", 0, NULL, &g), 0);
    int mismatches = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *yaml = g.gl_pathv[i];
        char errpath[512], expected[TG_ERR_LEN + 2] = "", err[TG_ERR_LEN];
        snprintf(errpath, sizeof(errpath), "%.*s.err", (int)(strlen(yaml) - 5), yaml);
        FILE *f = fopen(errpath, "r");
        if (!f || !fgets(expected, sizeof(expected), f)) {
            printf("%s: cannot read %s\n", yaml, errpath);
            mismatches++;
            if (f) fclose(f);
            continue;
        }
        fclose(f);
        expected[strcspn(expected, "\n")] = '\0';
        struct tg_config *cfg = tg_config_load(yaml, err);
        if (cfg) {
            printf("%s: loaded, expected: %s\n", yaml, expected);
            tg_config_unref(cfg);
            mismatches++;
        } else if (strcmp(err, expected) != 0) {
            printf("%s:\n  expected: %s\n  got:      %s\n", yaml, expected, err);
            mismatches++;
        }
    }
    printf("%zu bad fixtures, %d mismatches\n", g.gl_pathc, mismatches);
    assert_true(g.gl_pathc >= 40);
    globfree(&g);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(mismatches, 0);
}

static void check_default_config(const struct tg_config *cfg)
{
    assert_string_equal(cfg->server.listen.text, "127.0.0.1:8080");
    assert_int_equal(cfg->server.listen.addr.ss_family, AF_INET);
    assert_int_equal(port_of(&cfg->server.listen.addr), 8080);
    assert_int_equal(cfg->server.workers, (int)sysconf(_SC_NPROCESSORS_ONLN));
    assert_int_equal(cfg->server.max_body_bytes, TG_DEFAULT_MAX_BODY_BYTES);
    assert_string_equal(cfg->admin.listen.text, TG_DEFAULT_ADMIN_LISTEN);
    assert_int_equal(cfg->limiter.backend, TG_LIMITER_LOCAL);
    assert_int_equal(cfg->usage.sink, TG_SINK_FILE);
    assert_string_equal(cfg->usage.file.path, "var/usage.jsonl");
    assert_int_equal(cfg->nupstreams, 1);
    const struct tg_upstream *u = &cfg->upstreams[0];
    assert_string_equal(u->host, "127.0.0.1");
    assert_int_equal(u->port, 8081);
    assert_string_equal(u->host_header, "127.0.0.1:8081");
    assert_string_equal(u->base_path, "");
    assert_int_equal(port_of(&u->addr), 8081);
    assert_int_equal(u->connect_timeout_ms, TG_DEFAULT_CONNECT_TIMEOUT_MS);
    assert_true(u->tls_verify);
    assert_int_equal(cfg->nroutes, 5);
    assert_int_equal(cfg->ntenants, 1);
    const struct tg_tenant *t = tg_config_tenant(cfg, "demo");
    assert_non_null(t);
    assert_int_equal(t->nlimits, 3);
    assert_string_equal(t->limits[2].name, "vsd");
    assert_int_equal(t->limits[2].unit, TG_UNIT_VIDEO_SECONDS);
    assert_int_equal(t->limits[2].per_ms, 86400000);
    assert_true(t->limits[1].burst == 200000.0);
    assert_int_equal(cfg->nkeys, 1);
    assert_int_equal(cfg->nplain_keys, 1);
    assert_ptr_equal(tg_auth_lookup(cfg, "Bearer sk-demo", 14, NULL), t);
}

static void test_default_config(void **state)
{
    struct tg_config *cfg = must_load(TG_SOURCE_DIR "/config/tollgate.yaml");
    check_default_config(cfg);
    assert_string_equal(cfg->path, TG_SOURCE_DIR "/config/tollgate.yaml");
    tg_config_unref(cfg);

    cfg = must_load_text(tg_embedded_tollgate);
    check_default_config(cfg);
    assert_string_equal(cfg->path, "");
    tg_config_unref(cfg);
}

static void test_design_example(void **state)
{
    setenv("OPENAI_API_KEY", "sk-upstream-secret", 1);
    struct tg_config *cfg = must_load(TG_FIXTURES "/good_design.yaml");
    assert_int_equal(cfg->usage.kafka.nproperties, 1);
    assert_string_equal(cfg->usage.kafka.properties[0].key, "linger.ms");
    assert_string_equal(cfg->usage.kafka.properties[0].value, "5");
    assert_int_equal(cfg->usage.kafka.spool_fsync, TG_SPOOL_FSYNC_INTERVAL);
    assert_int_equal(cfg->usage.kafka.spool_fsync_interval_ms, TG_DEFAULT_SPOOL_FSYNC_INTERVAL_MS);
    assert_int_equal(cfg->usage.kafka.spool_max_bytes, 1073741824LL);
    const struct tg_upstream *u = upstream_named(cfg, "openai");
    assert_int_equal(u->nheaders, 1);
    assert_string_equal(u->headers[0].key, "Authorization");
    assert_string_equal(u->headers[0].value, "Bearer sk-upstream-secret");
    assert_int_equal(u->response_timeout_ms, 600000);
    const struct tg_tenant *t = tg_config_tenant(cfg, "acme");
    assert_non_null(t);
    assert_int_equal(t->nlimits, 4);
    assert_int_equal(t->limits[3].nmodels, 1);
    assert_string_equal(t->limits[3].models[0], "gpt-4o");
    assert_int_equal(t->limits[0].nmodels, 0);
    assert_int_equal(cfg->nkeys, 2);
    assert_int_equal(cfg->nplain_keys, 1);
    assert_ptr_equal(tg_auth_lookup(cfg, "Bearer test", 11, NULL), t);
    assert_ptr_equal(tg_auth_lookup(cfg, "Bearer sk-plain-key-for-tests", 29, NULL), t);
    const struct tg_route *r = tg_config_route(cfg, "/v1/chat/completions", 20);
    assert_non_null(r);
    assert_int_equal(r->cost, TG_COST_TOKENS);
    assert_int_equal(r->default_max_tokens, 4096);
    assert_int_equal(r->max_wait_ms, 0);
    assert_ptr_equal(r->upstream, u);
    tg_config_unref(cfg);
}

static void test_examples(void **state)
{
    setenv("ADMIN_TOKEN", "admin-secret", 1);
    setenv("REDIS_PASSWORD", "redis-secret", 1);
    setenv("KAFKA_PASSWORD", "kafka-secret", 1);
    setenv("VLLM_API_KEY", "vllm-secret", 1);
    struct tg_config *cfg = must_load(TG_SOURCE_DIR "/config/examples/production.yaml");
    assert_int_equal(cfg->limiter.backend, TG_LIMITER_REDIS);
    assert_string_equal(cfg->limiter.redis.password, "redis-secret");
    assert_int_equal(cfg->limiter.redis.addr.ss_family, AF_INET);
    assert_int_equal(port_of(&cfg->limiter.redis.addr), 6379);
    assert_int_equal(cfg->limiter.expected_gateways, 4);
    assert_int_equal(cfg->limiter.lease.mode, TG_LEASE_AUTO);
    assert_int_equal(cfg->limiter.lease.ttl_ms, 2000);
    assert_int_equal(cfg->limiter.lease.sync_interval_ms, 50);
    assert_true(cfg->limiter.lease.min_rate == 50.0);
    assert_int_equal(cfg->usage.sink, TG_SINK_KAFKA);
    assert_int_equal(cfg->usage.kafka.nproperties, 6);
    assert_string_equal(cfg->usage.kafka.properties[5].value, "kafka-secret");
    assert_string_equal(cfg->admin.token, "admin-secret");
    const struct tg_upstream *v = upstream_named(cfg, "video");
    assert_true(v->tls);
    assert_false(v->tls_verify);
    assert_int_equal(v->port, 8443);
    assert_string_equal(v->host_header, "10.0.1.20:8443");
    const struct tg_route *r = tg_config_route(cfg, "/v1/completions", 15);
    assert_non_null(r);
    assert_int_equal(r->default_max_tokens, 256);
    assert_int_equal(cfg->ntenants, 2);
    assert_int_equal(cfg->nkeys, 3);
    assert_int_equal(cfg->nplain_keys, 0);
    tg_config_unref(cfg);

    cfg = must_load(TG_SOURCE_DIR "/config/examples/multi-tenant.yaml");
    assert_int_equal(cfg->ntenants, 6);
    const struct tg_tenant *alice = tg_config_tenant(cfg, "alice");
    const struct tg_tenant *bob = tg_config_tenant(cfg, "bob");
    assert_non_null(alice);
    assert_non_null(bob);
    assert_int_equal(bob->nlimits, 2);
    assert_string_equal(bob->limits[1].name, alice->limits[1].name);
    assert_true(bob->limits[1].burst == 10000.0);
    const struct tg_tenant *batch = tg_config_tenant(cfg, "nightly-batch");
    assert_non_null(batch);
    assert_true(batch->limits[0].rate == 0.5);
    assert_true(batch->limits[0].burst == 5.0);
    assert_int_equal(batch->limits[0].per_ms, 1000);
    assert_int_equal(tg_config_tenant(cfg, "internal")->nlimits, 0);
    assert_string_equal(tg_config_route(cfg, "/v1/files/x", 11)->path, "/v1");
    tg_config_unref(cfg);
}

static void test_anchors_and_flow(void **state)
{
    setenv("TG_TEST_TOKEN_SUFFIX", "xyz", 1);
    struct tg_config *cfg = must_load(TG_FIXTURES "/good_anchors.yaml");
    assert_string_equal(cfg->admin.token, "pa$word-xyz");
    assert_string_equal(cfg->server.listen.text, TG_DEFAULT_LISTEN);
    const struct tg_upstream *l = upstream_named(cfg, "local");
    assert_true(l->tls);
    assert_false(l->tls_verify);
    assert_int_equal(l->port, 8443);
    assert_string_equal(l->host, "localhost");
    assert_string_equal(l->host_header, "localhost:8443");
    assert_string_equal(l->base_path, "/v1");
    assert_int_equal(l->addr.ss_family, AF_INET); /* IPv4 preferred */
    const struct tg_upstream *b = upstream_named(cfg, "backup");
    assert_string_equal(b->host, "::1");
    assert_string_equal(b->host_header, "[::1]:8081");
    assert_int_equal(b->addr.ss_family, AF_INET6);
    assert_int_equal(b->nheaders, 2);
    assert_string_equal(b->headers[1].value, "xyz");
    const struct tg_route *r = tg_config_route(cfg, "/v1/chat/completions", 20);
    assert_int_equal(r->default_max_tokens, 1024);
    assert_int_equal(r->max_wait_ms, 250);
    assert_int_equal(tg_config_tenant(cfg, "team-c")->nlimits, 2);
    assert_int_equal(cfg->nkeys, 2);
    tg_config_unref(cfg);

    cfg = must_load(TG_FIXTURES "/good_flow.yaml");
    assert_int_equal(cfg->server.workers, 2);
    assert_int_equal(cfg->admin.listen.addr.ss_family, AF_INET6);
    assert_int_equal(cfg->log.level, TG_LOG_DEBUG);
    assert_int_equal(cfg->usage.sink, TG_SINK_NONE);
    assert_int_equal(tg_config_tenant(cfg, "t")->limits[0].per_ms, 1000);
    tg_config_unref(cfg);
}

static void test_urls(void **state)
{
    static const struct {
        const char *url;
        bool tls;
        const char *host, *host_header, *base_path;
        int port;
    } cases[] = {
        {"http://127.0.0.1", false, "127.0.0.1", "127.0.0.1", "", 80},
        {"http://127.0.0.1:80/", false, "127.0.0.1", "127.0.0.1", "", 80},
        {"HTTPS://127.0.0.1:443/a/b//", true, "127.0.0.1", "127.0.0.1", "/a/b", 443},
        {"https://127.0.0.1:80", true, "127.0.0.1", "127.0.0.1:80", "", 80},
        {"http://[::1]/openai/v1", false, "::1", "[::1]", "/openai/v1", 80},
        {"http://localhost:8081/x", false, "localhost", "localhost:8081", "/x", 8081},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml), "upstreams: [{name: u, url: \"%s\"}]\n", cases[i].url);
        struct tg_config *cfg = must_load_text(yaml);
        const struct tg_upstream *u = &cfg->upstreams[0];
        assert_string_equal(u->url, cases[i].url);
        assert_int_equal(u->tls, cases[i].tls);
        assert_string_equal(u->host, cases[i].host);
        assert_string_equal(u->host_header, cases[i].host_header);
        assert_string_equal(u->base_path, cases[i].base_path);
        assert_int_equal(u->port, cases[i].port);
        assert_int_equal(port_of(&u->addr), cases[i].port);
        tg_config_unref(cfg);
    }
    const char *bad[] = {"http://",      "http://:80", "http://h:0",  "http://h:x", "http://u:p@h",
                         "http://h/a b", "ws://h",     "http://[::1", "http://h#f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[256], err[TG_ERR_LEN];
        snprintf(yaml, sizeof(yaml), "upstreams: [{name: u, url: \"%s\"}]\n", bad[i]);
        struct tg_config *cfg = load_text(yaml, err);
        if (cfg) fail_msg("%s loaded", bad[i]);
        if (!strstr(err, "t.yaml:1:28: upstreams[0].url: ")) fail_msg("%s: %s", bad[i], err);
        assert_non_null(strstr(err, "t.yaml:1:28: upstreams[0].url: "));
    }
    /* name resolution failures name the host; the resolver's wording varies */
    char err[TG_ERR_LEN];
    assert_null(
        load_text("upstreams:\n  - name: u\n    url: http://no-such-host.invalid:81/\n", err));
    assert_non_null(
        strstr(err, "t.yaml:3:10: upstreams[0].url: cannot resolve \"no-such-host.invalid\": "));
}

static const char routes_yaml[] =
    "upstreams: [{name: a, url: \"http://127.0.0.1:1\"}, {name: b, url: \"http://127.0.0.1:2\"}]\n"
    "routes:\n"
    "  - { path: /v1/models, upstream: a, cost: requests }\n"
    "  - { path: /, upstream: b, cost: requests }\n"
    "  - { path: /v1/chat/completions, upstream: a, cost: tokens }\n"
    "  - { path: /v1/, upstream: b, cost: tokens }\n"
    "  - { path: /v1/models/special, upstream: b, cost: video }\n";

static const char *route_of(const struct tg_config *cfg, const char *path)
{
    const struct tg_route *r = tg_config_route(cfg, path, strlen(path));
    return r ? r->path : "(none)";
}

static void test_route_matching(void **state)
{
    struct tg_config *cfg = must_load_text(routes_yaml);
    assert_int_equal(cfg->nroutes, 5);
    for (size_t i = 1; i < cfg->nroutes; i++)
        assert_true(cfg->routes[i - 1].path_len >= cfg->routes[i].path_len);
    assert_string_equal(route_of(cfg, "/v1/models"), "/v1/models");
    assert_string_equal(route_of(cfg, "/v1/models/gpt-4o"), "/v1/models");
    assert_string_equal(route_of(cfg, "/v1/models?limit=2"), "/v1/models");
    assert_string_equal(route_of(cfg, "/v1/models/special"), "/v1/models/special");
    assert_string_equal(route_of(cfg, "/v1/models/special/x?y"), "/v1/models/special");
    assert_string_equal(route_of(cfg, "/v1/models/specialx"), "/v1/models");
    assert_string_equal(route_of(cfg, "/v1/modelsx"), "/v1/");
    assert_string_equal(route_of(cfg, "/v1/chat/completions"), "/v1/chat/completions");
    assert_string_equal(route_of(cfg, "/v1/chat"), "/v1/");
    assert_string_equal(route_of(cfg, "/v1"), "/");
    assert_string_equal(route_of(cfg, "/v2/anything"), "/");
    assert_string_equal(route_of(cfg, "/"), "/");
    assert_string_equal(route_of(cfg, "/?x=1"), "/");
    assert_string_equal(tg_config_route(cfg, "/v1/models/special", 10)->path, "/v1/models");
    assert_string_equal(tg_config_route(cfg, "/v1/chat/completions", 20)->upstream->name, "a");
    tg_config_unref(cfg);

    cfg = must_load_text("upstreams: [{name: a, url: \"http://127.0.0.1:1\"}]\n"
                         "routes: [{path: /v1/models, upstream: a, cost: requests}]\n");
    assert_string_equal(route_of(cfg, "/v1/modelsx"), "(none)");
    assert_string_equal(route_of(cfg, "/v1/model"), "(none)");
    assert_string_equal(route_of(cfg, "/"), "(none)");
    assert_string_equal(route_of(cfg, ""), "(none)");
    assert_string_equal(route_of(cfg, "/v1/models#x"), "(none)");
    assert_string_equal(route_of(cfg, "/v1/models/"), "/v1/models");
    tg_config_unref(cfg);
}

static void test_env_expansion(void **state)
{
    setenv("TG_T_A", "alpha", 1);
    setenv("TG_T_EMPTY", "", 1);
    setenv("TG_T_PORT", "6380", 1);
    unsetenv("TG_T_UNSET");
    struct tg_config *cfg =
        must_load_text("admin: { token: \"x${TG_T_A}y$${TG_T_A}$$z$ ${TG_T_EMPTY}|$\" }\n"
                       "limiter: { redis: { port: \"${TG_T_PORT}\", key_prefix: '${TG_T_A}:' } }\n"
                       "upstreams: [{name: u, url: \"http://127.0.0.1:${TG_T_PORT}\"}]\n");
    assert_string_equal(cfg->admin.token, "xalphay${TG_T_A}$z$ |$");
    assert_int_equal(cfg->limiter.redis.port, 6380);
    assert_string_equal(cfg->limiter.redis.key_prefix, "alpha:");
    assert_int_equal(cfg->upstreams[0].port, 6380);
    tg_config_unref(cfg);

    assert_load_error("admin:\n  token: \"a${TG_T_UNSET}\"\n",
                      "t.yaml:2:10: admin.token: environment variable TG_T_UNSET is not set");
    assert_load_error("admin: {token: \"${1X}\"}\n",
                      "t.yaml:1:16: admin.token: bad environment variable name in ${...}");
    assert_load_error("admin: {token: \"${}\"}\n",
                      "t.yaml:1:16: admin.token: bad environment variable name in ${...}");
    setenv("TG_T_PORT", "63x", 1);
    assert_load_error("limiter: {redis: {port: \"${TG_T_PORT}\"}}\n",
                      "t.yaml:1:25: limiter.redis.port: must be an integer from 1 to 65535 (got "
                      "\"63x\")");
}

static void test_numbers_and_booleans(void **state)
{
    struct tg_config *cfg = must_load_text(
        "server: {workers: 3, max_body_bytes: 1099511627776, drain_timeout_ms: 0}\n"
        "upstreams: [{name: u, url: \"http://127.0.0.1:1\", tls_verify: No}]\n"
        "tenants: [{name: t, limits: [{name: a, unit: tokens, rate: 2.5e3, per: hour, burst: "
        "0.25}]}]\n");
    assert_int_equal(cfg->server.workers, 3);
    assert_int_equal(cfg->server.max_body_bytes, 1099511627776LL);
    assert_int_equal(cfg->server.drain_timeout_ms, 0);
    assert_false(cfg->upstreams[0].tls_verify);
    assert_true(cfg->tenants[0].limits[0].rate == 2500.0);
    assert_true(cfg->tenants[0].limits[0].burst == 0.25);
    assert_int_equal(cfg->tenants[0].limits[0].per_ms, 3600000);
    tg_config_unref(cfg);

    const char *bad_ints[] = {"1.0", " 1", "1 ", "0x10", "+", "", "1e3", "9223372036854775808",
                              "-1"};
    for (size_t i = 0; i < sizeof(bad_ints) / sizeof(bad_ints[0]); i++) {
        char yaml[128], err[TG_ERR_LEN];
        snprintf(yaml, sizeof(yaml), "server: {workers: \"%s\"}\n", bad_ints[i]);
        assert_null(load_text(yaml, err));
        assert_non_null(
            strstr(err, "t.yaml:1:19: server.workers: must be an integer from 0 to 1024"));
    }
    const char *bad_rates[] = {"inf", "nan", "0x1p3", "-1", "1e13", "1,5", "1.5.5"};
    for (size_t i = 0; i < sizeof(bad_rates) / sizeof(bad_rates[0]); i++) {
        char yaml[160], err[TG_ERR_LEN];
        snprintf(
            yaml, sizeof(yaml),
            "tenants: [{name: t, limits: [{name: a, unit: tokens, rate: \"%s\", per: day}]}]\n",
            bad_rates[i]);
        assert_null(load_text(yaml, err));
        assert_non_null(
            strstr(err, "rate: must be a number greater than 0 and at most 1000000000000"));
    }
}

static void test_null_values(void **state)
{
    struct tg_config *cfg = must_load_text("server:\nadmin: {token: ~}\nlog: {access_path: null}\n"
                                           "tenants:\n");
    assert_string_equal(cfg->server.listen.text, TG_DEFAULT_LISTEN);
    assert_string_equal(cfg->admin.token, "");
    assert_string_equal(cfg->log.access_path, "");
    assert_int_equal(cfg->ntenants, 0);
    tg_config_unref(cfg);
    assert_load_error("---\n", "t.yaml:1:1: (root): empty configuration");
    assert_load_error("[]\n", "t.yaml:1:1: (root): expected a mapping, got a sequence");
    assert_load_error("server:\n  workers: ~\n",
                      "t.yaml:2:12: server.workers: must be an integer from 0 to 1024 (got \"~\")");
}

/* A valid credits section: prices parsed exactly (no floats), tenants' modes, the defaults. */
static void test_credits_config(void **state)
{
    struct tg_config *cfg =
        must_load_text("admin: {token: s3cret}\n"
                       "credits:\n"
                       "  enabled: true\n"
                       "  prices:\n"
                       "    - {unit: tokens, price: 0.000002, models: [\"gpt-4o*\", o1]}\n"
                       "    - {unit: tokens, price: \"0.000000000001\"}\n"
                       "    - {unit: requests, price: 2}\n"
                       "    - {unit: video_seconds, price: 1000000}\n"
                       "tenants:\n"
                       "  - {name: a, credits: {mode: overflow}}\n"
                       "  - {name: b, credits: {mode: prepaid}}\n"
                       "  - {name: c}\n");
    assert_true(cfg->credits.enabled);
    assert_int_equal(cfg->credits.hold_ttl_ms, TG_DEFAULT_CREDITS_HOLD_TTL_MS);
    assert_string_equal(cfg->credits.ledger_file, TG_DEFAULT_CREDITS_LEDGER_FILE);
    assert_int_equal(cfg->credits.nprices, 4);
    assert_int_equal(cfg->credits.prices[0].unit, TG_UNIT_TOKENS);
    assert_int_equal(cfg->credits.prices[0].pico, 2000000);
    assert_int_equal(cfg->credits.prices[0].nmodels, 2);
    assert_string_equal(cfg->credits.prices[0].models[0], "gpt-4o*");
    assert_string_equal(cfg->credits.prices[0].models[1], "o1");
    assert_int_equal(cfg->credits.prices[1].pico, 1);
    assert_int_equal(cfg->credits.prices[1].nmodels, 0);
    assert_int_equal(cfg->credits.prices[2].unit, TG_UNIT_REQUESTS);
    assert_int_equal(cfg->credits.prices[2].pico, 2000000000000LL);
    assert_int_equal(cfg->credits.prices[3].unit, TG_UNIT_VIDEO_SECONDS);
    assert_int_equal(cfg->credits.prices[3].pico, 1000000000000000000LL);
    assert_int_equal(tg_config_tenant(cfg, "a")->credits.mode, TG_CREDITS_OVERFLOW);
    assert_int_equal(tg_config_tenant(cfg, "b")->credits.mode, TG_CREDITS_PREPAID);
    assert_int_equal(tg_config_tenant(cfg, "c")->credits.mode, TG_CREDITS_OFF);
    tg_config_unref(cfg);

    /* credits off by default: no prices needed, every tenant off */
    cfg = must_load_text("tenants: [{name: t, credits: {mode: off}}]\n");
    assert_false(cfg->credits.enabled);
    assert_int_equal(cfg->credits.nprices, 0);
    assert_int_equal(cfg->tenants[0].credits.mode, TG_CREDITS_OFF);
    tg_config_unref(cfg);
}

static void test_io_errors(void **state)
{
    char err[TG_ERR_LEN];
    assert_null(tg_config_load("/nonexistent/tollgate.yaml", err));
    assert_string_equal(
        err, "/nonexistent/tollgate.yaml:1:1: (root): cannot read: No such file or directory");
    assert_null(tg_config_load(TG_FIXTURES, err));
    assert_non_null(strstr(err, ":1:1: (root): cannot read: Is a directory"));
}

static void test_refcount(void **state)
{
    struct tg_config *cfg = must_load_text("tenants: [{name: a, keys: [k]}]\n");
    assert_int_equal(cfg->refs, 1);
    assert_ptr_equal(tg_config_ref(cfg), cfg);
    assert_int_equal(cfg->refs, 2);
    tg_config_unref(cfg);
    assert_int_equal(cfg->refs, 1);
    assert_string_equal(tg_config_tenant(cfg, "a")->name, "a");
    assert_null(tg_config_tenant(cfg, "b"));
    tg_config_unref(cfg); /* frees: LeakSanitizer and ASan check there is nothing left or reused */
    tg_config_unref(NULL);
    assert_null(tg_config_ref(NULL));
}

static void assert_restart(const char *a, const char *b, int expect, const char *what)
{
    struct tg_config *x = must_load_text(a), *y = must_load_text(b);
    char got[TG_ERR_LEN];
    assert_int_equal(tg_config_restart_needed(x, y, got), expect);
    assert_string_equal(got, what);
    tg_config_unref(x);
    tg_config_unref(y);
}

static void test_restart_needed(void **state)
{
    const char *base = "server: {listen: \"127.0.0.1:8080\"}\n"
                       "usage: {kafka: {properties: {acks: all}}}\n"
                       "upstreams: [{name: u, url: \"http://127.0.0.1:1\"}]\n"
                       "tenants: [{name: a, keys: [k1], limits: [{name: r, unit: requests, rate: "
                       "1, per: second}]}]\n";
    assert_restart(base, base, 0, "");
    assert_restart(base,
                   "server: {listen: \"127.0.0.1:8080\"}\nlog: {level: debug}\n"
                   "costs: {chars_per_token: 3}\n"
                   "usage: {kafka: {properties: {acks: all}}}\n"
                   "upstreams: [{name: v, url: \"http://127.0.0.1:2\"}]\n"
                   "routes: [{path: /, upstream: v, cost: tokens}]\n"
                   "tenants: [{name: b, keys: [k2]}]\n",
                   0, "");
    assert_restart(base, "server: {listen: \"127.0.0.1:8081\"}\n", 1, "server.listen");
    assert_restart(
        base, "server: {listen: \"127.0.0.1:8080\"}\nusage: {kafka: {properties: {acks: 1}}}\n", 1,
        "usage.kafka.properties");
    assert_restart(
        base,
        "server: {listen: \"127.0.0.1:8080\"}\nusage: {kafka: {properties: {acks: all}}}\n"
        "limiter: {redis: {port: 6380}}\n",
        1, "limiter.redis.port");
    assert_restart(base,
                   "server: {listen: \"127.0.0.1:8080\"}\nusage: {sink: none, kafka: {properties: "
                   "{acks: all}}}\n",
                   1, "usage.sink");
}

static void test_print(void **state)
{
    setenv("OPENAI_API_KEY", "sk-upstream-secret", 1);
    struct tg_config *cfg = must_load(TG_FIXTURES "/good_design.yaml");
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_non_null(f);
    tg_config_print(cfg, f);
    fclose(f);
    const char *want[] = {
        "listen: 0.0.0.0:8080, ",
        "\nlimiter: local\n",
        "\nusage sink: file var/usage.jsonl\n",
        "\nupstream openai: http://127.0.0.1:8081 (Host: 127.0.0.1:8081), connect timeout 2000 ms",
        "\nroute /v1/chat/completions -> openai, cost tokens, default max tokens 4096\n",
        "\nroute /v1/models -> openai, cost requests\n",
        "\ntenant acme: 2 keys, 4 limits\n",
        "\n  limit rpm: 600 requests per minute, burst 600\n",
        "\n  limit gpt4o-tpm: 50000 tokens per minute, burst 50000, models gpt-4o\n",
        "\nwarning: tenant acme has a plain-text key; use sha256:<hex> (tollgate --hash-key)\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (!strstr(out, want[i])) fail_msg("missing %s in:\n%s", want[i], out);
    }
    assert_null(strstr(strstr(out, "warning:") + 1, "warning:")); /* one plain key, one line */
    assert_null(strstr(out, "sk-plain-key-for-tests"));
    assert_null(strstr(out, "9f86d08"));
    assert_null(strstr(out, "sk-upstream-secret"));
    free(out);
    tg_config_unref(cfg);
}

/* 100,000 tenants with one key and two limits each: loading must stay fast (hash tables,
 * no quadratic checks). The time is printed, not asserted: machines differ. */
static void test_large_config(void **state)
{
    enum { NTENANTS = 100000 };
    char path[] = "/tmp/tollgate-test-large-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fprintf(f, "upstreams: [{name: u, url: \"http://127.0.0.1:8081\"}]\n"
               "routes: [{path: /, upstream: u, cost: tokens}]\ntenants:\n");
    for (int i = 0; i < NTENANTS; i++)
        fprintf(f,
                "  - name: t%06d\n    keys: [\"sk-t%06d\"]\n    limits:\n"
                "      - { name: rpm, unit: requests, rate: 600, per: minute }\n"
                "      - { name: tpm, unit: tokens, rate: 200000, per: minute }\n",
                i, i);
    assert_int_equal(fclose(f), 0);

    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    struct tg_config *cfg = must_load(path);
    clock_gettime(CLOCK_MONOTONIC, &b);
    unlink(path);
    printf("loaded %d tenants in %.3f s\n", NTENANTS,
           (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    assert_int_equal(cfg->ntenants, NTENANTS);
    assert_int_equal(cfg->nkeys, NTENANTS);
    assert_int_equal(cfg->nplain_keys, NTENANTS);
    const struct tg_tenant *t = tg_auth_lookup(cfg, "Bearer sk-t099999", 17, NULL);
    assert_non_null(t);
    assert_string_equal(t->name, "t099999");
    assert_int_equal(t->index, 99999);
    assert_int_equal(t->nlimits, 2);
    t = tg_config_tenant(cfg, "t050000");
    assert_non_null(t);
    assert_int_equal(t->index, 50000);
    assert_null(tg_config_tenant(cfg, "t100000"));
    tg_config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_fixtures),
        cmocka_unit_test(test_default_config),
        cmocka_unit_test(test_design_example),
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_anchors_and_flow),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_route_matching),
        cmocka_unit_test(test_env_expansion),
        cmocka_unit_test(test_numbers_and_booleans),
        cmocka_unit_test(test_null_values),
        cmocka_unit_test(test_credits_config),
        cmocka_unit_test(test_io_errors),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_restart_needed),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_large_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
