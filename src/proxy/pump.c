/* The reply: its head checked and rewritten, its body moved to the client as it arrives. */
#include "conn.h"

/* ---- the reply ---- */

static void out_data(struct tg_conn *c, const char *data, size_t len)
{
    struct tg_req *r = c->req;
    if (len == 0) return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (r->out_chunked) {
        char hdr[24];
        int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
        evbuffer_add(out, hdr, (size_t)n);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
        r->bytes_out += n + (int64_t)len + 2;
    } else {
        evbuffer_add(out, data, len);
        r->bytes_out += (int64_t)len;
    }
}

static void on_scan_emit(void *arg, const char *data, size_t len)
{
    out_data(arg, data, len);
}

static void on_resp_body(void *arg, const char *data, size_t len)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (r->scanning) tg_scan_feed(&r->scan, data, len);
    if (r->out_mode == OUT_REFRAME && !(r->scanning && r->scan.strip_usage)) out_data(c, data, len);
}

static bool header_starts(const struct tg_http_msg *m, const char *name, const char *prefix)
{
    size_t vlen;
    const char *v = tg_http_header(m, name, &vlen);
    size_t pl = strlen(prefix);
    return v && vlen >= pl && strncasecmp(v, prefix, pl) == 0;
}

static void send_resp_head(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct tg_http_msg *um = &r->umsg;
    r->status = um->status;
    if (um->status >= 500) r->upstream_failed = true;
    bool sse = header_starts(um, "content-type", "text/event-stream");
    if (r->route->cost != TG_COST_REQUESTS && !r->bodyless && !um->done) {
        bool strip = r->strip_usage && sse;
        tg_scan_init(&r->scan, sse, strip, strip ? on_scan_emit : NULL, c);
        r->scanning = true;
    }
    /* An HTTP/1.0 client cannot read chunks (RFC 9112 7): it gets the body
     * de-chunked, delimited by the close. */
    bool dechunk = c->http10 && um->chunked && !um->done;
    if ((r->scanning && r->scan.strip_usage) || (um->until_close && !um->done) || dechunk)
        r->out_mode = OUT_REFRAME;
    else
        r->out_mode = OUT_PASS;
    bool close = !c->keep_alive || c->w->draining;
    if (r->out_mode == OUT_REFRAME) {
        r->out_chunked = !c->http10;
        if (c->http10) close = true;
    }
    c->keep_alive = !close;
    struct headbuf hb;
    hb_init(&hb, bufferevent_get_output(c->bev));
    hb_status_line(&hb, um->status);
    struct hrun run = {NULL, 0};
    for (size_t i = 0; i < um->nheaders; i++) {
        const struct tg_http_header *h = &um->headers[i];
        if (tg_http_is_hop_by_hop(h->name, h->nlen) || tg_http_listed(um, h->name, h->nlen) ||
            tg_http_lc_is(h->name, h->nlen, "x-request-id") ||
            (r->out_mode == OUT_REFRAME && tg_http_lc_is(h->name, h->nlen, "content-length")))
            continue;
        hb_keep(&hb, &run, h);
    }
    hb_run_flush(&hb, &run);
    if (r->out_chunked || (r->out_mode == OUT_PASS && um->chunked))
        hb_add(&hb, "Transfer-Encoding: chunked\r\n", 28);
    add_common_headers(c, &hb, close);
    hb_add(&hb, "\r\n", 2);
    r->bytes_out += (int64_t)hb_flush(&hb);
    r->resp_started = true;
}

static void resp_complete(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    if (r->scanning) tg_scan_finish(&r->scan);
    if (r->out_chunked) {
        evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
        r->bytes_out += 5;
    }
    struct tg_upconn *up = r->up;
    r->up = NULL;
    up_detach(c, up);
    tg_pool_release(up, r->umsg.keep_alive);
    req_finish(c, r->upstream_failed ? TG_DECISION_ERROR : TG_DECISION_ALLOWED);
}

/* Moves reply bytes from the upstream to the client, parsing as they pass. */
void pump_body(struct tg_conn *c)
{
    struct tg_req *r = c->req;
    struct bufferevent *ub = tg_upconn_bev(r->up);
    struct evbuffer *in = bufferevent_get_input(ub);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct evbuffer_iovec v[8];
    while (!r->umsg.done && evbuffer_get_length(in) > 0) {
        int nv = evbuffer_peek(in, -1, NULL, v, 8);
        if (nv > 8) nv = 8;
        size_t used = 0;
        bool stop = false;
        for (int i = 0; i < nv && !stop; i++) {
            ssize_t n = tg_http_feed(&r->umsg, v[i].iov_base, v[i].iov_len);
            if (n < 0) {
                r->bad_reply = true;
                up_event_cb(ub, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
                return;
            }
            used += (size_t)n;
            stop = (size_t)n < v[i].iov_len || r->umsg.done;
        }
        if (used == 0 && !r->umsg.done) { /* the parser took nothing: never spin */
            up_event_cb(ub, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        r->up_bytes += (int64_t)used;
        if (r->out_mode == OUT_PASS) {
            evbuffer_remove_buffer(in, out, used);
            r->bytes_out += (int64_t)used;
        } else {
            evbuffer_drain(in, used);
        }
    }
    if (r->umsg.done) {
        resp_complete(c);
        return;
    }
    flush_out(c->bev, true);
    if (evbuffer_get_length(out) > CLIENT_HIGH_WATER && !r->paused) {
        r->paused = true;
        up_reading(c, false);
    }
}

void up_read_cb(struct bufferevent *bev, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if (!r->resp_head) {
        struct evbuffer *in = bufferevent_get_input(bev);
        ssize_t n = scan_head(in, &r->uscan);
        if (n == 0) return;
        if (n < 0) {
            r->bad_reply = true;
            up_event_cb(bev, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        size_t hlen = (size_t)n;
        if (!reserve_head(&r->uhead, &r->uhead_cap, hlen)) {
            up_event_cb(bev, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        evbuffer_remove(in, r->uhead, hlen);
        r->up_bytes += (int64_t)hlen;
        tg_http_msg_init(&r->umsg, TG_HTTP_REPLY, on_resp_body, c);
        r->umsg.skip_body = r->msg.method == TG_HTTP_HEAD;
        /* 101 switches protocols, which was never asked for. */
        if (tg_http_parse_head(&r->umsg, r->uhead, hlen) != TG_HTTP_OK || r->umsg.status == 101) {
            r->bad_reply = true;
            up_event_cb(bev, BEV_EVENT_ERROR | BEV_EVENT_READING, c);
            return;
        }
        if (r->umsg.status / 100 == 1) {
            tg_http_scan_init(&r->uscan, TG_HTTP_REPLY);
            up_read_cb(bev, arg); /* an interim reply: wait for the final one */
            return;
        }
        r->resp_head = true;
        send_resp_head(c);
    }
    pump_body(c);
}

void up_write_cb(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) bufferevent_disable(bev, EV_WRITE);
}

/* The upstream connection ended or failed while serving this request. */
void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct tg_conn *c = arg;
    struct tg_req *r = c->req;
    if ((what & BEV_EVENT_EOF) && r->resp_head && !r->umsg.done) {
        pump_body(c);
        if (r->up == NULL) return; /* completed */
        tg_http_feed_eof(&r->umsg);
        if (r->umsg.done) {
            r->umsg.keep_alive = false;
            resp_complete(c);
            return;
        }
    }
    struct tg_upconn *up = r->up;
    bool reused = tg_upconn_reused(up);
    r->up = NULL;
    up_detach(c, up);
    tg_pool_release(up, false);
    if (!r->resp_head && r->up_bytes == 0 && reused && !r->retried && !r->bad_reply &&
        !(what & BEV_EVENT_TIMEOUT)) {
        /* A stale keep-alive connection: once more on a fresh one. */
        r->retried = true;
        r->acquiring = true;
        tg_pool_acquire(r->pool, on_upconn, c);
        return;
    }
    r->upstream_failed = true;
    if (!r->resp_started) {
        bool timeout = (what & BEV_EVENT_TIMEOUT) != 0;
        log_upstream_failure(r, "upstream %s %s", r->upstream->name,
                             timeout        ? "did not answer in time"
                             : r->bad_reply ? "sent a reply that is not valid HTTP/1.1"
                                            : "closed the connection");
        if (r->bad_reply)
            reply_error(c, 502, "server_error", "upstream_error",
                        "The upstream model server sent a reply that is not valid HTTP/1.1.", false,
                        TG_DECISION_ERROR);
        else if (timeout)
            reply_error(c, 504, "server_error", "upstream_timeout",
                        "The upstream model server did not answer in time.", false,
                        TG_DECISION_ERROR);
        else
            reply_error(c, 502, "server_error", "upstream_error",
                        "The upstream model server closed the connection without a reply.", false,
                        TG_DECISION_ERROR);
        return;
    }
    /* Mid-stream: the client's reply ends here, without a clean end. */
    log_upstream_failure(r, "upstream %s stream %s after %lld bytes", r->upstream->name,
                         r->bad_reply ? "broke its framing" : "cut", (long long)r->up_bytes);
    c->keep_alive = false;
    if (r->scanning) tg_scan_finish(&r->scan);
    req_finish(c, TG_DECISION_ERROR);
}
