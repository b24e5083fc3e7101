/* Entry point: command line, start-up, signals (reload, drain, log reopen) and shutdown. */
#include <errno.h>
#include <getopt.h>
#include <sys/resource.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "tollgate/admin.h"
#include "tollgate/auth.h"
#include "tollgate/config.h"
#include "tollgate/ledger.h"
#include "tollgate/limiter.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/server.h"
#include "tollgate/usage.h"

extern const char tg_embedded_tollgate[];
#define EMBEDDED_NAME "config/tollgate.yaml (embedded)"
/* How often a drain looks at the requests still in flight. */
#define DRAIN_POLL_MS 50
/* The longest a stop waits for the usage sink to deliver before spooling. */
#define SINK_FLUSH_MAX_MS 5000

struct daemon {
    const char *path; /* NULL: embedded defaults */
    struct event_base *base;
    struct tg_config *cfg;
    struct tg_server *server;
    struct tg_sink *sink;
    struct tg_sink *ledger_sink; /* credits on: where ledger events go */
    struct tg_ledger_store *store; /* credits on with the local limiter: the balances */
    struct tg_credit_api *credits;
    struct tg_limiter *local, *fallback;
    struct tg_admin *admin;
    struct event *drain_timer;
    bool draining;
    int64_t drain_deadline;
    int exit_code;
};

static void usage(FILE *out)
{
    fprintf(out, "usage: tollgate [-c FILE]          run (embedded defaults without -c)\n"
                 "       tollgate --check [-c FILE]  validate, print routes, tenants and limits\n"
                 "       tollgate ledger verify [-c FILE]\n"
                 "                                   recompute every balance from its ledger and\n"
                 "                                   compare it with the live one (exit 1 on a\n"
                 "                                   mismatch)\n"
                 "       tollgate --hash-key KEY     print sha256:<hex> for a key in the config\n"
                 "       tollgate --metrics-doc      print the metrics table of docs/metrics.md\n"
                 "       tollgate --version\n");
}

static struct tg_config *load(const char *path, char err[TG_ERR_LEN])
{
    if (path) return tg_config_load(path, err);
    return tg_config_load_string(EMBEDDED_NAME, tg_embedded_tollgate, strlen(tg_embedded_tollgate),
                                 err);
}

static bool ready_fn(void *arg, char *why, size_t cap)
{
    struct daemon *d = arg;
    if (d->draining) {
        snprintf(why, cap, "draining");
        return false;
    }
    return tg_server_ready(d->server, why, cap);
}

static void reload(struct daemon *d)
{
    char err[TG_ERR_LEN];
    struct tg_config *cfg = load(d->path, err);
    if (cfg == NULL) {
        tg_log_error("reload refused, the running configuration stays: %s", err);
        tg_metrics_add(TG_M_CONFIG_RELOADS, (const char *[]){"error"}, 1);
        return;
    }
    char what[TG_ERR_LEN];
    if (tg_config_restart_needed(d->cfg, cfg, what))
        tg_log_warn("reload: %s changed, which takes effect only after a restart; the running "
                    "value stays (other changes are applied)",
                    what);
    tg_log_set_level(cfg->log.level);
    tg_admin_set_token(d->admin, cfg->admin.token);
    tg_credit_api_set_config(d->credits, cfg);
    tg_server_reload(d->server, cfg);
    tg_config_unref(d->cfg);
    d->cfg = cfg;
    tg_metrics_add(TG_M_CONFIG_RELOADS, (const char *[]){"ok"}, 1);
    tg_log_info("configuration reloaded: %zu routes, %zu tenants, %zu keys", cfg->nroutes,
                cfg->ntenants, cfg->nkeys);
}

static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    int inflight = tg_server_inflight(d->server);
    if (inflight == 0 || tg_now_mono_ms() >= d->drain_deadline) {
        if (inflight) tg_log_warn("drain timeout: %d requests still in flight are cut", inflight);
        event_base_loopexit(d->base, NULL);
        return;
    }
    struct timeval tv = {0, DRAIN_POLL_MS * 1000};
    evtimer_add(d->drain_timer, &tv);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    switch (sig) {
    case SIGHUP:
        reload(d);
        break;
    case SIGUSR1:
        tg_log_reopen();
        tg_sink_reopen(d->sink);
        if (d->ledger_sink) tg_sink_reopen(d->ledger_sink);
        tg_log_info("log files reopened");
        break;
    case SIGTERM:
    case SIGINT:
        if (d->draining) {
            tg_log_warn("second stop signal: exiting without waiting");
            event_base_loopexit(d->base, NULL);
            break;
        }
        tg_log_info("stopping: no new connections, draining %d requests (up to %d ms)",
                    tg_server_inflight(d->server), d->cfg->server.drain_timeout_ms);
        tg_server_stop_accepting(d->server);
        d->drain_deadline = tg_now_mono_ms() + d->cfg->server.drain_timeout_ms;
        d->draining = true;
        drain_tick(-1, 0, d);
        break;
    }
}

static int run(struct daemon *d)
{
    char err[TG_ERR_LEN];
    int rc = 1;
    struct event *sigs[4] = {0};
    const char *errpos = "";
    signal(SIGPIPE, SIG_IGN);
    /* Every client and upstream connection is a descriptor: use all we may. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) != 0)
            tg_log_warn("cannot raise the open-files limit: %s", strerror(errno));
    }
    tg_log_set_level(d->cfg->log.level);
    /* The main loop and the threads it starts (the access log's, the sink's)
     * are background work; workers make themselves foreground again. */
    tg_thread_background();
    errpos = "access log";
    if (tg_log_access_open(d->cfg->log.access_path, err) != 0) goto error;
    tg_metrics_set(TG_M_BUILD_INFO, (const char *[]){TG_VERSION}, 1);
    errpos = "event loop";
    snprintf(err, TG_ERR_LEN, "out of memory");
    d->base = event_base_new();
    d->drain_timer = d->base ? evtimer_new(d->base, drain_tick, d) : NULL;
    if (d->drain_timer == NULL) goto error;
    errpos = "usage sink";
    d->sink = tg_sink_create(d->cfg, d->base, err);
    if (d->sink == NULL) goto error;
    if (d->cfg->credits.enabled) {
        /* The ledger's events go the way the usage records go, to a topic or file of their
         * own (with a spool of their own under the usage spool's directory). */
        errpos = "ledger sink";
        struct tg_config lc = *d->cfg;
        char spool[4096];
        snprintf(spool, sizeof(spool), "%s/ledger", d->cfg->usage.kafka.spool_dir);
        lc.usage.kafka.topic = d->cfg->usage.kafka.ledger_topic;
        lc.usage.kafka.spool_dir = spool;
        lc.usage.file.path = d->cfg->usage.file.ledger_path;
        d->ledger_sink = tg_sink_create(&lc, d->base, err);
        if (d->ledger_sink == NULL) goto error;
        tg_ledger_set_sink(d->ledger_sink);
        if (d->cfg->limiter.backend == TG_LIMITER_LOCAL) {
            errpos = "ledger";
            d->store = tg_ledger_store_open(d->cfg->credits.ledger_file, err);
            if (d->store == NULL) goto error;
            tg_ledger_store_set_default(d->store);
        }
    }
    errpos = "local limiter";
    snprintf(err, TG_ERR_LEN, "out of memory");
    d->local = tg_limiter_local_create(1);
    d->fallback = d->local;
    if (d->cfg->limiter.backend == TG_LIMITER_REDIS && d->cfg->limiter.expected_gateways > 1)
        d->fallback = tg_limiter_local_create(d->cfg->limiter.expected_gateways);
    if (d->local == NULL || d->fallback == NULL) goto error;
    errpos = "server";
    d->server = tg_server_create(d->cfg, d->sink, d->local, d->fallback, err);
    if (d->server == NULL) goto error;
    errpos = "admin listener";
    d->admin =
        tg_admin_create(d->base, &d->cfg->admin.listen, d->cfg->admin.token, ready_fn, d, err);
    if (d->admin == NULL) goto error;
    if (d->cfg->credits.enabled) {
        errpos = "credits API";
        d->credits = tg_credit_api_create(d->base, d->cfg, err);
        if (d->credits == NULL) goto error;
        tg_admin_set_credits(d->admin, d->credits);
    }
    errpos = "listener";
    if (tg_server_start(d->server, err) != 0) goto error;
    static const int signums[] = {SIGHUP, SIGUSR1, SIGTERM, SIGINT};
    for (size_t i = 0; i < TG_ARRAY_LEN(signums); i++) {
        sigs[i] = evsignal_new(d->base, signums[i], signal_cb, d);
        event_add(sigs[i], NULL);
    }
    tg_log_info("tollgate %s listening on %s (admin %s), %d workers, limiter %s, usage sink %s, "
                "config %s",
                TG_VERSION, d->cfg->server.listen.text, d->cfg->admin.listen.text,
                d->cfg->server.workers,
                tg_limiter_backend_def(d->cfg->limiter.backend)->name, tg_sink_name(d->sink),
                d->path ? d->path : EMBEDDED_NAME);
    event_base_dispatch(d->base);
    rc = 0;
    goto out;
error:
    tg_log_error("cannot start: %s: %s", errpos, err);
out:
    tg_server_destroy(d->server);
    if (d->sink) {
        /* Whatever the sink cannot deliver by then goes to its spool: the
         * bound keeps a stop short without losing records. */
        int flush_ms = d->cfg->server.drain_timeout_ms < SINK_FLUSH_MAX_MS
                           ? d->cfg->server.drain_timeout_ms
                           : SINK_FLUSH_MAX_MS;
        tg_sink_flush(d->sink, flush_ms);
        tg_sink_destroy(d->sink);
    }
    tg_credit_api_destroy(d->credits);
    if (d->ledger_sink) { /* after the workers and the API: their last events are in it */
        tg_sink_flush(d->ledger_sink, SINK_FLUSH_MAX_MS);
        tg_ledger_set_sink(NULL);
        tg_sink_destroy(d->ledger_sink);
    }
    tg_ledger_store_set_default(NULL);
    tg_ledger_store_close(d->store);
    tg_admin_destroy(d->admin);
    for (size_t i = 0; i < TG_ARRAY_LEN(sigs); i++)
        if (sigs[i]) event_free(sigs[i]);
    if (d->drain_timer) event_free(d->drain_timer);
    if (d->fallback != d->local) tg_limiter_destroy(d->fallback);
    tg_limiter_destroy(d->local);
    if (d->base) event_base_free(d->base);
    tg_config_unref(d->cfg);
    tg_log_info("stopped");
    tg_log_shutdown();
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 'k'},
                                         {"hash-key", required_argument, NULL, 'H'},
                                         {"metrics-doc", no_argument, NULL, 'm'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct daemon d = {0};
    bool check = false;
    int ch;
    /* Until the loop's handlers are installed, a reload or reopen signal (systemd reload,
     * logrotate) must not kill a process that is still loading its configuration or
     * replaying its spool: it is ignored (the file just loaded is the current one). */
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            d.path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'H': {
            uint8_t digest[32];
            char out[72];
            tg_auth_hash(optarg, strlen(optarg), digest);
            tg_auth_format(digest, out);
            printf("%s\n", out);
            return 0;
        }
        case 'm':
            tg_metrics_print_doc();
            return 0;
        case 'V':
            printf("tollgate %s\n", TG_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            fprintf(stderr, "tollgate: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    bool verify = optind + 2 == argc && strcmp(argv[optind], "ledger") == 0 &&
                  strcmp(argv[optind + 1], "verify") == 0;
    if (optind < argc && !verify) {
        fprintf(stderr, "tollgate: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    char err[TG_ERR_LEN];
    d.cfg = load(d.path, err);
    if (d.cfg == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (verify) {
        int problems = tg_ledger_verify(d.cfg, stdout);
        tg_config_unref(d.cfg);
        return problems ? 1 : 0;
    }
    if (check) {
        tg_config_print(d.cfg, stdout);
        printf("%s: configuration ok\n", d.path ? d.path : EMBEDDED_NAME);
        tg_config_unref(d.cfg);
        return 0;
    }
    return run(&d);
}
