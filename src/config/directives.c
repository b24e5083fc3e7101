/* The directive tables' setters: ${VAR}, numbers, choices, names, lists, maps, addresses. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include "tollgate/buf.h"
#include "tollgate/auth.h"
#include "loader.h"

/* ---- scalars ---- */

static int buf_put(struct loader *ld, size_t *o, const char *s, size_t n)
{
    if (!tg_grow(&ld->buf, &ld->buf_cap, *o + n + 1, 1, 256))
        return fail_at(ld, 1, 1, "out of memory");
    memcpy(ld->buf + *o, s, n);
    *o += n;
    ld->buf[*o] = '\0';
    return 0;
}

/* The text of scalar `id` with ${VAR} expanded from the environment and $$ turned into $.
 * The result is valid until the next call; NULL with the error filled. */
static const char *expand(struct loader *ld, uint32_t id, size_t *len)
{
    const struct node *nd = N(ld, id);
    const char *s = nd->u.str;
    size_t n = nd->n, o = 0;
    if (memchr(s, '\0', n)) return fail(ld, id, "contains a NUL character"), NULL;
    if (!memchr(s, '$', n)) {
        *len = n;
        return s;
    }
    if (buf_put(ld, &o, "", 0) < 0) return NULL;
    for (size_t i = 0; i < n;) {
        if (s[i] != '$' || i + 1 == n || (s[i + 1] != '$' && s[i + 1] != '{')) {
            if (buf_put(ld, &o, s + i, 1) < 0) return NULL;
            i++;
            continue;
        }
        if (s[i + 1] == '$') {
            if (buf_put(ld, &o, "$", 1) < 0) return NULL;
            i += 2;
            continue;
        }
        const char *name = s + i + 2;
        const char *close = memchr(name, '}', n - i - 2);
        if (!close) return fail(ld, id, "unterminated ${ (write $$ for a literal $)"), NULL;
        size_t nlen = (size_t)(close - name);
        bool ok = nlen > 0 && nlen < 128 && !isdigit((unsigned char)name[0]);
        for (size_t j = 0; ok && j < nlen; j++)
            ok = isalnum((unsigned char)name[j]) || name[j] == '_';
        if (!ok) return fail(ld, id, "bad environment variable name in ${...}"), NULL;
        char var[128];
        memcpy(var, name, nlen);
        var[nlen] = '\0';
        const char *val = getenv(var);
        if (!val) return fail(ld, id, "environment variable %s is not set", var), NULL;
        if (buf_put(ld, &o, val, strlen(val)) < 0) return NULL;
        i = (size_t)(close - s) + 1;
    }
    *len = o;
    return ld->buf;
}

int choice_index(const char *const *choices, const char *s)
{
    for (int i = 0; choices[i]; i++) {
        if (strcmp(choices[i], s) == 0) return i;
    }
    return -1;
}

static void join_choices(const char *const *choices, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; choices[i] && o < cap; i++) {
        int n = snprintf(out + o, cap - o, "%s%s", i ? ", " : "", choices[i]);
        if (n > 0) o += (size_t)n;
    }
}

static int set_int64(struct loader *ld, const struct directive *d, uint32_t id, int64_t *out)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    char *end = NULL;
    errno = 0;
    long long v = n && !isspace((unsigned char)s[0]) ? strtoll(s, &end, 10) : 0;
    if (end != s + n || errno == ERANGE || v < d->min || v > d->max)
        return fail_got(ld, id, s, n, "must be an integer from %lld to %lld", (long long)d->min,
                        (long long)d->max);
    *out = v;
    return 0;
}

int set_int(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    int64_t v;
    if (set_int64(ld, d, id, &v) < 0) return -1;
    *FIELD(base, d, int) = (int)v;
    return 0;
}

int set_i64(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return set_int64(ld, d, id, FIELD(base, d, int64_t));
}

int set_num(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    char *end = NULL;
    double v = n && strspn(s, "0123456789+-.eE") == n ? strtod(s, &end) : NAN;
    bool ok = end == s + n && isfinite(v) && v <= (double)d->max &&
              (d->min_excl ? v > (double)d->min : v >= (double)d->min);
    if (!ok && d->min_excl)
        return fail_got(ld, id, s, n, "must be a number greater than %lld and at most %lld",
                        (long long)d->min, (long long)d->max);
    if (!ok)
        return fail_got(ld, id, s, n, "must be a number from %lld to %lld", (long long)d->min,
                        (long long)d->max);
    *FIELD(base, d, double) = v;
    return 0;
}

int set_bool(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0)
        *FIELD(base, d, bool) = true;
    else if (strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0)
        *FIELD(base, d, bool) = false;
    else
        return fail_got(ld, id, s, n, "must be true or false");
    return 0;
}

/* The index of scalar `id` among `choices`, or -1 with the error filled. */
static int parse_choice(struct loader *ld, uint32_t id, const char *const *choices)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    int v = choice_index(choices, s);
    if (v < 0) {
        char list[TG_ERR_LEN];
        join_choices(choices, list, sizeof(list));
        return fail(ld, id, "must be one of %s", list);
    }
    return v;
}

int set_enum(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    int v = parse_choice(ld, id, d->choices);
    if (v < 0) return -1;
    *FIELD(base, d, int) = v;
    return 0;
}

int set_str(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n = 0;
    const char *s = is_null(N(ld, id)) ? "" : expand(ld, id, &n);
    if (!s) return -1;
    char *p = ld_strdup(ld, s, n);
    if (!p) return -1;
    *FIELD(base, d, char *) = p;
    return 0;
}

static bool is_name_char(char c)
{
    return isalnum((unsigned char)c) || strchr("-_.:@", c) != NULL;
}

/* Names of upstreams, tenants and limits: they end up in Redis keys, headers and records. */
int set_name(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    if (set_str(ld, d, id, base) < 0) return -1;
    const char *s = *FIELD(base, d, char *);
    if (!*s) return fail(ld, id, "must not be empty");
    for (const char *p = s; *p; p++) {
        if (!is_name_char(*p)) return fail(ld, id, "may contain only letters, digits and -_.:@");
    }
    return 0;
}

int set_path(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    if (set_str(ld, d, id, base) < 0) return -1;
    const char *s = *FIELD(base, d, char *);
    if (s[0] != '/') return fail(ld, id, "must start with '/'");
    for (const char *p = s; *p; p++) {
        if (!isgraph((unsigned char)*p) || *p == '?' || *p == '#')
            return fail(ld, id, "may not contain '?', '#', spaces or control characters");
    }
    return 0;
}

int set_section(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return apply_section(ld, d->sub, id, base);
}

/* A sequence of mappings, each filled by the directive's sub-section. */
int set_list(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    const struct node *nd = N(ld, id);
    size_t n = nd->n;
    if (d->max && n > (size_t)d->max)
        return fail(ld, id, "at most %lld entries are allowed, got %zu", (long long)d->max, n);
    char *items = n ? ld_alloc(ld, n * d->item_size) : NULL;
    if (n && !items) return -1;
    *FIELD(base, d, void *) = items;
    *(size_t *)(void *)((char *)base + d->off_n) = n;
    void *saved_items = ld->items;
    size_t saved_item = ld->item;
    ld->items = items;
    for (size_t i = 0; i < n; i++) {
        uint32_t kid = nd->u.kids[i];
        size_t mark = path_index(ld, i);
        if (N(ld, kid)->type != N_MAP)
            return fail(ld, kid, "expected a mapping, got a %s", type_name(N(ld, kid)->type));
        ld->item = i;
        if (apply_section(ld, d->sub, kid, items + i * d->item_size) < 0) return -1;
        path_pop(ld, mark);
    }
    ld->items = saved_items;
    ld->item = saved_item;
    return 0;
}

/* A sequence of non-empty strings (limit models). */
int set_strlist(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    const struct node *nd = N(ld, id);
    char **list = nd->n ? ld_alloc(ld, nd->n * sizeof(*list)) : NULL;
    if (nd->n && !list) return -1;
    for (size_t i = 0; i < nd->n; i++) {
        uint32_t kid = nd->u.kids[i];
        size_t mark = path_index(ld, i), n;
        if (N(ld, kid)->type != N_SCALAR)
            return fail(ld, kid, "expected a scalar, got a %s", type_name(N(ld, kid)->type));
        const char *s = expand(ld, kid, &n);
        if (!s) return -1;
        if (n == 0) return fail(ld, kid, "must not be empty");
        if (!(list[i] = ld_strdup(ld, s, n))) return -1;
        path_pop(ld, mark);
    }
    *FIELD(base, d, char **) = list;
    *(size_t *)(void *)((char *)base + d->off_n) = nd->n;
    return 0;
}

static bool is_tchar(char c)
{
    return isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Headers tollgate writes itself: a configured value would corrupt the forwarded request. */
static const char *const managed_headers[] = {"host", "content-length", "transfer-encoding",
                                              "connection", NULL};

/* A mapping of strings to strings; `http`: header names and values. */
static int kv_map(struct loader *ld, const struct directive *d, uint32_t id, void *base, bool http)
{
    const struct node *nd = N(ld, id);
    size_t npairs = nd->n / 2;
    struct tg_strset seen = {0};
    int rc = -1;
    struct tg_kv *kv = npairs ? ld_alloc(ld, npairs * sizeof(*kv)) : NULL;
    if (npairs && !kv) goto out;
    for (size_t i = 0; i < npairs; i++) {
        uint32_t k = nd->u.kids[2 * i], v = nd->u.kids[2 * i + 1];
        size_t kn, vn;
        const char *s;
        if (N(ld, k)->type != N_SCALAR) {
            fail(ld, k, "keys must be scalars, got a %s", type_name(N(ld, k)->type));
            goto out;
        }
        size_t mark = path_key(ld, N(ld, k)->u.str, N(ld, k)->n);
        if (!(s = expand(ld, k, &kn)) || !(kv[i].key = ld_strdup(ld, s, kn))) goto out;
        bool added;
        if (!strset_add(&seen, kv[i].key, kn, 0, &added)) {
            fail_at(ld, 1, 1, "out of memory");
            goto out;
        }
        if (!added) {
            fail(ld, k, "duplicate key");
            goto out;
        }
        if (N(ld, v)->type != N_SCALAR) {
            fail(ld, v, "expected a scalar, got a %s", type_name(N(ld, v)->type));
            goto out;
        }
        vn = 0;
        if (!(s = is_null(N(ld, v)) ? "" : expand(ld, v, &vn))) goto out;
        if (!(kv[i].value = ld_strdup(ld, s, vn))) goto out;
        if (http) {
            bool ok = kn > 0;
            for (size_t j = 0; ok && j < kn; j++)
                ok = is_tchar(kv[i].key[j]);
            if (!ok) {
                fail(ld, k, "not a valid header name");
                goto out;
            }
            for (size_t j = 0; managed_headers[j]; j++) {
                if (strcasecmp(kv[i].key, managed_headers[j]) == 0) {
                    fail(ld, k, "%s is set by tollgate itself", managed_headers[j]);
                    goto out;
                }
            }
            if (strcspn(kv[i].value, "\r\n") != vn) {
                fail(ld, v, "header values may not contain line breaks");
                goto out;
            }
        }
        path_pop(ld, mark);
    }
    *FIELD(base, d, struct tg_kv *) = kv;
    *(size_t *)(void *)((char *)base + d->off_n) = npairs;
    rc = 0;
out:
    strset_deinit(&seen);
    return rc;
}

int set_headers(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return kv_map(ld, d, id, base, true);
}

int set_props(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return kv_map(ld, d, id, base, false);
}

/* Strict port: digits only, `min`..65535. */
static int parse_port(const char *s, size_t n, int min)
{
    if (n == 0 || n > 5 || strspn(s, "0123456789") < n) return -1;
    int port = 0;
    for (size_t i = 0; i < n; i++)
        port = port * 10 + (s[i] - '0');
    return port >= min && port <= 65535 ? port : -1;
}

/* Resolves host:port once; numeric addresses first, names through getaddrinfo, IPv4 preferred. */
int resolve(struct loader *ld, uint32_t id, const char *host, int port, struct sockaddr_storage *ss,
            socklen_t *len)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc == EAI_NONAME) {
        hints.ai_flags = AI_NUMERICSERV;
        rc = getaddrinfo(host, service, &hints, &res);
    }
    if (rc != 0) return fail(ld, id, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *len = pick->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Splits "host:port", "[v6]:port" (with_port) or "host", "[v6]", "host:port" (optional port).
 * Returns the port (`def_port` when absent) or -1; host goes to `host`. */
int split_host_port(const char *s, size_t n, bool need_port, int def_port, int min_port, char *host,
                    size_t host_cap)
{
    const char *h = s, *port = NULL, *end = s + n;
    size_t hn;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) return -1;
        h = s + 1;
        hn = (size_t)(close - h);
        if (close + 1 < end) {
            if (close[1] != ':') return -1;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        hn = colon ? (size_t)(colon - s) : n;
        if (colon) port = colon + 1;
    }
    if (hn == 0 || hn >= host_cap || (need_port && !port)) return -1;
    for (size_t i = 0; i < hn; i++) {
        if (!isgraph((unsigned char)h[i]) || strchr("[]/@?#", h[i])) return -1;
    }
    memcpy(host, h, hn);
    host[hn] = '\0';
    return port ? parse_port(port, (size_t)(end - port), min_port) : def_port;
}

int listen_init(struct loader *ld, uint32_t id, const char *s, size_t n, struct tg_listen *out)
{
    char host[256];
    int port = split_host_port(s, n, true, 0, 0, host, sizeof(host));
    if (port < 0) return fail_got(ld, id, s, n, "must be host:port or [ipv6-address]:port");
    if (resolve(ld, id, host, port, &out->addr, &out->addrlen) < 0) return -1;
    return (out->text = ld_strdup(ld, s, n)) ? 0 : -1;
}

int set_listen(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    return s ? listen_init(ld, id, s, n, FIELD(base, d, struct tg_listen)) : -1;
}

static const char *const per_names[] = {"second", "minute", "hour", "day", NULL};
static const int64_t per_ms[] = {1000, 60000, 3600000, 86400000};

int set_per(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    int v = parse_choice(ld, id, per_names);
    if (v < 0) return -1;
    *FIELD(base, d, int64_t) = per_ms[v];
    return 0;
}

const char *per_name(int64_t ms)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(per_ms); i++) {
        if (per_ms[i] == ms) return per_names[i];
    }
    return "?";
}

/* `upstream:` of a route: upstreams are loaded first (root table order). */
int set_route_upstream(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    const struct strset_slot *e = strset_find(&ld->upstream_names, s, n);
    if (!e) return fail_got(ld, id, s, n, "no upstream has this name");
    *FIELD(base, d, struct tg_upstream *) = &ld->cfg->upstreams[e->val];
    return 0;
}

/* `name:` of a tenant, registered at once: before its keys, whose errors name tenants. */
int set_tenant_name(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    struct tg_tenant *t = base;
    if (set_name(ld, d, id, base) < 0) return -1;
    if (strlen(t->name) > TG_TENANT_NAME_MAX)
        return fail(ld, id, "must be at most %d characters (it is in keys, records and ledgers)",
                    TG_TENANT_NAME_MAX);
    t->index = ld->item;
    bool added;
    const struct strset_slot *e =
        strset_add(ld->cfg->tenant_index, t->name, strlen(t->name), (uint32_t)ld->item, &added);
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    if (!added) return fail(ld, id, "tenant %s is already defined at tenants[%u]", t->name, e->val);
    return 0;
}

/* `keys:` of a tenant (the directive's base is the tenant). Plain keys are hashed here;
 * only digests are kept, and errors never show a key. */
int set_keys(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    struct tg_tenant *t = base;
    const struct node *nd = N(ld, id);
    for (size_t i = 0; i < nd->n; i++) {
        uint32_t kid = nd->u.kids[i];
        size_t mark = path_index(ld, i), n;
        enum tg_priority prio = TG_PRIO_INTERACTIVE;
        if (N(ld, kid)->type == N_MAP) { /* { key: ..., priority: background } */
            uint32_t keynode = NONE;
            const struct node *m = N(ld, kid);
            for (size_t j = 0; j + 1 < m->n; j += 2) {
                const struct node *k = N(ld, m->u.kids[j]);
                uint32_t v = m->u.kids[j + 1];
                size_t kmark = path_key(ld, k->u.str, k->n);
                if (k->type != N_SCALAR) return fail(ld, m->u.kids[j], "expected a key name");
                if (strcmp(k->u.str, "key") == 0) {
                    if (N(ld, v)->type != N_SCALAR) return fail(ld, v, "expected a scalar");
                    keynode = v;
                } else if (strcmp(k->u.str, "priority") == 0) {
                    if (N(ld, v)->type != N_SCALAR) return fail(ld, v, "expected a scalar");
                    int p = parse_choice(ld, v, priority_names);
                    if (p < 0) return -1;
                    prio = (enum tg_priority)p;
                } else {
                    return fail(ld, m->u.kids[j], "unknown key (known keys: key, priority)");
                }
                path_pop(ld, kmark);
            }
            if (keynode == NONE) return fail(ld, kid, "key: is required");
            kid = keynode;
        }
        if (N(ld, kid)->type != N_SCALAR)
            return fail(ld, kid, "expected a scalar or { key, priority }, got a %s",
                        type_name(N(ld, kid)->type));
        const char *s = expand(ld, kid, &n);
        if (!s) return -1;
        uint8_t digest[32];
        bool plain = strncmp(s, "sha256:", 7) != 0;
        if (n == 0) return fail(ld, kid, "must not be empty");
        if (!plain && tg_auth_parse(s, digest) < 0)
            return fail(ld, kid, "must be sha256: followed by 64 hex digits");
        for (size_t j = 0; plain && j < n; j++) {
            if (!isgraph((unsigned char)s[j]))
                return fail(ld, kid, "keys may not contain spaces or control characters");
        }
        if (plain) tg_auth_hash(s, n, digest);
        int rc = tg_auth_insert(ld->cfg, digest, t, plain, prio);
        if (rc == -2) return fail_at(ld, 1, 1, "out of memory");
        if (rc < 0) {
            const struct tg_tenant *other = tg_auth_find(ld->cfg, digest)->tenant;
            if (other == t)
                return fail(ld, kid, "the same key is listed twice for tenant %s", t->name);
            return fail(ld, kid, "the same key is also given to tenant %s", other->name);
        }
        path_pop(ld, mark);
    }
    return 0;
}

/* A price: a plain decimal with at most 12 decimals, stored exactly as 1e-12 credits per unit
 * (floats never carry money). */
int set_price(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    int64_t whole = 0, frac = 0;
    size_t i = 0, digits = 0, decimals = 0;
    bool ok = n > 0;
    for (; ok && i < n && s[i] != '.'; i++, digits++) {
        ok = isdigit((unsigned char)s[i]) && whole <= (int64_t)d->max;
        whole = whole * 10 + (s[i] - '0');
    }
    if (ok && i < n) {
        for (i++; ok && i < n; i++, decimals++) {
            ok = isdigit((unsigned char)s[i]) && decimals < 12;
            frac = frac * 10 + (s[i] - '0');
        }
        ok = ok && decimals > 0;
    }
    ok = ok && digits > 0 && whole <= (int64_t)d->max && (whole < (int64_t)d->max || frac == 0);
    if (!ok)
        return fail_got(ld, id, s, n,
                        "must be a decimal number of credits per unit from 0 to %lld with at "
                        "most 12 decimals (e.g. 0.000002)",
                        (long long)d->max);
    for (; decimals < 12; decimals++)
        frac *= 10;
    *FIELD(base, d, int64_t) = whole * 1000000000000LL + frac;
    return 0;
}

/* `models:` of a route: a mapping of model patterns to upstream names, each resolved here
 * (upstreams come before routes), in the file's order. */
int set_route_models(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    struct tg_route *r = base;
    const struct node *m = N(ld, id);
    size_t n = m->n / 2;
    r->models = n ? ld_alloc(ld, n * sizeof(*r->models)) : NULL;
    if (n && !r->models) return -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t k = m->u.kids[2 * i], v = m->u.kids[2 * i + 1];
        if (N(ld, k)->type != N_SCALAR || N(ld, k)->n == 0)
            return fail(ld, k, "a model pattern must be a non-empty scalar");
        size_t mark = path_key(ld, N(ld, k)->u.str, N(ld, k)->n);
        if (N(ld, v)->type != N_SCALAR) return fail(ld, v, "expected an upstream's name");
        size_t vn;
        const char *s = expand(ld, v, &vn);
        if (!s) return -1;
        const struct strset_slot *e = strset_find(&ld->upstream_names, s, vn);
        if (!e) return fail_got(ld, v, s, vn, "no upstream has this name");
        r->models[i].upstream = &ld->cfg->upstreams[e->val];
        if (!(r->models[i].pattern = ld_strdup(ld, N(ld, k)->u.str, N(ld, k)->n))) return -1;
        path_pop(ld, mark);
    }
    r->nmodels = n;
    (void)d;
    return 0;
}
