/* Socket reads and writes of the request path: client and upstream sockets, timers. */
#include "conn.h"

static void up_sock_read(evutil_socket_t fd, short what, void *arg);

/* (Re)arms the connection's timer: event_add reschedules a pending one. */
void arm_timer(struct tg_conn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Writes what is queued for a plain TCP socket at once. EV_WRITE stays off
 * unless a write is partial: no epoll_ctl pair per reply. TLS connections
 * write through their bufferevent. */
void flush_out(struct bufferevent *bev, bool plain)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (evbuffer_get_length(out) == 0) return;
    if (plain) {
        /* A socket bufferevent keeps its output's start frozen except while
         * it writes itself; it does the same around this write. */
        evbuffer_unfreeze(out, 1);
        evbuffer_write(out, bufferevent_getfd(bev));
        evbuffer_freeze(out, 1);
    }
    if (evbuffer_get_length(out) > 0) bufferevent_enable(bev, EV_WRITE);
}

/* Turns reading from the client on or off. The connection reads its socket
 * itself rather than through the bufferevent: libevent's evbuffer_read asks
 * the kernel how much is readable (ioctl FIONREAD) before every read, a system
 * call per request that a plain recv into reserved space does without. */
void client_reading(struct tg_conn *c, bool on)
{
    if (on == c->reading) return;
    c->reading = on;
    if (on)
        event_add(c->rev, NULL);
    else
        event_del(c->rev);
}

#define CLIENT_READ_CHUNK 4096
#define UPSTREAM_READ_CHUNK (16 * 1024)

/* Reads what is readable on `fd` into `in` (at most `chunk` bytes): > 0 bytes
 * read, 0 at the end of the stream, -1 on an error, -2 when nothing was ready.
 * The bytes land in a scratch buffer of the worker's and are copied into
 * `in`, which then grows by what arrived: a small message takes a small chain,
 * which malloc serves from its per-thread cache, where a recv straight into
 * `chunk` bytes of reserved space took a 32 KiB chain per reply. */
static ssize_t sock_read(evutil_socket_t fd, struct evbuffer *in, size_t chunk)
{
    static _Thread_local char scratch[UPSTREAM_READ_CHUNK];
    if (chunk > sizeof(scratch)) chunk = sizeof(scratch);
    ssize_t n = recv(fd, scratch, chunk, 0);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -2 : -1;
    if (n == 0) return 0;
    /* A socket bufferevent keeps its input's end frozen except while it reads
     * itself; this is that read. */
    evbuffer_unfreeze(in, 0);
    int rc = evbuffer_add(in, scratch, (size_t)n);
    evbuffer_freeze(in, 0);
    return rc == 0 ? n : -1;
}

void client_sock_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct tg_conn *c = arg;
    ssize_t n = sock_read(fd, bufferevent_get_input(c->bev), CLIENT_READ_CHUNK);
    if (n == -2) return;
    if (n <= 0) {
        client_event_cb(c->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), c);
        return;
    }
    client_read_cb(c->bev, c);
}

/* Turns reading from the upstream on or off. */
void up_reading(struct tg_conn *c, bool on)
{
    if (!c->uplain) {
        struct bufferevent *ub = tg_upconn_bev(c->req->up);
        if (on)
            bufferevent_enable(ub, EV_READ);
        else
            bufferevent_disable(ub, EV_READ);
        return;
    }
    if (on == c->ureading) return;
    c->ureading = on;
    if (on)
        event_add(c->urev, &c->utv);
    else
        event_del(c->urev);
}

/* Starts reading the upstream connection just acquired for this request. */
bool up_attach(struct tg_conn *c, struct tg_upconn *up, const struct timeval *tv)
{
    struct bufferevent *ub = tg_upconn_bev(up);
    c->uplain = !tg_upconn_tls(up);
    c->ureading = false;
    c->utv = *tv;
    if (c->uplain) {
        if (c->urev == NULL && (c->urev = event_new(c->w->base, -1, 0, NULL, NULL)) == NULL)
            return false;
        event_assign(c->urev, c->w->base, bufferevent_getfd(ub), EV_READ | EV_PERSIST, up_sock_read,
                     c);
        /* Added before the bufferevent's own read (left on by the pool) is
         * turned off, so that the socket's epoll interest never changes. */
        up_reading(c, true);
        bufferevent_disable(ub, EV_READ);
    } else {
        bufferevent_setwatermark(ub, EV_READ, 0, UPSTREAM_READ_MAX);
        bufferevent_set_timeouts(ub, tv, NULL);
        bufferevent_enable(ub, EV_READ);
    }
    return true;
}

/* Stops reading an upstream connection before it goes back to its pool. The
 * bufferevent's read is turned on before our event is deleted, for the same
 * reason as in up_attach: the pool watches idle connections with it. */
void up_detach(struct tg_conn *c, struct tg_upconn *up)
{
    struct bufferevent *ub = tg_upconn_bev(up);
    if (c->uplain && c->ureading) {
        bufferevent_enable(ub, EV_READ);
        event_del(c->urev);
        c->ureading = false;
    }
    bufferevent_setcb(ub, NULL, NULL, NULL, NULL);
}

static void up_sock_read(evutil_socket_t fd, short what, void *arg)
{
    struct tg_conn *c = arg;
    struct bufferevent *ub = tg_upconn_bev(c->req->up);
    if (what & EV_TIMEOUT) {
        up_event_cb(ub, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, c);
        return;
    }
    ssize_t n = sock_read(fd, bufferevent_get_input(ub), UPSTREAM_READ_CHUNK);
    if (n == -2) return;
    if (n <= 0) {
        up_event_cb(ub, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), c);
        return;
    }
    up_read_cb(ub, c);
}
