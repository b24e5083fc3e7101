/* The router: which upstream serves a request, chosen once its route and model are known. */
#ifndef TOLLGATE_ROUTER_H
#define TOLLGATE_ROUTER_H

#include "tollgate/config.h"
#include "tollgate/cost.h"

/* The upstream that serves a request on `route` for the model `info` names
 * (info->model may be empty: a bodyless request, or a body without one): the first of the
 * route's `models` patterns (fnmatch) that matches, else the route's `upstream`. NULL when
 * neither (a route that routes by model only, and a model none of its patterns names: 404
 * model_not_found). Pools of several targets are decided here too, and nowhere else on the
 * request path. */
const struct tg_upstream *tg_router_pick(const struct tg_route *route,
                                         const struct tg_request_info *info);

/* The model that `model` stands for on `route` (its model_aliases), or NULL. */
const char *tg_router_alias(const struct tg_route *route, const char *model);

#endif
