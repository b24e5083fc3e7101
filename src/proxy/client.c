/* The client side: connections (accept, idle, close), request heads and bodies, tollgate's own
 * replies. */
#include "conn.h"

static void timer_cb(evutil_socket_t fd, short what, void *arg);

static struct tg_req *req_get(struct tg_worker *w)
{
    struct tg_req *r = w->free_reqs;
    if (r) {
        w->free_reqs = r->next_free;
        w->nfree_reqs--;
        r->next_free = NULL;
        return r;
    }
    return calloc(1, sizeof(*r));
}

static void req_free(struct tg_req *r)
{
    free(r->head);
    free(r->body);
    free(r->uhead);
    free(r);
}

static void req_put(struct tg_worker *w, struct tg_req *r)
{
    if (w->nfree_reqs >= REQ_POOL_MAX) {
        req_free(r);
        return;
    }
    if (r->body_cap > REQ_KEEP_BUFFER) {
        free(r->body);
        r->body = NULL;
        r->body_cap = 0;
    }
    r->next_free = w->free_reqs;
    w->free_reqs = r;
    w->nfree_reqs++;
}

void tg_proxy_free_pool(struct tg_worker *w)
{
    while (w->free_reqs) {
        struct tg_req *r = w->free_reqs;
        w->free_reqs = r->next_free;
        req_free(r);
    }
    w->nfree_reqs = 0;
}

static const char *const side_client[] = {"client"};

/* ---- connection lifecycle ---- */

static void idle_leave(struct tg_conn *c);

void tg_proxy_accept(struct tg_worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
    struct tg_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        evutil_closesocket(fd);
        return;
    }
    c->w = w;
    c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(w->base, timer_cb, c);
    c->rev = event_new(w->base, fd, EV_READ | EV_PERSIST, client_sock_read, c);
    if (c->bev == NULL || c->timer == NULL || c->rev == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c->timer) event_free(c->timer);
        if (c->rev) event_free(c->rev);
        free(c);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof(c->peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer,
                  sizeof(c->peer));
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    tg_metrics_add(TG_M_CONNECTIONS, side_client, 1);
    bufferevent_setcb(c->bev, client_read_cb, client_write_cb, client_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, CLIENT_LOW_WATER, 0);
    bufferevent_disable(c->bev, EV_WRITE); /* on by default; see flush_out */
    client_reading(c, true);
    c->state = C_IDLE;
    arm_timer(c, w->cfg->server.header_timeout_ms);
    idle_enter(c);
}

/* ---- idle connections ----
 * A connection between requests (or before its first) is on its worker's
 * idle list, the latest idle first. Past server.max_idle_connections the one
 * idle longest is closed: connections that send nothing cannot pile up. */

static void idle_leave(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (!c->idle) return;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        w->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        w->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->idle = false;
    w->nidle--;
}

void idle_enter(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (c->idle) return;
    c->idle = true;
    c->idle_prev = NULL;
    c->idle_next = w->idle_head;
    if (w->idle_head)
        w->idle_head->idle_prev = c;
    else
        w->idle_tail = c;
    w->idle_head = c;
    w->nidle++;
    if (w->nidle > w->cfg->server.max_idle_connections && w->idle_tail != c) {
        tg_metrics_add(TG_M_IDLE_CLOSED, NULL, 1);
        conn_free(w->idle_tail);
    }
}

/* Ends the request state of a connection and returns it to the pool. */
void req_release(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    if (r == NULL) return;
    if (r->checking) tg_limiter_cancel(c->w->limiter, c);
    tg_waitq_leave(c->w->waitq, &r->waiter); /* a client gone while it waited leaves at once */
    tg_gate_leave(c->w->gate, &r->gate);
    if (r->admit.waiting) tg_admission_cancel(&c->w->admission, &r->admit);
    tg_admission_release(&c->w->admission, &r->admit);
    if (r->acquiring && r->pool) tg_pool_cancel(r->pool, c);
    if (r->up) {
        up_detach(c, r->up);
        tg_pool_release(r->up, false);
    }
    r->checking = r->acquiring = false;
    r->up = NULL;
    if (r->scanning) tg_scan_deinit(&r->scan);
    r->scanning = false;
    free(r->fwd_body);
    r->fwd_body = NULL;
    if (r->cfg) tg_config_unref(r->cfg);
    r->cfg = NULL;
    if (r->active) __atomic_fetch_sub(&c->w->inflight, 1, __ATOMIC_RELAXED);
    r->active = false;
    c->req = NULL;
    req_put(c->w, r);
}

void conn_free(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    req_release(c);
    idle_leave(c);
    if (c->auth_cfg) tg_config_unref(c->auth_cfg);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    event_free(c->timer);
    event_free(c->rev);
    if (c->urev) event_free(c->urev);
    bufferevent_free(c->bev);
    tg_metrics_add(TG_M_CONNECTIONS, side_client, -1);
    free(c);
}

/* Closes once everything queued for the client is written. */
void conn_close_after_write(struct tg_conn *c)
{
    c->state = C_CLOSING;
    client_reading(c, false);
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    flush_out(c->bev, true);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_free(c);
        return;
    }
    bufferevent_enable(c->bev, EV_WRITE);
    arm_timer(c, c->w->cfg->server.idle_timeout_ms);
}

void tg_proxy_close_idle(struct tg_worker *w)
{
    struct tg_conn *c = w->conns;
    while (c) {
        struct tg_conn *next = c->next;
        if (c->state == C_IDLE && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            conn_free(c);
        c = next;
    }
}

void tg_proxy_close_all(struct tg_worker *w)
{
    while (w->conns) {
        struct tg_conn *c = w->conns;
        if (c->req && c->req->active && c->state == C_WORK) {
            c->state = C_CLOSING;
            if (!c->req->resp_started) c->req->upstream_failed = true; /* costs its request unit */
            c->req->status = c->req->status ? c->req->status : 503;
            req_finish(c, TG_DECISION_ERROR);
        }
        conn_free(c);
    }
}

/* ---- replies made by tollgate ---- */

void add_common_headers(struct tg_conn *c, struct headbuf *hb, bool close)
{
    struct tg_req *r = c->req;
    hb_add(hb, "x-request-id: ", 14);
    hb_str(hb, r->id);
    hb_add(hb, "\r\n", 2);
    if (r->rl_len) hb_add(hb, r->rl, r->rl_len);
    if (close)
        hb_add(hb, "Connection: close\r\n", 19);
    else if (c->http10)
        hb_add(hb, "Connection: keep-alive\r\n", 24);
}

/* Answers the current request with an OpenAI-shaped error (or a ready body). */
void reply_json(struct tg_conn *c, int status, const char *body, size_t blen, bool close,
                enum tg_decision decision)
{
    struct tg_req *r = c->req;
    if (!c->keep_alive || c->w->draining) close = true;
    c->keep_alive = c->keep_alive && !close;
    struct headbuf hb;
    hb_init(&hb, bufferevent_get_output(c->bev));
    hb_status_line(&hb, status);
    hb_add(&hb, "Content-Type: application/json\r\nContent-Length: ", 48);
    hb_int(&hb, (long long)blen);
    hb_add(&hb, "\r\n", 2);
    add_common_headers(c, &hb, close);
    hb_add(&hb, "\r\n", 2);
    hb_add(&hb, body, blen);
    r->bytes_out += (int64_t)hb_flush(&hb);
    r->status = status;
    r->resp_started = true;
    req_finish(c, decision);
}

void reply_error(struct tg_conn *c, int status, const char *type, const char *code,
                 const char *message, bool close, enum tg_decision decision)
{
    char body[TG_JSONW_STR_MAX(TG_ERR_LEN) + 256];
    size_t mlen = strnlen(message, TG_ERR_LEN);
    char *p = body;
    p += sprintf(p, "{\"error\":{\"message\":");
    p = tg_jsonw_str(p, message, mlen);
    p += sprintf(p, ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}", type, code);
    reply_json(c, status, body, (size_t)(p - body), close, decision);
}

/* ---- request start and head ---- */

static bool sane_request_id(const char *v, size_t len)
{
    if (len == 0 || len >= TG_REQUEST_ID_LEN) return false;
    for (size_t i = 0; i < len; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return false;
    }
    return true;
}

static bool req_begin(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    struct tg_req *r = req_get(w);
    if (r == NULL) return false;
    c->req = r;
    r->cfg = tg_config_ref(w->cfg);
    r->t0_us = now_us();
    r->ts_ms = tg_now_wall_ms();
    r->id[0] = '\0';
    r->body_len = 0;
    tg_http_scan_init(&r->hscan, TG_HTTP_REQUEST);
    r->path = NULL;
    r->path_len = 0;
    r->query = NULL;
    r->query_len = 0;
    r->bodyless = r->bad_reply = false;
    r->body_too_large = false;
    r->fwd_len = 0;
    r->route = NULL;
    r->upstream = NULL;
    r->tenant = NULL;
    r->refused = false;
    memset(&r->admit, 0, sizeof(r->admit));
    memset(&r->info, 0, sizeof(r->info));
    memset(&r->est, 0, sizeof(r->est));
    r->lreq.n = 0;
    r->lreq.fallback = false;
    r->denied = -1;
    r->checking = r->charged = r->acquiring = r->retried = false;
    memset(&r->waiter, 0, sizeof(r->waiter));
    memset(&r->gate, 0, sizeof(r->gate));
    r->conn = c;
    r->wait_deadline_ms = 0;
    r->wait_expired = false;
    r->ledger_seq = 0;
    r->requested_model[0] = '\0';
    r->rl_len = 0;
    r->rl[0] = '\0';
    r->pool = NULL;
    r->up = NULL;
    r->resp_head = r->resp_started = r->upstream_failed = r->paused = false;
    r->strip_usage = r->scanning = r->out_chunked = false;
    r->out_mode = OUT_PASS;
    r->status = 0;
    r->bytes_in = r->bytes_out = r->up_bytes = 0;
    r->tup_us = 0;
    r->active = true;
    __atomic_fetch_add(&w->inflight, 1, __ATOMIC_RELAXED);
    return true;
}

static void on_req_body(void *arg, const char *data, size_t len)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (r->body_too_large) return;
    if ((int64_t)(r->body_len + len) > r->cfg->server.max_body_bytes) {
        r->body_too_large = true;
        return;
    }
    if (!tg_grow(&r->body, &r->body_cap, r->body_len + len + 1, 1, 4096)) {
        r->body_too_large = true;
        return;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
}

static void read_body(struct tg_conn *c);

/* Puts the request target in the form it is routed and forwarded in: the
 * path in normal form (so that a route is chosen on the path the upstream
 * serves: "/v1/models/../chat/completions" is the chat route), the query
 * checked. False when the request was refused (400, and the connection is
 * closed: a client that sends such a target is not trusted with the next). */
static bool route_target(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_http_msg *m = &r->msg;
    size_t plen = 0;
    while (plen < m->target_len && m->target[plen] != '?')
        plen++;
    const char *why = NULL;
    /* The target points into r->head (or is the literal "/", already normal). */
    char *path = (char *)(uintptr_t)m->target;
    ssize_t n = tg_http_path_normalize(path, plen, path, &why);
    if (n < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "The request path is not valid: %s.", why);
        reply_error(c, 400, "invalid_request_error", "invalid_path", msg, true,
                    TG_DECISION_REJECTED);
        return false;
    }
    r->path = path;
    r->path_len = n > 0 ? (size_t)n : plen;
    if (plen < m->target_len) {
        r->query = m->target + plen + 1;
        r->query_len = m->target_len - plen - 1;
        if (!tg_http_query_valid(r->query, r->query_len)) {
            reply_error(c, 400, "invalid_request_error", "invalid_path",
                        "The request query holds bytes a URI may not hold.", true,
                        TG_DECISION_REJECTED);
            return false;
        }
    }
    return true;
}

/* Called with a parsed head: route, authenticate, check size; then read the body. */
static void on_head(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_http_msg *m = &r->msg;
    c->keep_alive = m->keep_alive;
    c->http10 = m->minor == 0;
    size_t idlen;
    const char *rid = tg_http_header(m, "x-request-id", &idlen);
    if (rid && sane_request_id(rid, idlen)) {
        memcpy(r->id, rid, idlen);
        r->id[idlen] = '\0';
    } else {
        tg_usage_new_id(r->id);
    }
    bool body_pending = !m->done;
    if (m->method == TG_HTTP_CONNECT || m->method == TG_HTTP_TRACE) {
        r->rl_len = (size_t)snprintf(r->rl, sizeof(r->rl),
                                     "Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n");
        reply_error(c, 405, "invalid_request_error", "method_not_allowed",
                    "CONNECT and TRACE are not served by this gateway.", true,
                    TG_DECISION_REJECTED);
        return;
    }
    if (!route_target(c)) return;
    r->route = tg_config_route(r->cfg, r->path, r->path_len);
    if (r->route == NULL) {
        char msg[256];
        size_t mlen;
        const char *mname = tg_http_method_name(m, &mlen);
        snprintf(msg, sizeof(msg), "Invalid URL (%.*s %.*s)", (int)(mlen > 16 ? 16 : mlen), mname,
                 (int)(r->path_len > 160 ? 160 : r->path_len), r->path);
        reply_error(c, 404, "invalid_request_error", "unknown_url", msg, body_pending,
                    TG_DECISION_REJECTED);
        return;
    }
    size_t alen = 0;
    const char *auth = tg_http_header(m, "authorization", &alen);
    if (auth && c->auth_cfg == r->cfg && alen == c->auth_len &&
        CRYPTO_memcmp(auth, c->auth_val, alen) == 0) {
        r->tenant = c->auth_tenant;
        r->priority = c->auth_priority;
        memcpy(r->key_digest, c->auth_digest, sizeof(r->key_digest));
    } else {
        r->tenant = auth ? tg_auth_lookup(r->cfg, auth, alen, r->key_digest) : NULL;
        const struct tg_key *key = r->tenant ? tg_auth_find(r->cfg, r->key_digest) : NULL;
        r->priority = key ? key->priority : TG_PRIO_INTERACTIVE;
        if (r->tenant && alen <= sizeof(c->auth_val)) {
            c->auth_priority = r->priority;
            if (c->auth_cfg != r->cfg) {
                if (c->auth_cfg) tg_config_unref(c->auth_cfg);
                c->auth_cfg = tg_config_ref(r->cfg);
            }
            c->auth_tenant = r->tenant;
            c->auth_len = (uint8_t)alen;
            memcpy(c->auth_val, auth, alen);
            memcpy(c->auth_digest, r->key_digest, sizeof(c->auth_digest));
        }
    }
    if (r->tenant == NULL) {
        reply_error(c, 401, "invalid_request_error", "invalid_api_key",
                    auth ? "Incorrect API key provided."
                         : "You didn't provide an API key. You need to provide your API key in an "
                           "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                           "YOUR_KEY).",
                    body_pending, TG_DECISION_REJECTED);
        return;
    }
    size_t plen;
    const char *prio = tg_http_header(m, "x-tollgate-priority", &plen);
    if (prio) { /* a request may lower its class, never raise it */
        if (plen == 10 && strncasecmp(prio, "background", 10) == 0) {
            r->priority = TG_PRIO_BACKGROUND;
        } else if (!(plen == 11 && strncasecmp(prio, "interactive", 11) == 0)) {
            reply_error(c, 400, "invalid_request_error", "invalid_priority",
                        "x-tollgate-priority must be interactive or background.", body_pending,
                        TG_DECISION_REJECTED);
            return;
        }
    }
    if (m->content_length > r->cfg->server.max_body_bytes) {
        char msg[160];
        snprintf(msg, sizeof(msg), "Request body of %lld bytes exceeds the limit of %lld bytes.",
                 (long long)m->content_length, (long long)r->cfg->server.max_body_bytes);
        reply_error(c, 413, "invalid_request_error", "request_too_large", msg, true,
                    TG_DECISION_REJECTED);
        return;
    }
    if (m->expect_continue && body_pending &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
        flush_out(c->bev, true);
    }
    if (m->content_length > 0 && (size_t)m->content_length + 1 > r->body_cap) {
        char *nb = realloc(r->body, (size_t)m->content_length + 1);
        if (nb) {
            r->body = nb;
            r->body_cap = (size_t)m->content_length + 1;
        }
    }
    if (!body_pending) {
        on_request_complete(c);
        return;
    }
    c->state = C_BODY;
    arm_timer(c, r->cfg->server.idle_timeout_ms);
    read_body(c);
}

/* Grows a head copy buffer to hold `need` bytes. */
bool reserve_head(char **buf, size_t *cap, size_t need)
{
    return tg_grow(buf, cap, need, 1, 2048);
}

/* Scans the bytes of a head that arrived since the last call: its length
 * once complete, 0 while more must come, a negative tg_http_result when the
 * bytes can be no head. A head a client sends a byte at a time costs one
 * pass over its bytes, not a rescan per byte. */
ssize_t scan_head(struct evbuffer *in, struct tg_http_scan *s)
{
    struct evbuffer_iovec v[8];
    for (;;) {
        if (s->pos >= evbuffer_get_length(in)) return 0;
        struct evbuffer_ptr at;
        if (evbuffer_ptr_set(in, &at, s->pos, EVBUFFER_PTR_SET) != 0) return 0;
        int nv = evbuffer_peek(in, -1, &at, v, 8);
        if (nv > 8) nv = 8;
        for (int i = 0; i < nv; i++) {
            ssize_t n = tg_http_scan_head(s, v[i].iov_base, v[i].iov_len);
            if (n != 0) return n;
        }
    }
}

/* The error code of an OpenAI-shaped error for a head refused so. */
static const char *head_error_code(enum tg_http_result res)
{
    switch (tg_http_status(res)) {
    case 431:
        return "request_header_fields_too_large";
    case 414:
        return "uri_too_long";
    case 505:
        return "http_version_not_supported";
    case 501:
        return "not_implemented";
    default:
        return "bad_request";
    }
}

static void refuse_head(struct tg_conn *c, enum tg_http_result res)
{
    if (c->req->id[0] == '\0') tg_usage_new_id(c->req->id);
    reply_error(c, tg_http_status(res), "invalid_request_error", head_error_code(res),
                tg_http_error(res), true, TG_DECISION_REJECTED);
}

/* Tries to read a whole head from the input. */
static void read_head(struct tg_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0) return;
    if (c->state == C_IDLE) {
        /* Stray line breaks between pipelined requests are allowed. */
        unsigned char first;
        while (len > 0 && evbuffer_copyout(in, &first, 1) == 1 &&
               (first == '\r' || first == '\n')) {
            evbuffer_drain(in, 1);
            len--;
        }
        if (len == 0) return;
        if (!req_begin(c)) {
            conn_free(c);
            return;
        }
        idle_leave(c);
        c->state = C_HEAD;
        /* A connection's first head has header_timeout_ms from the accept;
         * a later one from its first byte (before it, idle_timeout_ms). */
        if (c->served) arm_timer(c, c->req->cfg->server.header_timeout_ms);
        c->served = true;
    }
    struct tg_req *r = c->req;
    ssize_t n = scan_head(in, &r->hscan);
    if (n == 0) return;
    if (n < 0) {
        refuse_head(c, (enum tg_http_result)n);
        return;
    }
    size_t hlen = (size_t)n;
    if (!reserve_head(&r->head, &r->head_cap, hlen)) {
        conn_free(c);
        return;
    }
    evbuffer_remove(in, r->head, hlen);
    r->bytes_in += (int64_t)hlen;
    tg_http_msg_init(&r->msg, TG_HTTP_REQUEST, on_req_body, c);
    enum tg_http_result res = tg_http_parse_head(&r->msg, r->head, hlen);
    if (res != TG_HTTP_OK) {
        refuse_head(c, res);
        return;
    }
    on_head(c);
}

/* Feeds buffered body bytes to the parser. */
static void read_body(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_iovec v[8];
    while (evbuffer_get_length(in) > 0 && !r->msg.done) {
        int nv = evbuffer_peek(in, -1, NULL, v, 8);
        if (nv > 8) nv = 8;
        size_t used = 0;
        bool stop = false;
        for (int i = 0; i < nv && !stop; i++) {
            ssize_t n = tg_http_feed(&r->msg, v[i].iov_base, v[i].iov_len);
            if (n < 0) {
                evbuffer_drain(in, used);
                refuse_head(c, (enum tg_http_result)n);
                return;
            }
            used += (size_t)n;
            stop = (size_t)n < v[i].iov_len || r->msg.done;
        }
        evbuffer_drain(in, used);
        r->bytes_in += (int64_t)used;
        if (used == 0 && !r->msg.done) { /* the parser took nothing: never spin */
            reply_error(c, 400, "invalid_request_error", "bad_request",
                        "The request body framing is invalid.", true, TG_DECISION_REJECTED);
            return;
        }
        if (r->body_too_large) {
            char msg[160];
            snprintf(msg, sizeof(msg), "Request body exceeds the limit of %lld bytes.",
                     (long long)r->cfg->server.max_body_bytes);
            reply_error(c, 413, "invalid_request_error", "request_too_large", msg, true,
                        TG_DECISION_REJECTED);
            return;
        }
    }
    if (r->msg.done) on_request_complete(c);
}

void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct tg_conn *c = arg;
    switch (c->state) {
    case C_IDLE:
    case C_HEAD:
        read_head(c); /* goes on to the body; c may be gone after it */
        break;
    case C_BODY:
        read_body(c);
        break;
    case C_WORK:
        if (evbuffer_get_length(bufferevent_get_input(bev)) > PIPELINE_MAX)
            client_reading(c, false);
        break;
    case C_CLOSING:
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
        break;
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tg_conn *c = arg;
    switch (c->state) {
    case C_IDLE:
    case C_CLOSING:
        conn_free(c);
        return;
    case C_HEAD:
    case C_BODY:
        if (c->req->id[0] == '\0') tg_usage_new_id(c->req->id);
        reply_error(c, 408, "invalid_request_error", "request_timeout",
                    "The request was not received in time.", true, TG_DECISION_REJECTED);
        return;
    case C_WORK:
        /* A waiting request's max_wait_ms is over: out of the queue, one last check (429
         * unless it passes now). */
        if (c->req->waiter.q && !c->req->checking) {
            c->req->wait_expired = true;
            tg_waitq_leave(c->w->waitq, &c->req->waiter);
            run_check(c);
        }
        return;
    }
}

void client_write_cb(struct bufferevent *bev, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    bool drained = evbuffer_get_length(bufferevent_get_output(bev)) == 0;
    if (c->state == C_CLOSING) {
        if (drained) conn_free(c);
        return;
    }
    if (drained) bufferevent_disable(bev, EV_WRITE);
    if (r && r->paused && r->up) {
        r->paused = false;
        up_reading(c, true);
        pump_body(c);
    }
}

void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (r && r->active && c->state == C_WORK) {
        /* The client went away mid-request: record it; releasing the request
         * cancels the limiter check, the wait for a connection or the
         * upstream request, whichever is under way. */
        if (r->scanning) tg_scan_finish(&r->scan);
        r->status = 499;
        c->keep_alive = false;
        c->state = C_CLOSING;
        req_finish(c, TG_DECISION_ERROR);
    }
    conn_free(c);
}
