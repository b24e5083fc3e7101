/* Forwarding: an upstream connection for the request, and the request written to it. */
#include "conn.h"

/* ---- forwarding ---- */

static struct tg_pool *pool_for(struct tg_worker *w, const struct tg_upstream *u)
{
    if (u->index < w->npools && tg_pool_matches(w->pools[u->index], u)) return w->pools[u->index];
    for (size_t i = 0; i < w->npools; i++)
        if (tg_pool_matches(w->pools[i], u)) return w->pools[i];
    return NULL;
}

static void on_gate(void *arg, enum tg_gate_status status)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (status != TG_GATE_OK) {
        r->upstream_failed = true;
        r->rl_len = (size_t)snprintf(r->rl, sizeof(r->rl), "Retry-After: 1\r\n");
        reply_error(c, 503, "server_error", "upstream_busy",
                    "The model server has as many requests as it takes; please retry shortly.",
                    false, TG_DECISION_ERROR);
        return;
    }
    r->acquiring = true;
    tg_pool_acquire(r->pool, on_upconn, c);
}

void start_forward(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    r->pool = pool_for(c->w, r->upstream);
    if (r->pool == NULL) {
        r->upstream_failed = true;
        reply_error(c, 502, "server_error", "upstream_unavailable",
                    "The upstream of this route was removed by a reload.", false,
                    TG_DECISION_ERROR);
        return;
    }
    /* a place of the upstream first (max_inflight), interactive requests ahead */
    tg_gate_enter(c->w->gate, &r->gate, r->upstream, r->priority, on_gate, c);
}

enum fwd { FWD_KEEP, FWD_DROP, FWD_XFF };

/* What becomes of a client's request header on its way upstream: hop-by-hop
 * headers, Host, the client's key, Expect, Content-Length and x-request-id
 * are replaced; X-Forwarded-For is extended. Sorted by length: one compare
 * for most headers. */
static enum fwd forward_kind(const char *name, size_t len)
{
    static const char *const dropped[16] = {[4] = "host",
                                            [6] = "expect",
                                            [12] = "x-request-id",
                                            [13] = "authorization",
                                            [14] = "content-length"};
    if (len < 16 && dropped[len] && tg_http_lc_is(name, len, dropped[len])) return FWD_DROP;
    if (len == 15 && tg_http_lc_is(name, len, "x-forwarded-for")) return FWD_XFF;
    return tg_http_is_hop_by_hop(name, len) ? FWD_DROP : FWD_KEEP;
}

static void write_request(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    const struct tg_upstream *u = r->upstream;
    struct tg_http_msg *m = &r->msg;
    struct headbuf hb;
    hb_init(&hb, bufferevent_get_output(tg_upconn_bev(r->up)));
    size_t mlen;
    const char *mname = tg_http_method_name(m, &mlen);
    hb_add(&hb, mname, mlen);
    hb_add(&hb, " ", 1);
    hb_str(&hb, u->base_path);
    hb_add(&hb, r->path, r->path_len);
    if (r->query) {
        hb_add(&hb, "?", 1);
        hb_add(&hb, r->query, r->query_len);
    }
    hb_add(&hb, " HTTP/1.1\r\nHost: ", 17);
    hb_str(&hb, u->host_header);
    hb_add(&hb, "\r\n", 2);
    const char *xff = NULL;
    size_t xff_len = 0;
    struct hrun run = {NULL, 0};
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct tg_http_header *h = &m->headers[i];
        enum fwd what = forward_kind(h->name, h->nlen);
        if (what == FWD_DROP || tg_http_listed(m, h->name, h->nlen)) continue;
        if (what == FWD_XFF) {
            xff = h->value;
            xff_len = h->vlen;
            continue;
        }
        bool configured = false;
        for (size_t k = 0; k < u->nheaders && !configured; k++)
            configured = tg_http_name_is(h->name, h->nlen, u->headers[k].key);
        if (!configured) hb_keep(&hb, &run, h);
    }
    hb_run_flush(&hb, &run);
    hb_add(&hb, "X-Forwarded-For: ", 17);
    if (xff) {
        hb_add(&hb, xff, xff_len);
        hb_add(&hb, ", ", 2);
    }
    hb_str(&hb, c->peer);
    hb_add(&hb, "\r\nx-request-id: ", 16);
    hb_str(&hb, r->id);
    hb_add(&hb, "\r\n", 2);
    for (size_t k = 0; k < u->nheaders; k++)
        hb_header(&hb, u->headers[k].key, strlen(u->headers[k].key), u->headers[k].value,
                  strlen(u->headers[k].value));
    const char *body = r->fwd_body ? r->fwd_body : r->body;
    size_t blen = r->fwd_body ? r->fwd_len : r->body_len;
    if (blen > 0 || m->method == TG_HTTP_POST || m->method == TG_HTTP_PUT ||
        m->method == TG_HTTP_PATCH) {
        hb_add(&hb, "Content-Length: ", 16);
        hb_int(&hb, (long long)blen);
        hb_add(&hb, "\r\n", 2);
    }
    hb_add(&hb, "\r\n", 2);
    if (blen) hb_add(&hb, body, blen);
    hb_flush(&hb);
}

void on_upconn(void *arg, struct tg_upconn *up, const char *err, bool timeout)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    r->acquiring = false;
    if (up != NULL) {
        int ms = r->upstream->response_timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        bufferevent_disable(tg_upconn_bev(up), EV_WRITE);
        if (!up_attach(c, up, &tv)) {
            tg_pool_release(up, false);
            up = NULL;
            err = "out of memory";
        }
    }
    if (up == NULL) {
        log_upstream_failure(r, "%s", err);
        r->upstream_failed = true;
        reply_error(c, 502, "server_error", "upstream_unavailable",
                    "The upstream model server could not be reached.", false, TG_DECISION_ERROR);
        return;
    }
    r->up = up;
    tg_http_scan_init(&r->uscan, TG_HTTP_REPLY);
    if (r->tup_us == 0) r->tup_us = now_us();
    struct bufferevent *ub = tg_upconn_bev(up);
    bufferevent_setcb(ub, up_read_cb, up_write_cb, up_event_cb, c);
    write_request(c);
    flush_out(ub, !tg_upconn_tls(up));
}
