/* libFuzzer driver: the configuration loader on arbitrary bytes. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "tollgate/auth.h"
#include "tollgate/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *devnull;
    char err[TG_ERR_LEN];
    struct tg_config *cfg = tg_config_load_string("fuzz.yaml", (const char *)data, size, err);
    if (!cfg) {
        /* every refusal is one "fuzz.yaml:LINE:COLUMN: path: reason" line */
        if (strncmp(err, "fuzz.yaml:", 10) != 0 || strchr(err, '\n')) __builtin_trap();
        return 0;
    }
    if (!devnull) devnull = fopen("/dev/null", "w");
    if (devnull) tg_config_print(cfg, devnull);
    const struct tg_route *r = tg_config_route(cfg, "/v1/chat/completions?x", 22);
    if (r && (!r->upstream || r->path[0] != '/')) __builtin_trap();
    (void)tg_auth_lookup(cfg, "Bearer sk-demo", 14, NULL);
    for (size_t i = 0; i < cfg->ntenants; i++) {
        if (tg_config_tenant(cfg, cfg->tenants[i].name) != &cfg->tenants[i]) __builtin_trap();
    }
    tg_config_ref(cfg);
    tg_config_unref(cfg);
    tg_config_unref(cfg);
    return 0;
}
