/* Prices and amounts: a request's cost in micro-credits, exact decimal strings in and out. */
#include <fnmatch.h>
#include <string.h>
#include "tollgate/ledger.h"

static bool price_matches(const struct tg_price *p, const char *model)
{
    if (p->nmodels == 0) return true;
    for (size_t i = 0; i < p->nmodels; i++)
        if (fnmatch(p->models[i], model ? model : "", 0) == 0) return true;
    return false;
}

int64_t tg_ledger_price(const struct tg_config *cfg, const struct tg_cost *cost, const char *model)
{
    /* cost_u (1e-6 units) × pico (1e-12 credits per unit) = 1e-18 credits = 1e-12 micro-credits */
    unsigned __int128 total = 0;
    for (int u = 0; u < TG_UNIT_COUNT; u++) {
        if (cost->u[u] <= 0) continue;
        for (size_t i = 0; i < cfg->credits.nprices; i++) {
            const struct tg_price *p = &cfg->credits.prices[i];
            if ((int)p->unit != u || !price_matches(p, model)) continue;
            total += (unsigned __int128)cost->u[u] * (unsigned __int128)p->pico;
            break;
        }
    }
    const unsigned __int128 pico = 1000000000000ULL;
    unsigned __int128 micro = (total + pico - 1) / pico;
    return micro > (unsigned __int128)TG_AMOUNT_MAX_MICRO ? TG_AMOUNT_MAX_MICRO : (int64_t)micro;
}

size_t tg_ledger_format_amount(int64_t micro, char out[TG_AMOUNT_LEN])
{
    char digits[TG_AMOUNT_LEN];
    uint64_t v = micro < 0 ? (uint64_t)0 - (uint64_t)micro : (uint64_t)micro;
    size_t n = 0;
    do { /* at least 7 digits: one before the point, six after */
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v || n < 7);
    size_t len = 0;
    if (micro < 0) out[len++] = '-';
    while (n > 6)
        out[len++] = digits[--n];
    out[len++] = '.';
    while (n > 0)
        out[len++] = digits[--n];
    out[len] = '\0';
    return len;
}

int tg_ledger_parse_amount(const char *s, size_t n, int64_t *micro, const char **why)
{
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
    int64_t whole = 0, frac = 0;
    size_t digits = 0, decimals = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
        if (whole > TG_AMOUNT_MAX_MICRO / TG_CREDIT_MICRO) goto big;
        whole = whole * 10 + (s[i] - '0');
    }
    if (i < n && s[i] == '.') {
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, decimals++) {
            if (decimals == 6) {
                *why = "has more than 6 decimals (amounts are whole micro-credits)";
                return -1;
            }
            frac = frac * 10 + (s[i] - '0');
        }
        if (decimals == 0) digits = 0;
    }
    if (i != n || digits == 0) {
        *why = "must be a decimal string such as \"100.5\" or \"-3.25\"";
        return -1;
    }
    for (; decimals < 6; decimals++)
        frac *= 10;
    if (whole > TG_AMOUNT_MAX_MICRO / TG_CREDIT_MICRO) goto big;
    *micro = whole * TG_CREDIT_MICRO + frac;
    if (*micro > TG_AMOUNT_MAX_MICRO) goto big;
    if (neg) *micro = -*micro;
    return 0;
big:
    *why = "is too large (at most 9000000000 credits)";
    return -1;
}

bool tg_ledger_idem_valid(const char *key, size_t n)
{
    if (n == 0 || n > TG_IDEM_KEY_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':'))
            return false;
    }
    return true;
}
