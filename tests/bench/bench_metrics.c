/* Micro-benchmark: the metric updates one proxied request makes, N times (for callgrind). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/metrics.h"

/* Built as build/bench_metrics by `make`.
 * Run:   valgrind --tool=callgrind build/bench_metrics labels|memo 100000
 * Instructions per request = (Ir at 2N - Ir at N) / N. */

/* What src/proxy.c's count() and on_limit() record for one small chat
 * completion with the configuration of tests/bench/run.sh: 10 updates. */
static void by_labels(int status, double lat_s, double up_s, double lim_s)
{
    char digits[24], code[8];
    size_t cn;
    const char *cd = tg_fmt_int(digits, status, &cn);
    memcpy(code, cd, cn);
    code[cn] = '\0';
    const char *backend[] = {"redis"};
    tg_metrics_observe(TG_M_LIMITER_DURATION, backend, lim_s);
    const char *tenant = "bench", *route = "/v1/chat/completions";
    const char *req_labels[] = {route, tenant, code};
    tg_metrics_add(TG_M_REQUESTS, req_labels, 1);
    const char *route_labels[] = {route};
    tg_metrics_observe(TG_M_REQUEST_DURATION, route_labels, lat_s);
    const char *up_labels[] = {"model"};
    tg_metrics_observe(TG_M_UPSTREAM_DURATION, up_labels, up_s);
    for (int u = 0; u < 2; u++) {
        const char *unit = tg_unit_name((enum tg_unit)u);
        const char *le[] = {tenant, unit, "estimated"};
        tg_metrics_add(TG_M_COST_UNITS, le, u ? 4108 : 1);
        const char *la[] = {tenant, unit, "actual"};
        tg_metrics_add(TG_M_COST_UNITS, la, u ? 20 : 1);
    }
    const char *lp[] = {tenant, NULL, "prompt"};
    const char *lc[] = {tenant, NULL, "completion"};
    tg_metrics_add(TG_M_TOKENS, lp, 12);
    tg_metrics_add(TG_M_TOKENS, lc, 8);
}

/* The same updates the way count() makes them now: labels compared with the
 * worker's copies of the last request's, series kept as handles. */
static void by_memo(int status, double lat_s, double up_s, double lim_s)
{
    static __thread struct {
        char route[128], tenant[128], upstream[128], model[128];
        int status;
        unsigned unkept;
        struct tg_metric_series *req, *dur, *up, *cost[TG_UNIT_COUNT][2], *tok[2];
    } memo;
    enum { ROUTE = 1, TENANT = 2, UPSTREAM = 4, MODEL = 8, STATUS = 16 };
    const char *backend[] = {"redis"};
    tg_metrics_observe(TG_M_LIMITER_DURATION, backend, lim_s);
    const char *tenant = "bench", *route = "/v1/chat/completions", *upstream = "model";
    const char *model = NULL;
    const char *now[] = {route, tenant, upstream, model};
    char *copy[] = {memo.route, memo.tenant, memo.upstream, memo.model};
    const size_t cap[] = {sizeof(memo.route), sizeof(memo.tenant), sizeof(memo.upstream),
                          sizeof(memo.model)};
    unsigned changed = status != memo.status ? STATUS : 0;
    memo.status = status;
    for (unsigned i = 0; i < 4; i++) {
        const char *v = now[i] ? now[i] : "other";
        if (!(memo.unkept & 1u << i) && strcmp(copy[i], v) == 0) continue;
        changed |= 1u << i;
        size_t n = strlen(v);
        memo.unkept &= ~(1u << i);
        if (n < cap[i])
            memcpy(copy[i], v, n + 1);
        else
            memo.unkept |= 1u << i;
    }
    if (changed & (ROUTE | TENANT | STATUS)) memo.req = NULL;
    if (changed & ROUTE) memo.dur = NULL;
    if (changed & UPSTREAM) memo.up = NULL;
    if (changed & TENANT) memset(memo.cost, 0, sizeof(memo.cost));
    if (changed & (TENANT | MODEL)) memo.tok[0] = memo.tok[1] = NULL;
    if (memo.req == NULL) {
        char digits[24], code[8];
        size_t cn;
        const char *cd = tg_fmt_int(digits, status, &cn);
        memcpy(code, cd, cn);
        code[cn] = '\0';
        memo.req = tg_metrics_series(TG_M_REQUESTS, (const char *[]){route, tenant, code});
    }
    tg_metrics_series_add(memo.req, 1);
    if (memo.dur == NULL) memo.dur = tg_metrics_series(TG_M_REQUEST_DURATION, &route);
    tg_metrics_series_observe(memo.dur, lat_s);
    if (memo.up == NULL) memo.up = tg_metrics_series(TG_M_UPSTREAM_DURATION, &upstream);
    tg_metrics_series_observe(memo.up, up_s);
    static const char *const phase[] = {"estimated", "actual"};
    for (int u = 0; u < 2; u++) {
        const int64_t micro[] = {u ? 4108 : 1, u ? 20 : 1};
        for (int p = 0; p < 2; p++) {
            if (memo.cost[u][p] == NULL) {
                const char *l[] = {tenant, tg_unit_name((enum tg_unit)u), phase[p]};
                memo.cost[u][p] = tg_metrics_series(TG_M_COST_UNITS, l);
            }
            tg_metrics_series_add(memo.cost[u][p], (double)micro[p]);
        }
    }
    static const char *const kind[] = {"prompt", "completion"};
    for (int k = 0; k < 2; k++)
        if (memo.tok[k] == NULL)
            memo.tok[k] = tg_metrics_series(TG_M_TOKENS, (const char *[]){tenant, model, kind[k]});
    tg_metrics_series_add(memo.tok[0], 12);
    tg_metrics_series_add(memo.tok[1], 8);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s labels|memo N\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    void (*fn)(int, double, double, double) = NULL;
    if (strcmp(argv[1], "labels") == 0) fn = by_labels;
    if (strcmp(argv[1], "memo") == 0) fn = by_memo;
    if (fn == NULL) {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    for (long i = 0; i < n; i++)
        fn(i % 97 ? 200 : 429, 0.0007 + (double)(i % 13) * 0.0003,
           0.0005 + (double)(i % 7) * 0.0002, 0.0001 + (double)(i % 5) * 0.0001);
    return 0;
}
