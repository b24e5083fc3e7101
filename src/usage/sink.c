/* The sinks' common parts: the factory that picks one by config, the "none" sink, and helpers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "tollgate/sink.h"

int tg_usage_mkdirs(const char *dir)
{
    char tmp[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(tmp)) {
        errno = n ? ENAMETOOLONG : ENOENT;
        return -1;
    }
    memcpy(tmp, dir, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
    return 0;
}

struct tg_sink *tg_sink_create(const struct tg_config *cfg, struct event_base *base,
                               char err[TG_ERR_LEN])
{
    switch (cfg->usage.sink) {
    case TG_SINK_FILE:
        return tg_sink_file_create(cfg, err);
    case TG_SINK_KAFKA:
        return tg_sink_kafka_create(cfg, base, err);
    case TG_SINK_NONE:
        return tg_sink_none_create();
    }
    snprintf(err, TG_ERR_LEN, "usage.sink: unknown sink %d", (int)cfg->usage.sink);
    return NULL;
}

bool tg_usage_log_due(int64_t *last_ms)
{
    int64_t now = tg_now_mono_ms(), prev = __atomic_load_n(last_ms, __ATOMIC_RELAXED);
    if (prev != 0 && now - prev < TG_USAGE_LOG_EVERY_MS) return false;
    return __atomic_compare_exchange_n(last_ms, &prev, now, false, __ATOMIC_RELAXED,
                                       __ATOMIC_RELAXED);
}

/* The "none" sink: takes records and discards them (tg_usage_emit does not even build them). */
static int none_submit(struct tg_sink *s, const char *json, size_t len, const char *key)
{
    return 0;
}

static bool none_accepting(struct tg_sink *s)
{
    return true;
}

static void none_flush(struct tg_sink *s, int timeout_ms) {}

static void none_reopen(struct tg_sink *s) {}

static void none_destroy(struct tg_sink *s)
{
    free(s);
}

static const struct tg_sink_ops none_ops = {
    .name = "none",
    .discards = true,
    .submit = none_submit,
    .accepting = none_accepting,
    .flush = none_flush,
    .reopen = none_reopen,
    .destroy = none_destroy,
};

struct tg_sink *tg_sink_none_create(void)
{
    struct tg_sink *s = malloc(sizeof(*s));
    if (s) s->ops = &none_ops;
    return s;
}
