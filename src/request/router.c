/* The router: a request's route and model to the upstream that serves it. */
#include "tollgate/router.h"

const struct tg_upstream *tg_router_pick(const struct tg_route *route,
                                         const struct tg_request_info *info)
{
    (void)info;
    return route->upstream;
}
