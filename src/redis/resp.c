/* RESP commands built in a growable buffer: appends that never fail, a command that
 * ran out of memory is marked and refused when sent. */
#include <stdio.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "tollgate/redis.h"

#define RESP_MIN 256

bool tg_resp_reserve(struct tg_resp *c, size_t n)
{
    if (!c->failed && !tg_buf_reserve(&c->b, n, RESP_MIN)) c->failed = true;
    return !c->failed;
}

void tg_resp_raw(struct tg_resp *c, const void *s, size_t n)
{
    if (!tg_resp_reserve(c, n)) return;
    memcpy(c->b.p + c->b.len, s, n);
    c->b.len += n;
}

void tg_resp_head(struct tg_resp *c, char type, size_t n)
{
    char d[24], t[32];
    size_t k;
    const char *p = tg_fmt_int(d, (long long)n, &k);
    t[0] = type;
    memcpy(t + 1, p, k);
    t[k + 1] = '\r';
    t[k + 2] = '\n';
    tg_resp_raw(c, t, k + 3);
}

void tg_resp_bulk(struct tg_resp *c, const char *s, size_t n)
{
    tg_resp_head(c, '$', n);
    tg_resp_raw(c, s, n);
    tg_resp_raw(c, "\r\n", 2);
}

/* "$<len>\r\n<digits>\r\n" in one append. */
void tg_resp_bulk_int(struct tg_resp *c, int64_t v)
{
    char d[24], t[32];
    size_t k;
    const char *p = tg_fmt_int(d, (long long)v, &k);
    size_t n = 0;
    t[n++] = '$';
    if (k >= 10) t[n++] = '0' + (char)(k / 10);
    t[n++] = '0' + (char)(k % 10);
    t[n++] = '\r';
    t[n++] = '\n';
    memcpy(t + n, p, k);
    n += k;
    t[n++] = '\r';
    t[n++] = '\n';
    tg_resp_raw(c, t, n);
}

/* The few rates of a configuration are formatted once per thread, not on every call. */
void tg_resp_bulk_double(struct tg_resp *c, double v)
{
    static _Thread_local struct {
        double v;
        char t[32];
        size_t n;
    } cache[8];
    static _Thread_local unsigned next;
    for (unsigned i = 0; i < 8; i++)
        if (cache[i].n && memcmp(&cache[i].v, &v, sizeof(v)) == 0) {
            tg_resp_bulk(c, cache[i].t, cache[i].n);
            return;
        }
    unsigned i = next++ % 8;
    int k = snprintf(cache[i].t, sizeof(cache[i].t), "%.17g", v);
    cache[i].v = v;
    cache[i].n = (size_t)k;
    tg_resp_bulk(c, cache[i].t, cache[i].n);
}

void tg_resp_tenant_key(struct tg_resp *c, const char *prefix, const char *tenant,
                        const char *name, const char *suffix)
{
    size_t pl = strlen(prefix), tl = strlen(tenant), nl = strlen(name);
    size_t sl = suffix ? strlen(suffix) : 0;
    tg_resp_head(c, '$', pl + tl + 3 + nl + sl);
    tg_resp_raw(c, prefix, pl);
    tg_resp_raw(c, "{", 1);
    tg_resp_raw(c, tenant, tl);
    tg_resp_raw(c, "}:", 2);
    tg_resp_raw(c, name, nl);
    if (sl) tg_resp_raw(c, suffix, sl);
    tg_resp_raw(c, "\r\n", 2);
}

int64_t tg_redis_reply_int(const struct redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER) return e->integer;
    if (e->type == REDIS_REPLY_STRING) return strtoll(e->str, NULL, 10);
    return 0;
}

const char *tg_redis_reply_str(const struct redisReply *e)
{
    return e->type == REDIS_REPLY_STRING ? e->str : "";
}
