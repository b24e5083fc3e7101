/* Writing JSON text into buffers the caller sized. */
#ifndef TOLLGATE_JSONW_H
#define TOLLGATE_JSONW_H

#include <stddef.h>

/* Bytes tg_jsonw_str may write for n input bytes: quotes plus 6 per byte. */
#define TG_JSONW_STR_MAX(n) (2 + 6 * (n))

/* Writes s[0..n) as a quoted JSON string at p and returns the end: quotes and
 * backslashes escaped, control characters as \u00XX, valid UTF-8 as is, each
 * invalid sequence as U+FFFD. p must have TG_JSONW_STR_MAX(n) bytes. */
char *tg_jsonw_str(char *p, const char *s, size_t n);

#endif
