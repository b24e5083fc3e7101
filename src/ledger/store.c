/* The local backend's balances: in memory, every change appended to a JSONL ledger file
 * before it is acknowledged, the file replayed at start (holds left open by a process that
 * died refunded), and the same file checked by `tollgate ledger verify`. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tollgate/buf.h"
#include "tollgate/ledger.h"
#include "tollgate/log.h"
#include "tollgate/usage.h"

#define ACCT_SLOTS 1024 /* power of two */
#define LINE_MAX_BYTES (TG_LEDGER_EVENT_MAX + 256)

struct hold {
    char id[TG_HOLD_ID_LEN];
    char rid[TG_REQUEST_ID_LEN];
    int64_t amount;
};

struct idem {
    char key[TG_IDEM_KEY_MAX + 1];
    char hash[65];
    int64_t seq;
};

struct acct {
    struct acct *next;
    char *name;
    int64_t bal, held, seq;
    struct hold *holds;
    size_t nholds, holds_cap;
    struct idem *idems;
    size_t nidems, idems_cap;
    off_t *offs; /* offs[seq - 1]: where event seq starts in the file */
    size_t noffs, offs_cap;
};

struct tg_ledger_store {
    pthread_mutex_t mu;
    int fd;
    off_t end;
    char *path;
    struct acct *slots[ACCT_SLOTS];
};

static struct tg_ledger_store *default_store;

void tg_ledger_store_set_default(struct tg_ledger_store *st)
{
    __atomic_store_n(&default_store, st, __ATOMIC_RELEASE);
}

struct tg_ledger_store *tg_ledger_store_default(void)
{
    return __atomic_load_n(&default_store, __ATOMIC_ACQUIRE);
}

/* ---- accounts ---- */

static struct acct *acct_find(struct tg_ledger_store *st, const char *name, bool create)
{
    size_t n = strlen(name);
    unsigned h = (unsigned)tg_fnv1a(TG_FNV_SEED, name, n) & (ACCT_SLOTS - 1);
    for (struct acct *a = st->slots[h]; a; a = a->next)
        if (strcmp(a->name, name) == 0) return a;
    if (!create) return NULL;
    struct acct *a = calloc(1, sizeof(*a));
    if (!a || !(a->name = strdup(name))) {
        free(a);
        return NULL;
    }
    a->next = st->slots[h];
    st->slots[h] = a;
    return a;
}

static struct hold *hold_find(struct acct *a, const char *id)
{
    for (size_t i = 0; i < a->nholds; i++)
        if (strcmp(a->holds[i].id, id) == 0) return &a->holds[i];
    return NULL;
}

static bool hold_add(struct acct *a, const char *id, const char *rid, int64_t amount)
{
    if (!tg_grow(&a->holds, &a->holds_cap, a->nholds + 1, sizeof(*a->holds), 16)) return false;
    struct hold *h = &a->holds[a->nholds++];
    snprintf(h->id, sizeof(h->id), "%s", id);
    snprintf(h->rid, sizeof(h->rid), "%s", rid ? rid : "");
    h->amount = amount;
    return true;
}

static void hold_remove(struct acct *a, struct hold *h)
{
    *h = a->holds[--a->nholds];
}

static struct idem *idem_find(struct acct *a, const char *key)
{
    for (size_t i = 0; i < a->nidems; i++)
        if (strcmp(a->idems[i].key, key) == 0) return &a->idems[i];
    return NULL;
}

static bool idem_add(struct acct *a, const char *key, const char *hash, int64_t seq)
{
    if (!tg_grow(&a->idems, &a->idems_cap, a->nidems + 1, sizeof(*a->idems), 16)) return false;
    struct idem *d = &a->idems[a->nidems++];
    snprintf(d->key, sizeof(d->key), "%s", key);
    snprintf(d->hash, sizeof(d->hash), "%s", hash ? hash : "");
    d->seq = seq;
    return true;
}

static bool offs_add(struct acct *a, off_t off)
{
    if (!tg_grow(&a->offs, &a->offs_cap, a->noffs + 1, sizeof(*a->offs), 64)) return false;
    a->offs[a->noffs++] = off;
    return true;
}

/* ---- lines: the event's JSON with the hold id and body hash the replay needs ---- */

static size_t format_line(const struct tg_ledger_event *e, const char *hold_id,
                          const char *body_hash, char *out, size_t cap)
{
    size_t n = tg_ledger_event_json(e, out, cap);
    if (n == 0) return 0;
    n--; /* the closing brace */
    int k = snprintf(out + n, cap - n, ",\"hold_id\":\"%s\",\"body_hash\":\"%s\"}\n",
                     hold_id ? hold_id : "", body_hash ? body_hash : "");
    if (k < 0 || (size_t)k >= cap - n) return 0;
    return n + (size_t)k;
}

/* The fields of one line. */
struct parsed {
    int64_t seq, ts, delta, balance, held;
    char tenant[256], reason[32], idem[TG_IDEM_KEY_MAX + 1], rid[TG_REQUEST_ID_LEN];
    char note[TG_NOTE_MAX + 1], hold_id[TG_HOLD_ID_LEN], body_hash[65];
};

/* Reads a JSON string at *p (past its opening quote) into out (cut at cap - 1). */
static bool read_string(const char **p, const char *e, char *out, size_t cap)
{
    size_t n = 0;
    const char *s = *p;
    while (s < e && *s != '"') {
        char c = *s++;
        if (c == '\\') {
            if (s >= e) return false;
            char x = *s++;
            switch (x) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                if (e - s < 4) return false;
                char hex[5] = {s[0], s[1], s[2], s[3], 0};
                long v = strtol(hex, NULL, 16);
                s += 4;
                c = v < 0x80 ? (char)v : '?';
                break;
            }
            default: c = x; break;
            }
        }
        if (n + 1 < cap) out[n++] = c;
    }
    if (s >= e) return false;
    out[n] = '\0';
    *p = s + 1;
    return true;
}

/* Copies a parsed string into a field, cut to fit. */
static void copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* An amount as this file writes it ("-12.345678"), over the whole int64 range: a balance may
 * grow past what one change may move. */
static bool parse_stored_amount(const char *s, int64_t *micro)
{
    bool neg = *s == '-';
    if (neg) s++;
    const char *dot = strchr(s, '.');
    if (!dot || strlen(dot + 1) != 6 || dot == s) return false;
    __int128 v = 0;
    for (const char *p = s; *p; p++) {
        if (p == dot) continue;
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (*p - '0');
        if (v > (__int128)INT64_MAX) return false;
    }
    *micro = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

static bool parse_line(const char *s, size_t len, struct parsed *o)
{
    memset(o, 0, sizeof(*o));
    const char *p = s, *e = s + len;
    bool have_seq = false, have_bal = false, have_delta = false;
    if (p >= e || *p++ != '{') return false;
    while (p < e && *p != '}') {
        if (*p == ',') p++;
        if (p >= e || *p++ != '"') return false;
        char key[32], val[TG_NOTE_MAX + 64];
        if (!read_string(&p, e, key, sizeof(key))) return false;
        if (p >= e || *p++ != ':') return false;
        bool null = false;
        if (p < e && *p == '"') {
            p++;
            if (!read_string(&p, e, val, sizeof(val))) return false;
        } else {
            size_t n = 0;
            while (p < e && *p != ',' && *p != '}' && n + 1 < sizeof(val))
                val[n++] = *p++;
            val[n] = '\0';
            null = strcmp(val, "null") == 0;
        }
        if (null) continue;
        if (strcmp(key, "seq") == 0) {
            o->seq = strtoll(val, NULL, 10);
            have_seq = true;
        } else if (strcmp(key, "ts") == 0) {
            o->ts = strtoll(val, NULL, 10);
        } else if (strcmp(key, "delta") == 0) {
            if (!parse_stored_amount(val, &o->delta)) return false;
            have_delta = true;
        } else if (strcmp(key, "balance") == 0) {
            if (!parse_stored_amount(val, &o->balance)) return false;
            have_bal = true;
        } else if (strcmp(key, "held") == 0) {
            if (!parse_stored_amount(val, &o->held)) return false;
        } else if (strcmp(key, "tenant") == 0) {
            copy_field(o->tenant, sizeof(o->tenant), val);
        } else if (strcmp(key, "reason") == 0) {
            copy_field(o->reason, sizeof(o->reason), val);
        } else if (strcmp(key, "idempotency_key") == 0) {
            copy_field(o->idem, sizeof(o->idem), val);
        } else if (strcmp(key, "request_id") == 0) {
            copy_field(o->rid, sizeof(o->rid), val);
        } else if (strcmp(key, "note") == 0) {
            copy_field(o->note, sizeof(o->note), val);
        } else if (strcmp(key, "hold_id") == 0) {
            copy_field(o->hold_id, sizeof(o->hold_id), val);
        } else if (strcmp(key, "body_hash") == 0) {
            copy_field(o->body_hash, sizeof(o->body_hash), val);
        }
    }
    return have_seq && have_bal && have_delta && o->tenant[0] && o->reason[0];
}

static void event_of(const struct parsed *p, struct tg_ledger_event *e)
{
    *e = (struct tg_ledger_event){.seq = p->seq,
                                  .ts_ms = p->ts,
                                  .delta = p->delta,
                                  .balance = p->balance,
                                  .held = p->held,
                                  .tenant = p->tenant,
                                  .reason = p->reason,
                                  .idem = p->idem,
                                  .request_id = p->rid,
                                  .note = p->note};
}

/* ---- writing ---- */

/* Appends event `e` of account `a` (whose numbers are already e's) and ships it. Returns 0,
 * or -1 (nothing was written: the caller undoes its change). */
static int append(struct tg_ledger_store *st, struct acct *a, const struct tg_ledger_event *e,
                  const char *hold_id, const char *body_hash, bool sync)
{
    char line[LINE_MAX_BYTES];
    size_t n = format_line(e, hold_id, body_hash, line, sizeof(line));
    if (n == 0 || !offs_add(a, st->end)) return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(st->fd, line + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int err = errno;
            a->noffs--;
            if (done > 0 && ftruncate(st->fd, st->end) != 0) {
                /* a torn line: the replay cuts it off */
            }
            tg_log_error("ledger file %s: cannot write: %s", st->path, strerror(err));
            return -1;
        }
        done += (size_t)w;
    }
    if (sync && fdatasync(st->fd) != 0) {
        tg_log_error("ledger file %s: fdatasync: %s", st->path, strerror(errno));
        a->noffs--;
        if (ftruncate(st->fd, st->end) != 0) {
            /* cut off by the replay if it stays */
        }
        return -1;
    }
    st->end += (off_t)n;
    tg_ledger_ship(e);
    return 0;
}

static struct tg_ledger_event next_event(const struct acct *a, int64_t delta, int64_t held,
                                         const char *reason)
{
    return (struct tg_ledger_event){.seq = a->seq + 1,
                                    .ts_ms = tg_now_wall_ms(),
                                    .delta = delta,
                                    .balance = a->bal + delta,
                                    .held = held,
                                    .tenant = a->name,
                                    .reason = reason};
}

static void apply(struct acct *a, const struct tg_ledger_event *e)
{
    a->seq = e->seq;
    a->bal = e->balance;
    a->held = e->held;
}

int tg_ledger_store_hold(struct tg_ledger_store *st, const char *tenant, const char *hold_id,
                         const char *request_id, int64_t price, struct tg_ledger_event *ev)
{
    pthread_mutex_lock(&st->mu);
    int rc = -1;
    struct acct *a = acct_find(st, tenant, true);
    if (!a) goto out;
    if (a->bal < price) {
        *ev = (struct tg_ledger_event){.balance = a->bal, .held = a->held, .seq = 0};
        rc = 0;
        goto out;
    }
    if (hold_find(a, hold_id)) { /* ids are random: a caller's bug, refused */
        tg_log_error("ledger: hold %s of tenant %s is already open", hold_id, tenant);
        goto out;
    }
    struct tg_ledger_event e = next_event(a, -price, a->held + price, TG_LEDGER_HOLD);
    e.request_id = request_id;
    if (!hold_add(a, hold_id, request_id, price)) goto out;
    if (append(st, a, &e, hold_id, NULL, false) != 0) {
        a->nholds--;
        goto out;
    }
    apply(a, &e);
    *ev = e;
    rc = 1;
out:
    pthread_mutex_unlock(&st->mu);
    return rc;
}

void tg_ledger_store_settle(struct tg_ledger_store *st, const char *tenant, const char *hold_id,
                            const char *request_id, int64_t actual)
{
    pthread_mutex_lock(&st->mu);
    struct acct *a = acct_find(st, tenant, true);
    if (a) {
        struct hold *h = hold_find(a, hold_id);
        int64_t amount = h ? h->amount : 0;
        struct tg_ledger_event e = next_event(a, amount - actual, a->held - amount, TG_LEDGER_SETTLE);
        e.request_id = request_id;
        if (append(st, a, &e, hold_id, NULL, false) == 0) {
            apply(a, &e);
            if (h) hold_remove(a, h);
        } else {
            tg_log_error("ledger: the settle of hold %s of tenant %s is lost (%lld micro-credits "
                         "stay held until the next start refunds them)",
                         hold_id, tenant, (long long)amount);
        }
    }
    pthread_mutex_unlock(&st->mu);
}

bool tg_ledger_store_get(struct tg_ledger_store *st, const char *tenant, int64_t *balance,
                         int64_t *held, int64_t *seq)
{
    pthread_mutex_lock(&st->mu);
    struct acct *a = acct_find(st, tenant, false);
    *balance = a ? a->bal : 0;
    *held = a ? a->held : 0;
    *seq = a ? a->seq : 0;
    pthread_mutex_unlock(&st->mu);
    return a != NULL && a->seq > 0;
}

/* Reads event `seq` of `a` back from the file. */
static bool read_event(struct tg_ledger_store *st, const struct acct *a, int64_t seq,
                       struct parsed *p)
{
    if (seq < 1 || (size_t)seq > a->noffs) return false;
    char line[LINE_MAX_BYTES];
    ssize_t n = pread(st->fd, line, sizeof(line), a->offs[seq - 1]);
    if (n <= 0) return false;
    const char *nl = memchr(line, '\n', (size_t)n);
    return nl && parse_line(line, (size_t)(nl - line), p);
}

enum tg_ledger_change_status tg_ledger_store_change(struct tg_ledger_store *st, const char *tenant,
                                                    int64_t amount, const char *note,
                                                    const char *idem, const char *body_hash,
                                                    struct tg_ledger_event *ev)
{
    static __thread struct parsed first; /* the repeated change's event, valid until the next call */
    pthread_mutex_lock(&st->mu);
    enum tg_ledger_change_status rc = TG_CHANGE_FAILED;
    struct acct *a = acct_find(st, tenant, true);
    if (!a) goto out;
    struct idem *d = idem_find(a, idem);
    if (d) {
        if (strcmp(d->hash, body_hash) != 0) {
            rc = TG_CHANGE_CONFLICT;
        } else if (read_event(st, a, d->seq, &first)) {
            event_of(&first, ev);
            rc = TG_CHANGE_REPEATED;
        }
        goto out;
    }
    if (amount < 0 && a->bal + amount < 0) {
        *ev = (struct tg_ledger_event){.balance = a->bal, .held = a->held};
        rc = TG_CHANGE_SHORT;
        goto out;
    }
    if (amount > 0 && a->bal > TG_AMOUNT_MAX_MICRO - amount) {
        *ev = (struct tg_ledger_event){.balance = a->bal, .held = a->held};
        rc = TG_CHANGE_TOO_LARGE;
        goto out;
    }
    struct tg_ledger_event e =
        next_event(a, amount, a->held, amount >= 0 ? TG_LEDGER_TOPUP : TG_LEDGER_ADJUSTMENT);
    e.idem = idem;
    e.note = note;
    if (!idem_add(a, idem, body_hash, e.seq)) goto out;
    if (append(st, a, &e, NULL, body_hash, true) != 0) {
        a->nidems--;
        goto out;
    }
    apply(a, &e);
    *ev = e;
    rc = TG_CHANGE_APPLIED;
out:
    pthread_mutex_unlock(&st->mu);
    return rc;
}

size_t tg_ledger_store_events(struct tg_ledger_store *st, const char *tenant, int64_t after,
                              size_t limit,
                              void (*fn)(void *arg, const struct tg_ledger_event *e), void *arg)
{
    pthread_mutex_lock(&st->mu);
    size_t n = 0;
    struct acct *a = acct_find(st, tenant, false);
    if (a) {
        struct parsed p;
        for (int64_t seq = after < 0 ? 1 : after + 1; seq <= a->seq && n < limit; seq++) {
            if (!read_event(st, a, seq, &p)) break;
            struct tg_ledger_event e;
            event_of(&p, &e);
            fn(arg, &e);
            n++;
        }
    }
    pthread_mutex_unlock(&st->mu);
    return n;
}

/* ---- the replay, and its checks ---- */

/* Replays `f` into `st` (NULL: only checks). Every problem is written to `out` (when set)
 * and counted; the replay stops at the first one when it loads a store. A last line
 * without its newline is torn: *torn_at gets its offset (else -1). */
static int replay(FILE *f, const char *path, struct tg_ledger_store *st, FILE *out,
                  off_t *torn_at, off_t *end)
{
    struct tg_ledger_store scratch;
    struct tg_ledger_store *into = st ? st : &scratch;
    if (!st) memset(&scratch, 0, sizeof(scratch));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    off_t off = 0;
    int problems = 0;
    size_t lineno = 0;
    *torn_at = -1;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[len - 1] != '\n') {
            *torn_at = off;
            break;
        }
        struct parsed p;
        const char *bad = NULL;
        struct acct *a = NULL;
        if (!parse_line(line, (size_t)len - 1, &p)) {
            bad = "not a ledger event";
        } else if (!(a = acct_find(into, p.tenant, true))) {
            bad = "out of memory";
        } else if (p.seq != a->seq + 1) {
            bad = "seq does not follow the tenant's previous event";
        } else if (p.balance != a->bal + p.delta) {
            bad = "balance is not the previous balance plus delta";
        }
        int64_t held = a ? a->held : 0;
        if (!bad && strcmp(p.reason, TG_LEDGER_HOLD) == 0) {
            held += -p.delta;
            if (hold_find(a, p.hold_id))
                bad = "a hold id used twice";
            else if (!hold_add(a, p.hold_id, p.rid, -p.delta))
                bad = "out of memory";
        } else if (!bad && (strcmp(p.reason, TG_LEDGER_SETTLE) == 0 ||
                            strcmp(p.reason, TG_LEDGER_EXPIRED) == 0)) {
            struct hold *h = hold_find(a, p.hold_id);
            if (h) {
                held -= h->amount;
                hold_remove(a, h);
            } else if (strcmp(p.reason, TG_LEDGER_EXPIRED) == 0) {
                bad = "a hold expired that was not open";
            }
        } else if (!bad && p.idem[0]) {
            if (!idem_add(a, p.idem, p.body_hash, p.seq)) bad = "out of memory";
        }
        if (!bad && p.held != held) bad = "held is not what the open holds add up to";
        if (!bad && !offs_add(a, off)) bad = "out of memory";
        if (bad) {
            problems++;
            if (out) fprintf(out, "%s:%zu: %s\n", path, lineno, bad);
            if (st) break;
            if (a && p.tenant[0]) { /* go on from what the line says */
                a->seq = p.seq;
                a->bal = p.balance;
                a->held = p.held;
            }
            off += len;
            continue;
        }
        a->seq = p.seq;
        a->bal = p.balance;
        a->held = p.held;
        off += len;
    }
    free(line);
    *end = off;
    if (!st) {
        for (size_t i = 0; i < ACCT_SLOTS; i++) {
            for (struct acct *a = scratch.slots[i], *next; a; a = next) {
                next = a->next;
                char b[TG_AMOUNT_LEN], h[TG_AMOUNT_LEN];
                tg_ledger_format_amount(a->bal, b);
                tg_ledger_format_amount(a->held, h);
                if (out)
                    fprintf(out, "%s: %lld events, balance %s, held %s in %zu open holds\n",
                            a->name, (long long)a->seq, b, h, a->nholds);
                free(a->holds);
                free(a->idems);
                free(a->offs);
                free(a->name);
                free(a);
            }
        }
    }
    return problems;
}

int tg_ledger_verify_file(const char *path, FILE *out)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (out) fprintf(out, "%s: %s\n", path, strerror(errno));
        return 1;
    }
    off_t torn, end;
    int problems = replay(f, path, NULL, out, &torn, &end);
    fclose(f);
    if (torn >= 0 && out) {
        fprintf(out, "%s: a torn last line at byte %lld (cut off at the next start)\n", path,
                (long long)torn);
    }
    return problems;
}

static void free_accounts(struct tg_ledger_store *st)
{
    for (size_t i = 0; i < ACCT_SLOTS; i++) {
        for (struct acct *a = st->slots[i], *next; a; a = next) {
            next = a->next;
            free(a->holds);
            free(a->idems);
            free(a->offs);
            free(a->name);
            free(a);
        }
        st->slots[i] = NULL;
    }
}

struct tg_ledger_store *tg_ledger_store_open(const char *path, char err[TG_ERR_LEN])
{
    struct tg_ledger_store *st = calloc(1, sizeof(*st));
    if (!st || !(st->path = strdup(path))) {
        snprintf(err, TG_ERR_LEN, "credits.ledger_file: out of memory");
        free(st);
        return NULL;
    }
    st->fd = -1;
    pthread_mutex_init(&st->mu, NULL);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (tg_usage_mkdirs(dir) != 0) {
            snprintf(err, TG_ERR_LEN, "credits.ledger_file: %.200s: %s", dir, strerror(errno));
            goto error;
        }
    }
    st->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (st->fd < 0) {
        snprintf(err, TG_ERR_LEN, "credits.ledger_file: %s: %s", path, strerror(errno));
        goto error;
    }
    FILE *f = fdopen(dup(st->fd), "r");
    if (!f) {
        snprintf(err, TG_ERR_LEN, "credits.ledger_file: %s: %s", path, strerror(errno));
        goto error;
    }
    off_t torn, end;
    char problem[TG_ERR_LEN] = "";
    FILE *msg = fmemopen(problem, sizeof(problem) - 1, "w");
    int bad = replay(f, path, st, msg, &torn, &end);
    if (msg) fclose(msg);
    fclose(f);
    if (bad) {
        problem[strcspn(problem, "\n")] = '\0';
        snprintf(err, TG_ERR_LEN, "credits.ledger_file: %.150s (check it with `tollgate ledger "
                                  "verify`; the gateway will not guess at balances)",
                 problem);
        goto error;
    }
    if (torn >= 0) {
        tg_log_warn("ledger file %s: cutting off a torn last line at byte %lld", path,
                    (long long)torn);
        if (ftruncate(st->fd, torn) != 0) {
            snprintf(err, TG_ERR_LEN, "credits.ledger_file: %s: %s", path, strerror(errno));
            goto error;
        }
        end = torn;
    }
    st->end = end;
    /* Holds a process left open died with it: nothing will settle them. */
    size_t refunded = 0;
    for (size_t i = 0; i < ACCT_SLOTS; i++) {
        for (struct acct *a = st->slots[i]; a; a = a->next) {
            while (a->nholds > 0) {
                struct hold *h = &a->holds[a->nholds - 1];
                struct tg_ledger_event e =
                    next_event(a, h->amount, a->held - h->amount, TG_LEDGER_EXPIRED);
                e.request_id = h->rid;
                if (append(st, a, &e, h->id, NULL, true) != 0) {
                    snprintf(err, TG_ERR_LEN, "credits.ledger_file: %s: cannot write", path);
                    goto error;
                }
                apply(a, &e);
                a->nholds--;
                refunded++;
            }
        }
    }
    if (refunded) tg_log_info("ledger file %s: refunded %zu holds left open", path, refunded);
    return st;
error:
    tg_ledger_store_close(st);
    return NULL;
}

void tg_ledger_store_close(struct tg_ledger_store *st)
{
    if (!st) return;
    if (st->fd >= 0) close(st->fd);
    free_accounts(st);
    pthread_mutex_destroy(&st->mu);
    free(st->path);
    free(st);
}
