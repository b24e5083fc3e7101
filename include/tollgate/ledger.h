/* Credits: what a request costs in credits (prices), amounts as exact decimal strings, the
 * ledger events every balance change writes, and the balances of the local backend.
 * Money is integer micro-credits everywhere (1 credit = 1e6); floats never carry it. */
#ifndef TOLLGATE_LEDGER_H
#define TOLLGATE_LEDGER_H

#include "tollgate/config.h"
#include "tollgate/cost.h"

struct tg_sink;

#define TG_CREDIT_MICRO 1000000
/* Room for "-9223372036854.775808" and its NUL. */
#define TG_AMOUNT_LEN 32
/* Hold ids: 32 hex digits, as request ids. */
#define TG_HOLD_ID_LEN 33
/* Idempotency keys: 1..128 of [A-Za-z0-9._:-]. */
#define TG_IDEM_KEY_MAX 128
/* The longest free text of an admin change (its `reason`). */
#define TG_NOTE_MAX 256
/* The most micro-credits a change may move and a balance may hold: 9e9 credits, so that
 * every amount is exact in the doubles Lua computes with in Redis (< 2^53). */
#define TG_AMOUNT_MAX_MICRO 9000000000000000LL

/* ---- prices ---- */

/* Micro-credits a request of cost `cost` for `model` costs under cfg's prices: for each unit
 * with a cost, the first price entry of that unit whose models match (fnmatch; an entry without
 * models matches every model) times the amount; the sum rounded up to a whole micro-credit.
 * A unit without a matching entry is free. */
int64_t tg_ledger_price(const struct tg_config *cfg, const struct tg_cost *cost, const char *model);

/* ---- amounts ---- */

/* Writes micro-credits as a decimal with 6 decimals ("100.500000", "-0.017000"). Returns the
 * length. */
size_t tg_ledger_format_amount(int64_t micro, char out[TG_AMOUNT_LEN]);
/* Parses a decimal amount of credits with at most 6 decimals, optionally signed ("100.5",
 * "-3", "0.000001"), within ±TG_AMOUNT_MAX_MICRO micro-credits. Returns 0, or -1 with *why
 * set to a reason for a 400. */
int tg_ledger_parse_amount(const char *s, size_t n, int64_t *micro, const char **why);
/* True when `key` (n bytes) is a valid Idempotency-Key. */
bool tg_ledger_idem_valid(const char *key, size_t n);

/* ---- events ---- */

/* Why a balance changed. */
#define TG_LEDGER_TOPUP "topup"           /* an operator added credits */
#define TG_LEDGER_ADJUSTMENT "adjustment" /* an operator took credits away */
#define TG_LEDGER_HOLD "hold"             /* a request's estimate was held */
#define TG_LEDGER_SETTLE "settle"         /* the hold replaced by the actual price */
#define TG_LEDGER_EXPIRED "hold_expired"  /* a hold whose gateway never settled, refunded */

/* One balance change. `delta` + the balance before = `balance` (what can still be spent;
 * held credits are not in it). `seq` counts the tenant's events from 1, without gaps. */
struct tg_ledger_event {
    int64_t seq;
    int64_t ts_ms;
    int64_t delta;   /* micro-credits */
    int64_t balance; /* micro-credits, after the change */
    int64_t held;    /* micro-credits held by requests under way, after the change */
    const char *tenant;
    const char *reason;
    const char *idem;       /* "" or NULL: none */
    const char *request_id; /* "" or NULL: none */
    const char *note;       /* "" or NULL: none (an operator's reason) */
};

/* The event as one line of JSON (no newline): {"seq","ts","tenant","delta","balance","held",
 * "reason","idempotency_key","request_id","note"}, amounts as decimal strings. Returns the
 * length, or 0 when `cap` is too small. */
#define TG_LEDGER_EVENT_MAX (640 + 6 * (TG_IDEM_KEY_MAX + TG_NOTE_MAX + 2 * 128))
size_t tg_ledger_event_json(const struct tg_ledger_event *e, char *out, size_t cap);

/* ---- the Redis side (the credit scripts' keys and replies) ---- */

struct tg_resp;
struct redisReply;
/* Appends the tenant's credit keys in _credits.lua's order: $credits, $holds, $holdexp,
 * $ledger, and with `commits` $commits. */
void tg_ledger_put_keys(struct tg_resp *c, const char *prefix, const char *tenant, bool commits);
/* The event of 9 reply elements from e[0] (seq, ts, delta, balance, held, reason,
 * request_id, idempotency_key, note); its strings are the reply's. */
void tg_ledger_event_from_reply(const char *tenant, struct redisReply *const *e,
                                struct tg_ledger_event *ev);
/* Ships the events of a script's reply from element `from` on, 9 elements each. */
void tg_ledger_ship_reply(const char *tenant, const struct redisReply *r, size_t from);

/* Where events are shipped (the ledger sink: Kafka's ledger topic or the ledger file);
 * set once by the main thread before the workers start, NULL: nowhere. */
void tg_ledger_set_sink(struct tg_sink *s);
/* false while the ledger sink cannot keep events without losing them (its spool full in
 * reject mode): requests of tenants that pay with credits, and operators' changes, get 503. */
bool tg_ledger_accepting(void);
/* Ships one event (any thread): a failure is counted and logged by the sink. */
void tg_ledger_ship(const struct tg_ledger_event *e);

/* ---- the local backend's balances (src/ledger/store.c) ---- */

/* Balances in this process, every change appended (and, for operators' changes, fdatasync'd)
 * to a JSONL file before it is acknowledged, and replayed from it at start; holds left open by
 * a process that died are refunded (hold_expired) by the replay. Thread-safe. */
struct tg_ledger_store;

/* Opens (creating) the ledger file and replays it. NULL with err set. */
struct tg_ledger_store *tg_ledger_store_open(const char *path, char err[TG_ERR_LEN]) TG_WUR;
void tg_ledger_store_close(struct tg_ledger_store *st);
/* The store the process's local limiter uses (set by the main thread at start, or NULL). */
void tg_ledger_store_set_default(struct tg_ledger_store *st);
struct tg_ledger_store *tg_ledger_store_default(void);

/* Holds `price` micro-credits of `tenant` for hold `hold_id` when the balance covers it:
 * returns 1 (held; *ev filled with the hold event, already written and shipped), 0 (the
 * balance is short; *ev->balance is the balance) or -1 (the file could not be written). */
int tg_ledger_store_hold(struct tg_ledger_store *st, const char *tenant, const char *hold_id,
                         const char *request_id, int64_t price, struct tg_ledger_event *ev);
/* Replaces hold `hold_id` by `actual` micro-credits (refunding or charging the difference);
 * a hold it does not know is charged `actual` in full. */
void tg_ledger_store_settle(struct tg_ledger_store *st, const char *tenant, const char *hold_id,
                            const char *request_id, int64_t actual);
/* The balance and what is held; false when the tenant has no event yet (both 0). */
bool tg_ledger_store_get(struct tg_ledger_store *st, const char *tenant, int64_t *balance,
                         int64_t *held, int64_t *seq);

/* An operator's change with its Idempotency-Key. */
enum tg_ledger_change_status {
    TG_CHANGE_APPLIED,  /* applied now; *ev is its event */
    TG_CHANGE_REPEATED, /* the key was used before with this body: *ev is that first event */
    TG_CHANGE_CONFLICT, /* the key was used before with another body: 409 */
    TG_CHANGE_SHORT,    /* a negative change larger than the balance: 409 */
    TG_CHANGE_TOO_LARGE, /* the balance would pass TG_AMOUNT_MAX_MICRO: 409 */
    TG_CHANGE_FAILED,   /* the file could not be written: 503 */
};
/* `body_hash` (64 hex of the request body's SHA-256) tells a repeat from a conflict. */
enum tg_ledger_change_status tg_ledger_store_change(struct tg_ledger_store *st, const char *tenant,
                                                    int64_t amount, const char *note,
                                                    const char *idem, const char *body_hash,
                                                    struct tg_ledger_event *ev);

/* Calls `fn` for each event of `tenant` with seq > after, in order, at most `limit`; returns
 * how many. The event's strings live only during the call. */
size_t tg_ledger_store_events(struct tg_ledger_store *st, const char *tenant, int64_t after,
                              size_t limit,
                              void (*fn)(void *arg, const struct tg_ledger_event *e), void *arg);

/* Checks a ledger file: every tenant's seq runs 1, 2, 3...; each balance is the previous one
 * plus delta; held is what the open holds add up to; a hold id is not opened twice and only
 * an open hold expires (a settle of a hold that is not open charges its actual in full, as
 * the store does). Writes a line per tenant (and per
 * problem) to `out`; returns the number of problems (0: consistent). */
int tg_ledger_verify_file(const char *path, FILE *out);

/* `tollgate ledger verify`: with the Redis limiter, every tenant with a balance in Redis has its
 * ledger stream replayed (seq without gaps, each balance the previous plus delta) and compared
 * with its live balance and open holds; with the local limiter, credits.ledger_file is checked
 * as above. A line per tenant to `out`; returns the number of problems. */
int tg_ledger_verify(const struct tg_config *cfg, FILE *out);

#endif
