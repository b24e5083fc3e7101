/* Usage records: the hand-written JSON serialiser, the access log line, request ids, and the
 * hand-off of each record to the sink. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/jsonw.h"
#include "tollgate/sink.h"
#include "tollgate/usage.h"

/* ---- JSON ---- */

/* Fixed text of a record (keys, numbers, punctuation) stays well under this;
 * strings add at most 6 output bytes per input byte (\u00XX). */
#define JSON_FIXED_MAX 1024
#define JSON_ESC_MAX 6
/* An access line shows at most this much of a tenant, route or model. */
#define ACCESS_STR_MAX 256

static const char hexdig[] = "0123456789abcdef";

static char *put_lit(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}
#define PUT(p, lit) ((p) = put_lit((p), (lit), sizeof(lit) - 1))

static char *put_i64(char *p, int64_t v)
{
    char d[24];
    size_t n;
    const char *digits = tg_fmt_int(d, (long long)v, &n);
    return put_lit(p, digits, n);
}

/* Micro-units as units: "4108", "0.5", "1.000001" (at most 6 decimals, no
 * trailing zeros). */
static char *put_micro(char *p, int64_t v)
{
    uint64_t a = (uint64_t)v;
    if (v < 0) {
        *p++ = '-';
        a = (uint64_t)0 - a;
    }
    p = put_i64(p, (int64_t)(a / (uint64_t)TG_MICRO));
    uint64_t f = a % (uint64_t)TG_MICRO;
    if (f == 0) return p;
    char d[6];
    for (int i = 5; i >= 0; i--) {
        d[i] = (char)('0' + f % 10);
        f /= 10;
    }
    int n = 6;
    while (d[n - 1] == '0')
        n--;
    *p++ = '.';
    return put_lit(p, d, (size_t)n);
}

static int64_t to_micro(double v)
{
    if (!isfinite(v) || fabs(v) > 9e12) return 0;
    return llround(v * (double)TG_MICRO);
}

/* A duration with exactly one decimal: "123.4". */
static char *put_fixed1(char *p, double v)
{
    if (!isfinite(v) || fabs(v) > 9e15) v = 0;
    long long t = llround(v * 10.0);
    if (t < 0) {
        *p++ = '-';
        t = -t;
    }
    p = put_i64(p, t / 10);
    *p++ = '.';
    *p++ = (char)('0' + t % 10);
    return p;
}

static char *put_2(char *p, unsigned v)
{
    *p++ = (char)('0' + v / 10 % 10);
    *p++ = (char)('0' + v % 10);
    return p;
}

/* "YYYY-MM-DDTHH:MM:SS" (19 bytes) of a second since the epoch, UTC, without
 * gmtime's locale machinery (days to civil date: H. Hinnant's algorithm). */
static void format_second(char *p, int64_t secs)
{
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    unsigned sod = (unsigned)(secs - days * 86400);
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    if (y < 0 || y > 9999) y = 0;
    p = put_2(p, (unsigned)(y / 100));
    p = put_2(p, (unsigned)(y % 100));
    *p++ = '-';
    p = put_2(p, m);
    *p++ = '-';
    p = put_2(p, d);
    *p++ = 'T';
    p = put_2(p, sod / 3600);
    *p++ = ':';
    p = put_2(p, sod / 60 % 60);
    *p++ = ':';
    put_2(p, sod % 60);
}

/* "\"2026-11-24T11:00:00.123Z\"" from Unix milliseconds; the second's text is
 * kept per thread, as records of one second share it. */
static char *put_ts(char *p, int64_t ms)
{
    static _Thread_local int64_t last_sec = INT64_MIN;
    static _Thread_local char last_text[19];
    int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    unsigned msec = (unsigned)(ms - secs * 1000);
    if (secs != last_sec) {
        format_second(last_text, secs);
        last_sec = secs;
    }
    *p++ = '"';
    p = put_lit(p, last_text, sizeof(last_text));
    *p++ = '.';
    *p++ = (char)('0' + msec / 100);
    p = put_2(p, msec % 100);
    PUT(p, "Z\"");
    return p;
}

static char *put_str_or_null(char *p, const char *s, size_t n, bool null)
{
    if (null) {
        PUT(p, "null");
        return p;
    }
    return tg_jsonw_str(p, s, n);
}

static char *put_bool(char *p, bool b)
{
    if (b)
        PUT(p, "true");
    else
        PUT(p, "false");
    return p;
}

static char *put_cost(char *p, const struct tg_cost *c)
{
    *p++ = '{';
    bool first = true;
    for (int u = 0; u < TG_UNIT_COUNT; u++) {
        if (c->u[u] == 0) continue;
        if (!first) *p++ = ',';
        first = false;
        const char *name = tg_unit_name((enum tg_unit)u);
        *p++ = '"';
        p = put_lit(p, name, strlen(name));
        PUT(p, "\":");
        p = put_micro(p, c->u[u]);
    }
    *p++ = '}';
    return p;
}

static const char *decision_name(enum tg_decision d)
{
    static const char *const names[] = {"allowed", "limited", "rejected", "error"};
    return (unsigned)d < TG_ARRAY_LEN(names) ? names[d] : "error";
}

static size_t opt_len(const char *s)
{
    return s ? strlen(s) : 0;
}

/* The lengths of a record's strings, and the most its JSON can take. */
struct json_lens {
    size_t id, key, tenant, route, model, requested, upstream, limit;
};

static size_t json_cap(const struct tg_usage_record *r, struct json_lens *l)
{
    l->id = strnlen(r->id, sizeof(r->id));
    l->key = strnlen(r->key, sizeof(r->key));
    l->tenant = opt_len(r->tenant);
    l->route = opt_len(r->route);
    l->model = opt_len(r->model);
    l->requested = opt_len(r->requested_model);
    l->upstream = opt_len(r->upstream);
    l->limit = opt_len(r->limit);
    return JSON_FIXED_MAX +
           JSON_ESC_MAX * (l->id + l->key + l->tenant + l->route + l->model + l->requested +
                           l->upstream + l->limit);
}

/* Writes the JSON into buf (json_cap bytes); returns its length. */
static size_t json_write(const struct tg_usage_record *r, const struct json_lens *l, char *buf)
{
    size_t idl = l->id, keyl = l->key, tl = l->tenant, rl = l->route, ml = l->model;
    size_t ul = l->upstream, ll = l->limit;
    char *p = buf;

    PUT(p, "{\"v\":2,\"id\":");
    p = tg_jsonw_str(p, r->id, idl);
    PUT(p, ",\"ts\":");
    p = put_ts(p, r->ts_ms);
    PUT(p, ",\"tenant\":");
    p = put_str_or_null(p, r->tenant, tl, r->tenant == NULL);
    PUT(p, ",\"key\":");
    p = put_str_or_null(p, r->key, keyl, keyl == 0);
    PUT(p, ",\"route\":");
    p = put_str_or_null(p, r->route, rl, r->route == NULL);
    PUT(p, ",\"model\":");
    p = put_str_or_null(p, r->model, ml, ml == 0);
    PUT(p, ",\"requested_model\":");
    p = put_str_or_null(p, r->requested_model, l->requested, r->requested_model == NULL);
    PUT(p, ",\"upstream\":");
    p = put_str_or_null(p, r->upstream, ul, r->upstream == NULL);
    PUT(p, ",\"status\":");
    p = put_i64(p, r->status);
    PUT(p, ",\"stream\":");
    p = put_bool(p, r->stream);
    if (r->priority == TG_PRIO_BACKGROUND)
        PUT(p, ",\"priority\":\"background\"");
    else
        PUT(p, ",\"priority\":\"interactive\"");
    PUT(p, ",\"decision\":\"");
    const char *d = decision_name(r->decision);
    p = put_lit(p, d, strlen(d));
    PUT(p, "\",\"limit\":");
    p = put_str_or_null(p, r->limit, ll, r->limit == NULL);
    PUT(p, ",\"fallback\":");
    p = put_bool(p, r->fallback);
    PUT(p, ",\"paid_by\":");
    if (r->paid_by == TG_PAID_RATE_LIMIT)
        PUT(p, "\"rate_limit\"");
    else if (r->paid_by == TG_PAID_CREDITS)
        PUT(p, "\"credits\"");
    else
        PUT(p, "null");
    PUT(p, ",\"credits\":");
    if (!r->credits) {
        PUT(p, "null");
    } else {
        PUT(p, "{\"charged\":\"");
        p += tg_ledger_format_amount(r->credits_charged, p);
        PUT(p, "\",\"ledger_seq\":");
        p = put_i64(p, r->ledger_seq);
        *p++ = '}';
    }
    PUT(p, ",\"usage\":{\"prompt_tokens\":");
    p = put_i64(p, r->usage.prompt_tokens);
    PUT(p, ",\"completion_tokens\":");
    p = put_i64(p, r->usage.completion_tokens);
    PUT(p, ",\"total_tokens\":");
    p = put_i64(p, r->usage.total_tokens);
    PUT(p, ",\"video_seconds\":");
    p = put_micro(p, to_micro(r->usage.video_seconds));
    PUT(p, ",\"width\":");
    p = put_i64(p, r->usage.width);
    PUT(p, ",\"height\":");
    p = put_i64(p, r->usage.height);
    PUT(p, "},\"cost\":{\"estimated\":");
    p = put_cost(p, &r->estimated);
    PUT(p, ",\"actual\":");
    p = put_cost(p, &r->actual);
    PUT(p, "},\"latency_ms\":");
    p = put_fixed1(p, r->latency_ms);
    PUT(p, ",\"upstream_ms\":");
    if (r->upstream_ms < 0 || isnan(r->upstream_ms))
        PUT(p, "null");
    else
        p = put_fixed1(p, r->upstream_ms);
    PUT(p, ",\"bytes_in\":");
    p = put_i64(p, r->bytes_in);
    PUT(p, ",\"bytes_out\":");
    p = put_i64(p, r->bytes_out);
    *p++ = '}';
    *p = '\0';
    return (size_t)(p - buf);
}

char *tg_usage_to_json(const struct tg_usage_record *r, size_t *len)
{
    struct json_lens l;
    char *buf = malloc(json_cap(r, &l));
    if (buf) *len = json_write(r, &l, buf);
    return buf;
}

size_t tg_usage_access_line(const struct tg_usage_record *r, char *out, size_t cap)
{
    size_t idl = strnlen(r->id, sizeof(r->id));
    size_t tl = strnlen(r->tenant ? r->tenant : "", ACCESS_STR_MAX);
    size_t rl = strnlen(r->route ? r->route : "", ACCESS_STR_MAX);
    size_t ml = strnlen(r->model ? r->model : "", ACCESS_STR_MAX);
    if (cap < TG_USAGE_ACCESS_LINE_MAX) return 0;
    char *p = out;
    PUT(p, "{\"ts\":");
    p = put_ts(p, r->ts_ms);
    PUT(p, ",\"id\":");
    p = tg_jsonw_str(p, r->id, idl);
    PUT(p, ",\"tenant\":");
    p = put_str_or_null(p, r->tenant, tl, r->tenant == NULL);
    PUT(p, ",\"route\":");
    p = put_str_or_null(p, r->route, rl, r->route == NULL);
    PUT(p, ",\"model\":");
    p = tg_jsonw_str(p, r->model ? r->model : "", ml);
    PUT(p, ",\"status\":");
    p = put_i64(p, r->status);
    PUT(p, ",\"decision\":\"");
    const char *d = decision_name(r->decision);
    p = put_lit(p, d, strlen(d));
    if (r->priority == TG_PRIO_BACKGROUND) /* PUT needs a literal, not a pointer */
        PUT(p, "\",\"priority\":\"background");
    else
        PUT(p, "\",\"priority\":\"interactive");
    PUT(p, "\",\"latency_ms\":");
    p = put_fixed1(p, r->latency_ms);
    PUT(p, ",\"upstream_ms\":");
    p = put_fixed1(p, r->upstream_ms < 0 || isnan(r->upstream_ms) ? 0.0 : r->upstream_ms);
    PUT(p, ",\"bytes_in\":");
    p = put_i64(p, r->bytes_in);
    PUT(p, ",\"bytes_out\":");
    p = put_i64(p, r->bytes_out);
    *p++ = '}';
    return (size_t)(p - out);
}

/* ---- request ids ---- */

/* Per thread: two 64-bit random words drawn once, and a counter. The high
 * half is word A plus the counter times an odd constant, the low half a
 * bijective mix of word B plus the counter: distinct for every id of a thread,
 * and across threads and processes as distinct as two random 128-bit draws. */
static unsigned long fork_generation;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static __thread struct {
    uint64_t a, b, n;
    unsigned long generation;
    bool seeded;
} idstate;

static void on_fork_child(void)
{
    __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELAXED);
}

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void seed_ids(void)
{
    uint64_t w[2];
    if (getrandom(w, sizeof(w), 0) != (ssize_t)sizeof(w)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        w[0] = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)getpid());
        w[1] = mix64(w[0] ^ (uint64_t)(uintptr_t)&idstate ^ (uint64_t)gettid());
    }
    idstate.a = w[0];
    idstate.b = w[1];
    idstate.n = 0;
    idstate.generation = __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
    idstate.seeded = true;
}

static void put_hex64(char *out, uint64_t v)
{
    for (int i = 15; i >= 0; i--) {
        out[i] = hexdig[v & 15];
        v >>= 4;
    }
}

void tg_usage_new_id(char out[TG_REQUEST_ID_LEN])
{
    if (!idstate.seeded ||
        idstate.generation != __atomic_load_n(&fork_generation, __ATOMIC_RELAXED)) {
        pthread_once(&fork_once, register_fork_handler);
        seed_ids();
    }
    uint64_t n = ++idstate.n;
    put_hex64(out, idstate.a + n * 0x9e3779b97f4a7c15ULL);
    put_hex64(out + 16, mix64(idstate.b + n));
    out[32] = '\0';
}

int tg_usage_emit(struct tg_sink *s, const struct tg_usage_record *r)
{
    if (s->ops->discards) return 0;
    /* A rejected request (never forwarded, nothing charged) while the sink
     * cannot keep records: keeping its record would push the sink past its
     * bound by one record per refusal, the 503s the bound itself causes
     * included. It is counted, not kept. */
    if (r->decision == TG_DECISION_REJECTED && !s->ops->accepting(s)) {
        tg_metrics_add(TG_M_USAGE_RECORDS, (const char *[]){s->ops->name, "skipped"}, 1);
        return 0;
    }
    /* Written into a buffer of the calling thread's: the sink copies what it
     * keeps, so a record costs no allocation (but one with very long names). */
    static _Thread_local char local[8192];
    struct json_lens l;
    size_t need = json_cap(r, &l);
    char *buf = need <= sizeof(local) ? local : malloc(need);
    if (buf == NULL) {
        tg_metrics_add(TG_M_USAGE_RECORDS, (const char *[]){s->ops->name, "error"}, 1);
        tg_log_error("usage record %.*s: out of memory, record lost", 32, r->id);
        return -1;
    }
    size_t len = json_write(r, &l, buf);
    int rc = s->ops->submit(s, buf, len, r->tenant ? r->tenant : "");
    if (buf != local) free(buf);
    return rc;
}
