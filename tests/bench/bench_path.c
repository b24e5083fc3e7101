/* Micro-benchmark of path normalisation: paths already normal and paths to rewrite.
 * Built as build/bench_path by `make`; run: build/bench_path [N] (default 10000000), or
 *   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out build/bench_path 100000
 *   callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'bench_|tg_'
 * Each bench_* function normalises one path per call; divide its inclusive count by N. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tollgate/http_path.h"

static const char chat[] = "/v1/chat/completions";
static const char video[] =
    "/v1/videos/video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5/content";
static const char dotted[] = "/v1/models/%2e%2e/chat/completions";

static volatile ssize_t sink;
static char out[256];

__attribute__((noinline)) static void bench_chat(void)
{
    const char *why;
    sink = tg_http_path_normalize(chat, sizeof chat - 1, out, &why);
}

__attribute__((noinline)) static void bench_video(void)
{
    const char *why;
    sink = tg_http_path_normalize(video, sizeof video - 1, out, &why);
}

__attribute__((noinline)) static void bench_dotted(void)
{
    const char *why;
    sink = tg_http_path_normalize(dotted, sizeof dotted - 1, out, &why);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void run(const char *name, void (*fn)(void), long n, size_t len)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        fn();
    double ns = (now_ns() - t0) / (double)n;
    printf("%-8s %3zu bytes  %6.1f ns/call  %5.2f ns/byte  (result %zd)\n", name, len, ns,
           ns / (double)len, (ssize_t)sink);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10000000;
    run("chat", bench_chat, n, sizeof chat - 1);
    run("video", bench_video, n, sizeof video - 1);
    run("dotted", bench_dotted, n, sizeof dotted - 1);
    return 0;
}
