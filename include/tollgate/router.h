/* The router: which upstream serves a request, chosen once its route and model are known. */
#ifndef TOLLGATE_ROUTER_H
#define TOLLGATE_ROUTER_H

#include "tollgate/config.h"
#include "tollgate/cost.h"

/* The upstream that serves a request on `route` for the model `info` names
 * (info->model may be empty: a bodyless request, or a body without one).
 * Today every route has one upstream; routing by model and pools of several
 * targets are decided here, and nowhere else on the request path. Never NULL. */
const struct tg_upstream *tg_router_pick(const struct tg_route *route,
                                         const struct tg_request_info *info);

#endif
