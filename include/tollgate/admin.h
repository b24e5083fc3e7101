/* The admin listener: GET /metrics, /healthz and /readyz on the main thread's loop. */
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

#endif
