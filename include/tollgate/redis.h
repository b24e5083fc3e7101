/* One asynchronous connection to a Redis server on a worker's event loop
 * (src/redis/): connect, AUTH and SELECT, the caller's Lua scripts loaded at
 * every connect (and again on NOSCRIPT, with the call resent), a deadline per
 * call, pipelining, an idle PING, reconnect with jittered backoff. What is sent
 * is the caller's: prebuilt RESP commands, each answered once through its
 * callback. Routing a call to a cluster node by its key belongs in here too. */
#ifndef TOLLGATE_REDIS_H
#define TOLLGATE_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/buf.h"
#include "tollgate/common.h"
#include "tollgate/config.h"

struct event_base;
struct redisReply;
struct tg_redis;

#define TG_REDIS_NO_SCRIPT (-1)

struct tg_redis_options {
    const char *host; /* an IP address (hiredis 0.14 resolves nothing) */
    int port;
    const char *password;         /* NULL or "": no AUTH */
    int db;                       /* SELECT when not 0 */
    int timeout_ms;               /* of every call; set-up gets at least 500 ms */
    const char *const *scripts;   /* (ref, for the connection's life) Lua sources */
    size_t nscripts;              /* loaded at every connect, in order */
    const char *unavailable_note; /* (ref) appended to the "unavailable" log line */
};

/* A command in RESP, written with the tg_resp_* functions. They never fail:
 * an append that runs out of memory marks the command failed, and
 * tg_redis_send refuses it. Zero-initialised is empty. */
struct tg_resp {
    struct tg_buf b;
    bool failed;
};

static inline void tg_resp_reset(struct tg_resp *c)
{
    c->b.len = 0;
    c->failed = false;
}

/* Room for `n` more bytes at c->b.p + c->b.len, for writes in place. */
bool tg_resp_reserve(struct tg_resp *c, size_t n) TG_WUR;
/* "<type><n>\r\n": an array head ('*') or a bulk string head ('$'). */
void tg_resp_head(struct tg_resp *c, char type, size_t n);
void tg_resp_raw(struct tg_resp *c, const void *s, size_t n);
void tg_resp_bulk(struct tg_resp *c, const char *s, size_t n);
void tg_resp_bulk_int(struct tg_resp *c, int64_t v);
/* "<prefix>{<tenant>}:<name><suffix>" as one bulk string: a key in the tenant's hash tag
 * (suffix may be NULL). */
void tg_resp_tenant_key(struct tg_resp *c, const char *prefix, const char *tenant,
                        const char *name, const char *suffix);
/* An element of a script's reply as an integer (integers, and strings of digits), else 0;
 * as a string ("" unless a string). */
int64_t tg_redis_reply_int(const struct redisReply *e);
const char *tg_redis_reply_str(const struct redisReply *e);
/* "%.17g": reads back as the same double in Lua's tonumber. */
void tg_resp_bulk_double(struct tg_resp *c, double v);

/* The answer to one call: the reply, or NULL when there is none — the
 * connection was lost or never up, the deadline passed, the script could not
 * be loaded, or the connection is being destroyed. The reply is hiredis's and
 * valid only during the call. */
typedef void (*tg_redis_cb)(void *arg, const struct redisReply *r);

/* The address of limiter.redis as the IP string hiredis wants (resolved at load) and its
 * port. */
void tg_redis_address(const struct tg_config *cfg, char *ip, size_t iplen, int *port);

/* Starts connecting at once. NULL when out of memory. */
struct tg_redis *tg_redis_create(struct event_base *base, const struct tg_redis_options *o) TG_WUR;

/* Sends what it can, then answers every pending call with NULL. */
void tg_redis_destroy(struct tg_redis *r);

/* Connected, authenticated and every script loaded. Any thread may ask. */
bool tg_redis_up(const struct tg_redis *r);

/* The SHA1 (40 hex digits) of script `i`, for EVALSHA. */
const char *tg_redis_sha(const struct tg_redis *r, size_t i);

/* Queues `cmd` (which stays the caller's and must not change until `cb`),
 * under the deadline. `script`: the index of the script the command runs, so
 * that a NOSCRIPT reply loads it and resends the command (at most twice), or
 * TG_REDIS_NO_SCRIPT. Returns 0 and answers through `cb` exactly once, later;
 * -1 (cb never called) when not up, the command failed or out of memory. */
int tg_redis_send(struct tg_redis *r, const struct tg_resp *cmd, int script, tg_redis_cb cb,
                  void *arg) TG_WUR;

/* Writes the calls queued so far now rather than at the next turn of the loop
 * (call after queueing a round; harmless inside a reply callback). */
void tg_redis_flush(struct tg_redis *r);

#endif
