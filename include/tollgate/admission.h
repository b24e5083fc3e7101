/* Admission: the step between the limiter and forwarding that may hold a
 * request back (a concurrency slot, a place in a wait queue) and lets it go
 * at its end. A request the limiter allowed acquires admission before it is
 * forwarded and releases it exactly once when it finishes, however it ends. */
#ifndef TOLLGATE_ADMISSION_H
#define TOLLGATE_ADMISSION_H

#include "tollgate/common.h"
#include "tollgate/config.h"

enum tg_admit_status {
    TG_ADMIT_OK = 0,  /* forward it */
    TG_ADMIT_BUSY,    /* no slot and no room to wait: 429 */
    TG_ADMIT_TIMEOUT, /* waited as long as allowed: 429 */
};

/* Called once per acquire, unless cancelled first; possibly before
 * tg_admission_acquire returns. */
typedef void (*tg_admit_cb)(void *arg, enum tg_admit_status status);

/* One request's hold on admission. Zeroed by tg_admission_acquire. */
struct tg_admit_ticket {
    const struct tg_tenant *tenant; /* (ref) */
    bool waiting;                   /* acquired, not yet answered */
    bool held;                      /* answered TG_ADMIT_OK, not yet released */
};

/* One worker's admission state: what it holds, per worker. */
struct tg_admission {
    int64_t held;     /* tickets held now */
    uint64_t granted; /* tickets answered TG_ADMIT_OK since creation */
};

/* Asks for admission of a request of `tenant` on `route`: calls `cb` exactly
 * once, unless tg_admission_cancel comes first. Today nothing is limited:
 * every request is admitted at once. */
void tg_admission_acquire(struct tg_admission *a, struct tg_admit_ticket *t,
                          const struct tg_tenant *tenant, const struct tg_route *route,
                          tg_admit_cb cb, void *arg);

/* Withdraws a ticket still waiting: its callback will not be called. */
void tg_admission_cancel(struct tg_admission *a, struct tg_admit_ticket *t);

/* Lets go of a held ticket (its request finished); a ticket not held is
 * ignored, so the end of a request may call it whatever happened before. */
void tg_admission_release(struct tg_admission *a, struct tg_admit_ticket *t);

#endif
