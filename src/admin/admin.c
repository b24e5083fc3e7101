/* The admin listener: metrics, liveness and readiness over evhttp on the main loop; the
 * credits API's paths go to credits.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <openssl/crypto.h>
#include "tollgate/admin.h"
#include "tollgate/auth.h"
#include "tollgate/metrics.h"

/* The admin listener serves operators and scrapers: small limits are plenty. */
#define ADMIN_BACKLOG 64
#define ADMIN_TIMEOUT_S 10
#define ADMIN_MAX_HEADERS_SIZE 8192
#define ADMIN_MAX_BODY_SIZE 4096
#define ADMIN_REALM "Bearer realm=\"tollgate-admin\""
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_CONTENT_TYPE "text/plain; charset=utf-8"

struct tg_admin {
    struct evhttp *http;
    struct evconnlistener *listener; /* (ref) owned by http */
    tg_admin_ready_fn ready;
    void *ready_arg;
    bool have_token;
    uint8_t token_digest[32]; /* SHA-256 of the token: equal-length constant-time compare */
    struct tg_credit_api *credits; /* (ref) */
};

void tg_admin_set_credits(struct tg_admin *a, struct tg_credit_api *api)
{
    a->credits = api;
}

void tg_admin_set_token(struct tg_admin *a, const char *token)
{
    a->have_token = token != NULL && token[0] != '\0';
    if (a->have_token)
        tg_auth_hash(token, strlen(token), a->token_digest);
    else
        memset(a->token_digest, 0, sizeof(a->token_digest));
}

/* `Authorization: Bearer <token>`, parsed as the API keys are. */
static bool authorized(const struct tg_admin *a, struct evhttp_request *req)
{
    if (!a->have_token) return true;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    const char *tok;
    size_t len;
    if (h == NULL || !tg_auth_bearer(h, strlen(h), &tok, &len)) return false;
    uint8_t d[32];
    tg_auth_hash(tok, len, d);
    return CRYPTO_memcmp(d, a->token_digest, sizeof(d)) == 0;
}

/* Sends `body`; HEAD gets the same headers (Content-Length included) and no body,
 * which evhttp 2.1.12 would otherwise send. */
static void send_reply(struct evhttp_request *req, int code, struct evbuffer *body)
{
    if (body && evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        char len[32];
        snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", len);
        evbuffer_drain(body, evbuffer_get_length(body));
    }
    evhttp_send_reply(req, code, NULL, body);
}

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", TEXT_CONTENT_TYPE);
    evhttp_add_header(out, "Cache-Control", "no-store");
    struct evbuffer *body = evbuffer_new();
    if (body) evbuffer_add(body, text, strlen(text));
    send_reply(req, code, body);
    if (body) evbuffer_free(body);
}

static void serve_metrics(struct evhttp_request *req)
{
    struct evbuffer *body = evbuffer_new();
    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    tg_metrics_render(body);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", METRICS_CONTENT_TYPE);
    evhttp_add_header(out, "Cache-Control", "no-store");
    send_reply(req, HTTP_OK, body);
    evbuffer_free(body);
}

static void serve_readyz(struct tg_admin *a, struct evhttp_request *req)
{
    char why[TG_ERR_LEN] = "";
    if (a->ready == NULL || a->ready(a->ready_arg, why, sizeof(why))) {
        reply_text(req, HTTP_OK, "ready\n");
        return;
    }
    why[sizeof(why) - 1] = '\0';
    char text[TG_ERR_LEN + 16];
    snprintf(text, sizeof(text), "not ready: %s\n", why[0] ? why : "unknown");
    reply_text(req, 503, text);
}

static void handle(struct evhttp_request *req, void *arg)
{
    struct tg_admin *a = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL) path = "";
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;

    enum { R_NONE, R_METRICS, R_HEALTHZ, R_READYZ } route = R_NONE;
    if (strcmp(path, "/metrics") == 0)
        route = R_METRICS;
    else if (strcmp(path, "/healthz") == 0)
        route = R_HEALTHZ;
    else if (strcmp(path, "/readyz") == 0)
        route = R_READYZ;

    /* /healthz stays open so that container and load-balancer probes work. */
    if (route != R_HEALTHZ && !authorized(a, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", ADMIN_REALM);
        reply_text(req, 401, "unauthorized\n");
        return;
    }
    if (route == R_NONE && tg_credit_api_serve(a->credits, req, path)) return;
    if (route == R_NONE) {
        reply_text(req, HTTP_NOTFOUND, "not found\n");
        return;
    }
    if (!get) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "method not allowed\n");
        return;
    }
    switch (route) {
    case R_METRICS:
        serve_metrics(req);
        break;
    case R_HEALTHZ:
        reply_text(req, HTTP_OK, "ok\n");
        break;
    case R_READYZ:
        serve_readyz(a, req);
        break;
    case R_NONE:
        break;
    }
}

struct tg_admin *tg_admin_create(struct event_base *base, const struct tg_listen *listen,
                                 const char *token, tg_admin_ready_fn ready, void *arg,
                                 char err[TG_ERR_LEN])
{
    const char *errpos = "evhttp";
    const char *text = listen->text ? listen->text : "?";
    errno = 0;
    struct tg_admin *a = calloc(1, sizeof(*a));
    if (a == NULL) goto error;
    a->ready = ready;
    a->ready_arg = arg;
    tg_admin_set_token(a, token);
    a->http = evhttp_new(base);
    if (a->http == NULL) goto error;
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_timeout(a->http, ADMIN_TIMEOUT_S);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS_SIZE);
    evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY_SIZE);
    evhttp_set_default_content_type(a->http, TEXT_CONTENT_TYPE);
    evhttp_set_gencb(a->http, handle, a);

    errpos = "bind";
    if (listen->addrlen == 0) {
        errno = EDESTADDRREQ;
        goto error;
    }
    /* SO_REUSEPORT like the workers' listeners: a new tollgate can start beside
     * the old one during an upgrade (same user only, enforced by the kernel). */
    a->listener = evconnlistener_new_bind(
        base, NULL, NULL,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT,
        ADMIN_BACKLOG, (const struct sockaddr *)&listen->addr, (int)listen->addrlen);
    if (a->listener == NULL) goto error;
    errpos = "listen";
    if (evhttp_bind_listener(a->http, a->listener) == NULL) {
        evconnlistener_free(a->listener);
        a->listener = NULL;
        goto error;
    }
    return a;

error:
    snprintf(err, TG_ERR_LEN, "admin.listen %s: %s: %s", text, errpos,
             errno ? strerror(errno) : "failed");
    tg_admin_destroy(a);
    return NULL;
}

int tg_admin_port(const struct tg_admin *a)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    evutil_socket_t fd = evconnlistener_get_fd(a->listener);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

void tg_admin_destroy(struct tg_admin *a)
{
    if (a == NULL) return;
    if (a->http) evhttp_free(a->http);
    OPENSSL_cleanse(a->token_digest, sizeof(a->token_digest));
    free(a);
}
