/* API keys: hashing and lookup of `Authorization: Bearer <key>` to a tenant. */
#ifndef TOLLGATE_AUTH_H
#define TOLLGATE_AUTH_H

#include "tollgate/config.h"

/* SHA-256 of `key` into `out`. */
void tg_auth_hash(const char *key, size_t len, uint8_t out[32]);

/* Writes "sha256:<64 hex>" and a NUL into `out`. */
void tg_auth_format(const uint8_t digest[32], char out[72]);

/* Parses "sha256:<64 hex>" (case-insensitive hex). Returns 0 or -1. */
int tg_auth_parse(const char *text, uint8_t out[32]) TG_WUR;

/* Finds the token of an Authorization header value `Bearer TOKEN` (scheme
 * case-insensitive, blanks around allowed, none inside the token). Returns
 * false when the value is not of that form. */
bool tg_auth_bearer(const char *header, size_t len, const char **token, size_t *toklen) TG_WUR;

/* Looks up the tenant for the value of an Authorization header (`Bearer KEY`,
 * scheme case-insensitive). Returns NULL when the header is missing, malformed
 * or the key is unknown. Compares digests with CRYPTO_memcmp. When found and
 * `digest` is not NULL, the key's digest is copied there (records carry its
 * first 12 hex digits). */
const struct tg_tenant *tg_auth_lookup(const struct tg_config *cfg, const char *header, size_t len,
                                       uint8_t digest[32]);

/* Inserts a digest into the config's key table (used by the config loader).
 * Returns 0, -1 if the digest is already present, -2 if out of memory. */
int tg_auth_insert(struct tg_config *cfg, const uint8_t digest[32], struct tg_tenant *tenant,
                   bool was_plain, enum tg_priority priority) TG_WUR;

/* The key with this digest, or NULL. */
const struct tg_key *tg_auth_find(const struct tg_config *cfg, const uint8_t digest[32]);

#endif
