/* Upstream connection pools, one per upstream per worker: keep-alive, http and https. */
#ifndef TOLLGATE_UPSTREAM_H
#define TOLLGATE_UPSTREAM_H

#include <stdbool.h>
#include <event2/bufferevent.h>
#include "tollgate/config.h"

struct tg_worker;
struct tg_pool;
struct tg_upconn;
/* Called once with a connected connection, or with NULL and a reason. */
typedef void (*tg_pool_cb)(void *arg, struct tg_upconn *c, const char *err, bool timeout);

struct tg_pool *tg_pool_create(struct tg_worker *w, const struct tg_upstream *u) TG_WUR;
/* Gives a connection: an idle keep-alive one, a new one, or the next one freed
 * when max_connections are busy. `cb` may run before this returns. */
void tg_pool_acquire(struct tg_pool *p, tg_pool_cb cb, void *arg);
/* Withdraws a waiting acquire (the client went away). */
void tg_pool_cancel(struct tg_pool *p, void *arg);
/* Returns a connection: kept idle if `reusable`, else closed. */
void tg_pool_release(struct tg_upconn *c, bool reusable);
/* Detaches a pool from its worker's table (reload): it is freed once its last
 * connection is released. */
void tg_pool_retire(struct tg_pool *p);
bool tg_pool_matches(const struct tg_pool *p, const struct tg_upstream *u);
void tg_pool_rebind(struct tg_pool *p, const struct tg_upstream *u);
struct bufferevent *tg_upconn_bev(struct tg_upconn *c);
bool tg_upconn_reused(const struct tg_upconn *c);
bool tg_upconn_tls(const struct tg_upconn *c);

#endif
