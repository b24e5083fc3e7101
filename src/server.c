/* The server: worker threads, each with its own event loop, listener, limiter and upstream pools.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <openssl/ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include "tollgate/log.h"
#include "tollgate/proxy.h"
#include "tollgate/upstream.h"
#include "tollgate/worker.h"
#include "tollgate/server.h"
#include "tollgate/gate.h"
#include "tollgate/waitq.h"

#define LISTEN_BACKLOG 4096

struct tg_server {
    struct tg_sink *sink;
    struct tg_limiter *local, *fallback;
    int nworkers;
    struct tg_worker *workers;
    bool started;
};

static SSL_CTX *make_ssl_ctx(bool verify)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (verify) {
        SSL_CTX_set_default_verify_paths(ctx);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

/* Builds the worker's pools for `cfg`, keeping connections of upstreams that
 * did not change. On failure (out of memory) nothing changed: the worker keeps
 * its pools, and returns -1. */
static int rebuild_pools(struct tg_worker *w, const struct tg_config *cfg)
{
    size_t n = cfg->nupstreams;
    struct tg_pool **pools = calloc(n ? n : 1, sizeof(*pools));
    size_t *kept = calloc(n ? n : 1, sizeof(*kept)); /* index into w->pools + 1, or 0 */
    bool *taken = calloc(w->npools ? w->npools : 1, sizeof(*taken));
    if (!pools || !kept || !taken) goto fail;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < w->npools && kept[i] == 0; k++)
            if (!taken[k] && tg_pool_matches(w->pools[k], &cfg->upstreams[i])) {
                taken[k] = true;
                kept[i] = k + 1;
            }
        if (kept[i] == 0 && (pools[i] = tg_pool_create(w, &cfg->upstreams[i])) == NULL) goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (kept[i] == 0) continue;
        pools[i] = w->pools[kept[i] - 1];
        tg_pool_rebind(pools[i], &cfg->upstreams[i]);
    }
    for (size_t k = 0; k < w->npools; k++)
        if (!taken[k]) tg_pool_retire(w->pools[k]);
    free(w->pools);
    free(kept);
    free(taken);
    w->pools = pools;
    w->npools = n;
    return 0;
fail:
    for (size_t i = 0; pools && i < n; i++)
        if (pools[i] && (!kept || kept[i] == 0)) tg_pool_retire(pools[i]);
    free(pools);
    free(kept);
    free(taken);
    return -1;
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tg_worker *w = arg;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN) return;
    pthread_mutex_lock(&w->mu);
    struct tg_config *cfg = w->pending_cfg;
    w->pending_cfg = NULL;
    bool stop_accepting = w->stop_accepting, stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    if (cfg && rebuild_pools(w, cfg) != 0) {
        tg_log_error(
            "worker %d: out of memory for the new config's upstreams; it keeps the old one", w->id);
        tg_config_unref(cfg);
    } else if (cfg) {
        tg_config_unref(w->cfg);
        w->cfg = cfg;
        tg_waitq_set_max_total(w->waitq, cfg->server.max_waiting);
    }
    if (stop_accepting && !w->draining) {
        w->draining = true;
        tg_waitq_drain(w->waitq); /* waiters get 503 with Retry-After */
        if (w->listener) evconnlistener_free(w->listener);
        w->listener = NULL;
        tg_proxy_close_idle(w);
    }
    if (stop) {
        tg_proxy_close_all(w);
        event_base_loopbreak(w->base);
    }
}

static void post(struct tg_worker *w)
{
    uint64_t one = 1;
    if (write(w->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        tg_log_error("worker %d: cannot wake: %s", w->id, strerror(errno));
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    tg_proxy_accept(arg, fd, sa, salen);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct tg_worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    tg_log_error("worker %d: accept failed: %s", w->id, evutil_socket_error_to_string(err));
}

static void limiter_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tg_worker *w = arg;
    tg_limiter_tick(w->limiter);
}

static void *worker_main(void *arg)
{
    struct tg_worker *w = arg;
    tg_thread_foreground();
    event_base_dispatch(w->base);
    return NULL;
}

struct tg_server *tg_server_create(struct tg_config *cfg, struct tg_sink *sink,
                                   struct tg_limiter *local, struct tg_limiter *fallback,
                                   char err[TG_ERR_LEN])
{
    struct tg_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, TG_ERR_LEN, "out of memory");
        return NULL;
    }
    s->sink = sink;
    s->local = local;
    s->fallback = fallback;
    s->nworkers = cfg->server.workers > 0 ? cfg->server.workers : 1;
    s->workers = calloc((size_t)s->nworkers, sizeof(*s->workers));
    if (s->workers == NULL) goto error;
    for (int i = 0; i < s->nworkers; i++)
        s->workers[i].wake_fd = -1;
    for (int i = 0; i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        w->server = s;
        w->id = i;
        w->sink = sink;
        w->local = local;
        w->cfg = tg_config_ref(cfg);
        pthread_mutex_init(&w->mu, NULL);
        struct event_config *ec = event_config_new();
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        /* epoll changes wait for the next epoll_wait, so that an event turned on
         * and off again within one turn of the loop (hiredis's write event around
         * each command, for one) costs no epoll_ctl. No descriptor here is dup()ed,
         * the case in which libevent warns against the changelist. */
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        w->base = event_base_new_with_config(ec);
        event_config_free(ec);
        w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->ssl_verify = make_ssl_ctx(true);
        w->ssl_noverify = make_ssl_ctx(false);
        if (w->base == NULL || w->wake_fd < 0 || !w->ssl_verify || !w->ssl_noverify) {
            snprintf(err, TG_ERR_LEN, "worker %d: cannot create its event loop: %s", i,
                     strerror(errno));
            goto error;
        }
        w->wake = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, wake_cb, w);
        event_add(w->wake, NULL);
        w->waitq = tg_waitq_create(w->base, cfg->server.max_waiting);
        if (w->waitq == NULL) {
            snprintf(err, TG_ERR_LEN, "worker %d: out of memory", i);
            goto error;
        }
        if (tg_admission_init(&w->admission, w->base, cfg, err) != 0) goto error;
        w->gate = tg_gate_create(w->base);
        if (w->gate == NULL) {
            snprintf(err, TG_ERR_LEN, "worker %d: out of memory", i);
            goto error;
        }
        const struct tg_limiter_env env = {w->base, cfg, local, fallback};
        w->limiter = tg_limiter_for_worker(&env, &w->own_limiter, err);
        if (w->limiter == NULL) goto error;
        int tick_ms = tg_limiter_tick_ms(w->limiter);
        if (w->own_limiter && tick_ms > 0) {
            w->limiter_tick = event_new(w->base, -1, EV_PERSIST, limiter_tick_cb, w);
            struct timeval tv = {tick_ms / 1000, tick_ms % 1000 * 1000};
            if (w->limiter_tick == NULL || event_add(w->limiter_tick, &tv) != 0) {
                snprintf(err, TG_ERR_LEN, "worker %d: cannot arm the limiter's timer", i);
                goto error;
            }
        }
        if (rebuild_pools(w, cfg) != 0) {
            snprintf(err, TG_ERR_LEN, "worker %d: out of memory for the upstream pools", i);
            goto error;
        }
    }
    return s;
error:
    tg_server_destroy(s);
    return NULL;
}

int tg_server_start(struct tg_server *s, char err[TG_ERR_LEN])
{
    for (int i = 0; i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        const struct tg_listen *l = &w->cfg->server.listen;
        w->listener = evconnlistener_new_bind(w->base, accept_cb, w,
                                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                                  LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC,
                                              LISTEN_BACKLOG, (const struct sockaddr *)&l->addr,
                                              (int)l->addrlen);
        if (w->listener == NULL) {
            snprintf(err, TG_ERR_LEN, "cannot listen on %s: %s", l->text, strerror(errno));
            return -1;
        }
        evconnlistener_set_error_cb(w->listener, accept_error_cb);
    }
    for (int i = 0; i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            snprintf(err, TG_ERR_LEN, "cannot start worker %d", i);
            return -1;
        }
        s->started = true;
    }
    return 0;
}

void tg_server_reload(struct tg_server *s, struct tg_config *cfg)
{
    for (int i = 0; i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        pthread_mutex_lock(&w->mu);
        if (w->pending_cfg) tg_config_unref(w->pending_cfg);
        w->pending_cfg = tg_config_ref(cfg);
        pthread_mutex_unlock(&w->mu);
        post(w);
    }
}

void tg_server_stop_accepting(struct tg_server *s)
{
    for (int i = 0; i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        pthread_mutex_lock(&w->mu);
        w->stop_accepting = true;
        pthread_mutex_unlock(&w->mu);
        post(w);
    }
}

int tg_server_inflight(struct tg_server *s)
{
    int n = 0;
    for (int i = 0; i < s->nworkers; i++)
        n += __atomic_load_n(&s->workers[i].inflight, __ATOMIC_RELAXED);
    return n;
}

bool tg_server_ready(struct tg_server *s, char *why, size_t cap)
{
    for (int i = 0; i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        if (w->limiter && !tg_limiter_ready(w->limiter)) {
            snprintf(why, cap, "worker %d: limiter backend %s unreachable", i,
                     tg_limiter_name(w->limiter));
            return false;
        }
        if (!tg_admission_ready(&w->admission)) {
            snprintf(why, cap, "worker %d: the concurrency slots' Redis is unreachable", i);
            return false;
        }
    }
    if (s->sink && !tg_sink_accepting(s->sink)) {
        snprintf(why, cap, "usage sink %s is not accepting records", tg_sink_name(s->sink));
        return false;
    }
    return true;
}

void tg_server_destroy(struct tg_server *s)
{
    if (s == NULL) return;
    for (int i = 0; s->workers && s->started && i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_mutex_unlock(&w->mu);
        post(w);
    }
    for (int i = 0; s->workers && i < s->nworkers; i++) {
        struct tg_worker *w = &s->workers[i];
        if (s->started && w->thread) pthread_join(w->thread, NULL);
        if (w->listener) evconnlistener_free(w->listener);
        tg_proxy_close_all(w);
        tg_proxy_free_pool(w);
        tg_waitq_destroy(w->waitq);
        tg_admission_deinit(&w->admission);
        tg_gate_destroy(w->gate);
        for (size_t k = 0; k < w->npools; k++)
            tg_pool_retire(w->pools[k]);
        free(w->pools);
        if (w->limiter_tick) event_free(w->limiter_tick);
        if (w->own_limiter) tg_limiter_destroy(w->limiter);
        if (w->wake) event_free(w->wake);
        if (w->wake_fd >= 0) close(w->wake_fd);
        if (w->base) event_base_free(w->base);
        if (w->ssl_verify) SSL_CTX_free(w->ssl_verify);
        if (w->ssl_noverify) SSL_CTX_free(w->ssl_noverify);
        if (w->pending_cfg) tg_config_unref(w->pending_cfg);
        if (w->cfg == NULL) continue; /* never initialised */
        tg_config_unref(w->cfg);
        pthread_mutex_destroy(&w->mu);
    }
    free(s->workers);
    free(s);
}
