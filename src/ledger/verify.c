/* `tollgate ledger verify`: each tenant's balance recomputed from its ledger and compared with
 * the live one — the Redis backend's streams and hashes, or the local backend's file. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/ledger.h"
#include "tollgate/redis.h"

#define PAGE 1000

static int64_t as_int(const redisReply *r)
{
    if (!r) return 0;
    if (r->type == REDIS_REPLY_INTEGER) return r->integer;
    if (r->type == REDIS_REPLY_STRING) return strtoll(r->str, NULL, 10);
    return 0;
}

static const char *field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            return fields->element[i + 1]->str;
    return NULL;
}

/* One tenant: the hash and the open holds read together, then the stream up to the hash's
 * seq (later events belong to changes made while this runs). */
static int verify_tenant(redisContext *c, const char *prefix, const char *tenant, FILE *out)
{
    char ck[512], hk[512], sk[512];
    snprintf(ck, sizeof(ck), "%s{%s}:$credits", prefix, tenant);
    snprintf(hk, sizeof(hk), "%s{%s}:$holds", prefix, tenant);
    snprintf(sk, sizeof(sk), "%s{%s}:$ledger", prefix, tenant);
    redisAppendCommand(c, "MULTI");
    redisAppendCommand(c, "HMGET %s bal held seq", ck);
    redisAppendCommand(c, "HVALS %s", hk);
    redisAppendCommand(c, "EXEC");
    redisReply *r = NULL;
    for (int i = 0; i < 4; i++) {
        if (r) freeReplyObject(r);
        r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            fprintf(out, "%s: Redis: %s\n", tenant, c->errstr);
            return 1;
        }
    }
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        fprintf(out, "%s: Redis gave an unexpected reply\n", tenant);
        if (r) freeReplyObject(r);
        return 1;
    }
    const redisReply *h = r->element[0], *holds = r->element[1];
    int64_t bal = as_int(h->element[0]), held = as_int(h->element[1]), seq = as_int(h->element[2]);
    int64_t open = 0;
    size_t nopen = 0;
    for (size_t i = 0; i < holds->elements; i++) {
        const char *v = holds->element[i]->str;
        if (v && v[0] >= '0' && v[0] <= '9') {
            open += strtoll(v, NULL, 10);
            nopen++;
        }
    }
    freeReplyObject(r);
    int problems = 0;
    int64_t want = 1, run_bal = 0, run_held = 0;
    while (want <= seq) {
        redisReply *x = redisCommand(c, "XRANGE %s %lld-0 %lld-0 COUNT %d", sk, (long long)want,
                                     (long long)seq, PAGE);
        if (!x || x->type != REDIS_REPLY_ARRAY) {
            fprintf(out, "%s: Redis: %s\n", tenant, x ? "unexpected reply" : c->errstr);
            if (x) freeReplyObject(x);
            return problems + 1;
        }
        if (x->elements == 0) {
            fprintf(out, "%s: the ledger ends at seq %lld, the balance says %lld\n", tenant,
                    (long long)(want - 1), (long long)seq);
            freeReplyObject(x);
            return problems + 1;
        }
        for (size_t i = 0; i < x->elements; i++) {
            const redisReply *e = x->element[i];
            int64_t s = strtoll(e->element[0]->str, NULL, 10);
            const char *d = field(e->element[1], "delta"), *b = field(e->element[1], "balance");
            const char *hd = field(e->element[1], "held");
            if (s != want) {
                fprintf(out, "%s: seq %lld follows seq %lld (a gap)\n", tenant, (long long)s,
                        (long long)(want - 1));
                problems++;
            }
            int64_t delta = d ? strtoll(d, NULL, 10) : 0, after = b ? strtoll(b, NULL, 10) : 0;
            if (!d || !b || after != run_bal + delta) {
                fprintf(out, "%s: seq %lld: balance %lld is not %lld + %lld\n", tenant,
                        (long long)s, (long long)after, (long long)run_bal, (long long)delta);
                problems++;
            }
            run_bal = after;
            run_held = hd ? strtoll(hd, NULL, 10) : run_held;
            want = s + 1;
        }
        freeReplyObject(x);
    }
    if (run_bal != bal) {
        fprintf(out, "%s: the ledger sums to %lld micro-credits, the live balance is %lld\n", tenant,
                (long long)run_bal, (long long)bal);
        problems++;
    }
    if (seq > 0 && run_held != held) {
        fprintf(out, "%s: the ledger's last held is %lld, the live held is %lld\n", tenant,
                (long long)run_held, (long long)held);
        problems++;
    }
    if (open != held) {
        fprintf(out, "%s: %zu open holds add up to %lld, the live held is %lld\n", tenant, nopen,
                (long long)open, (long long)held);
        problems++;
    }
    char ba[TG_AMOUNT_LEN], he[TG_AMOUNT_LEN];
    tg_ledger_format_amount(bal, ba);
    tg_ledger_format_amount(held, he);
    fprintf(out, "%s: %lld events, balance %s, held %s in %zu open holds: %s\n", tenant,
            (long long)seq, ba, he, nopen, problems ? "MISMATCH" : "ok");
    return problems;
}

static int verify_redis(const struct tg_config *cfg, FILE *out)
{
    char ip[64];
    int port;
    tg_redis_address(cfg, ip, sizeof(ip), &port);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(ip, port, tv);
    if (!c || c->err) {
        fprintf(out, "redis %s:%d: %s\n", ip, port, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return 1;
    }
    redisSetTimeout(c, tv);
    redisReply *r;
    if (cfg->limiter.redis.password && cfg->limiter.redis.password[0]) {
        r = redisCommand(c, "AUTH %s", cfg->limiter.redis.password);
        bool ok = r && r->type != REDIS_REPLY_ERROR;
        if (r) freeReplyObject(r);
        if (!ok) {
            fprintf(out, "redis: AUTH failed\n");
            redisFree(c);
            return 1;
        }
    }
    if (cfg->limiter.redis.db) {
        r = redisCommand(c, "SELECT %d", cfg->limiter.redis.db);
        if (r) freeReplyObject(r);
    }
    const char *prefix = cfg->limiter.redis.key_prefix ? cfg->limiter.redis.key_prefix
                                                       : TG_DEFAULT_REDIS_KEY_PREFIX;
    char pattern[512];
    snprintf(pattern, sizeof(pattern), "%s{*}:$credits", prefix);
    char cursor[32] = "0";
    int problems = 0;
    size_t tenants = 0;
    do {
        r = redisCommand(c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            fprintf(out, "redis: SCAN: %s\n", r ? "unexpected reply" : c->errstr);
            if (r) freeReplyObject(r);
            redisFree(c);
            return problems + 1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str + strlen(prefix) + 1;
            const char *end = strstr(k, "}:$credits");
            if (!end) continue;
            char tenant[256];
            snprintf(tenant, sizeof(tenant), "%.*s", (int)(end - k), k);
            problems += verify_tenant(c, prefix, tenant, out);
            tenants++;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    redisFree(c);
    fprintf(out, "%zu tenants, %d problems\n", tenants, problems);
    return problems;
}

int tg_ledger_verify(const struct tg_config *cfg, FILE *out)
{
    if (cfg->limiter.backend == TG_LIMITER_REDIS) return verify_redis(cfg, out);
    int problems = tg_ledger_verify_file(cfg->credits.ledger_file, out);
    fprintf(out, "%s: %d problems\n", cfg->credits.ledger_file, problems);
    return problems;
}
