/* Ledger events: their JSON, and their way out to the ledger sink. */
#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include "tollgate/jsonw.h"
#include "tollgate/ledger.h"
#include "tollgate/metrics.h"
#include "tollgate/redis.h"
#include "tollgate/sink.h"

static _Atomic(struct tg_sink *) ledger_sink;

static char *put(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static char *put_int(char *p, int64_t v)
{
    return p + sprintf(p, "%lld", (long long)v);
}

static char *put_amount(char *p, int64_t v)
{
    *p++ = '"';
    p += tg_ledger_format_amount(v, p);
    *p++ = '"';
    return p;
}

static char *put_str_or_null(char *p, const char *s, size_t max)
{
    if (s == NULL || *s == '\0') return put(p, "null");
    size_t n = strnlen(s, max);
    return tg_jsonw_str(p, s, n);
}

size_t tg_ledger_event_json(const struct tg_ledger_event *e, char *out, size_t cap)
{
    if (cap < TG_LEDGER_EVENT_MAX) return 0;
    char *p = out;
    p = put(p, "{\"seq\":");
    p = put_int(p, e->seq);
    p = put(p, ",\"ts\":");
    p = put_int(p, e->ts_ms);
    p = put(p, ",\"tenant\":");
    p = put_str_or_null(p, e->tenant, TG_TENANT_NAME_MAX);
    p = put(p, ",\"delta\":");
    p = put_amount(p, e->delta);
    p = put(p, ",\"balance\":");
    p = put_amount(p, e->balance);
    p = put(p, ",\"held\":");
    p = put_amount(p, e->held);
    p = put(p, ",\"reason\":");
    p = put_str_or_null(p, e->reason, 32);
    p = put(p, ",\"idempotency_key\":");
    p = put_str_or_null(p, e->idem, TG_IDEM_KEY_MAX);
    p = put(p, ",\"request_id\":");
    p = put_str_or_null(p, e->request_id, 128);
    p = put(p, ",\"note\":");
    p = put_str_or_null(p, e->note, TG_NOTE_MAX);
    *p++ = '}';
    *p = '\0';
    return (size_t)(p - out);
}

void tg_ledger_set_sink(struct tg_sink *s)
{
    atomic_store(&ledger_sink, s);
}

bool tg_ledger_accepting(void)
{
    struct tg_sink *s = atomic_load(&ledger_sink);
    return s == NULL || tg_sink_accepting(s);
}

void tg_ledger_ship(const struct tg_ledger_event *e)
{
    tg_metrics_add(TG_M_LEDGER_EVENTS, (const char *const[]){e->reason ? e->reason : ""}, 1);
    struct tg_sink *s = atomic_load(&ledger_sink);
    if (s == NULL) return;
    char line[TG_LEDGER_EVENT_MAX];
    size_t n = tg_ledger_event_json(e, line, sizeof(line));
    if (n) (void)s->ops->submit(s, line, n, e->tenant ? e->tenant : "");
}

void tg_ledger_put_keys(struct tg_resp *c, const char *prefix, const char *tenant, bool commits)
{
    static const char *const names[] = {"$credits", "$holds", "$holdexp", "$ledger", "$commits"};
    for (size_t i = 0; i < (commits ? 5u : 4u); i++)
        tg_resp_tenant_key(c, prefix, tenant, names[i], NULL);
}

void tg_ledger_event_from_reply(const char *tenant, struct redisReply *const *e,
                                struct tg_ledger_event *ev)
{
    *ev = (struct tg_ledger_event){.seq = tg_redis_reply_int(e[0]),
                                   .ts_ms = tg_redis_reply_int(e[1]),
                                   .delta = tg_redis_reply_int(e[2]),
                                   .balance = tg_redis_reply_int(e[3]),
                                   .held = tg_redis_reply_int(e[4]),
                                   .tenant = tenant,
                                   .reason = tg_redis_reply_str(e[5]),
                                   .request_id = tg_redis_reply_str(e[6]),
                                   .idem = tg_redis_reply_str(e[7]),
                                   .note = tg_redis_reply_str(e[8])};
}

void tg_ledger_ship_reply(const char *tenant, const struct redisReply *r, size_t from)
{
    for (size_t i = from; i + 9 <= r->elements; i += 9) {
        struct tg_ledger_event ev;
        tg_ledger_event_from_reply(tenant, r->element + i, &ev);
        tg_ledger_ship(&ev);
    }
}
