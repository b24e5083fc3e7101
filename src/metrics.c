/* Prometheus metrics: per-thread series tables, summed and rendered at scrape time. */
#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include "tollgate/buf.h"
#include "tollgate/metrics.h"

enum mtype { M_COUNTER, M_GAUGE, M_HISTOGRAM };
#define counter M_COUNTER
#define gauge M_GAUGE
#define histogram M_HISTOGRAM
static const struct {
    enum mtype type;
    const char *name;
    const char *labels;
    const char *help;
} defs[TG_M_COUNT] = {
#define TG_METRIC_DEF(e, t, n, l, h) {t, n, l, h},
    TG_METRICS(TG_METRIC_DEF)
#undef TG_METRIC_DEF
};
#undef counter
#undef gauge
#undef histogram

static const double hist_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                     0.5,    1,     2.5,    5,     10,   30,    60,   300};
#define NBOUNDS TG_ARRAY_LEN(hist_bounds)
#define MAX_LABELS 4
#define KEY_MAX 512

/* One series: a metric with one set of label values. Only its owner thread
 * writes the numbers; the scraper reads them with relaxed atomics. A series is
 * found by its exact label values (`vals`); `key` is what the page shows (values
 * joined by '\x1f', cleaned and cut), and render merges series with equal keys. */
struct tg_metric_series {
    double value;   /* counter/gauge, or histogram sum */
    uint64_t count; /* histogram */
    uint64_t hash;  /* of the metric and the exact label values */
    enum tg_metric metric;
    const struct table *owner; /* the table holding it; only its thread writes */
    size_t len[MAX_LABELS];    /* lengths of the values in `vals` */
    char *vals;                /* the label values, each followed by '\0' */
    char *key;
    uint64_t buckets[NBOUNDS];
};

struct table {
    pthread_mutex_t mu; /* held by the owner to insert, by the scraper to read */
    struct tg_metric_series **slots;
    size_t cap, n;
    struct table *next;
    struct {
        struct tg_metric_series *s;
        const char *p[MAX_LABELS]; /* the label pointers it was found with */
    } last[TG_M_COUNT];            /* the series each metric updated last */
};

static pthread_mutex_t tables_mu = PTHREAD_MUTEX_INITIALIZER;
static struct table *tables;   /* every thread's table, never freed */
static struct table global_tb; /* tg_metrics_set, guarded by its own mutex */
static __thread struct table *my_table;

/* Label counts, counted once from the declarations (they never change). */
static size_t label_count[TG_M_COUNT];
static pthread_once_t label_count_once = PTHREAD_ONCE_INIT;

static void count_labels(void)
{
    for (int m = 0; m < TG_M_COUNT; m++) {
        const char *l = defs[m].labels;
        size_t n = *l != '\0';
        for (; *l; l++)
            n += *l == ',';
        label_count[m] = n;
    }
}

static size_t nlabels(enum tg_metric m)
{
    pthread_once(&label_count_once, count_labels);
    return label_count[m];
}

/* Joins the label values with '\x1f' into out[KEY_MAX]; a '\x1f' inside a value
 * becomes '?', and the whole key is cut at KEY_MAX-1 bytes. */
static size_t make_key(size_t n, const char *const *vals, char *out)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *v = vals[i];
        if (i > 0 && len < KEY_MAX - 1) out[len++] = '\x1f';
        for (; *v && len < KEY_MAX - 1; v++)
            out[len++] = *v == '\x1f' ? '?' : *v;
    }
    out[len] = '\0';
    return len;
}

/* A hash of short strings that reads them a word at a time (the multiply-fold
 * mixing of wyhash); the table compares the values too, so it need not be strong. */
static inline uint64_t mix(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static inline uint64_t load4(const char *p)
{
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

#define K1 0xa0761d6478bd642fULL
#define K2 0xe7037ed1a0b428dbULL
#define K3 0x8ebc6af09c88c6e3ULL

static inline uint64_t hash_str(uint64_t h, const char *p, size_t len)
{
    uint64_t a;
    if (len >= 8) {
        const char *last = p + len - 8;
        for (; p < last; p += 8)
            h = mix(load8(p) ^ K1, h ^ K2);
        a = load8(last);
    } else if (len >= 4) {
        a = load4(p) << 32 | load4(p + len - 4);
    } else if (len > 0) {
        a = (uint64_t)(unsigned char)p[0] << 16 | (uint64_t)(unsigned char)p[len >> 1] << 8 |
            (unsigned char)p[len - 1];
    } else {
        a = 0;
    }
    return mix(a ^ K1, h ^ len ^ K3);
}

/* The label values of one update, their lengths and hash. */
struct probe {
    enum tg_metric metric;
    size_t n;
    uint64_t hash;
    const char *v[MAX_LABELS];
    size_t len[MAX_LABELS];
};

static inline void probe_init(struct probe *k, enum tg_metric m, const char *const *labels)
{
    size_t n = label_count[m];
    uint64_t h = mix((uint64_t)m ^ K2, K1);
    k->metric = m;
    k->n = n;
    for (size_t i = 0; i < n; i++) {
        const char *v = labels && labels[i] ? labels[i] : "other";
        size_t len = strlen(v);
        k->v[i] = v;
        k->len[i] = len;
        h = hash_str(h, v, len);
    }
    k->hash = h;
}

/* memcmp(a, b, len) == 0 for the short strings labels are, without a call. */
static inline bool equal_bytes(const char *a, const char *b, size_t len)
{
    if (len >= 8) {
        for (size_t i = 0; i + 8 < len; i += 8)
            if (load8(a + i) != load8(b + i)) return false;
        return load8(a + len - 8) == load8(b + len - 8);
    }
    if (len >= 4) return load4(a) == load4(b) && load4(a + len - 4) == load4(b + len - 4);
    for (size_t i = 0; i < len; i++)
        if (a[i] != b[i]) return false;
    return true;
}

static inline bool same(const struct tg_metric_series *s, const struct probe *k)
{
    if (s->hash != k->hash || s->metric != k->metric) return false;
    const char *p = s->vals;
    for (size_t i = 0; i < k->n; i++) {
        if (s->len[i] != k->len[i] || !equal_bytes(p, k->v[i], k->len[i])) return false;
        p += k->len[i] + 1;
    }
    return true;
}

static struct tg_metric_series **find_slot(struct table *t, const struct probe *k)
{
    size_t mask = t->cap - 1;
    for (size_t i = k->hash & mask;; i = (i + 1) & mask) {
        struct tg_metric_series *s = t->slots[i];
        if (s == NULL || same(s, k)) return &t->slots[i];
    }
}

/* Doubles the slots; false (the table unchanged) when out of memory. */
static bool grow(struct table *t)
{
    size_t ncap = t->cap ? t->cap * 2 : 64;
    struct tg_metric_series **old = t->slots;
    size_t ocap = t->cap;
    struct tg_metric_series **slots = calloc(ncap, sizeof(*slots));
    if (slots == NULL) return false;
    t->slots = slots;
    t->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (old[i] == NULL) continue;
        size_t j = old[i]->hash & (ncap - 1);
        while (t->slots[j])
            j = (j + 1) & (ncap - 1);
        t->slots[j] = old[i];
    }
    free(old);
    return true;
}

/* Where the values go of a series that could not be allocated: counted
 * nowhere, never rendered (a lost series rather than a crash). */
static struct tg_metric_series oom_series;

static inline struct table *thread_table(void)
{
    if (__builtin_expect(my_table == NULL, 0)) {
        pthread_once(&label_count_once, count_labels);
        struct table *t = calloc(1, sizeof(*t));
        if (t == NULL) return NULL; /* tried again next time */
        pthread_mutex_init(&t->mu, NULL);
        pthread_mutex_lock(&tables_mu);
        t->next = tables;
        tables = t;
        pthread_mutex_unlock(&tables_mu);
        my_table = t;
    }
    return my_table;
}

/* A new series for `k`, with its values and key in the same allocation. */
static struct tg_metric_series *new_series(const struct table *t, const struct probe *k)
{
    char key[KEY_MAX];
    size_t klen = make_key(k->n, k->v, key), vlen = 0;
    for (size_t i = 0; i < k->n; i++)
        vlen += k->len[i] + 1;
    struct tg_metric_series *s = calloc(1, sizeof(*s) + vlen + klen + 1);
    if (s == NULL) return NULL;
    s->hash = k->hash;
    s->metric = k->metric;
    s->owner = t;
    s->vals = (char *)(s + 1);
    char *p = s->vals;
    for (size_t i = 0; i < k->n; i++) {
        s->len[i] = k->len[i];
        memcpy(p, k->v[i], k->len[i] + 1);
        p += k->len[i] + 1;
    }
    s->key = p;
    memcpy(s->key, key, klen + 1);
    return s;
}

/* Whether `labels` are the values of the series metric `m` updated last. The
 * pointers must be the same as then (cheap, and false when calls alternate),
 * and so must the contents (a pointer may now hold another string). */
static inline bool same_as_last(const struct table *t, enum tg_metric m, size_t n,
                                const char *const *labels)
{
    for (size_t i = 0; i < n; i++)
        if (t->last[m].p[i] != (labels ? labels[i] : NULL)) return false;
    const struct tg_metric_series *s = t->last[m].s;
    const char *p = s->vals;
    for (size_t i = 0; i < n; i++) {
        const char *v = labels && labels[i] ? labels[i] : "other";
        if (strcmp(p, v) != 0) return false;
        p += s->len[i] + 1;
    }
    return true;
}

static inline struct tg_metric_series *remember(struct table *t, enum tg_metric m, size_t n,
                                                const char *const *labels,
                                                struct tg_metric_series *s)
{
    t->last[m].s = s;
    for (size_t i = 0; i < n; i++)
        t->last[m].p[i] = labels ? labels[i] : NULL;
    return s;
}

/* Finds or inserts a series; inserting takes the table's mutex unless `locked`. */
static __attribute__((noinline)) struct tg_metric_series *
lookup_hashed(struct table *t, enum tg_metric m, const char *const *labels, bool locked)
{
    size_t n = label_count[m];
    struct probe k;
    probe_init(&k, m, labels);
    if (__builtin_expect(t->cap != 0, 1)) {
        struct tg_metric_series *s = *find_slot(t, &k);
        if (__builtin_expect(s != NULL, 1)) return remember(t, m, n, labels, s);
    }
    if (!locked) pthread_mutex_lock(&t->mu);
    /* find_slot needs a free slot: the table is kept at most half full, and
     * a table that cannot grow takes no series past 3/4 */
    struct tg_metric_series *s = &oom_series;
    if (((t->n + 1) * 2 <= t->cap || grow(t) || (t->n + 1) * 4 <= t->cap * 3)) {
        struct tg_metric_series **slot = find_slot(t, &k);
        if (*slot == NULL && (*slot = new_series(t, &k)) != NULL) t->n++;
        if (*slot) s = *slot;
    }
    if (!locked) pthread_mutex_unlock(&t->mu);
    return s == &oom_series ? s : remember(t, m, n, labels, s);
}

static inline struct tg_metric_series *lookup(struct table *t, enum tg_metric m,
                                              const char *const *labels, bool locked)
{
    if (__builtin_expect(t == NULL, 0)) return &oom_series;
    if (t->last[m].s && same_as_last(t, m, label_count[m], labels)) return t->last[m].s;
    return lookup_hashed(t, m, labels, locked);
}

static void store_double(double *p, double v)
{
    __atomic_store(p, &v, __ATOMIC_RELAXED);
}

static double load_double(double *p)
{
    double v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}

static inline void add_to(struct tg_metric_series *s, double v)
{
    store_double(&s->value, s->value + v);
}

static inline void observe_into(struct tg_metric_series *s, double v)
{
    store_double(&s->value, s->value + v);
    __atomic_store_n(&s->count, s->count + 1, __ATOMIC_RELAXED);
    for (size_t i = 0; i < NBOUNDS; i++) {
        if (v <= hist_bounds[i]) {
            __atomic_store_n(&s->buckets[i], s->buckets[i] + 1, __ATOMIC_RELAXED);
            break;
        }
    }
}

void tg_metrics_add(enum tg_metric m, const char *const *labels, double v)
{
    add_to(lookup(thread_table(), m, labels, false), v);
}

void tg_metrics_observe(enum tg_metric m, const char *const *labels, double v)
{
    observe_into(lookup(thread_table(), m, labels, false), v);
}

struct tg_metric_series *tg_metrics_series(enum tg_metric m, const char *const *labels)
{
    return lookup(thread_table(), m, labels, false);
}

void tg_metrics_series_add(struct tg_metric_series *s, double v)
{
    assert(s == &oom_series || (s->owner == my_table && defs[s->metric].type != M_HISTOGRAM));
    add_to(s, v);
}

void tg_metrics_series_observe(struct tg_metric_series *s, double v)
{
    assert(s == &oom_series || (s->owner == my_table && defs[s->metric].type == M_HISTOGRAM));
    observe_into(s, v);
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void)
{
    pthread_mutex_init(&global_tb.mu, NULL);
}

void tg_metrics_set(enum tg_metric m, const char *const *labels, double v)
{
    pthread_once(&global_once, global_init);
    pthread_once(&label_count_once, count_labels);
    pthread_mutex_lock(&global_tb.mu);
    struct tg_metric_series *s = lookup(&global_tb, m, labels, true);
    store_double(&s->value, v);
    pthread_mutex_unlock(&global_tb.mu);
}

/* Scrape: gather the series of one metric from every table, merge equal keys. */
struct agg {
    const char *key;
    double value;
    uint64_t count;
    uint64_t buckets[NBOUNDS];
};

static int cmp_agg(const void *a, const void *b)
{
    return strcmp(((const struct agg *)a)->key, ((const struct agg *)b)->key);
}

static void collect(struct table *t, enum tg_metric m, struct agg **out, size_t *n, size_t *cap)
{
    for (size_t i = 0; i < t->cap; i++) {
        struct tg_metric_series *s = t->slots[i];
        if (s == NULL || s->metric != m) continue;
        if (!tg_grow(out, cap, *n + 1, sizeof(**out), 16)) return; /* out of memory: a shorter page */
        struct agg *a = &(*out)[(*n)++];
        a->key = s->key;
        a->value = load_double(&s->value);
        a->count = __atomic_load_n(&s->count, __ATOMIC_RELAXED);
        for (size_t b = 0; b < NBOUNDS; b++)
            a->buckets[b] = __atomic_load_n(&s->buckets[b], __ATOMIC_RELAXED);
    }
}

/* Writes `{name="v",...` (without the closing brace) for a joined key. */
static void put_labels(struct evbuffer *out, enum tg_metric m, const char *key)
{
    const char *names = defs[m].labels;
    if (*names == '\0') return;
    evbuffer_add(out, "{", 1);
    const char *k = key;
    bool first = true;
    while (*names) {
        const char *ne = strchr(names, ',');
        size_t nl = ne ? (size_t)(ne - names) : strlen(names);
        if (!first) evbuffer_add(out, ",", 1);
        first = false;
        evbuffer_add(out, names, nl);
        evbuffer_add(out, "=\"", 2);
        for (; *k && *k != '\x1f'; k++) {
            if (*k == '\\' || *k == '"')
                evbuffer_add_printf(out, "\\%c", *k);
            else if (*k == '\n')
                evbuffer_add(out, "\\n", 2);
            else
                evbuffer_add(out, k, 1);
        }
        if (*k == '\x1f') k++;
        evbuffer_add(out, "\"", 1);
        names = ne ? ne + 1 : names + nl;
    }
}

static void put_value(struct evbuffer *out, double v)
{
    if (isnan(v))
        evbuffer_add(out, " NaN\n", 5);
    else if (isinf(v))
        evbuffer_add_printf(out, " %cInf\n", v > 0 ? '+' : '-');
    else if (fabs(v) < 9007199254740992.0 && v == (double)(int64_t)v)
        evbuffer_add_printf(out, " %lld\n", (long long)v);
    else {
        /* The shortest form that reads back as the same double: 0.00086, not
         * 0.00086000000000000009. */
        char buf[32];
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, sizeof(buf), "%.*g", prec, v);
            if (strtod(buf, NULL) == v) break;
        }
        evbuffer_add_printf(out, " %s\n", buf);
    }
}

/* HELP text escapes backslash and newline (text format 0.0.4). */
static void put_help(struct evbuffer *out, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            evbuffer_add(out, "\\\\", 2);
        else if (*p == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, p, 1);
    }
}

void tg_metrics_render(struct evbuffer *out)
{
    pthread_once(&global_once, global_init);
    static const char *const tnames[] = {"counter", "gauge", "histogram"};
    struct agg *all = NULL;
    size_t cap = 0;
    for (int m = 0; m < TG_M_COUNT; m++) {
        size_t n = 0;
        pthread_mutex_lock(&tables_mu);
        for (struct table *t = tables; t; t = t->next) {
            pthread_mutex_lock(&t->mu);
            collect(t, (enum tg_metric)m, &all, &n, &cap);
            pthread_mutex_unlock(&t->mu);
        }
        pthread_mutex_unlock(&tables_mu);
        pthread_mutex_lock(&global_tb.mu);
        collect(&global_tb, (enum tg_metric)m, &all, &n, &cap);
        pthread_mutex_unlock(&global_tb.mu);

        evbuffer_add_printf(out, "# HELP %s ", defs[m].name);
        put_help(out, defs[m].help);
        evbuffer_add_printf(out, "\n# TYPE %s %s\n", defs[m].name, tnames[defs[m].type]);
        /* A family without labels always has its one series, zero until used. */
        static const struct agg zero = {.key = ""};
        if (n == 0 && nlabels((enum tg_metric)m) == 0 && tg_grow(&all, &cap, 1, sizeof(*all), 16))
            all[n++] = zero;
        if (n > 1) qsort(all, n, sizeof(*all), cmp_agg);
        for (size_t i = 0; i < n;) {
            struct agg sum = all[i];
            size_t j = i + 1;
            for (; j < n && strcmp(all[j].key, sum.key) == 0; j++) {
                sum.value += all[j].value;
                sum.count += all[j].count;
                for (size_t b = 0; b < NBOUNDS; b++)
                    sum.buckets[b] += all[j].buckets[b];
            }
            i = j;
            if (defs[m].type != M_HISTOGRAM) {
                evbuffer_add_printf(out, "%s", defs[m].name);
                if (nlabels((enum tg_metric)m)) {
                    put_labels(out, (enum tg_metric)m, sum.key);
                    evbuffer_add(out, "}", 1);
                }
                put_value(out, sum.value);
                continue;
            }
            uint64_t cum = 0;
            bool has = nlabels((enum tg_metric)m) > 0;
            for (size_t b = 0; b <= NBOUNDS; b++) {
                cum += b < NBOUNDS ? sum.buckets[b] : 0;
                evbuffer_add_printf(out, "%s_bucket", defs[m].name);
                if (has) {
                    put_labels(out, (enum tg_metric)m, sum.key);
                    evbuffer_add(out, ",", 1);
                } else {
                    evbuffer_add(out, "{", 1);
                }
                if (b < NBOUNDS)
                    evbuffer_add_printf(out, "le=\"%g\"}", hist_bounds[b]);
                else
                    evbuffer_add_printf(out, "le=\"+Inf\"}");
                evbuffer_add_printf(out, " %llu\n",
                                    (unsigned long long)(b < NBOUNDS ? cum : sum.count));
            }
            const char *suffix[] = {"_sum", "_count"};
            for (int k = 0; k < 2; k++) {
                evbuffer_add_printf(out, "%s%s", defs[m].name, suffix[k]);
                if (has) {
                    put_labels(out, (enum tg_metric)m, sum.key);
                    evbuffer_add(out, "}", 1);
                }
                put_value(out, k == 0 ? sum.value : (double)sum.count);
            }
        }
    }
    free(all);
}

/* Markdown table cells: '|' would end the cell. */
static void put_cell(FILE *out, const char *text)
{
    for (const char *p = text; *p; p++) {
        if (*p == '|')
            fputs("\\|", out);
        else
            fputc(*p, out);
    }
}

void tg_metrics_write_doc(FILE *out)
{
    static const char *const tnames[] = {"counter", "gauge", "histogram"};
    fputs("| metric | type | labels | meaning |\n|---|---|---|---|\n", out);
    for (int m = 0; m < TG_M_COUNT; m++) {
        fprintf(out, "| `%s` | %s | ", defs[m].name, tnames[defs[m].type]);
        const char *l = defs[m].labels;
        while (*l) {
            const char *e = strchr(l, ',');
            int len = e ? (int)(e - l) : (int)strlen(l);
            fprintf(out, "`%.*s`%s", len, l, e ? ", " : "");
            l = e ? e + 1 : l + len;
        }
        fputs(" | ", out);
        put_cell(out, defs[m].help);
        fputs(" |\n", out);
    }
}

void tg_metrics_print_doc(void)
{
    tg_metrics_write_doc(stdout);
}
