/* Mock OpenAI-compatible model server for tests and the demo, with fault knobs. */
/*
 * mock_model --listen HOST:PORT [--threads N] [--quiet]   (port 0: any; prints LISTENING <port>)
 *
 * POST /v1/chat/completions, /v1/completions  OpenAI shape; prompt_tokens = ceil(chars of the
 *      message contents (or prompt) / 4); completion_tokens = x-mock-completion-tokens (30),
 *      capped by max_completion_tokens or max_tokens (finish_reason "length"); the content is
 *      "tok " per token. "stream": true gives SSE (chunked): one event per token, a finish
 *      event, a usage-only event ("choices": []) if stream_options.include_usage, data: [DONE].
 * POST /v1/embeddings  8-dim vectors per input, usage {prompt_tokens, total_tokens}
 * POST /v1/videos      {"id":"video_mock<n>","object":"video","status":"queued",...} echoing
 *      seconds (default "4") and size (default "720x1280") from a JSON or multipart body
 * GET  /v1/models
 * Knobs (request headers): x-mock-delay-ms (before the head), x-mock-chunk-delay-ms (between
 *      SSE events), x-mock-status (that status + OpenAI error body), x-mock-completion-tokens,
 *      x-mock-reset-after-chunks N (RST after N SSE events; on a non-stream request RST instead
 *      of replying), x-mock-hang (never reply), x-mock-close (reply, then close),
 *      x-mock-chunked (chunked JSON reply), x-mock-header "Name: value" (added to the reply;
 *      repeatable).
 * Control (not counted): GET /__last (the last model request: method, path, query, headers,
 *      header_list, body), GET /__stats {requests, connections, open_connections, cancelled},
 *      POST /__reset. A connection whose first request is a control one is not counted.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <http_parser.h>
#include <jansson.h>

#define MAX_BODY (64u << 20) /* larger request bodies get 413 */
#define MAX_THREADS 64
#define STREAM_BATCH (64 * 1024) /* bytes queued per turn when streaming without delay */
#define EMBED_DIMS 8
#define DEFAULT_COMPLETION_TOKENS 30
#define MODEL_LEN 512

/* ---- small growable byte buffer ---- */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) abort();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_adds(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* ---- one parsed request ---- */

struct hdr {
    size_t name_off, name_len, val_off, val_len;
};

struct req {
    int method;
    unsigned short major, minor;
    bool keep_alive;
    int last_cb; /* 0 none, 1 header field, 2 header value */
    struct sbuf url, hbuf, body;
    struct hdr *hdrs;
    size_t nhdr, hcap;
};

static void req_reset(struct req *r)
{
    r->url.len = r->hbuf.len = r->body.len = 0;
    r->nhdr = 0;
    r->last_cb = 0;
    r->keep_alive = true;
}

static void req_free(struct req *r)
{
    if (!r) return;
    free(r->url.p);
    free(r->hbuf.p);
    free(r->body.p);
    free(r->hdrs);
    free(r);
}

static struct req *req_new(void)
{
    struct req *r = calloc(1, sizeof(*r));
    if (!r) abort();
    req_reset(r);
    return r;
}

/* Value of the first header called name (case-insensitive) or NULL; *len gets its length. */
static const char *req_header(const struct req *r, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < r->nhdr; i++) {
        const struct hdr *h = &r->hdrs[i];
        if (h->name_len == nl && strncasecmp(r->hbuf.p + h->name_off, name, nl) == 0) {
            *len = h->val_len;
            return r->hbuf.p + h->val_off;
        }
    }
    return NULL;
}

/* Integer value of a header, or dflt when absent or not a number. */
static long req_header_long(const struct req *r, const char *name, long dflt)
{
    size_t len;
    const char *v = req_header(r, name, &len);
    char tmp[32];
    if (!v || len == 0 || len >= sizeof(tmp)) return dflt;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    char *end;
    errno = 0;
    long x = strtol(tmp, &end, 10);
    if (errno || *end != '\0') return dflt;
    return x;
}

static bool req_header_true(const struct req *r, const char *name)
{
    size_t len;
    const char *v = req_header(r, name, &len);
    if (!v) return false;
    return !(len == 1 && (v[0] == '0')) && !(len == 5 && strncasecmp(v, "false", 5) == 0);
}

/* ---- process-wide state ---- */

static atomic_long st_requests, st_connections, st_open, st_cancelled, st_seq;
static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;
static struct req *last_req; /* the last counted request, swapped in whole */
static bool quiet;

struct worker;

enum conn_state { C_READ, C_DELAY, C_STREAM, C_FLUSH, C_HANG };

enum kind { K_ERROR, K_CHAT, K_COMPLETIONS, K_EMBEDDINGS, K_MODELS, K_VIDEOS };

/* Everything a reply needs, taken from the request when it completes. */
struct plan {
    enum kind kind;
    int status;
    char errmsg[160];
    char model[MODEL_LEN]; /* JSON-escaped */
    long prompt_tokens, completion_tokens, inputs;
    bool stream, include_usage, finish_length;
    char seconds[64], size[64]; /* JSON-escaped */
    long delay_ms, chunk_delay_ms, reset_after;
    bool hang, close, chunked;
    struct sbuf extra; /* extra reply header lines, CRLF-terminated */
};

struct conn {
    struct worker *w;
    struct bufferevent *bev;
    http_parser parser;
    struct req *req;
    enum conn_state state;
    bool msg_done;    /* parser paused on a complete message */
    bool in_flight;   /* a counted request whose reply is not fully sent */
    bool close_after; /* close once the reply is flushed */
    bool reset_after; /* reset once what is queued is flushed */
    bool raw_stream;  /* HTTP/1.0 client: stream without chunk framing */
    bool used;        /* has carried a request */
    bool control;     /* its first request was a /__ one: not counted in the stats */
    struct event *timer;
    struct plan plan;
    long ev_sent, ev_total;
    long created;
    char id[48];
    struct conn *prev, *next;
};

struct worker {
    struct event_base *base;
    struct evconnlistener *listener;
    struct conn *conns;
    pthread_t thread;
};

static struct worker workers[MAX_THREADS];
static int nworkers = 1;

static void conn_parse(struct conn *c);
static void stream_step(struct conn *c);

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->timer) event_free(c->timer);
    if (c->bev) bufferevent_free(c->bev);
    req_free(c->req);
    free(c->plan.extra.p);
    if (!c->control) atomic_fetch_sub(&st_open, 1);
    free(c);
}

/* The reply is fully queued: reply_done runs once the output has drained (from the
 * write callback, or from a zero timer when nothing is left to write). */
static void finish(struct conn *c)
{
    c->state = C_FLUSH;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        struct timeval tv = {0, 0};
        evtimer_add(c->timer, &tv);
    }
}

static void plan_clear(struct plan *p)
{
    struct sbuf extra = p->extra;
    memset(p, 0, sizeof(*p));
    p->extra = extra;
    p->extra.len = 0;
    p->reset_after = -1;
}

static void conn_reset(struct conn *c)
{
    struct linger lg = {1, 0};
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    conn_free(c);
}

/* ---- JSON helpers ---- */

static void json_escape(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", ch);
        } else {
            dst[o++] = (char)ch;
        }
    }
    dst[o] = '\0';
}

static long utf8_chars(const char *s, size_t n)
{
    long c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

static long text_chars(const json_t *v)
{
    if (json_is_string(v)) return utf8_chars(json_string_value(v), json_string_length(v));
    long c = 0;
    if (json_is_array(v)) {
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e)
        {
            if (json_is_string(e))
                c += text_chars(e);
            else if (json_is_object(e))
                c += text_chars(json_object_get(e, "text"));
        }
    }
    return c;
}

static long json_long(const json_t *v, long dflt)
{
    if (json_is_integer(v)) return (long)json_integer_value(v);
    if (json_is_real(v)) return (long)json_real_value(v);
    return dflt;
}

/* Copies a string field (or a number, printed) into dst, JSON-escaped. */
static void json_field_str(char *dst, size_t cap, const json_t *v, const char *dflt)
{
    char num[32];
    if (json_is_string(v)) {
        json_escape(dst, cap, json_string_value(v), json_string_length(v));
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        json_escape(dst, cap, num, strlen(num));
    } else if (json_is_real(v)) {
        snprintf(num, sizeof(num), "%g", json_real_value(v));
        json_escape(dst, cap, num, strlen(num));
    } else {
        json_escape(dst, cap, dflt, strlen(dflt));
    }
}

/* Crude multipart/form-data field lookup: the value after name="field" and a blank line. */
static bool form_field(const struct sbuf *body, const char *field, char *dst, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "name=\"%s\"", field);
    if (!body->p) return false;
    const char *p = memmem(body->p, body->len, pat, strlen(pat));
    if (!p) return false;
    const char *end = body->p + body->len;
    const char *v = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
    if (!v) return false;
    v += 4;
    const char *e = memmem(v, (size_t)(end - v), "\r\n", 2);
    if (!e) e = end;
    json_escape(dst, cap, v, (size_t)(e - v));
    return true;
}

/* ---- reply writing ---- */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* Writes the status line and headers. clen == -1 means a body of unknown length:
 * chunked for HTTP/1.1 clients, read-until-close for HTTP/1.0 ones; clen == -2
 * means a reply that has no body by definition (204, 304). */
static void write_head(struct conn *c, int status, const char *ctype, long clen)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    bool http10 = c->req->major == 1 && c->req->minor == 0;
    if (clen == -1 && http10) c->close_after = true;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status, reason(status),
                        ctype);
    if (clen >= 0)
        evbuffer_add_printf(out, "Content-Length: %ld\r\n", clen);
    else if (clen == -1 && !http10)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    if (c->close_after)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (http10)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
    if (c->plan.extra.len) evbuffer_add(out, c->plan.extra.p, c->plan.extra.len);
    evbuffer_add(out, "\r\n", 2);
    c->raw_stream = clen == -1 && http10;
}

/* Writes a complete reply with the given body; chunked (in three pieces) when asked. */
static void write_reply(struct conn *c, int status, const char *ctype, const char *body, size_t n)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (status == 204 || status == 304) {
        write_head(c, status, ctype, -2);
    } else if (c->req->method == HTTP_HEAD) {
        write_head(c, status, ctype, (long)n);
    } else if (c->plan.chunked) {
        write_head(c, status, ctype, -1);
        if (c->raw_stream) {
            evbuffer_add(out, body, n);
        } else {
            size_t piece = n / 3 + 1;
            for (size_t off = 0; off < n; off += piece) {
                size_t k = n - off < piece ? n - off : piece;
                evbuffer_add_printf(out, "%zx\r\n", k);
                evbuffer_add(out, body + off, k);
                evbuffer_add(out, "\r\n", 2);
            }
            evbuffer_add(out, "0\r\n\r\n", 5);
        }
    } else {
        write_head(c, status, ctype, (long)n);
        evbuffer_add(out, body, n);
    }
    finish(c);
}

static void write_json(struct conn *c, int status, const char *body, size_t n)
{
    write_reply(c, status, "application/json", body, n);
}

static void write_error(struct conn *c, int status, const char *msg)
{
    const char *type = status == 429   ? "rate_limit_exceeded"
                       : status >= 500 ? "server_error"
                       : status == 401 ? "authentication_error"
                                       : "invalid_request_error";
    char esc[512], body[1024];
    json_escape(esc, sizeof(esc), msg, strlen(msg));
    int n = snprintf(
        body, sizeof(body),
        "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"mock_%d\"}}", esc,
        type, status);
    write_json(c, status, body, (size_t)n);
}

static void write_dynamic_json(struct conn *c, int status, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!s) abort();
    write_json(c, status, s, strlen(s));
    free(s);
}

/* ---- the model endpoints ---- */

static void usage_json(char *dst, size_t cap, const struct plan *p)
{
    snprintf(dst, cap, "{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,\"total_tokens\":%ld}",
             p->prompt_tokens, p->completion_tokens, p->prompt_tokens + p->completion_tokens);
}

static void reply_completion(struct conn *c)
{
    const struct plan *p = &c->plan;
    struct sbuf b = {0};
    char head[1024], usage[160];
    bool chat = p->kind == K_CHAT;
    snprintf(head, sizeof(head),
             "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\",\"choices\":[{"
             "\"index\":0,",
             c->id, chat ? "chat.completion" : "text_completion", c->created, p->model);
    sb_adds(&b, head);
    sb_adds(&b, chat ? "\"message\":{\"role\":\"assistant\",\"content\":\"" : "\"text\":\"");
    for (long i = 0; i < p->completion_tokens; i++)
        sb_add(&b, "tok ", 4);
    sb_adds(&b, "\"");
    if (!chat) {
        sb_adds(&b, ",\"message\":{\"role\":\"assistant\",\"content\":\"");
        for (long i = 0; i < p->completion_tokens; i++)
            sb_add(&b, "tok ", 4);
        sb_adds(&b, "\"}");
    } else {
        sb_adds(&b, "}");
    }
    usage_json(usage, sizeof(usage), p);
    snprintf(head, sizeof(head), ",\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":%s}",
             p->finish_length ? "length" : "stop", usage);
    sb_adds(&b, head);
    write_json(c, 200, b.p, b.len);
    free(b.p);
}

static void reply_embeddings(struct conn *c)
{
    const struct plan *p = &c->plan;
    struct sbuf b = {0};
    char tmp[1024];
    sb_adds(&b, "{\"object\":\"list\",\"data\":[");
    for (long i = 0; i < p->inputs; i++) {
        snprintf(tmp, sizeof(tmp), "%s{\"object\":\"embedding\",\"index\":%ld,\"embedding\":[",
                 i ? "," : "", i);
        sb_adds(&b, tmp);
        for (int d = 0; d < EMBED_DIMS; d++) {
            snprintf(tmp, sizeof(tmp), "%s%.4f", d ? "," : "",
                     ((double)((i + 1) * (d + 1) % 17) - 8.0) / 16.0);
            sb_adds(&b, tmp);
        }
        sb_adds(&b, "]}");
    }
    snprintf(tmp, sizeof(tmp),
             "],\"model\":\"%s\",\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld}}", p->model,
             p->prompt_tokens, p->prompt_tokens);
    sb_adds(&b, tmp);
    write_json(c, 200, b.p, b.len);
    free(b.p);
}

static void reply_models(struct conn *c)
{
    static const char *const names[] = {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small",
                                        "sora-2"};
    struct sbuf b = {0};
    char tmp[256];
    sb_adds(&b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(
            tmp, sizeof(tmp),
            "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"mock\"}",
            i ? "," : "", names[i]);
        sb_adds(&b, tmp);
    }
    sb_adds(&b, "]}");
    write_json(c, 200, b.p, b.len);
    free(b.p);
}

static void reply_video(struct conn *c)
{
    const struct plan *p = &c->plan;
    char body[1024];
    int n = snprintf(
        body, sizeof(body),
        "{\"id\":\"%s\",\"object\":\"video\",\"model\":\"%s\",\"status\":\"queued\",\"progress\":0,"
        "\"created_at\":%ld,\"seconds\":\"%s\",\"size\":\"%s\"}",
        c->id, p->model, c->created, p->seconds, p->size);
    write_json(c, 200, body, (size_t)n);
}

/* ---- streaming ---- */

static void stream_write(struct conn *c, const char *ev, size_t n)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->raw_stream) {
        evbuffer_add(out, ev, n);
        return;
    }
    evbuffer_add_printf(out, "%zx\r\n", n);
    evbuffer_add(out, ev, n);
    evbuffer_add(out, "\r\n", 2);
}

/* Queues SSE event number k of the stream. */
static void stream_event(struct conn *c, long k)
{
    const struct plan *p = &c->plan;
    bool chat = p->kind == K_CHAT;
    const char *obj = chat ? "chat.completion.chunk" : "text_completion";
    const char *unull = p->include_usage ? ",\"usage\":null" : "";
    char ev[2048], usage[160];
    int n;
    if (k < p->completion_tokens) {
        if (chat)
            n = snprintf(ev, sizeof(ev),
                         "data: "
                         "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\","
                         "\"choices\":[{\"index\":0,"
                         "\"delta\":{%s\"content\":\"tok "
                         "\"},\"logprobs\":null,\"finish_reason\":null}]%s}\n\n",
                         c->id, obj, c->created, p->model, k == 0 ? "\"role\":\"assistant\"," : "",
                         unull);
        else
            n = snprintf(ev, sizeof(ev),
                         "data: "
                         "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\","
                         "\"choices\":[{\"index\":0,"
                         "\"text\":\"tok \",\"logprobs\":null,\"finish_reason\":null}]%s}\n\n",
                         c->id, obj, c->created, p->model, unull);
    } else if (k == p->completion_tokens) {
        n = snprintf(ev, sizeof(ev),
                     "data: "
                     "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\","
                     "\"choices\":[{\"index\":0,"
                     "%s,\"logprobs\":null,\"finish_reason\":\"%s\"}]%s}\n\n",
                     c->id, obj, c->created, p->model, chat ? "\"delta\":{}" : "\"text\":\"\"",
                     p->finish_length ? "length" : "stop", unull);
    } else if (p->include_usage && k == p->completion_tokens + 1) {
        usage_json(usage, sizeof(usage), p);
        n = snprintf(ev, sizeof(ev),
                     "data: "
                     "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\","
                     "\"choices\":[],\"usage\":%s}\n\n",
                     c->id, obj, c->created, p->model, usage);
    } else {
        n = snprintf(ev, sizeof(ev), "data: [DONE]\n\n");
    }
    stream_write(c, ev, (size_t)n);
}

static void stream_finish(struct conn *c)
{
    if (!c->raw_stream) evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
    finish(c);
}

/* Queues the next events: one per turn with a chunk delay, else a batch bounded by
 * STREAM_BATCH (the rest follows when the output has drained). */
static void stream_step(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->ev_sent < c->ev_total) {
        if (c->plan.reset_after >= 0 && c->ev_sent >= c->plan.reset_after) {
            c->reset_after = true;
            finish(c);
            return;
        }
        stream_event(c, c->ev_sent++);
        if (c->plan.chunk_delay_ms > 0 && c->ev_sent < c->ev_total) {
            struct timeval tv = {c->plan.chunk_delay_ms / 1000,
                                 (c->plan.chunk_delay_ms % 1000) * 1000};
            evtimer_add(c->timer, &tv);
            return;
        }
        if (evbuffer_get_length(out) >= STREAM_BATCH) return;
    }
    if (c->plan.reset_after >= 0 && c->ev_sent >= c->plan.reset_after) {
        c->reset_after = true;
        finish(c);
        return;
    }
    stream_finish(c);
}

/* ---- dispatch ---- */

static void start_reply(struct conn *c)
{
    const struct plan *p = &c->plan;
    if (p->kind == K_ERROR) {
        write_error(c, p->status, p->errmsg);
        return;
    }
    if (p->reset_after >= 0 && !p->stream) {
        c->reset_after = true;
        finish(c);
        return;
    }
    switch (p->kind) {
    case K_CHAT:
    case K_COMPLETIONS:
        if (p->stream) {
            write_head(c, 200, "text/event-stream", -1);
            c->ev_sent = 0;
            c->ev_total = p->completion_tokens + 2 + (p->include_usage ? 1 : 0);
            c->state = C_STREAM;
            stream_step(c);
        } else {
            reply_completion(c);
        }
        break;
    case K_EMBEDDINGS:
        reply_embeddings(c);
        break;
    case K_MODELS:
        reply_models(c);
        break;
    case K_VIDEOS:
        reply_video(c);
        break;
    case K_ERROR:
        break;
    }
}

static void reply_done(struct conn *c);

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (c->state == C_DELAY)
        start_reply(c);
    else if (c->state == C_STREAM)
        stream_step(c);
    else if (c->state == C_FLUSH && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        reply_done(c);
}

/* Fills the plan of a model endpoint from the request's knobs and body. */
static void plan_model_request(struct conn *c, enum kind kind, const char *endpoint)
{
    struct plan *p = &c->plan;
    struct req *r = c->req;
    p->kind = kind;
    p->delay_ms = req_header_long(r, "x-mock-delay-ms", 0);
    p->chunk_delay_ms = req_header_long(r, "x-mock-chunk-delay-ms", 0);
    p->reset_after = req_header_long(r, "x-mock-reset-after-chunks", -1);
    p->hang = req_header_true(r, "x-mock-hang");
    p->close = req_header_true(r, "x-mock-close");
    p->chunked = req_header_true(r, "x-mock-chunked");
    long status = req_header_long(r, "x-mock-status", 0);
    for (size_t i = 0; i < r->nhdr; i++) {
        const struct hdr *h = &r->hdrs[i];
        if (h->name_len == 13 && strncasecmp(r->hbuf.p + h->name_off, "x-mock-header", 13) == 0) {
            sb_add(&p->extra, r->hbuf.p + h->val_off, h->val_len);
            sb_add(&p->extra, "\r\n", 2);
        }
    }
    long n = atomic_fetch_add(&st_seq, 1) + 1;
    const char *prefix = kind == K_CHAT          ? "chatcmpl-mock"
                         : kind == K_COMPLETIONS ? "cmpl-mock"
                         : kind == K_VIDEOS      ? "video_mock"
                                                 : "mock";
    snprintf(c->id, sizeof(c->id), "%s%ld", prefix, n);
    c->created = (long)time(NULL);

    if (status > 200 && status <= 599) {
        p->kind = K_ERROR;
        p->status = (int)status;
        snprintf(p->errmsg, sizeof(p->errmsg), "mock status %ld on %s", status, endpoint);
        return;
    }
    if (kind == K_MODELS) return;

    json_t *root = NULL;
    if (r->body.len) {
        json_error_t jerr;
        root = json_loadb(r->body.p, r->body.len, 0, &jerr);
    }
    if (kind == K_VIDEOS) {
        if (json_is_object(root)) {
            json_field_str(p->model, sizeof(p->model), json_object_get(root, "model"), "sora-2");
            json_field_str(p->seconds, sizeof(p->seconds), json_object_get(root, "seconds"), "4");
            json_field_str(p->size, sizeof(p->size), json_object_get(root, "size"), "720x1280");
        } else {
            if (!form_field(&r->body, "model", p->model, sizeof(p->model)))
                strcpy(p->model, "sora-2");
            if (!form_field(&r->body, "seconds", p->seconds, sizeof(p->seconds)))
                strcpy(p->seconds, "4");
            if (!form_field(&r->body, "size", p->size, sizeof(p->size)))
                strcpy(p->size, "720x1280");
        }
        json_decref(root);
        return;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        p->kind = K_ERROR;
        p->status = 400;
        snprintf(p->errmsg, sizeof(p->errmsg), "request body is not a JSON object");
        return;
    }
    json_field_str(p->model, sizeof(p->model), json_object_get(root, "model"), "mock-model");
    long chars = 0;
    if (kind == K_EMBEDDINGS) {
        const json_t *in = json_object_get(root, "input");
        long tokens = 0;
        p->inputs = 1;
        if (json_is_array(in) && json_array_size(in) > 0) {
            const json_t *e0 = json_array_get(in, 0);
            if (json_is_integer(e0)) {
                tokens = (long)json_array_size(in);
            } else {
                size_t i;
                const json_t *e;
                p->inputs = (long)json_array_size(in);
                json_array_foreach(in, i, e)
                {
                    if (json_is_array(e))
                        tokens += (long)json_array_size(e);
                    else
                        chars += text_chars(e);
                }
            }
        } else {
            chars = text_chars(in);
        }
        p->prompt_tokens = (chars + 3) / 4 + tokens;
        json_decref(root);
        return;
    }
    if (kind == K_CHAT) {
        size_t i;
        const json_t *m;
        json_array_foreach(json_object_get(root, "messages"), i, m) chars +=
            text_chars(json_object_get(m, "content"));
    } else {
        chars = text_chars(json_object_get(root, "prompt"));
    }
    p->prompt_tokens = (chars + 3) / 4;
    long ct = req_header_long(r, "x-mock-completion-tokens", DEFAULT_COMPLETION_TOKENS);
    if (ct < 0) ct = 0;
    long cap = json_long(json_object_get(root, "max_completion_tokens"), -1);
    if (cap < 0) cap = json_long(json_object_get(root, "max_tokens"), -1);
    if (cap >= 0 && ct > cap) {
        ct = cap;
        p->finish_length = true;
    }
    p->completion_tokens = ct;
    p->stream = json_is_true(json_object_get(root, "stream"));
    p->include_usage =
        json_is_true(json_object_get(json_object_get(root, "stream_options"), "include_usage"));
    json_decref(root);
}

static json_t *last_json(const struct req *r)
{
    json_t *o = json_object();
    json_t *h = json_object(), *hl = json_array();
    struct http_parser_url u;
    const char *url = r->url.p ? r->url.p : "";
    char path[4096] = "", query[4096] = "";
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, r->url.len, r->method == HTTP_CONNECT, &u) == 0) {
        if (u.field_set & (1 << UF_PATH))
            snprintf(path, sizeof(path), "%.*s", (int)u.field_data[UF_PATH].len,
                     url + u.field_data[UF_PATH].off);
        if (u.field_set & (1 << UF_QUERY))
            snprintf(query, sizeof(query), "%.*s", (int)u.field_data[UF_QUERY].len,
                     url + u.field_data[UF_QUERY].off);
    } else {
        snprintf(path, sizeof(path), "%s", url);
    }
    json_object_set_new(o, "method", json_string(http_method_str((enum http_method)r->method)));
    json_object_set_new(o, "url", json_stringn(url, r->url.len));
    json_object_set_new(o, "path", json_string(path));
    json_object_set_new(o, "query", json_string(query));
    char ver[16];
    snprintf(ver, sizeof(ver), "%u.%u", r->major, r->minor);
    json_object_set_new(o, "version", json_string(ver));
    for (size_t i = 0; i < r->nhdr; i++) {
        const struct hdr *x = &r->hdrs[i];
        char name[256];
        size_t nl = x->name_len < sizeof(name) - 1 ? x->name_len : sizeof(name) - 1;
        for (size_t k = 0; k < nl; k++) {
            char ch = r->hbuf.p[x->name_off + k];
            name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        name[nl] = '\0';
        json_t *val = json_stringn(r->hbuf.p + x->val_off, x->val_len);
        if (!val) val = json_string("<invalid utf-8>");
        json_t *pair = json_array();
        json_array_append_new(pair, json_stringn(r->hbuf.p + x->name_off, x->name_len));
        json_array_append(pair, val);
        json_array_append_new(hl, pair);
        json_t *prev = json_object_get(h, name);
        if (prev) {
            struct sbuf j = {0};
            sb_adds(&j, json_string_value(prev));
            sb_adds(&j, ", ");
            sb_adds(&j, json_string_value(val));
            json_object_set_new(h, name, json_string(j.p));
            free(j.p);
            json_decref(val);
        } else {
            json_object_set_new(h, name, val);
        }
    }
    json_object_set_new(o, "headers", h);
    json_object_set_new(o, "header_list", hl);
    json_t *body = json_stringn(r->body.p ? r->body.p : "", r->body.len);
    json_object_set_new(o, "body", body ? body : json_string("<invalid utf-8>"));
    json_object_set_new(o, "body_length", json_integer((json_int_t)r->body.len));
    return o;
}

/* Handles the test-control endpoints under /__; returns false if the path is not one. */
static bool dispatch_control(struct conn *c, const char *path, size_t plen)
{
    if (plen < 3 || memcmp(path, "/__", 3) != 0) return false;
    if (!c->used) {
        /* connections that only talk to the control endpoints are not counted */
        c->control = true;
        atomic_fetch_sub(&st_connections, 1);
        atomic_fetch_sub(&st_open, 1);
    }
    c->used = true;
    if (plen == 8 && memcmp(path, "/__stats", 8) == 0) {
        char body[256];
        int n = snprintf(
            body, sizeof(body),
            "{\"requests\":%ld,\"connections\":%ld,\"open_connections\":%ld,\"cancelled\":%ld}",
            atomic_load(&st_requests), atomic_load(&st_connections), atomic_load(&st_open),
            atomic_load(&st_cancelled));
        write_json(c, 200, body, (size_t)n);
    } else if (plen == 8 && memcmp(path, "/__reset", 8) == 0) {
        atomic_store(&st_requests, 0);
        atomic_store(&st_connections, 0);
        atomic_store(&st_cancelled, 0);
        pthread_mutex_lock(&last_lock);
        req_free(last_req);
        last_req = NULL;
        pthread_mutex_unlock(&last_lock);
        write_json(c, 200, "{\"ok\":true}", 11);
    } else if (plen == 7 && memcmp(path, "/__last", 7) == 0) {
        json_t *o = NULL;
        pthread_mutex_lock(&last_lock);
        if (last_req) o = last_json(last_req);
        pthread_mutex_unlock(&last_lock);
        if (o)
            write_dynamic_json(c, 200, o);
        else
            write_error(c, 404, "no request yet");
    } else {
        write_error(c, 404, "unknown control path");
    }
    return true;
}

static void dispatch(struct conn *c)
{
    struct req *r = c->req;
    struct plan *p = &c->plan;
    const char *url = r->url.p ? r->url.p : "";
    size_t plen = strcspn(url, "?");
    plan_clear(p);
    c->close_after = !r->keep_alive;
    c->reset_after = false;

    if (dispatch_control(c, url, plen)) return;

    atomic_fetch_add(&st_requests, 1);
    c->in_flight = true;
    c->used = true;
    struct {
        const char *path;
        enum kind kind;
        int method;
    } routes[] = {
        {"/v1/chat/completions", K_CHAT, HTTP_POST}, {"/v1/completions", K_COMPLETIONS, HTTP_POST},
        {"/v1/embeddings", K_EMBEDDINGS, HTTP_POST}, {"/v1/models", K_MODELS, HTTP_GET},
        {"/v1/videos", K_VIDEOS, HTTP_POST},
    };
    bool found = false;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strlen(routes[i].path) == plen && memcmp(url, routes[i].path, plen) == 0) {
            found = true;
            if (r->method != routes[i].method &&
                !(routes[i].method == HTTP_GET && r->method == HTTP_HEAD)) {
                p->kind = K_ERROR;
                p->status = 405;
                snprintf(p->errmsg, sizeof(p->errmsg), "method %s not allowed on %s",
                         http_method_str((enum http_method)r->method), routes[i].path);
                p->delay_ms = req_header_long(r, "x-mock-delay-ms", 0);
            } else {
                plan_model_request(c, routes[i].kind, routes[i].path);
            }
            break;
        }
    }
    if (!found) {
        p->kind = K_ERROR;
        p->status = 404;
        snprintf(p->errmsg, sizeof(p->errmsg), "no such endpoint: %.*s",
                 (int)(plen > 100 ? 100 : plen), url);
    }
    if (p->close) c->close_after = true;

    /* keep the request as the last one seen; take the previous one for reuse */
    struct req *old;
    pthread_mutex_lock(&last_lock);
    old = last_req;
    last_req = r;
    pthread_mutex_unlock(&last_lock);
    if (!old) old = req_new();
    struct req *mine = old;
    req_reset(mine);
    mine->major = r->major;
    mine->minor = r->minor;
    mine->method = r->method;
    c->req = mine;

    if (p->hang) {
        c->state = C_HANG;
    } else if (p->delay_ms > 0) {
        struct timeval tv = {p->delay_ms / 1000, (p->delay_ms % 1000) * 1000};
        c->state = C_DELAY;
        evtimer_add(c->timer, &tv);
    } else {
        start_reply(c);
    }
}

/* ---- http_parser callbacks ---- */

static int on_message_begin(http_parser *hp)
{
    struct conn *c = hp->data;
    req_reset(c->req);
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n)
{
    struct conn *c = hp->data;
    sb_add(&c->req->url, at, n);
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n)
{
    struct req *r = ((struct conn *)hp->data)->req;
    if (r->last_cb != 1) {
        if (r->nhdr == r->hcap) {
            r->hcap = r->hcap ? r->hcap * 2 : 16;
            r->hdrs = realloc(r->hdrs, r->hcap * sizeof(*r->hdrs));
            if (!r->hdrs) abort();
        }
        struct hdr *h = &r->hdrs[r->nhdr++];
        h->name_off = r->hbuf.len;
        h->name_len = 0;
        h->val_off = r->hbuf.len;
        h->val_len = 0;
        r->last_cb = 1;
    }
    sb_add(&r->hbuf, at, n);
    r->hdrs[r->nhdr - 1].name_len += n;
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t n)
{
    struct req *r = ((struct conn *)hp->data)->req;
    if (r->nhdr == 0) return 0;
    struct hdr *h = &r->hdrs[r->nhdr - 1];
    if (r->last_cb != 2) {
        h->val_off = r->hbuf.len;
        h->val_len = 0;
        r->last_cb = 2;
    }
    sb_add(&r->hbuf, at, n);
    h->val_len += n;
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    struct conn *c = hp->data;
    struct req *r = c->req;
    size_t len;
    const char *v = req_header(r, "expect", &len);
    if (v && len == 12 && strncasecmp(v, "100-continue", 12) == 0)
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
    struct req *r = ((struct conn *)hp->data)->req;
    if (r->body.len + n > MAX_BODY) return 1;
    sb_add(&r->body, at, n);
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    struct conn *c = hp->data;
    struct req *r = c->req;
    r->method = hp->method;
    r->major = hp->http_major;
    r->minor = hp->http_minor;
    r->keep_alive = http_should_keep_alive(hp) != 0;
    c->msg_done = true;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses what the input holds while no reply is in progress; dispatches each request. */
static void conn_parse(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (c->state == C_READ && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
        size_t n = http_parser_execute(&c->parser, &settings, v.iov_base, v.iov_len);
        evbuffer_drain(in, n);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (c->msg_done) {
            c->msg_done = false;
            http_parser_pause(&c->parser, 0);
            dispatch(c);
            continue;
        }
        if (e != HPE_OK) {
            bool big = e == HPE_CB_body;
            c->close_after = true;
            /* the parser stopped mid-request: answer for an HTTP/1.1 client, then close */
            c->req->major = 1;
            c->req->minor = 1;
            plan_clear(&c->plan);
            if (big)
                write_error(c, 413, "request body too large");
            else
                write_error(c, 400, http_errno_description(e));
            return;
        }
    }
}

/* ---- bufferevent callbacks ---- */

static void reply_done(struct conn *c)
{
    c->in_flight = false;
    if (c->reset_after) {
        conn_reset(c);
        return;
    }
    if (c->close_after) {
        conn_free(c);
        return;
    }
    c->state = C_READ;
    conn_parse(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state == C_READ) conn_parse(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state == C_STREAM && !evtimer_pending(c->timer, NULL)) stream_step(c);
    if (c->state == C_FLUSH && evbuffer_get_length(bufferevent_get_output(bev)) == 0) reply_done(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (c->in_flight) atomic_fetch_add(&st_cancelled, 1);
        conn_free(c);
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    struct worker *w = arg;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->w = w;
    c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(w->base, timer_cb, c);
    c->req = req_new();
    c->plan.reset_after = -1;
    if (!c->bev || !c->timer) {
        if (!c->bev) evutil_closesocket(fd);
        if (c->timer) event_free(c->timer);
        if (c->bev) bufferevent_free(c->bev);
        req_free(c->req);
        free(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    atomic_fetch_add(&st_connections, 1);
    atomic_fetch_add(&st_open, 1);
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- process ---- */

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    for (int i = 0; i < nworkers; i++)
        event_base_loopexit(workers[i].base, NULL);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static void worker_cleanup(struct worker *w)
{
    while (w->conns)
        conn_free(w->conns);
    if (w->listener) evconnlistener_free(w->listener);
    if (w->base) event_base_free(w->base);
}

/* HOST:PORT or [V6HOST]:PORT, numeric only; port 0 is allowed (evutil's parser refuses it). */
static int parse_listen(const char *s, struct sockaddr_storage *ss, int *len)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host)) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535) return -1;
    memset(ss, 0, sizeof(*ss));
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        host[hl - 1] = '\0';
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return inet_pton(AF_INET6, host + 1, &a6->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof(*a4);
    return inet_pton(AF_INET, host, &a4->sin_addr) == 1 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: mock_model --listen HOST:PORT [--threads N] [--quiet]\n"
                    "  port 0 picks a free port; prints LISTENING <port> when ready\n");
}

int main(int argc, char **argv)
{
    const char *listen_at = "127.0.0.1:0";
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_at = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            nworkers = atoi(argv[++i]);
            if (nworkers < 1 || nworkers > MAX_THREADS) {
                usage();
                return 2;
            }
        } else if (strcmp(argv[i], "--quiet") == 0) {
            quiet = true;
        } else {
            usage();
            return 2;
        }
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (parse_listen(listen_at, &ss, &sslen) != 0) {
        fprintf(stderr, "mock_model: bad listen address %s\n", listen_at);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    struct event *sigterm = NULL, *sigint = NULL;
    unsigned flags =
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | (nworkers > 1 ? LEV_OPT_REUSEABLE_PORT : 0);
    for (int i = 0; i < nworkers; i++) {
        struct worker *w = &workers[i];
        w->base = event_base_new();
        if (!w->base) goto out;
        w->listener = evconnlistener_new_bind(w->base, accept_cb, w, flags, 1024,
                                              (struct sockaddr *)&ss, sslen);
        if (!w->listener) {
            fprintf(stderr, "mock_model: cannot listen on %s: %s\n", listen_at, strerror(errno));
            goto out;
        }
        if (i == 0) {
            /* later threads bind the port the first one got */
            socklen_t len = sizeof(ss);
            getsockname(evconnlistener_get_fd(w->listener), (struct sockaddr *)&ss, &len);
            sslen = (int)len;
        }
    }
    sigterm = evsignal_new(workers[0].base, SIGTERM, stop_cb, NULL);
    sigint = evsignal_new(workers[0].base, SIGINT, stop_cb, NULL);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) || evsignal_add(sigint, NULL)) goto out;
    int port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    printf("LISTENING %d\n", port);
    fflush(stdout);
    if (!quiet)
        fprintf(stderr, "mock_model: listening on port %d with %d thread(s)\n", port, nworkers);
    for (int i = 1; i < nworkers; i++)
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    event_base_dispatch(workers[0].base);
    for (int i = 1; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    rc = 0;
out:
    if (sigterm) event_free(sigterm);
    if (sigint) event_free(sigint);
    for (int i = 0; i < nworkers; i++)
        worker_cleanup(&workers[i]);
    req_free(last_req);
    libevent_global_shutdown();
    return rc;
}
