/* Logging: leveled lines to stderr, and the access log (one JSON line per request). */
#ifndef TOLLGATE_LOG_H
#define TOLLGATE_LOG_H

#include "tollgate/config.h"

/* Sets the level below which lines are dropped. Any thread. */
void tg_log_set_level(enum tg_log_level level);

/* Writes one line "2026-11-24T11:00:00.123Z LEVEL message" to stderr. Any thread;
 * a line is written with one write(2) so lines of threads never interleave. */
void tg_log(enum tg_log_level level, const char *fmt, ...) TG_PRINTF(2, 3);
#define tg_log_debug(...) tg_log(TG_LOG_DEBUG, __VA_ARGS__)
#define tg_log_info(...) tg_log(TG_LOG_INFO, __VA_ARGS__)
#define tg_log_warn(...) tg_log(TG_LOG_WARN, __VA_ARGS__)
#define tg_log_error(...) tg_log(TG_LOG_ERROR, __VA_ARGS__)
/* A line about one request, its id and tenant first (NULL tenant: "-"):
 * "request 01J... tenant acme: upstream models did not answer in time". */
#define tg_log_req(level, id, tenant, fmt, ...)                                                    \
    tg_log((level), "request %s tenant %s: " fmt, (id), (tenant) ? (tenant) : "-", ##__VA_ARGS__)

/* Opens the access log: "" = stderr. Replaces an open one. Returns 0 or -1
 * with err set. */
int tg_log_access_open(const char *path, char err[TG_ERR_LEN]) TG_WUR;
/* Appends one line (a newline is added). Never blocks a worker on disk: lines
 * are queued and written by a writer thread. Any thread. */
void tg_log_access(const char *line, size_t len);
/* SIGUSR1: reopen the access log file (logrotate). */
void tg_log_reopen(void);
/* Flushes queued access lines and stops the writer thread. */
void tg_log_shutdown(void);

#endif
