/* The admin listener: GET /metrics, /healthz and /readyz, and the credits API, on the main
 * thread's loop. */
#ifndef TOLLGATE_ADMIN_H
#define TOLLGATE_ADMIN_H

#include "tollgate/config.h"

struct event_base;
struct tg_admin;

/* Asked on every GET /readyz: returns true when the gateway should get traffic;
 * when it returns false it writes a short reason (NUL-terminated, at most cap
 * bytes) into `why`, e.g. "draining" or "redis: connection refused". */
typedef bool (*tg_admin_ready_fn)(void *arg, char *why, size_t cap);

/* Starts the admin HTTP listener on `base` (the main thread's loop), bound to
 * the already resolved address in `listen`. `token` ("" or NULL = none) is
 * copied; when set, every path but /healthz needs `Authorization: Bearer
 * <token>`. `ready` (may be NULL: always ready) and `arg` are borrowed until
 * destroy. Routes: GET|HEAD /metrics (200, Prometheus text 0.0.4), /healthz
 * (200 "ok\n"), /readyz (200 "ready\n" or 503 "not ready: <why>\n"); another
 * path is 404, another method 405, a missing or wrong token 401.
 * The socket has SO_REUSEPORT, as the workers' listeners do, so that a new
 * daemon can start beside the old one during an upgrade. Returns NULL with
 * `err` set ("admin.listen 127.0.0.1:9090: bind: Address already in use")
 * when the socket cannot be bound. Main thread only. */
struct tg_admin *tg_admin_create(struct event_base *base, const struct tg_listen *listen,
                                 const char *token, tg_admin_ready_fn ready, void *arg,
                                 char err[TG_ERR_LEN]) TG_WUR;

/* Replaces the token (SIGHUP reload); "" or NULL turns authentication off.
 * Takes effect for the next request. Main thread only. */
void tg_admin_set_token(struct tg_admin *a, const char *token);

/* The local port the listener is bound to (useful when listen asked for port 0). */
int tg_admin_port(const struct tg_admin *a);

/* Closes the listener and its open connections and frees `a`. NULL is a no-op. */
void tg_admin_destroy(struct tg_admin *a);

/* ---- the credits API (src/admin/credits.c) ---- */

/* GET /admin/tenants/{t}/credits -> {"tenant","balance","held","seq"}; POST the same path
 * with {"amount":"100.5","reason":"..."} and an Idempotency-Key header -> {"tenant",
 * "balance","held","event"} (a repeat of a key with the same body answers the first result
 * and changes nothing, with Idempotent-Replayed: true; another body -> 409); GET
 * /admin/tenants/{t}/ledger?after=SEQ&limit=N -> {"events":[...],"next":SEQ|null}. Amounts
 * are decimal strings with 6 decimals. Unknown tenant 404, bad input 400 with a reason. */
struct tg_credit_api;

/* The API over the config's limiter backend: the local store (tg_ledger_store_default), or
 * a Redis connection of its own on `base`. Takes a reference on cfg. NULL with err set. */
struct tg_credit_api *tg_credit_api_create(struct event_base *base, struct tg_config *cfg,
                                           char err[TG_ERR_LEN]) TG_WUR;
/* A reload: tenants and credits.enabled are read from `cfg` from now on. */
void tg_credit_api_set_config(struct tg_credit_api *api, struct tg_config *cfg);
/* Answers what waits for Redis with 503 and frees `api` (before the admin listener goes). */
void tg_credit_api_destroy(struct tg_credit_api *api);
/* Serves `path` when it is the credits API's (returns true), for an authorized request. */
struct evhttp_request;
bool tg_credit_api_serve(struct tg_credit_api *api, struct evhttp_request *req, const char *path);
/* The admin listener serves the credits API through `api` (NULL: its paths are 404). */
void tg_admin_set_credits(struct tg_admin *a, struct tg_credit_api *api);

#endif
