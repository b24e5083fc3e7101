/* Admission between the limiter and forwarding: today every request is admitted at once. */
#include <string.h>
#include "tollgate/admission.h"

void tg_admission_acquire(struct tg_admission *a, struct tg_admit_ticket *t,
                          const struct tg_tenant *tenant, const struct tg_route *route,
                          tg_admit_cb cb, void *arg)
{
    (void)route;
    memset(t, 0, sizeof(*t));
    t->tenant = tenant;
    t->held = true;
    a->held++;
    a->granted++;
    cb(arg, TG_ADMIT_OK);
}

void tg_admission_cancel(struct tg_admission *a, struct tg_admit_ticket *t)
{
    (void)a;
    t->waiting = false;
}

void tg_admission_release(struct tg_admission *a, struct tg_admit_ticket *t)
{
    if (!t->held) return;
    t->held = false;
    a->held--;
}
