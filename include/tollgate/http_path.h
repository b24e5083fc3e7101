/* Request paths in normal form (RFC 3986): the route is chosen on the path upstreams serve. */
#ifndef TOLLGATE_HTTP_PATH_H
#define TOLLGATE_HTTP_PATH_H

#include <sys/types.h>
#include "tollgate/common.h"

/* Normalises the path of an origin-form request target: `in[0..len)` is the
 * target's part before the first '?' (the query is not part of it).
 *
 * The normal form is the path with
 *  1. every percent-encoded unreserved character decoded (ALPHA, DIGIT, '-',
 *     '.', '_', '~': "%63" is "c", "%2e" and "%2E" are "."), every other
 *     percent-encoding kept with its hex digits in upper case ("%c3" is "%C3");
 *  2. every run of '/' collapsed into one ("/v1//chat" is "/v1/chat");
 *  3. then its "." and ".." segments removed as RFC 3986 section 5.2.4 does,
 *     including those spelt with "%2e"; ".." at the root is dropped
 *     ("/../v1/x" is "/v1/x", "/v1/models/.." is "/v1/", "/v1/./x/." is "/v1/x/").
 * It starts with '/', has no "." or ".." segment and no empty segment except
 * after a trailing '/', is never longer than `in`, and is its own normal form.
 *
 * Refused, whatever else the path holds:
 *  - an empty path, or one not starting with '/';
 *  - a byte that is neither '/' nor part of a pchar (unreserved, sub-delims
 *    "!$&'()*+,;=", ':', '@', percent-encoding): a raw '\', space, '"', '#',
 *    '?', '<', '>', '[', ']', '{', '}', '|', '^', '`', control byte, NUL or
 *    byte >= 0x80;
 *  - a '%' not followed by two hex digits;
 *  - an encoded '/' or '\' ("%2F", "%2f", "%5C", "%5c"): it would name
 *    another path to any server that decodes before splitting;
 *  - an encoded control byte or NUL ("%00" to "%1F", "%7F").
 *
 * Returns
 *   0   `in` is already in normal form: use it as it is. Nothing was written
 *       to `out`. This is the common case and is decided in one pass over the
 *       bytes, one table lookup each.
 *   n   (1 <= n <= len) the normal form differs from `in` (maybe only in the
 *       case of hex digits, so n may equal len); it is in `out[0..n)`.
 *  -1   the path is refused; *why points at a static reason that may be shown
 *       to the client (a 400 reply). *why is written on -1 only.
 * `out` is written only when the result is n > 0; it must have room for
 * `len` bytes. It may be `in` itself (normalising in place: `in` is then
 * rewritten on n > 0 only, so a refused path is still there to be logged), but
 * must not overlap `in` in any other way. Nothing is read outside
 * `in[0..len)`, nothing is allocated, no libc function is called per byte. */
ssize_t tg_http_path_normalize(const char *in, size_t len, char *out, const char **why) TG_WUR;

/* True when `q[0..len)`, the query of a request target (after the '?',
 * without it; may be empty), holds only RFC 3986 query bytes: pchar, '/' and
 * '?', every '%' followed by two hex digits. Any decoded value passes (a
 * query's encodings are the application's business); a raw '#', '[', ']',
 * space, '"', '<', '>', '\', '^', '`', '{', '|', '}', control byte or byte
 * >= 0x80 fails. */
bool tg_http_query_valid(const char *q, size_t len) TG_WUR;

#endif
