/* The credits API of the admin listener: a tenant's balance, operators' top-ups and
 * adjustments (once per Idempotency-Key), the ledger paged by seq — over the local store
 * or, with the Redis limiter, a connection of its own on the main loop. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include "tollgate/admin.h"
#include "tollgate/auth.h"
#include "tollgate/jsonw.h"
#include "tollgate/ledger.h"
#include "tollgate/log.h"
#include "tollgate/redis.h"

extern const char tg_lua_change[];
extern const char tg_lua_balance[];

enum { SC_CHANGE, SC_BALANCE, SC_COUNT };
static const char *const script_text[SC_COUNT] = {tg_lua_change, tg_lua_balance};

#define JSON_TYPE "application/json"
#define PAGE_DEFAULT 100
#define PAGE_MAX 1000
#define IDEM_KEEP_MS (7LL * 24 * 3600 * 1000) /* a key is remembered a week */
#define ADMIN_REDIS_TIMEOUT_MS 2000
#define EVENT_FIELDS 9

struct tg_credit_api {
    struct tg_config *cfg; /* a reference, replaced on reload */
    struct tg_redis *redis; /* NULL: the local store */
    char *prefix;
};

enum op_kind { OP_GET, OP_CHANGE, OP_LEDGER };

/* A request waiting for Redis. Its HTTP request is gone when the client hung up first. */
struct pending {
    struct tg_credit_api *api;
    struct evhttp_request *req; /* NULL once the connection closed */
    struct evhttp_connection *evcon;
    enum op_kind kind;
    struct tg_resp cmd;
    char tenant[256];
    int64_t after;
    size_t limit;
};

/* ---- replies ---- */

static void reply(struct evhttp_request *req, int code, struct evbuffer *body)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", JSON_TYPE);
    evhttp_add_header(out, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, NULL, body);
}

static void reply_error(struct evhttp_request *req, int code, const char *type, const char *code_s,
                        const char *msg)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    char esc[TG_JSONW_STR_MAX(512)];
    size_t n = strnlen(msg, 512);
    char *e = tg_jsonw_str(esc, msg, n);
    evbuffer_add_printf(b, "{\"error\":{\"message\":%.*s,\"type\":\"%s\",\"code\":\"%s\"}}\n",
                        (int)(e - esc), esc, type, code_s);
    reply(req, code, b);
    evbuffer_free(b);
}

static void add_amount(struct evbuffer *b, int64_t micro)
{
    char a[TG_AMOUNT_LEN];
    size_t n = tg_ledger_format_amount(micro, a);
    evbuffer_add(b, "\"", 1);
    evbuffer_add(b, a, n);
    evbuffer_add(b, "\"", 1);
}

static void add_event(struct evbuffer *b, const struct tg_ledger_event *e)
{
    char line[TG_LEDGER_EVENT_MAX];
    size_t n = tg_ledger_event_json(e, line, sizeof(line));
    evbuffer_add(b, line, n);
}

static void add_tenant(struct evbuffer *b, const char *tenant)
{
    char esc[TG_JSONW_STR_MAX(256)];
    char *e = tg_jsonw_str(esc, tenant, strnlen(tenant, 256));
    evbuffer_add(b, esc, (size_t)(e - esc));
}

static void reply_balance(struct evhttp_request *req, const char *tenant, int64_t bal,
                          int64_t held, int64_t seq)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_printf(b, "{\"tenant\":");
    add_tenant(b, tenant);
    evbuffer_add_printf(b, ",\"balance\":");
    add_amount(b, bal);
    evbuffer_add_printf(b, ",\"held\":");
    add_amount(b, held);
    evbuffer_add_printf(b, ",\"seq\":%lld}\n", (long long)seq);
    reply(req, 200, b);
    evbuffer_free(b);
}

/* The answer to a change: the event it made (the first one for a repeat), so that a
 * repeat gets the same body as the first answer. */
static void reply_change(struct evhttp_request *req, const struct tg_ledger_event *e,
                         bool repeated)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_printf(b, "{\"tenant\":");
    add_tenant(b, e->tenant);
    evbuffer_add_printf(b, ",\"balance\":");
    add_amount(b, e->balance);
    evbuffer_add_printf(b, ",\"held\":");
    add_amount(b, e->held);
    evbuffer_add_printf(b, ",\"event\":");
    add_event(b, e);
    evbuffer_add_printf(b, "}\n");
    if (repeated)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Idempotent-Replayed", "true");
    reply(req, 200, b);
    evbuffer_free(b);
}

/* ---- the request body: {"amount":"100.5","reason":"..."} ---- */

struct change_body {
    char amount[64];
    char reason[TG_NOTE_MAX + 1];
    bool have_amount;
    const char *why;
};

/* Reads a JSON string at *p (past its quote) into out; false on a bad string. */
static bool body_string(const char **p, const char *e, char *out, size_t cap, bool *cut)
{
    size_t n = 0;
    const char *s = *p;
    *cut = false;
    while (s < e && *s != '"') {
        char c = *s++;
        if ((unsigned char)c < 0x20) return false;
        if (c == '\\') {
            if (s >= e) return false;
            char x = *s++;
            switch (x) {
            case '"': case '\\': case '/': c = x; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                if (e - s < 4) return false;
                char hex[5] = {s[0], s[1], s[2], s[3], 0};
                char *end;
                long v = strtol(hex, &end, 16);
                if (*end) return false;
                s += 4;
                c = v < 0x80 ? (char)v : '?';
                break;
            }
            default: return false;
            }
        }
        if (n + 1 < cap)
            out[n++] = c;
        else
            *cut = true;
    }
    if (s >= e) return false;
    out[n] = '\0';
    *p = s + 1;
    return true;
}

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static bool parse_body(const char *s, size_t n, struct change_body *b)
{
    memset(b, 0, sizeof(*b));
    const char *p = skip_ws(s, s + n), *e = s + n;
    b->why = "the body must be a JSON object such as {\"amount\":\"100.5\",\"reason\":\"...\"}";
    if (p >= e || *p++ != '{') return false;
    p = skip_ws(p, e);
    bool first = true;
    while (p < e && *p != '}') {
        if (!first) {
            if (*p++ != ',') return false;
            p = skip_ws(p, e);
        }
        first = false;
        char key[64], val[TG_NOTE_MAX + 64];
        bool cut;
        if (p >= e || *p++ != '"' || !body_string(&p, e, key, sizeof(key), &cut)) return false;
        p = skip_ws(p, e);
        if (p >= e || *p++ != ':') return false;
        p = skip_ws(p, e);
        bool is_amount = strcmp(key, "amount") == 0, is_reason = strcmp(key, "reason") == 0;
        if (p < e && *p == '"') {
            p++;
            if (!body_string(&p, e, val, sizeof(val), &cut)) return false;
            if (is_amount) {
                size_t vn = strlen(val);
                if (cut || vn >= sizeof(b->amount)) {
                    b->why = "amount is too long";
                    return false;
                }
                memcpy(b->amount, val, vn + 1);
                b->have_amount = true;
            } else if (is_reason) {
                if (cut || strlen(val) > TG_NOTE_MAX) {
                    b->why = "reason is longer than 256 bytes";
                    return false;
                }
                memcpy(b->reason, val, strlen(val) + 1);
            }
        } else {
            const char *v = p;
            while (p < e && *p != ',' && *p != '}' && *p != ' ' && *p != '\n')
                p++;
            if (p == v) return false;
            if (is_amount) {
                b->why = "amount must be a decimal string such as \"100.5\", not a JSON number "
                         "(floats do not carry money)";
                return false;
            }
            if (is_reason && !(p - v == 4 && memcmp(v, "null", 4) == 0)) {
                b->why = "reason must be a string";
                return false;
            }
        }
        p = skip_ws(p, e);
    }
    if (p >= e) return false;
    p = skip_ws(p + 1, e);
    if (p != e) return false;
    if (!b->have_amount) {
        b->why = "amount is required, as a decimal string such as \"100.5\"";
        return false;
    }
    return true;
}

static void body_hash(const char *s, size_t n, char out[65])
{
    uint8_t d[32];
    tg_auth_hash(s, n, d);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
}

/* ---- the local store ---- */

struct page {
    struct evbuffer *b;
    size_t n;
    int64_t last;
};

static void page_add(void *arg, const struct tg_ledger_event *e)
{
    struct page *pg = arg;
    if (pg->n++) evbuffer_add(pg->b, ",", 1);
    add_event(pg->b, e);
    pg->last = e->seq;
}

static void reply_page_end(struct evhttp_request *req, struct page *pg, bool more)
{
    if (more)
        evbuffer_add_printf(pg->b, "],\"next\":%lld}\n", (long long)pg->last);
    else
        evbuffer_add_printf(pg->b, "],\"next\":null}\n");
    reply(req, 200, pg->b);
    evbuffer_free(pg->b);
}

static void local_serve(struct evhttp_request *req, enum op_kind kind, const char *tenant,
                        int64_t amount, const char *note, const char *idem, const char *hash,
                        int64_t after, size_t limit)
{
    struct tg_ledger_store *st = tg_ledger_store_default();
    if (!st) {
        reply_error(req, 503, "server_error", "ledger_unavailable", "The ledger is not open.");
        return;
    }
    if (kind == OP_GET) {
        int64_t bal, held, seq;
        tg_ledger_store_get(st, tenant, &bal, &held, &seq);
        reply_balance(req, tenant, bal, held, seq);
        return;
    }
    if (kind == OP_LEDGER) {
        struct page pg = {.b = evbuffer_new()};
        if (!pg.b) {
            evhttp_send_error(req, 500, NULL);
            return;
        }
        evbuffer_add_printf(pg.b, "{\"events\":[");
        size_t n = tg_ledger_store_events(st, tenant, after, limit + 1, page_add, &pg);
        /* one more than a page was read to learn whether there is more: drop it */
        if (n > limit) {
            evbuffer_free(pg.b);
            pg = (struct page){.b = evbuffer_new()};
            if (!pg.b) {
                evhttp_send_error(req, 500, NULL);
                return;
            }
            evbuffer_add_printf(pg.b, "{\"events\":[");
            tg_ledger_store_events(st, tenant, after, limit, page_add, &pg);
        }
        reply_page_end(req, &pg, n > limit);
        return;
    }
    struct tg_ledger_event ev;
    switch (tg_ledger_store_change(st, tenant, amount, note, idem, hash, &ev)) {
    case TG_CHANGE_APPLIED:
        reply_change(req, &ev, false);
        break;
    case TG_CHANGE_REPEATED:
        reply_change(req, &ev, true);
        break;
    case TG_CHANGE_CONFLICT:
        reply_error(req, 409, "invalid_request_error", "idempotency_key_reused",
                    "This Idempotency-Key was used with another body.");
        break;
    case TG_CHANGE_SHORT:
        reply_error(req, 409, "invalid_request_error", "insufficient_balance",
                    "The adjustment is larger than the balance.");
        break;
    case TG_CHANGE_TOO_LARGE:
        reply_error(req, 409, "invalid_request_error", "balance_too_large",
                    "The balance would pass 9000000000 credits.");
        break;
    case TG_CHANGE_FAILED:
        reply_error(req, 503, "server_error", "ledger_unavailable",
                    "The ledger file could not be written; nothing was changed.");
        break;
    }
}

/* ---- Redis ---- */

/* An XRANGE entry [id, [field, value, ...]] as an event. */
static bool stream_event(const char *tenant, const redisReply *x, struct tg_ledger_event *ev)
{
    if (x->type != REDIS_REPLY_ARRAY || x->elements != 2 || x->element[1]->type != REDIS_REPLY_ARRAY)
        return false;
    const redisReply *f = x->element[1];
    *ev = (struct tg_ledger_event){.tenant = tenant, .seq = strtoll(tg_redis_reply_str(x->element[0]), NULL, 10)};
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const char *k = tg_redis_reply_str(f->element[i]);
        const redisReply *v = f->element[i + 1];
        if (strcmp(k, "ts") == 0) ev->ts_ms = tg_redis_reply_int(v);
        else if (strcmp(k, "delta") == 0) ev->delta = tg_redis_reply_int(v);
        else if (strcmp(k, "balance") == 0) ev->balance = tg_redis_reply_int(v);
        else if (strcmp(k, "held") == 0) ev->held = tg_redis_reply_int(v);
        else if (strcmp(k, "reason") == 0) ev->reason = tg_redis_reply_str(v);
        else if (strcmp(k, "request_id") == 0) ev->request_id = tg_redis_reply_str(v);
        else if (strcmp(k, "idempotency_key") == 0) ev->idem = tg_redis_reply_str(v);
        else if (strcmp(k, "note") == 0) ev->note = tg_redis_reply_str(v);
    }
    return true;
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    struct pending *p = arg;
    (void)evcon;
    p->req = NULL; /* evhttp frees the request with its connection */
}

static void pending_free(struct pending *p)
{
    tg_buf_free(&p->cmd.b);
    free(p);
}

static void on_reply(void *arg, const redisReply *r)
{
    struct pending *p = arg;
    struct evhttp_request *req = p->req;
    /* Before the reply: sending it may free a connection that is not kept alive. */
    if (req && p->evcon) evhttp_connection_set_closecb(p->evcon, NULL, NULL);
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (r && r->type == REDIS_REPLY_ERROR) tg_log_warn("credits API: Redis answered: %s", r->str);
    if (ok && p->kind == OP_GET && r->elements >= 3) {
        tg_ledger_ship_reply(p->tenant, r, 3);
        if (req) reply_balance(req, p->tenant, tg_redis_reply_int(r->element[0]), tg_redis_reply_int(r->element[1]),
                               tg_redis_reply_int(r->element[2]));
    } else if (ok && p->kind == OP_CHANGE && r->elements >= 4) {
        int64_t status = tg_redis_reply_int(r->element[0]);
        size_t sweep_from = 4;
        struct tg_ledger_event ev;
        if ((status == 0 || status == 1) && r->elements >= 4 + EVENT_FIELDS) {
            tg_ledger_event_from_reply(p->tenant, r->element + 4, &ev);
            if (status == 0) tg_ledger_ship(&ev);
            sweep_from = 4 + EVENT_FIELDS;
            if (req) reply_change(req, &ev, status == 1);
        } else if (status == 2) {
            if (req)
                reply_error(req, 409, "invalid_request_error", "idempotency_key_reused",
                            "This Idempotency-Key was used with another body.");
        } else if (status == 3) {
            if (req)
                reply_error(req, 409, "invalid_request_error", "insufficient_balance",
                            "The adjustment is larger than the balance.");
        } else if (status == 4) {
            if (req)
                reply_error(req, 409, "invalid_request_error", "balance_too_large",
                            "The balance would pass 9000000000 credits.");
        } else if (req) {
            reply_error(req, 500, "server_error", "ledger_reply", "Redis gave an unexpected reply.");
        }
        if (status != 1) tg_ledger_ship_reply(p->tenant, r, sweep_from);
    } else if (ok && p->kind == OP_LEDGER) {
        if (req) {
            struct page pg = {.b = evbuffer_new()};
            if (pg.b) {
                evbuffer_add_printf(pg.b, "{\"events\":[");
                size_t n = r->elements < p->limit ? r->elements : p->limit;
                for (size_t i = 0; i < n; i++) {
                    struct tg_ledger_event ev;
                    if (stream_event(p->tenant, r->element[i], &ev)) page_add(&pg, &ev);
                }
                reply_page_end(req, &pg, r->elements > p->limit);
            } else {
                evhttp_send_error(req, 500, NULL);
            }
        }
    } else if (req) {
        reply_error(req, 503, "server_error", "ledger_unavailable",
                    "The credit ledger (Redis) did not answer; nothing was changed. Retry with "
                    "the same Idempotency-Key.");
    }
    pending_free(p);
}

static void redis_serve(struct tg_credit_api *api, struct evhttp_request *req, enum op_kind kind,
                        const char *tenant, int64_t amount, const char *note, const char *idem,
                        const char *hash, int64_t after, size_t limit)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (!p) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    p->api = api;
    p->req = req;
    p->kind = kind;
    p->after = after;
    p->limit = limit;
    snprintf(p->tenant, sizeof(p->tenant), "%s", tenant);
    struct tg_resp *b = &p->cmd;
    int script = TG_REDIS_NO_SCRIPT;
    if (kind == OP_GET) {
        script = SC_BALANCE;
        tg_resp_head(b, '*', 3 + 4 + 2);
        tg_resp_bulk(b, "EVALSHA", 7);
        tg_resp_bulk(b, tg_redis_sha(api->redis, SC_BALANCE), 40);
        tg_resp_bulk_int(b, 4);
        tg_ledger_put_keys(b, api->prefix, tenant, false);
        tg_resp_bulk(b, "", 0);
        tg_resp_bulk(b, tenant, strlen(tenant));
    } else if (kind == OP_CHANGE) {
        script = SC_CHANGE;
        char suffix[8 + TG_IDEM_KEY_MAX];
        snprintf(suffix, sizeof(suffix), ":%s", idem);
        tg_resp_head(b, '*', 3 + 5 + 8);
        tg_resp_bulk(b, "EVALSHA", 7);
        tg_resp_bulk(b, tg_redis_sha(api->redis, SC_CHANGE), 40);
        tg_resp_bulk_int(b, 5);
        tg_ledger_put_keys(b, api->prefix, tenant, false);
        tg_resp_tenant_key(b, api->prefix, tenant, "$idem", suffix);
        tg_resp_bulk(b, "", 0);
        tg_resp_bulk_int(b, amount);
        tg_resp_bulk(b, note, strlen(note));
        tg_resp_bulk(b, idem, strlen(idem));
        tg_resp_bulk(b, hash, strlen(hash));
        tg_resp_bulk(b, tenant, strlen(tenant));
        tg_resp_bulk_int(b, IDEM_KEEP_MS);
        tg_resp_bulk_int(b, TG_AMOUNT_MAX_MICRO);
    } else {
        char from[32], count[24];
        snprintf(from, sizeof(from), "%lld-0", (long long)(after < 0 ? 1 : after + 1));
        snprintf(count, sizeof(count), "%zu", limit + 1);
        tg_resp_head(b, '*', 6);
        tg_resp_bulk(b, "XRANGE", 6);
        tg_resp_tenant_key(b, api->prefix, tenant, "$ledger", NULL);
        tg_resp_bulk(b, from, strlen(from));
        tg_resp_bulk(b, "+", 1);
        tg_resp_bulk(b, "COUNT", 5);
        tg_resp_bulk(b, count, strlen(count));
    }
    if (b->failed || tg_redis_send(api->redis, b, script, on_reply, p) != 0) {
        reply_error(req, 503, "server_error", "ledger_unavailable",
                    "The credit ledger (Redis) is unreachable; nothing was changed.");
        tg_buf_free(&b->b);
        free(p);
        return;
    }
    p->evcon = evhttp_request_get_connection(req);
    if (p->evcon) evhttp_connection_set_closecb(p->evcon, on_close, p);
    tg_redis_flush(api->redis);
}

/* ---- routing ---- */

bool tg_credit_api_serve(struct tg_credit_api *api, struct evhttp_request *req, const char *path)
{
    static const char prefix[] = "/admin/tenants/";
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0) return false;
    const char *t = path + sizeof(prefix) - 1, *slash = strchr(t, '/');
    if (!slash) return false;
    enum op_kind kind;
    if (strcmp(slash, "/credits") == 0)
        kind = OP_GET;
    else if (strcmp(slash, "/ledger") == 0)
        kind = OP_LEDGER;
    else
        return false;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (api == NULL || !api->cfg->credits.enabled) {
        reply_error(req, 404, "invalid_request_error", "credits_disabled",
                    "Credits are not enabled (credits.enabled).");
        return true;
    }
    char tenant[256];
    size_t tl = (size_t)(slash - t);
    char *dec = evhttp_uridecode(t, 0, NULL);
    if (!dec) {
        evhttp_send_error(req, 500, NULL);
        return true;
    }
    (void)tl;
    snprintf(tenant, sizeof(tenant), "%.*s", (int)strcspn(dec, "/"), dec);
    free(dec);
    if (!tg_config_tenant(api->cfg, tenant)) {
        reply_error(req, 404, "invalid_request_error", "unknown_tenant",
                    "No tenant of that name is configured.");
        return true;
    }
    if (kind == OP_GET && cmd == EVHTTP_REQ_POST) kind = OP_CHANGE;
    bool allowed = kind == OP_CHANGE || cmd == EVHTTP_REQ_GET;
    if (!allowed) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          kind == OP_LEDGER ? "GET" : "GET, POST");
        reply_error(req, 405, "invalid_request_error", "method_not_allowed",
                    "Method not allowed here.");
        return true;
    }
    int64_t amount = 0, after = 0;
    size_t limit = PAGE_DEFAULT;
    char note[TG_NOTE_MAX + 1] = "", hash[65] = "";
    const char *idem = "";
    if (kind == OP_LEDGER) {
        struct evkeyvalq q;
        const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
        if (query && evhttp_parse_query_str(query, &q) == 0) {
            const char *a = evhttp_find_header(&q, "after"), *l = evhttp_find_header(&q, "limit");
            char *end;
            bool bad = false;
            if (a) {
                after = strtoll(a, &end, 10);
                bad = bad || *a == '\0' || *end || after < 0;
            }
            if (l) {
                long long v = strtoll(l, &end, 10);
                bad = bad || *l == '\0' || *end || v < 1 || v > PAGE_MAX;
                if (!bad) limit = (size_t)v;
            }
            evhttp_clear_headers(&q);
            if (bad) {
                reply_error(req, 400, "invalid_request_error", "invalid_query",
                            "after must be a seq (0 or more) and limit from 1 to 1000.");
                return true;
            }
        }
    } else if (kind == OP_CHANGE) {
        const char *k = evhttp_find_header(evhttp_request_get_input_headers(req), "Idempotency-Key");
        if (!k) {
            reply_error(req, 400, "invalid_request_error", "idempotency_key_required",
                        "An Idempotency-Key header is required: a change is applied once per key.");
            return true;
        }
        if (!tg_ledger_idem_valid(k, strlen(k))) {
            reply_error(req, 400, "invalid_request_error", "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 128 of A-Z a-z 0-9 . _ : -");
            return true;
        }
        idem = k;
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        const char *body = (const char *)evbuffer_pullup(in, -1);
        struct change_body cb;
        if (!body || !parse_body(body, n, &cb)) {
            reply_error(req, 400, "invalid_request_error", "invalid_body",
                        body ? cb.why : "the body is empty");
            return true;
        }
        const char *why;
        if (tg_ledger_parse_amount(cb.amount, strlen(cb.amount), &amount, &why) != 0) {
            char msg[160];
            snprintf(msg, sizeof(msg), "amount %s", why);
            reply_error(req, 400, "invalid_request_error", "invalid_amount", msg);
            return true;
        }
        if (amount == 0) {
            reply_error(req, 400, "invalid_request_error", "invalid_amount",
                        "amount must not be zero");
            return true;
        }
        memcpy(note, cb.reason, sizeof(note));
        body_hash(body, n, hash);
    }
    if (kind == OP_CHANGE && !tg_ledger_accepting()) {
        reply_error(req, 503, "server_error", "ledger_sink_unavailable",
                    "The ledger's events cannot be kept right now; nothing was changed.");
        return true;
    }
    if (api->redis)
        redis_serve(api, req, kind, tenant, amount, note, idem, hash, after, limit);
    else
        local_serve(req, kind, tenant, amount, note, idem, hash, after, limit);
    return true;
}

struct tg_credit_api *tg_credit_api_create(struct event_base *base, struct tg_config *cfg,
                                           char err[TG_ERR_LEN])
{
    struct tg_credit_api *api = calloc(1, sizeof(*api));
    if (!api) {
        snprintf(err, TG_ERR_LEN, "out of memory");
        return NULL;
    }
    api->cfg = tg_config_ref(cfg);
    if (cfg->limiter.backend == TG_LIMITER_REDIS) {
        const char *prefix = cfg->limiter.redis.key_prefix ? cfg->limiter.redis.key_prefix
                                                            : TG_DEFAULT_REDIS_KEY_PREFIX;
        char ip[64];
        struct tg_redis_options o = {
            .host = ip,
            .password = cfg->limiter.redis.password,
            .db = cfg->limiter.redis.db,
            .timeout_ms = ADMIN_REDIS_TIMEOUT_MS,
            .scripts = script_text,
            .nscripts = SC_COUNT,
            .unavailable_note = "the credits API answers 503",
        };
        tg_redis_address(cfg, ip, sizeof(ip), &o.port);
        api->prefix = strdup(prefix);
        if (api->prefix) api->redis = tg_redis_create(base, &o);
        if (!api->redis) {
            snprintf(err, TG_ERR_LEN, "out of memory");
            tg_credit_api_destroy(api);
            return NULL;
        }
    }
    return api;
}

void tg_credit_api_set_config(struct tg_credit_api *api, struct tg_config *cfg)
{
    if (!api) return;
    struct tg_config *old = api->cfg;
    api->cfg = tg_config_ref(cfg);
    tg_config_unref(old);
}

void tg_credit_api_destroy(struct tg_credit_api *api)
{
    if (!api) return;
    tg_redis_destroy(api->redis); /* answers what is pending with NULL: 503s */
    free(api->prefix);
    tg_config_unref(api->cfg);
    free(api);
}
