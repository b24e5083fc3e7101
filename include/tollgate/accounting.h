/* Accounting: what a request is charged. Before it is forwarded, its
 * estimate is reserved (the buckets it touches are planned and checked);
 * when it ends, the actual cost is committed: every bucket is settled by
 * actual − estimate. A prepaid balance joins the rate buckets here. */
#ifndef TOLLGATE_ACCOUNTING_H
#define TOLLGATE_ACCOUNTING_H

#include "tollgate/cost.h"
#include "tollgate/limiter.h"

/* Plans the buckets of `tenant` that a request of cost `est` for `model`
 * touches into `req` and checks them all-or-nothing (tg_limiter_check): `cb`
 * is called once, maybe before this returns. A tenant that pays with credits
 * (cfg's credits on, its mode not off) also has the estimate priced and a hold
 * id drawn: the limiter decides buckets and balance in the same check. A
 * background request may not take its limits' reserves.
 * `request_id` (ref) must live until the settle. Returns 0, or -1 when the
 * check could not be sent (the caller answers as for an unreachable limiter). */
int tg_account_reserve(struct tg_limiter *l, const struct tg_config *cfg,
                       const struct tg_tenant *tenant, const struct tg_cost *est,
                       const char *model, const char *request_id, enum tg_priority priority,
                       struct tg_limit_req *req, tg_limiter_cb cb, void *arg) TG_WUR;

/* How a request ended, as far as its cost goes. */
struct tg_outcome {
    bool refused;                 /* held back after the check (admission): never
                                   * forwarded, nothing is charged */
    bool bodyless;                /* a method without a body: one request, whatever happened */
    bool failed_undelivered;      /* the upstream call failed or the client left, and
                                   * no reply and no usage reached the client */
    const struct tg_usage *usage; /* what the reply reported and carried; NULL: nothing read */
};

/* The actual cost of a request that was reserved: nothing when it was
 * refused before forwarding; one request unit when it
 * was bodyless or failed before anything was delivered; otherwise what was
 * delivered (the usage the upstream reported, or the text that passed, by
 * tg_cost_actual). */
void tg_account_actual(enum tg_cost_model model, int chars_per_token,
                       const struct tg_request_info *info, const struct tg_outcome *out,
                       struct tg_cost *actual);

/* Settles every bucket of a reserved request by actual − estimate (a
 * positive delta charges, a negative one refunds; nothing when they are
 * equal), and for a request the balance paid (req->credit.paid_by, set by the
 * caller from the check) replaces its hold by the price of `actual`. Returns
 * the micro-credits charged, or -1 when the balance did not pay. */
int64_t tg_account_commit(struct tg_limiter *l, const struct tg_config *cfg, const char *model,
                          struct tg_limit_req *req, const struct tg_cost *actual);

#endif
