/* The router: a request's route and model to the upstream that serves it, and the model
 * aliases that rename a model before it is forwarded. */
#include <fnmatch.h>
#include <string.h>
#include "tollgate/router.h"

const struct tg_upstream *tg_router_pick(const struct tg_route *route,
                                         const struct tg_request_info *info)
{
    const char *model = info->model;
    for (size_t i = 0; model[0] && i < route->nmodels; i++)
        if (fnmatch(route->models[i].pattern, model, 0) == 0) return route->models[i].upstream;
    return route->upstream;
}

const char *tg_router_alias(const struct tg_route *route, const char *model)
{
    for (size_t i = 0; model && model[0] && i < route->naliases; i++)
        if (strcmp(route->aliases[i].key, model) == 0) return route->aliases[i].value;
    return NULL;
}
