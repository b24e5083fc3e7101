/* Configuration loader: one YAML file -> a validated, immutable, reference-counted tg_config. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include "tollgate/buf.h"
#include "tollgate/config.h"
#include "loader.h"

#define MAX_FILE_BYTES (256 << 20)

/* ---- applying a section's table: keys, defaults, checks ---- */

static int apply_default(struct loader *ld, const struct directive *d, void *base)
{
    switch (d->store) {
    case ST_INT:
        *FIELD(base, d, int) = (int)d->defi;
        break;
    case ST_I64:
        *FIELD(base, d, int64_t) = d->defi;
        break;
    case ST_DBL:
        *FIELD(base, d, double) = d->defd;
        break;
    case ST_BOOL:
        *FIELD(base, d, bool) = d->defi != 0;
        break;
    case ST_ENUM:
        *FIELD(base, d, int) = d->defs ? choice_index(d->choices, d->defs) : 0;
        break;
    case ST_STR: {
        const char *s = d->defs ? d->defs : "";
        return (*FIELD(base, d, char *) = ld_strdup(ld, s, strlen(s))) ? 0 : -1;
    }
    case ST_LISTEN:
        return listen_init(ld, NONE, d->defs, strlen(d->defs), FIELD(base, d, struct tg_listen));
    case ST_SECTION:
        return apply_section(ld, d->sub, NONE, base);
    case ST_KV:
    case ST_NONE:
        break; /* empty */
    }
    return 0;
}

static void join_keys(const struct section *sec, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < sec->nkeys && o < cap; i++) {
        int n = snprintf(out + o, cap - o, "%s%s", i ? ", " : "", sec->keys[i].name);
        if (n > 0) o += (size_t)n;
    }
}

/* Fills `base` from mapping `map` (NONE: not written) by the section's table: unknown and
 * duplicate keys are errors, absent keys take their defaults, then the section's check runs. */
int apply_section(struct loader *ld, const struct section *sec, uint32_t map, void *base)
{
    uint32_t seen[MAX_DIRECTIVES], key_at[MAX_DIRECTIVES];
    for (size_t i = 0; i < sec->nkeys; i++)
        seen[i] = NONE;
    if (map != NONE && is_null(N(ld, map))) map = NONE;
    if (map != NONE && N(ld, map)->type != N_MAP)
        return fail(ld, map, "expected a mapping, got a %s", type_name(N(ld, map)->type));
    for (size_t p = 0; map != NONE && p < N(ld, map)->n; p += 2) {
        uint32_t k = N(ld, map)->u.kids[p];
        const struct node *kn = N(ld, k);
        if (kn->type != N_SCALAR)
            return fail(ld, k, "keys must be scalars, got a %s", type_name(kn->type));
        size_t i = 0;
        while (i < sec->nkeys && !(strlen(sec->keys[i].name) == kn->n &&
                                   memcmp(sec->keys[i].name, kn->u.str, kn->n) == 0))
            i++;
        size_t mark = path_key(ld, kn->u.str, kn->n);
        if (i == sec->nkeys) {
            char known[TG_ERR_LEN];
            join_keys(sec, known, sizeof(known));
            return fail(ld, k, "unknown key (known keys: %s)", known);
        }
        if (seen[i] != NONE)
            return fail(ld, k, "duplicate key (first at line %u)", N(ld, key_at[i])->line + 1);
        seen[i] = N(ld, map)->u.kids[p + 1];
        key_at[i] = k;
        path_pop(ld, mark);
    }
    for (size_t i = 0; i < sec->nkeys; i++) {
        const struct directive *d = &sec->keys[i];
        uint32_t v = seen[i];
        size_t mark = path_key(ld, d->name, strlen(d->name));
        if (v != NONE && N(ld, v)->type != d->node && d->node != N_SCALAR && is_null(N(ld, v)))
            v = NONE; /* `key:` with nothing after it: as if not written */
        if (v == NONE && d->required) return fail(ld, map, "required key is missing");
        if (v != NONE && N(ld, v)->type != d->node)
            return fail(ld, v, "expected a %s, got a %s", type_name(d->node),
                        type_name(N(ld, v)->type));
        if ((v == NONE ? apply_default(ld, d, base) : d->set(ld, d, v, base)) < 0) return -1;
        path_pop(ld, mark);
    }
    return sec->check ? sec->check(ld, sec, map, seen, base) : 0;
}

/* ---- loading ---- */

static int route_order(const void *a, const void *b)
{
    const struct tg_route *x = a, *y = b;
    if (x->path_len != y->path_len) return x->path_len > y->path_len ? -1 : 1;
    return strcmp(x->path, y->path);
}

static struct tg_config *load(const char *name, const char *text, size_t len, const char *path,
                              char err[TG_ERR_LEN])
{
    struct loader ld = {.name = name, .err = err};
    struct tg_config *cfg = calloc(1, sizeof(*cfg));
    err[0] = '\0';
    if (!cfg || !(cfg->tenant_index = calloc(1, sizeof(*cfg->tenant_index)))) {
        free(cfg);
        snprintf(err, TG_ERR_LEN, "%s:1:1: (root): out of memory", name);
        return NULL;
    }
    cfg->refs = 1;
    ld.cfg = cfg;
    if (compose(&ld, text, len) < 0) goto error;
    path_pop(&ld, 0);
    uint32_t root = ld.doc.root;
    if (root == NONE || is_null(N(&ld, root))) {
        fail_at(&ld, 1, 1, "empty configuration");
        goto error;
    }
    if (!(cfg->path = ld_strdup(&ld, path, strlen(path))) ||
        apply_section(&ld, &root_section, root, cfg) < 0)
        goto error;
    if (cfg->nroutes > 1) qsort(cfg->routes, cfg->nroutes, sizeof(*cfg->routes), route_order);
    goto out;
error:
    tg_config_unref(cfg);
    cfg = NULL;
out:
    doc_free(&ld.doc);
    strset_deinit(&ld.upstream_names);
    strset_deinit(&ld.route_paths);
    if (ld.buf) OPENSSL_cleanse(ld.buf, ld.buf_cap); /* may have held an expanded key */
    free(ld.buf);
    return cfg;
}

struct tg_config *tg_config_load_string(const char *name, const char *text, size_t len,
                                        char err[TG_ERR_LEN])
{
    return load(name, text, len, "", err);
}

struct tg_config *tg_config_load(const char *path, char err[TG_ERR_LEN])
{
    struct tg_config *cfg = NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f) goto fail_errno;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_FILE_BYTES) {
                errno = EFBIG;
                goto fail_errno;
            }
            if (!tg_grow(&text, &cap, len + 1, 1, 64 * 1024)) {
                errno = ENOMEM;
                goto fail_errno;
            }
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    if (ferror(f)) goto fail_errno;
    cfg = load(path, text, len, path, err);
    goto out;
fail_errno:
    snprintf(err, TG_ERR_LEN, "%s:1:1: (root): cannot read: %s", path, strerror(errno));
out:
    if (f) fclose(f);
    if (text) OPENSSL_cleanse(text, len);
    free(text);
    return cfg;
}

struct tg_config *tg_config_ref(struct tg_config *cfg)
{
    if (cfg) __atomic_add_fetch(&cfg->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void tg_config_unref(struct tg_config *cfg)
{
    if (!cfg || __atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(cfg->keys);
    if (cfg->tenant_index) strset_deinit(cfg->tenant_index);
    free(cfg->tenant_index);
    arena_free(cfg->arena);
    free(cfg);
}

const struct tg_route *tg_config_route(const struct tg_config *cfg, const char *path, size_t len)
{
    const char *q = memchr(path, '?', len);
    if (q) len = (size_t)(q - path);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct tg_route *r = &cfg->routes[i];
        if (r->path_len > len || memcmp(r->path, path, r->path_len) != 0) continue;
        if (r->path_len == len || path[r->path_len] == '/' || r->path[r->path_len - 1] == '/')
            return r;
    }
    return NULL;
}

const struct tg_tenant *tg_config_tenant(const struct tg_config *cfg, const char *name)
{
    const struct strset_slot *e = strset_find(cfg->tenant_index, name, strlen(name));
    return e ? &cfg->tenants[e->val] : NULL;
}

/* ---- reload: which settings differ that only a restart applies ---- */

static bool differs(const struct directive *d, const void *a, const void *b)
{
    switch (d->store) {
    case ST_INT:
    case ST_ENUM:
        return *FIELD(a, d, const int) != *FIELD(b, d, const int);
    case ST_I64:
        return *FIELD(a, d, const int64_t) != *FIELD(b, d, const int64_t);
    case ST_DBL:
        return *FIELD(a, d, const double) != *FIELD(b, d, const double);
    case ST_BOOL:
        return *FIELD(a, d, const bool) != *FIELD(b, d, const bool);
    case ST_STR:
        return strcmp(*FIELD(a, d, char *const), *FIELD(b, d, char *const)) != 0;
    case ST_LISTEN: {
        const struct tg_listen *x = FIELD(a, d, const struct tg_listen);
        const struct tg_listen *y = FIELD(b, d, const struct tg_listen);
        return strcmp(x->text, y->text) != 0 || x->addrlen != y->addrlen ||
               memcmp(&x->addr, &y->addr, x->addrlen) != 0;
    }
    case ST_KV: {
        const struct tg_kv *x = *FIELD(a, d, struct tg_kv *const);
        const struct tg_kv *y = *FIELD(b, d, struct tg_kv *const);
        size_t n = *(const size_t *)(const void *)((const char *)a + d->off_n);
        if (n != *(const size_t *)(const void *)((const char *)b + d->off_n)) return true;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(x[i].key, y[i].key) != 0 || strcmp(x[i].value, y[i].value) != 0) return true;
        }
        return false;
    }
    case ST_SECTION:
    case ST_NONE:
        break;
    }
    return false;
}

static int diff_section(const struct section *sec, const void *a, const void *b, const char *prefix,
                        char what[TG_ERR_LEN])
{
    for (size_t i = 0; i < sec->nkeys; i++) {
        const struct directive *d = &sec->keys[i];
        char path[TG_ERR_LEN];
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", d->name);
        if (d->store == ST_SECTION) {
            if (diff_section(d->sub, a, b, path, what)) return 1;
        } else if (!d->reload_safe && differs(d, a, b)) {
            snprintf(what, TG_ERR_LEN, "%s", path);
            return 1;
        }
    }
    return 0;
}

int tg_config_restart_needed(const struct tg_config *old, const struct tg_config *cur,
                             char what[TG_ERR_LEN])
{
    what[0] = '\0';
    return diff_section(&root_section, old, cur, "", what);
}

/* ---- tollgate --check ---- */

static void print_rate(FILE *out, double v)
{
    fprintf(out, "%.15g", v);
}

void tg_config_print(const struct tg_config *cfg, FILE *out)
{
    fprintf(out, "config: %s\n", cfg->path[0] ? cfg->path : "(embedded default)");
    fprintf(out, "listen: %s, %d worker%s\n", cfg->server.listen.text, cfg->server.workers,
            cfg->server.workers == 1 ? "" : "s");
    fprintf(out,
            "server: max body %lld bytes, header timeout %d ms, idle timeout %d ms, drain "
            "timeout %d ms, at most %d idle connections per worker\n",
            (long long)cfg->server.max_body_bytes, cfg->server.header_timeout_ms,
            cfg->server.idle_timeout_ms, cfg->server.drain_timeout_ms,
            cfg->server.max_idle_connections);
    fprintf(out, "admin: listen %s, token %s\n", cfg->admin.listen.text,
            cfg->admin.token[0] ? "set" : "none");
    fprintf(out, "log: level %s, access log %s\n", level_names[cfg->log.level],
            cfg->log.access_path[0] ? cfg->log.access_path : "stderr");
    if (cfg->limiter.backend == TG_LIMITER_REDIS)
        fprintf(out,
                "limiter: redis %s:%d db %d, key prefix \"%s\", timeout %d ms, password %s, "
                "on redis error %s, expected gateways %d\n",
                cfg->limiter.redis.host, cfg->limiter.redis.port, cfg->limiter.redis.db,
                cfg->limiter.redis.key_prefix, cfg->limiter.redis.timeout_ms,
                cfg->limiter.redis.password[0] ? "set" : "none",
                on_error_names[cfg->limiter.on_redis_error], cfg->limiter.expected_gateways);
    if (cfg->limiter.backend == TG_LIMITER_REDIS)
        fprintf(out, "limiter: leases %s, ttl %d ms, sync every %d ms, from %g requests/s\n",
                lease_mode_names[cfg->limiter.lease.mode], cfg->limiter.lease.ttl_ms,
                cfg->limiter.lease.sync_interval_ms, cfg->limiter.lease.min_rate);
    else
        fprintf(out, "limiter: local\n");
    fprintf(out, "costs: %d chars per token, default max tokens %d\n", cfg->costs.chars_per_token,
            cfg->costs.default_max_tokens);
    if (cfg->usage.sink == TG_SINK_FILE) {
        fprintf(out, "usage sink: file %s\n", cfg->usage.file.path);
    } else if (cfg->usage.sink == TG_SINK_KAFKA) {
        const typeof(cfg->usage.kafka) *k = &cfg->usage.kafka;
        fprintf(out, "usage sink: kafka %s topic %s, spool %s (fsync %s", k->brokers, k->topic,
                k->spool_dir, fsync_names[k->spool_fsync]);
        if (k->spool_fsync == TG_SPOOL_FSYNC_INTERVAL)
            fprintf(out, " every %d ms", k->spool_fsync_interval_ms);
        fprintf(out, ", max %lld bytes, when full %s)", (long long)k->spool_max_bytes,
                full_names[k->spool_full]);
        for (size_t i = 0; i < k->nproperties; i++)
            fprintf(out, "%s%s", i ? ", " : ", properties: ", k->properties[i].key);
        fputc('\n', out);
    } else {
        fprintf(out, "usage sink: none\n");
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct tg_upstream *u = &cfg->upstreams[i];
        fprintf(out,
                "upstream %s: %s (Host: %s), connect timeout %d ms, response timeout %d ms, "
                "%d connections per worker",
                u->name, u->url, u->host_header, u->connect_timeout_ms, u->response_timeout_ms,
                u->max_connections);
        if (u->tls) fprintf(out, ", tls verify %s", u->tls_verify ? "on" : "off");
        for (size_t j = 0; j < u->nheaders; j++)
            fprintf(out, "%s%s", j ? ", " : ", sets headers: ", u->headers[j].key);
        fputc('\n', out);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct tg_route *r = &cfg->routes[i];
        fprintf(out, "route %s -> %s, cost %s", r->path,
                r->upstream ? r->upstream->name : "(by model only)", cost_names[r->cost]);
        if (r->cost == TG_COST_TOKENS)
            fprintf(out, ", default max tokens %d", r->default_max_tokens);
        if (r->max_wait_ms > 0) fprintf(out, ", waits up to %d ms", r->max_wait_ms);
        fputc('\n', out);
        for (size_t k = 0; k < r->nmodels; k++)
            fprintf(out, "  model %s -> %s\n", r->models[k].pattern, r->models[k].upstream->name);
        for (size_t k = 0; k < r->naliases; k++)
            fprintf(out, "  alias %s = %s\n", r->aliases[k].key, r->aliases[k].value);
    }
    size_t *nkeys = calloc(cfg->ntenants + 1, sizeof(*nkeys));
    size_t *nplain = calloc(cfg->ntenants + 1, sizeof(*nplain));
    for (size_t i = 0; nkeys && nplain && i < cfg->keys_cap; i++) {
        const struct tg_key *k = &cfg->keys[i];
        if (!k->tenant) continue;
        nkeys[k->tenant->index]++;
        if (k->was_plain) nplain[k->tenant->index]++;
    }
    for (size_t i = 0; i < cfg->ntenants; i++) {
        const struct tg_tenant *t = &cfg->tenants[i];
        size_t n = nkeys ? nkeys[i] : 0;
        fprintf(out, "tenant %s: %zu key%s, %zu limit%s\n", t->name, n, n == 1 ? "" : "s",
                t->nlimits, t->nlimits == 1 ? "" : "s");
        for (size_t j = 0; j < t->nlimits; j++) {
            const struct tg_limit *l = &t->limits[j];
            fprintf(out, "  limit %s: ", l->name);
            print_rate(out, l->rate);
            fprintf(out, " %s per %s, burst ", tg_unit_name(l->unit), per_name(l->per_ms));
            print_rate(out, l->burst);
            for (size_t m = 0; m < l->nmodels; m++)
                fprintf(out, "%s%s", m ? ", " : ", models ", l->models[m]);
            fputc('\n', out);
        }
    }
    for (size_t i = 0; nplain && i < cfg->ntenants; i++) {
        for (size_t j = 0; j < nplain[i]; j++)
            fprintf(out,
                    "warning: tenant %s has a plain-text key; use sha256:<hex> (tollgate "
                    "--hash-key)\n",
                    cfg->tenants[i].name);
    }
    free(nkeys);
    free(nplain);
}
