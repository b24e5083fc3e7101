/* Micro-benchmark: the metric updates one proxied request makes, N times (for callgrind). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/metrics.h"

/* Built as build/bench_metrics by `make`.
 * Run:   valgrind --tool=callgrind build/bench_metrics labels|handles 100000
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

/* The same updates through series handles, looked up once: what count() in
 * src/proxy.c does while a worker's requests keep the same labels (it also
 * compares four label strings per request to know that they did). */
static void by_handles(int status, double lat_s, double up_s, double lim_s)
{
    static __thread struct tg_metric_series *req[2], *dur, *up, *cost[2][2], *tok[2];
    const char *backend[] = {"redis"};
    tg_metrics_observe(TG_M_LIMITER_DURATION, backend, lim_s);
    const char *tenant = "bench", *route = "/v1/chat/completions", *upstream = "model";
    int s = status == 200 ? 0 : 1;
    if (req[s] == NULL) {
        const char *labels[] = {route, tenant, s ? "429" : "200"};
        req[s] = tg_metrics_series(TG_M_REQUESTS, labels);
    }
    tg_metrics_series_add(req[s], 1);
    if (dur == NULL) dur = tg_metrics_series(TG_M_REQUEST_DURATION, &route);
    tg_metrics_series_observe(dur, lat_s);
    if (up == NULL) up = tg_metrics_series(TG_M_UPSTREAM_DURATION, &upstream);
    tg_metrics_series_observe(up, up_s);
    static const char *const phase[] = {"estimated", "actual"};
    for (int u = 0; u < 2; u++) {
        const int64_t micro[] = {u ? 4108 : 1, u ? 20 : 1};
        for (int p = 0; p < 2; p++) {
            if (cost[u][p] == NULL) {
                const char *l[] = {tenant, tg_unit_name((enum tg_unit)u), phase[p]};
                cost[u][p] = tg_metrics_series(TG_M_COST_UNITS, l);
            }
            tg_metrics_series_add(cost[u][p], (double)micro[p]);
        }
    }
    static const char *const kind[] = {"prompt", "completion"};
    for (int k = 0; k < 2; k++)
        if (tok[k] == NULL)
            tok[k] = tg_metrics_series(TG_M_TOKENS, (const char *[]){tenant, NULL, kind[k]});
    tg_metrics_series_add(tok[0], 12);
    tg_metrics_series_add(tok[1], 8);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s labels|handles N\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    void (*fn)(int, double, double, double) = NULL;
    if (strcmp(argv[1], "labels") == 0) fn = by_labels;
    if (strcmp(argv[1], "handles") == 0) fn = by_handles;
    if (fn == NULL) {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    for (long i = 0; i < n; i++)
        fn(i % 97 ? 200 : 429, 0.0007 + (double)(i % 13) * 0.0003,
           0.0005 + (double)(i % 7) * 0.0002, 0.0001 + (double)(i % 5) * 0.0001);
    return 0;
}
