/* The server: worker threads, each with its own event loop and listener. */
#ifndef TOLLGATE_SERVER_H
#define TOLLGATE_SERVER_H

#include "tollgate/config.h"
#include "tollgate/limiter.h"
#include "tollgate/usage.h"

struct tg_server;

/* Creates the workers (not yet running) for `cfg` (the server takes a
 * reference). `local` is the process-wide in-process limiter, `fallback` the
 * one judging when Redis fails (both (ref), may be the same). NULL with err. */
struct tg_server *tg_server_create(struct tg_config *cfg, struct tg_sink *sink,
                                   struct tg_limiter *local, struct tg_limiter *fallback,
                                   char err[TG_ERR_LEN]) TG_WUR;

/* Binds every worker's listener (SO_REUSEPORT) and starts the threads. */
int tg_server_start(struct tg_server *s, char err[TG_ERR_LEN]) TG_WUR;

/* Swaps in a new config for new requests (takes a reference); requests in
 * flight finish on the one they started with. Any thread. */
void tg_server_reload(struct tg_server *s, struct tg_config *cfg);

/* Stops accepting and closes idle keep-alive connections (drain). */
void tg_server_stop_accepting(struct tg_server *s);

/* Requests in flight over all workers. */
int tg_server_inflight(struct tg_server *s);

/* Readiness: every worker's limiter is reachable or in its fallback. */
bool tg_server_ready(struct tg_server *s, char *why, size_t cap);

/* Stops the loops, joins the threads and frees everything. */
void tg_server_destroy(struct tg_server *s);

#endif
