/* The request path inside one worker: client connections, from the accept to the record. */
#ifndef TOLLGATE_PROXY_H
#define TOLLGATE_PROXY_H

#include <sys/socket.h>
#include <event2/util.h>

struct tg_worker;

/* Takes an accepted client socket (non-blocking) into the worker. */
void tg_proxy_accept(struct tg_worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen);
/* Closes client connections that are between requests (drain). */
void tg_proxy_close_idle(struct tg_worker *w);
/* Closes every client connection (end of drain). */
void tg_proxy_close_all(struct tg_worker *w);
/* Frees the worker's pool of request state (at shutdown). */
void tg_proxy_free_pool(struct tg_worker *w);

#endif
