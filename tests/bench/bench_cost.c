/* Instruction-count bench for src/cost/: the bench request's estimate and the bench reply's scan.
 * Built as build/bench_cost by `make`; run from the source dir:
 *   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out build/bench_cost 100000
 *   callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'bench_|tg_'
 * Each bench_* function runs once per request; divide its inclusive count by N. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/cost.h"

static const char req[] = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                          "\"Say hello in one short sentence.\"}],\"max_tokens\":16}";
static const char reply[] =
    "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1764000000,\"model\":"
    "\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
    "\"Hello there, nice to meet you.\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_"
    "tokens\":12,\"completion_tokens\":8,\"total_tokens\":20}}";
static const char sreq[] = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                           "\"Say hello in one short sentence.\"}],\"max_tokens\":16,\"stream\":true}";

static volatile int64_t sink;

__attribute__((noinline)) static void bench_estimate(void)
{
    struct tg_cost c;
    struct tg_request_info info;
    char err[TG_ERR_LEN];
    if (tg_cost_estimate(TG_COST_TOKENS, 4, 4096, req, sizeof req - 1, &c, &info, err) != 0)
        abort();
    sink = c.u[TG_UNIT_TOKENS];
}

__attribute__((noinline)) static void bench_scan(void)
{
    struct tg_scan s;
    tg_scan_init(&s, false, false, NULL, NULL);
    tg_scan_feed(&s, reply, sizeof reply - 1);
    tg_scan_finish(&s);
    if (s.usage.total_tokens != 20 || s.usage.prompt_tokens != 12) abort();
    sink = s.usage.total_tokens;
    tg_scan_deinit(&s);
}

__attribute__((noinline)) static void bench_request_usage(void)
{
    size_t n;
    char *b = tg_cost_request_usage(sreq, sizeof sreq - 1, &n);
    if (!b) abort();
    sink = (int64_t)n;
    free(b);
}

__attribute__((noinline)) static void bench_request_usage_valid(void)
{
    size_t n;
    char *b = tg_cost_request_usage_valid(sreq, sizeof sreq - 1, &n);
    if (!b) abort();
    sink = (int64_t)n;
    free(b);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    for (long i = 0; i < n; i++) {
        bench_estimate();
        bench_scan();
        bench_request_usage();
        bench_request_usage_valid();
    }
    printf("%ld rounds\n", n);
    return 0;
}
