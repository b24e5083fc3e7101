/* Configuration loader: one YAML file -> a validated, immutable, reference-counted tg_config. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <yaml.h>
#include "tollgate/auth.h"
#include "tollgate/config.h"

/* Limits of the loader itself (the defaults of the settings are in config.h). */
#define MAX_DEPTH 64 /* nesting of mappings and sequences */
#define MAX_FILE_BYTES (256 << 20)
#define ALIAS_BUDGET 1000000 /* nodes aliases may add beyond 8 per input byte */
#define MAX_DIRECTIVES 16    /* keys of the largest section */
#define MAX_WORKERS 1024
#define MAX_MS_HOUR 3600000
#define MAX_MS_DAY 86400000
#define MAX_TOKENS 100000000
#define MAX_RATE 1000000000000LL /* 1e12 units: keeps micro-units within int64 */
#define MAX_BODY_BYTES (1LL << 40)
#define MIN_SPOOL_BYTES (1LL << 20)
#define MAX_SPOOL_BYTES (1LL << 50)
#define ARENA_CHUNK (64 * 1024)
#define NONE UINT32_MAX

/* ---- memory: every string and array of a config lives in its arena ---- */

struct tg_arena {
    struct tg_arena *next;
    size_t used, cap;
    max_align_t data[];
};

/* Zeroed memory aligned to `align` (a power of two up to that of max_align_t) that lives
 * until arena_free; NULL if out of memory. */
static void *arena_alloc_aligned(struct tg_arena **a, size_t n, size_t align)
{
    struct tg_arena *c = *a;
    if (c) {
        size_t at = (c->used + align - 1) & ~(align - 1);
        if (at <= c->cap && c->cap - at >= n) {
            c->used = at + n;
            return (unsigned char *)c->data + at;
        }
    }
    size_t cap = n > ARENA_CHUNK / 4 ? n : ARENA_CHUNK;
    c = calloc(1, sizeof(*c) + cap);
    if (!c) return NULL;
    c->cap = cap;
    c->used = n;
    if (cap == n && *a) { /* a large block gets its own chunk; keep filling the current one */
        c->next = (*a)->next;
        (*a)->next = c;
    } else {
        c->next = *a;
        *a = c;
    }
    return c->data;
}

static void *arena_alloc(struct tg_arena **a, size_t n)
{
    return arena_alloc_aligned(a, n, sizeof(max_align_t));
}

static char *arena_strndup(struct tg_arena **a, const char *s, size_t n)
{
    char *p = arena_alloc_aligned(a, n + 1, 1);
    if (p) memcpy(p, s, n);
    return p;
}

static void arena_free(struct tg_arena *a)
{
    while (a) {
        struct tg_arena *next = a->next;
        free(a);
        a = next;
    }
}

/* ---- string set: open addressing over borrowed strings ---- */

struct strset_slot {
    const char *s; /* NULL = empty slot */
    uint32_t len, hash, val;
};

struct tg_strset {
    struct strset_slot *slots;
    size_t cap, n; /* cap: power of two, at least twice n */
};

static uint32_t hash_str(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static struct strset_slot *strset_probe(struct strset_slot *slots, size_t cap, const char *s,
                                        size_t len, uint32_t h)
{
    for (size_t i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        struct strset_slot *e = &slots[i];
        if (!e->s || (e->hash == h && e->len == len && memcmp(e->s, s, len) == 0)) return e;
    }
}

static const struct strset_slot *strset_find(const struct tg_strset *set, const char *s, size_t len)
{
    if (!set || set->cap == 0) return NULL;
    const struct strset_slot *e = strset_probe(set->slots, set->cap, s, len, hash_str(s, len));
    return e->s ? e : NULL;
}

/* Finds `s` or adds it with `val` (`s` is borrowed: it must outlive the set). Returns the
 * slot, *added telling which happened; NULL if out of memory. */
static struct strset_slot *strset_add(struct tg_strset *set, const char *s, size_t len,
                                      uint32_t val, bool *added)
{
    if ((set->n + 1) * 2 > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        struct strset_slot *slots = calloc(cap, sizeof(*slots));
        if (!slots) return NULL;
        for (size_t i = 0; i < set->cap; i++) {
            const struct strset_slot *e = &set->slots[i];
            if (e->s) *strset_probe(slots, cap, e->s, e->len, e->hash) = *e;
        }
        free(set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    uint32_t h = hash_str(s, len);
    struct strset_slot *e = strset_probe(set->slots, set->cap, s, len, h);
    *added = e->s == NULL;
    if (*added) {
        *e = (struct strset_slot){s, (uint32_t)len, h, val};
        set->n++;
    }
    return e;
}

static void strset_deinit(struct tg_strset *set)
{
    free(set->slots);
    *set = (struct tg_strset){0};
}

/* ---- the YAML document: composed from libyaml events into compact nodes ---- */

enum { N_SCALAR = 1, N_SEQ, N_MAP };

struct node {
    uint8_t type;
    bool plain;    /* plain scalar: "", "~" and "null" mean null */
    bool open;     /* collection still being composed: an alias to it is a cycle */
    uint32_t line; /* 0-based, as libyaml marks are */
    uint32_t col;
    uint32_t n;      /* scalar length, or number of children (two per mapping pair) */
    uint32_t weight; /* nodes this one stands for, aliases expanded */
    union {
        char *str;      /* NUL-terminated */
        uint32_t *kids; /* node indexes */
    } u;
};

struct frame {
    uint32_t node;
    size_t kid0; /* its first child on the kids stack */
};

struct doc {
    struct node *nodes;
    size_t nnodes, cap;
    uint32_t *kids; /* children of the open collections */
    size_t nkids, kids_cap;
    struct frame frames[MAX_DEPTH];
    size_t depth;
    struct tg_strset anchors;
    struct tg_arena *mem;
    uint32_t root;
    uint64_t budget; /* most nodes the root may stand for */
    size_t cap_hint; /* first size of `nodes` */
};

struct loader {
    const char *name; /* file name in errors */
    char *err;
    struct doc doc;
    struct tg_config *cfg;
    char path[TG_ERR_LEN]; /* key path of the node at hand: "tenants[0].limits[1].per" */
    size_t plen;
    char *buf; /* ${VAR} expansion */
    size_t buf_cap;
    struct tg_strset upstream_names, route_paths;
    void *items; /* the list being filled and the index of the item at hand */
    size_t item;
};

static struct node *N(struct loader *ld, uint32_t id)
{
    return &ld->doc.nodes[id];
}

static const char *type_name(int type)
{
    return type == N_MAP ? "mapping" : type == N_SEQ ? "sequence" : "scalar";
}

/* ---- errors: "FILE:LINE:COLUMN: key.path: reason" ---- */

static void path_append(struct loader *ld, const char *s, size_t n)
{
    if (n > sizeof(ld->path) - 1 - ld->plen) n = sizeof(ld->path) - 1 - ld->plen;
    memcpy(ld->path + ld->plen, s, n);
    ld->plen += n;
    ld->path[ld->plen] = '\0';
}

static size_t path_key(struct loader *ld, const char *key, size_t len)
{
    size_t mark = ld->plen;
    if (mark) path_append(ld, ".", 1);
    path_append(ld, key, len);
    return mark;
}

static size_t path_index(struct loader *ld, size_t i)
{
    size_t mark = ld->plen;
    char digits[24], *p = digits + sizeof(digits);
    *--p = ']';
    do {
        *--p = (char)('0' + i % 10);
    } while ((i /= 10) > 0);
    *--p = '[';
    path_append(ld, p, (size_t)(digits + sizeof(digits) - p));
    return mark;
}

static void path_pop(struct loader *ld, size_t mark)
{
    ld->plen = mark;
    ld->path[mark] = '\0';
}

TG_PRINTF(4, 0)
static int vfail_at(struct loader *ld, size_t line, size_t col, const char *fmt, va_list ap)
{
    int n = snprintf(ld->err, TG_ERR_LEN, "%s:%zu:%zu: %s: ", ld->name, line, col,
                     ld->plen ? ld->path : "(root)");
    if (n >= 0 && n < TG_ERR_LEN) vsnprintf(ld->err + n, TG_ERR_LEN - (size_t)n, fmt, ap);
    return -1;
}

/* Fills the error at a 1-based position; returns -1. */
TG_PRINTF(4, 5)
static int fail_at(struct loader *ld, size_t line, size_t col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, line, col, fmt, ap);
    va_end(ap);
    return -1;
}

/* Fills the error at node `id` (1:1 if NONE); returns -1. */
TG_PRINTF(3, 4)
static int fail(struct loader *ld, uint32_t id, const char *fmt, ...)
{
    size_t line = id == NONE ? 1 : (size_t)N(ld, id)->line + 1;
    size_t col = id == NONE ? 1 : (size_t)N(ld, id)->col + 1;
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, line, col, fmt, ap);
    va_end(ap);
    return -1;
}

/* Same, with ` (got "VALUE")` appended when the value is short and printable. */
TG_PRINTF(5, 6)
static int fail_got(struct loader *ld, uint32_t id, const char *s, size_t n, const char *fmt, ...)
{
    char why[TG_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    bool show = n <= 40;
    for (size_t i = 0; show && i < n; i++)
        show = isprint((unsigned char)s[i]);
    return show ? fail(ld, id, "%s (got \"%.*s\")", why, (int)n, s) : fail(ld, id, "%s", why);
}

static void *ld_alloc(struct loader *ld, size_t n)
{
    void *p = arena_alloc(&ld->cfg->arena, n);
    if (!p) fail_at(ld, 1, 1, "out of memory");
    return p;
}

static char *ld_strdup(struct loader *ld, const char *s, size_t n)
{
    char *p = arena_strndup(&ld->cfg->arena, s, n);
    if (!p) fail_at(ld, 1, 1, "out of memory");
    return p;
}

/* ---- composing libyaml events into the document ---- */

static uint32_t doc_add(struct loader *ld, int type, const yaml_mark_t *m)
{
    struct doc *d = &ld->doc;
    if (d->nnodes == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : d->cap_hint;
        struct node *nodes = cap < NONE ? realloc(d->nodes, cap * sizeof(*nodes)) : NULL;
        if (!nodes) {
            fail_at(ld, 1, 1, "out of memory");
            return NONE;
        }
        d->nodes = nodes;
        d->cap = cap;
    }
    uint32_t id = (uint32_t)d->nnodes++;
    d->nodes[id] = (struct node){
        .type = (uint8_t)type, .line = (uint32_t)m->line, .col = (uint32_t)m->column, .weight = 1};
    return id;
}

static int doc_child(struct loader *ld, uint32_t id)
{
    struct doc *d = &ld->doc;
    if (d->depth == 0) {
        if (d->root == NONE) d->root = id;
        return 0;
    }
    if (d->nkids == d->kids_cap) {
        size_t cap = d->kids_cap ? d->kids_cap * 2 : 256;
        uint32_t *kids = realloc(d->kids, cap * sizeof(*kids));
        if (!kids) return fail_at(ld, 1, 1, "out of memory");
        d->kids = kids;
        d->kids_cap = cap;
    }
    d->kids[d->nkids++] = id;
    return 0;
}

/* The key path of the position the composer is at, for errors found while composing:
 * of the node to come, or (`last`) of the last child of the innermost open collection. */
static void doc_path(struct loader *ld, bool last)
{
    const struct doc *d = &ld->doc;
    path_pop(ld, 0);
    for (size_t f = 0; f < d->depth; f++) {
        const struct frame *fr = &d->frames[f];
        bool inner = f + 1 < d->depth || last; /* then the path goes through its last child */
        size_t count = (inner ? d->frames[f + 1].kid0 : d->nkids) - fr->kid0;
        size_t at = inner ? count - 1 : count; /* the child being composed */
        if (d->nodes[fr->node].type == N_SEQ) {
            path_index(ld, at);
        } else if (at % 2 == 1) {
            const struct node *k = &d->nodes[d->kids[fr->kid0 + at - 1]];
            if (k->type == N_SCALAR) path_key(ld, k->u.str, k->n);
        }
    }
}

static int doc_anchor(struct loader *ld, const yaml_char_t *anchor, uint32_t id)
{
    if (!anchor) return 0;
    size_t n = strlen((const char *)anchor);
    char *name = arena_strndup(&ld->doc.mem, (const char *)anchor, n);
    bool added;
    struct strset_slot *e = name ? strset_add(&ld->doc.anchors, name, n, id, &added) : NULL;
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    e->val = id; /* a later anchor of the same name replaces the earlier one */
    return 0;
}

static int on_scalar(struct loader *ld, const yaml_event_t *ev)
{
    uint32_t id = doc_add(ld, N_SCALAR, &ev->start_mark);
    if (id == NONE) return -1;
    size_t n = ev->data.scalar.length;
    char *s = n < NONE ? arena_strndup(&ld->doc.mem, (const char *)ev->data.scalar.value, n) : NULL;
    if (!s) return fail_at(ld, 1, 1, "out of memory");
    struct node *nd = N(ld, id);
    nd->u.str = s;
    nd->n = (uint32_t)n;
    nd->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (doc_anchor(ld, ev->data.scalar.anchor, id) < 0) return -1;
    return doc_child(ld, id);
}

static int on_start(struct loader *ld, int type, const yaml_event_t *ev, const yaml_char_t *anchor)
{
    struct doc *d = &ld->doc;
    if (d->depth == MAX_DEPTH) {
        doc_path(ld, false);
        return fail_at(ld, ev->start_mark.line + 1, ev->start_mark.column + 1,
                       "nested deeper than %d levels", MAX_DEPTH);
    }
    uint32_t id = doc_add(ld, type, &ev->start_mark);
    if (id == NONE || doc_anchor(ld, anchor, id) < 0 || doc_child(ld, id) < 0) return -1;
    d->nodes[id].open = true;
    d->frames[d->depth++] = (struct frame){id, d->nkids};
    return 0;
}

static int on_end(struct loader *ld)
{
    struct doc *d = &ld->doc;
    const struct frame fr = d->frames[d->depth - 1];
    size_t n = d->nkids - fr.kid0;
    uint32_t *kids = n ? arena_alloc_aligned(&d->mem, n * sizeof(*kids), sizeof(*kids)) : NULL;
    if (n && !kids) return fail_at(ld, 1, 1, "out of memory");
    if (n) memcpy(kids, d->kids + fr.kid0, n * sizeof(*kids));
    uint64_t weight = 1;
    for (size_t i = 0; i < n; i++)
        weight += d->nodes[kids[i]].weight;
    d->nkids = fr.kid0;
    d->depth--;
    if (weight > d->budget) {
        doc_path(ld, true);
        return fail(ld, fr.node, "aliases expand to more than %llu nodes",
                    (unsigned long long)d->budget);
    }
    struct node *nd = &d->nodes[fr.node];
    nd->u.kids = kids;
    nd->n = (uint32_t)n;
    nd->weight = (uint32_t)weight;
    nd->open = false;
    return 0;
}

static int on_alias(struct loader *ld, const yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    const struct strset_slot *e = strset_find(&ld->doc.anchors, name, strlen(name));
    size_t line = ev->start_mark.line + 1, col = ev->start_mark.column + 1;
    if (!e || ld->doc.nodes[e->val].open) {
        doc_path(ld, false);
        return e ? fail_at(ld, line, col, "alias *%s refers to a node that contains it (a cycle)",
                           name)
                 : fail_at(ld, line, col, "undefined alias *%s", name);
    }
    return doc_child(ld, e->val);
}

/* Line and column (in characters) of a byte offset, for reader errors. */
static void offset_position(const char *text, size_t len, size_t off, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

static int parse_error(struct loader *ld, const yaml_parser_t *p, const char *text, size_t len)
{
    const char *problem = p->problem ? p->problem : "syntax error";
    doc_path(ld, false);
    if (p->error == YAML_MEMORY_ERROR) return fail_at(ld, 1, 1, "out of memory");
    if (p->error == YAML_READER_ERROR) {
        path_pop(ld, 0); /* the reader decodes far ahead of the parser: no path to tell */
        size_t line, col;
        offset_position(text, len, p->problem_offset, &line, &col);
        if (p->problem_value >= 0)
            return fail_at(ld, line, col, "%s (byte 0x%02x)", problem, p->problem_value & 0xff);
        return fail_at(ld, line, col, "%s", problem);
    }
    size_t line = p->problem_mark.line + 1, col = p->problem_mark.column + 1;
    if (p->context)
        return fail_at(ld, line, col, "%s (%s started at line %zu, column %zu)", problem,
                       p->context, p->context_mark.line + 1, p->context_mark.column + 1);
    return fail_at(ld, line, col, "%s", problem);
}

/* Builds ld->doc from the YAML text; the root is NONE for an empty stream. One document only. */
static int compose(struct loader *ld, const char *text, size_t len)
{
    struct doc *d = &ld->doc;
    yaml_parser_t p;
    yaml_event_t ev;
    int rc = -1, ndocs = 0;
    d->root = NONE;
    d->budget = ALIAS_BUDGET + 8 * (uint64_t)len;
    d->cap_hint = 64 + len / 4; /* typical YAML spends 4 bytes or more per node, so `nodes`
                                 * seldom grows; pages it never reaches are never touched */
    if (!yaml_parser_initialize(&p)) return fail_at(ld, 1, 1, "out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    for (bool done = false; !done;) {
        if (!yaml_parser_parse(&p, &ev)) {
            parse_error(ld, &p, text, len);
            goto out;
        }
        int r = 0;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (ndocs++)
                r = fail_at(ld, ev.start_mark.line + 1, ev.start_mark.column + 1,
                            "only one YAML document is allowed");
            break;
        case YAML_SCALAR_EVENT:
            r = on_scalar(ld, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
            r = on_start(ld, N_SEQ, &ev, ev.data.sequence_start.anchor);
            break;
        case YAML_MAPPING_START_EVENT:
            r = on_start(ld, N_MAP, &ev, ev.data.mapping_start.anchor);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            r = on_end(ld);
            break;
        case YAML_ALIAS_EVENT:
            r = on_alias(ld, &ev);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (r < 0) goto out;
    }
    rc = 0;
out:
    yaml_parser_delete(&p);
    return rc;
}

static void doc_free(struct doc *d)
{
    free(d->nodes);
    free(d->kids);
    strset_deinit(&d->anchors);
    arena_free(d->mem);
}

/* ---- scalars ---- */

static bool is_null(const struct node *nd)
{
    if (nd->type != N_SCALAR || !nd->plain) return false;
    const char *s = nd->u.str;
    return nd->n == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

static int buf_put(struct loader *ld, size_t *o, const char *s, size_t n)
{
    if (*o + n + 1 > ld->buf_cap) {
        size_t cap = ld->buf_cap ? ld->buf_cap : 256;
        while (cap < *o + n + 1)
            cap *= 2;
        char *buf = realloc(ld->buf, cap);
        if (!buf) return fail_at(ld, 1, 1, "out of memory");
        ld->buf = buf;
        ld->buf_cap = cap;
    }
    memcpy(ld->buf + *o, s, n);
    *o += n;
    ld->buf[*o] = '\0';
    return 0;
}

/* The text of scalar `id` with ${VAR} expanded from the environment and $$ turned into $.
 * The result is valid until the next call; NULL with the error filled. */
static const char *expand(struct loader *ld, uint32_t id, size_t *len)
{
    const struct node *nd = N(ld, id);
    const char *s = nd->u.str;
    size_t n = nd->n, o = 0;
    if (memchr(s, '\0', n)) return fail(ld, id, "contains a NUL character"), NULL;
    if (!memchr(s, '$', n)) {
        *len = n;
        return s;
    }
    if (buf_put(ld, &o, "", 0) < 0) return NULL;
    for (size_t i = 0; i < n;) {
        if (s[i] != '$' || i + 1 == n || (s[i + 1] != '$' && s[i + 1] != '{')) {
            if (buf_put(ld, &o, s + i, 1) < 0) return NULL;
            i++;
            continue;
        }
        if (s[i + 1] == '$') {
            if (buf_put(ld, &o, "$", 1) < 0) return NULL;
            i += 2;
            continue;
        }
        const char *name = s + i + 2;
        const char *close = memchr(name, '}', n - i - 2);
        if (!close) return fail(ld, id, "unterminated ${ (write $$ for a literal $)"), NULL;
        size_t nlen = (size_t)(close - name);
        bool ok = nlen > 0 && nlen < 128 && !isdigit((unsigned char)name[0]);
        for (size_t j = 0; ok && j < nlen; j++)
            ok = isalnum((unsigned char)name[j]) || name[j] == '_';
        if (!ok) return fail(ld, id, "bad environment variable name in ${...}"), NULL;
        char var[128];
        memcpy(var, name, nlen);
        var[nlen] = '\0';
        const char *val = getenv(var);
        if (!val) return fail(ld, id, "environment variable %s is not set", var), NULL;
        if (buf_put(ld, &o, val, strlen(val)) < 0) return NULL;
        i = (size_t)(close - s) + 1;
    }
    *len = o;
    return ld->buf;
}

/* ---- directive tables ---- */

struct directive;
struct section;
/* Parses node `id` (already of the directive's node type) into `base` + d->off. */
typedef int (*setter_fn)(struct loader *ld, const struct directive *d, uint32_t id, void *base);
/* Cross-field checks of a section once all its keys are set. `map` is NONE when the
 * section was not written; seen[i] is the value node of keys[i] or NONE. */
typedef int (*check_fn)(struct loader *ld, const struct section *sec, uint32_t map,
                        const uint32_t *seen, void *base);

/* How a directive's value is stored: how its default is written and reloads compare it. */
enum store {
    ST_NONE,
    ST_INT,
    ST_I64,
    ST_DBL,
    ST_BOOL,
    ST_ENUM,
    ST_STR,
    ST_LISTEN,
    ST_KV,
    ST_SECTION
};

struct directive {
    const char *name;
    int node; /* expected node type */
    setter_fn set;
    size_t off;   /* target, from the base the section fills */
    size_t off_n; /* element count of a list or map */
    enum store store;
    int64_t defi;     /* defaults: ST_INT, ST_I64, ST_BOOL */
    double defd;      /* ST_DBL */
    const char *defs; /* ST_STR, ST_LISTEN, ST_ENUM (a choice) */
    int64_t min, max; /* bounds of numbers (min exclusive when min_excl); max items of lists */
    bool min_excl;
    const char *const *choices; /* ST_ENUM, NULL-terminated; index = value */
    const struct section *sub;  /* ST_SECTION, and the items of a list */
    size_t item_size;
    bool required;
    bool reload_safe; /* a reload may change it (sections: their keys decide) */
};

struct section {
    const struct directive *keys;
    size_t nkeys;
    check_fn check;
};

#define FIELD(base, d, type) ((type *)(void *)((char *)(base) + (d)->off))

static int apply_section(struct loader *ld, const struct section *sec, uint32_t map, void *base);

static int choice_index(const char *const *choices, const char *s)
{
    for (int i = 0; choices[i]; i++) {
        if (strcmp(choices[i], s) == 0) return i;
    }
    return -1;
}

static void join_choices(const char *const *choices, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; choices[i] && o < cap; i++) {
        int n = snprintf(out + o, cap - o, "%s%s", i ? ", " : "", choices[i]);
        if (n > 0) o += (size_t)n;
    }
}

static int set_int64(struct loader *ld, const struct directive *d, uint32_t id, int64_t *out)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    char *end = NULL;
    errno = 0;
    long long v = n && !isspace((unsigned char)s[0]) ? strtoll(s, &end, 10) : 0;
    if (end != s + n || errno == ERANGE || v < d->min || v > d->max)
        return fail_got(ld, id, s, n, "must be an integer from %lld to %lld", (long long)d->min,
                        (long long)d->max);
    *out = v;
    return 0;
}

static int set_int(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    int64_t v;
    if (set_int64(ld, d, id, &v) < 0) return -1;
    *FIELD(base, d, int) = (int)v;
    return 0;
}

static int set_i64(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return set_int64(ld, d, id, FIELD(base, d, int64_t));
}

static int set_num(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    char *end = NULL;
    double v = n && strspn(s, "0123456789+-.eE") == n ? strtod(s, &end) : NAN;
    bool ok = end == s + n && isfinite(v) && v <= (double)d->max &&
              (d->min_excl ? v > (double)d->min : v >= (double)d->min);
    if (!ok && d->min_excl)
        return fail_got(ld, id, s, n, "must be a number greater than %lld and at most %lld",
                        (long long)d->min, (long long)d->max);
    if (!ok)
        return fail_got(ld, id, s, n, "must be a number from %lld to %lld", (long long)d->min,
                        (long long)d->max);
    *FIELD(base, d, double) = v;
    return 0;
}

static int set_bool(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0)
        *FIELD(base, d, bool) = true;
    else if (strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0)
        *FIELD(base, d, bool) = false;
    else
        return fail_got(ld, id, s, n, "must be true or false");
    return 0;
}

/* The index of scalar `id` among `choices`, or -1 with the error filled. */
static int parse_choice(struct loader *ld, uint32_t id, const char *const *choices)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    int v = choice_index(choices, s);
    if (v < 0) {
        char list[TG_ERR_LEN];
        join_choices(choices, list, sizeof(list));
        return fail(ld, id, "must be one of %s", list);
    }
    return v;
}

static int set_enum(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    int v = parse_choice(ld, id, d->choices);
    if (v < 0) return -1;
    *FIELD(base, d, int) = v;
    return 0;
}

static int set_str(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n = 0;
    const char *s = is_null(N(ld, id)) ? "" : expand(ld, id, &n);
    if (!s) return -1;
    char *p = ld_strdup(ld, s, n);
    if (!p) return -1;
    *FIELD(base, d, char *) = p;
    return 0;
}

static bool is_name_char(char c)
{
    return isalnum((unsigned char)c) || strchr("-_.:@", c) != NULL;
}

/* Names of upstreams, tenants and limits: they end up in Redis keys, headers and records. */
static int set_name(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    if (set_str(ld, d, id, base) < 0) return -1;
    const char *s = *FIELD(base, d, char *);
    if (!*s) return fail(ld, id, "must not be empty");
    for (const char *p = s; *p; p++) {
        if (!is_name_char(*p)) return fail(ld, id, "may contain only letters, digits and -_.:@");
    }
    return 0;
}

static int set_path(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    if (set_str(ld, d, id, base) < 0) return -1;
    const char *s = *FIELD(base, d, char *);
    if (s[0] != '/') return fail(ld, id, "must start with '/'");
    for (const char *p = s; *p; p++) {
        if (!isgraph((unsigned char)*p) || *p == '?' || *p == '#')
            return fail(ld, id, "may not contain '?', '#', spaces or control characters");
    }
    return 0;
}

static int set_section(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return apply_section(ld, d->sub, id, base);
}

/* A sequence of mappings, each filled by the directive's sub-section. */
static int set_list(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    const struct node *nd = N(ld, id);
    size_t n = nd->n;
    if (d->max && n > (size_t)d->max)
        return fail(ld, id, "at most %lld entries are allowed, got %zu", (long long)d->max, n);
    char *items = n ? ld_alloc(ld, n * d->item_size) : NULL;
    if (n && !items) return -1;
    *FIELD(base, d, void *) = items;
    *(size_t *)(void *)((char *)base + d->off_n) = n;
    void *saved_items = ld->items;
    size_t saved_item = ld->item;
    ld->items = items;
    for (size_t i = 0; i < n; i++) {
        uint32_t kid = nd->u.kids[i];
        size_t mark = path_index(ld, i);
        if (N(ld, kid)->type != N_MAP)
            return fail(ld, kid, "expected a mapping, got a %s", type_name(N(ld, kid)->type));
        ld->item = i;
        if (apply_section(ld, d->sub, kid, items + i * d->item_size) < 0) return -1;
        path_pop(ld, mark);
    }
    ld->items = saved_items;
    ld->item = saved_item;
    return 0;
}

/* A sequence of non-empty strings (limit models). */
static int set_strlist(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    const struct node *nd = N(ld, id);
    char **list = nd->n ? ld_alloc(ld, nd->n * sizeof(*list)) : NULL;
    if (nd->n && !list) return -1;
    for (size_t i = 0; i < nd->n; i++) {
        uint32_t kid = nd->u.kids[i];
        size_t mark = path_index(ld, i), n;
        if (N(ld, kid)->type != N_SCALAR)
            return fail(ld, kid, "expected a scalar, got a %s", type_name(N(ld, kid)->type));
        const char *s = expand(ld, kid, &n);
        if (!s) return -1;
        if (n == 0) return fail(ld, kid, "must not be empty");
        if (!(list[i] = ld_strdup(ld, s, n))) return -1;
        path_pop(ld, mark);
    }
    *FIELD(base, d, char **) = list;
    *(size_t *)(void *)((char *)base + d->off_n) = nd->n;
    return 0;
}

static bool is_tchar(char c)
{
    return isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Headers tollgate writes itself: a configured value would corrupt the forwarded request. */
static const char *const managed_headers[] = {"host", "content-length", "transfer-encoding",
                                              "connection", NULL};

/* A mapping of strings to strings; `http`: header names and values. */
static int kv_map(struct loader *ld, const struct directive *d, uint32_t id, void *base, bool http)
{
    const struct node *nd = N(ld, id);
    size_t npairs = nd->n / 2;
    struct tg_strset seen = {0};
    int rc = -1;
    struct tg_kv *kv = npairs ? ld_alloc(ld, npairs * sizeof(*kv)) : NULL;
    if (npairs && !kv) goto out;
    for (size_t i = 0; i < npairs; i++) {
        uint32_t k = nd->u.kids[2 * i], v = nd->u.kids[2 * i + 1];
        size_t kn, vn;
        const char *s;
        if (N(ld, k)->type != N_SCALAR) {
            fail(ld, k, "keys must be scalars, got a %s", type_name(N(ld, k)->type));
            goto out;
        }
        size_t mark = path_key(ld, N(ld, k)->u.str, N(ld, k)->n);
        if (!(s = expand(ld, k, &kn)) || !(kv[i].key = ld_strdup(ld, s, kn))) goto out;
        bool added;
        if (!strset_add(&seen, kv[i].key, kn, 0, &added)) {
            fail_at(ld, 1, 1, "out of memory");
            goto out;
        }
        if (!added) {
            fail(ld, k, "duplicate key");
            goto out;
        }
        if (N(ld, v)->type != N_SCALAR) {
            fail(ld, v, "expected a scalar, got a %s", type_name(N(ld, v)->type));
            goto out;
        }
        vn = 0;
        if (!(s = is_null(N(ld, v)) ? "" : expand(ld, v, &vn))) goto out;
        if (!(kv[i].value = ld_strdup(ld, s, vn))) goto out;
        if (http) {
            bool ok = kn > 0;
            for (size_t j = 0; ok && j < kn; j++)
                ok = is_tchar(kv[i].key[j]);
            if (!ok) {
                fail(ld, k, "not a valid header name");
                goto out;
            }
            for (size_t j = 0; managed_headers[j]; j++) {
                if (strcasecmp(kv[i].key, managed_headers[j]) == 0) {
                    fail(ld, k, "%s is set by tollgate itself", managed_headers[j]);
                    goto out;
                }
            }
            if (strcspn(kv[i].value, "\r\n") != vn) {
                fail(ld, v, "header values may not contain line breaks");
                goto out;
            }
        }
        path_pop(ld, mark);
    }
    *FIELD(base, d, struct tg_kv *) = kv;
    *(size_t *)(void *)((char *)base + d->off_n) = npairs;
    rc = 0;
out:
    strset_deinit(&seen);
    return rc;
}

static int set_headers(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return kv_map(ld, d, id, base, true);
}

static int set_props(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    return kv_map(ld, d, id, base, false);
}

/* Strict port: digits only, `min`..65535. */
static int parse_port(const char *s, size_t n, int min)
{
    if (n == 0 || n > 5 || strspn(s, "0123456789") < n) return -1;
    int port = 0;
    for (size_t i = 0; i < n; i++)
        port = port * 10 + (s[i] - '0');
    return port >= min && port <= 65535 ? port : -1;
}

/* Resolves host:port once; numeric addresses first, names through getaddrinfo, IPv4 preferred. */
static int resolve(struct loader *ld, uint32_t id, const char *host, int port,
                   struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc == EAI_NONAME) {
        hints.ai_flags = AI_NUMERICSERV;
        rc = getaddrinfo(host, service, &hints, &res);
    }
    if (rc != 0) return fail(ld, id, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *len = pick->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Splits "host:port", "[v6]:port" (with_port) or "host", "[v6]", "host:port" (optional port).
 * Returns the port (`def_port` when absent) or -1; host goes to `host`. */
static int split_host_port(const char *s, size_t n, bool need_port, int def_port, int min_port,
                           char *host, size_t host_cap)
{
    const char *h = s, *port = NULL, *end = s + n;
    size_t hn;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) return -1;
        h = s + 1;
        hn = (size_t)(close - h);
        if (close + 1 < end) {
            if (close[1] != ':') return -1;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        hn = colon ? (size_t)(colon - s) : n;
        if (colon) port = colon + 1;
    }
    if (hn == 0 || hn >= host_cap || (need_port && !port)) return -1;
    for (size_t i = 0; i < hn; i++) {
        if (!isgraph((unsigned char)h[i]) || strchr("[]/@?#", h[i])) return -1;
    }
    memcpy(host, h, hn);
    host[hn] = '\0';
    return port ? parse_port(port, (size_t)(end - port), min_port) : def_port;
}

static int listen_init(struct loader *ld, uint32_t id, const char *s, size_t n,
                       struct tg_listen *out)
{
    char host[256];
    int port = split_host_port(s, n, true, 0, 0, host, sizeof(host));
    if (port < 0) return fail_got(ld, id, s, n, "must be host:port or [ipv6-address]:port");
    if (resolve(ld, id, host, port, &out->addr, &out->addrlen) < 0) return -1;
    return (out->text = ld_strdup(ld, s, n)) ? 0 : -1;
}

static int set_listen(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    return s ? listen_init(ld, id, s, n, FIELD(base, d, struct tg_listen)) : -1;
}

static const char *const per_names[] = {"second", "minute", "hour", "day", NULL};
static const int64_t per_ms[] = {1000, 60000, 3600000, 86400000};

static int set_per(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    int v = parse_choice(ld, id, per_names);
    if (v < 0) return -1;
    *FIELD(base, d, int64_t) = per_ms[v];
    return 0;
}

static const char *per_name(int64_t ms)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(per_ms); i++) {
        if (per_ms[i] == ms) return per_names[i];
    }
    return "?";
}

/* `upstream:` of a route: upstreams are loaded first (root table order). */
static int set_route_upstream(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    size_t n;
    const char *s = expand(ld, id, &n);
    if (!s) return -1;
    const struct strset_slot *e = strset_find(&ld->upstream_names, s, n);
    if (!e) return fail_got(ld, id, s, n, "no upstream has this name");
    *FIELD(base, d, struct tg_upstream *) = &ld->cfg->upstreams[e->val];
    return 0;
}

/* `name:` of a tenant, registered at once: before its keys, whose errors name tenants. */
static int set_tenant_name(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    struct tg_tenant *t = base;
    if (set_name(ld, d, id, base) < 0) return -1;
    t->index = ld->item;
    bool added;
    const struct strset_slot *e =
        strset_add(ld->cfg->tenant_index, t->name, strlen(t->name), (uint32_t)ld->item, &added);
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    if (!added) return fail(ld, id, "tenant %s is already defined at tenants[%u]", t->name, e->val);
    return 0;
}

/* `keys:` of a tenant (the directive's base is the tenant). Plain keys are hashed here;
 * only digests are kept, and errors never show a key. */
static int set_keys(struct loader *ld, const struct directive *d, uint32_t id, void *base)
{
    struct tg_tenant *t = base;
    const struct node *nd = N(ld, id);
    for (size_t i = 0; i < nd->n; i++) {
        uint32_t kid = nd->u.kids[i];
        size_t mark = path_index(ld, i), n;
        if (N(ld, kid)->type != N_SCALAR)
            return fail(ld, kid, "expected a scalar, got a %s", type_name(N(ld, kid)->type));
        const char *s = expand(ld, kid, &n);
        if (!s) return -1;
        uint8_t digest[32];
        bool plain = strncmp(s, "sha256:", 7) != 0;
        if (n == 0) return fail(ld, kid, "must not be empty");
        if (!plain && tg_auth_parse(s, digest) < 0)
            return fail(ld, kid, "must be sha256: followed by 64 hex digits");
        for (size_t j = 0; plain && j < n; j++) {
            if (!isgraph((unsigned char)s[j]))
                return fail(ld, kid, "keys may not contain spaces or control characters");
        }
        if (plain) tg_auth_hash(s, n, digest);
        int rc = tg_auth_insert(ld->cfg, digest, t, plain);
        if (rc == -2) return fail_at(ld, 1, 1, "out of memory");
        if (rc < 0) {
            const struct tg_tenant *other = tg_auth_find(ld->cfg, digest)->tenant;
            if (other == t)
                return fail(ld, kid, "the same key is listed twice for tenant %s", t->name);
            return fail(ld, kid, "the same key is also given to tenant %s", other->name);
        }
        path_pop(ld, mark);
    }
    return 0;
}

static uint32_t seen_node(const struct section *sec, const uint32_t *seen, const char *name,
                          uint32_t fallback)
{
    for (size_t i = 0; i < sec->nkeys; i++) {
        if (strcmp(sec->keys[i].name, name) == 0 && seen[i] != NONE) return seen[i];
    }
    return fallback;
}

/* An error about key `name` of the section being checked: at its value if it was written,
 * else at the mapping. */
TG_PRINTF(6, 7)
static int fail_key(struct loader *ld, const struct section *sec, const uint32_t *seen,
                    uint32_t map, const char *name, const char *fmt, ...)
{
    uint32_t id = seen_node(sec, seen, name, map);
    path_key(ld, name, strlen(name));
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, id == NONE ? 1 : N(ld, id)->line + 1, id == NONE ? 1 : N(ld, id)->col + 1, fmt,
             ap);
    va_end(ap);
    return -1;
}

/* ---- cross-field checks ---- */

static int check_server(struct loader *ld, const struct section *sec, uint32_t map,
                        const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->server.workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->server.workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
    }
    return 0;
}

static int check_redis(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->limiter.backend != TG_LIMITER_REDIS) return 0;
    char host[256];
    const char *h = c->limiter.redis.host;
    size_t mark = path_key(ld, "host", 4);
    uint32_t at = seen_node(sec, seen, "host", map);
    if (split_host_port(h, strlen(h), false, 0, 1, host, sizeof(host)) != 0)
        return fail_got(ld, at, h, strlen(h), "must be a host name or address");
    if (resolve(ld, at, host, c->limiter.redis.port, &c->limiter.redis.addr,
                &c->limiter.redis.addrlen) < 0)
        return -1;
    path_pop(ld, mark);
    return 0;
}

static int check_file(struct loader *ld, const struct section *sec, uint32_t map,
                      const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->usage.sink == TG_SINK_FILE && !c->usage.file.path[0])
        return fail_key(ld, sec, seen, map, "path", "must not be empty when usage.sink is file");
    return 0;
}

static int check_kafka(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_config *c = base;
    if (c->usage.sink != TG_SINK_KAFKA) return 0;
    if (!c->usage.kafka.brokers[0])
        return fail_key(ld, sec, seen, map, "brokers",
                        "must not be empty when usage.sink is kafka");
    if (!c->usage.kafka.topic[0])
        return fail_key(ld, sec, seen, map, "topic", "must not be empty when usage.sink is kafka");
    if (!c->usage.kafka.spool_dir[0])
        return fail_key(ld, sec, seen, map, "spool_dir",
                        "must not be empty when usage.sink is kafka");
    return 0;
}

static int parse_url(struct loader *ld, uint32_t id, struct tg_upstream *u)
{
    const char *s = u->url, *p;
    char host[256];
    if (strncasecmp(s, "http://", 7) == 0) {
        p = s + 7;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        u->tls = true;
        p = s + 8;
    } else {
        goto bad;
    }
    size_t alen = strcspn(p, "/");
    const char *path = p + alen;
    if (strpbrk(p, "?#")) return fail(ld, id, "may not have a query or a fragment");
    if (memchr(p, '@', alen))
        return fail(ld, id, "may not contain user:password@; set an Authorization header");
    int def_port = u->tls ? 443 : 80;
    u->port = split_host_port(p, alen, false, def_port, 1, host, sizeof(host));
    if (u->port < 0) goto bad;
    size_t plen = strlen(path);
    for (size_t i = 0; i < plen; i++) {
        if (!isgraph((unsigned char)path[i])) goto bad;
    }
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    bool v6 = strchr(host, ':') != NULL;
    char hh[300];
    if (u->port == def_port)
        snprintf(hh, sizeof(hh), v6 ? "[%s]" : "%s", host);
    else
        snprintf(hh, sizeof(hh), v6 ? "[%s]:%d" : "%s:%d", host, u->port);
    if (!(u->host = ld_strdup(ld, host, strlen(host))) ||
        !(u->base_path = ld_strdup(ld, path, plen)) ||
        !(u->host_header = ld_strdup(ld, hh, strlen(hh))))
        return -1;
    return resolve(ld, id, host, u->port, &u->addr, &u->addrlen);
bad:
    return fail(ld, id, "must be http:// or https:// followed by host[:port][/base/path]");
}

static int check_upstream(struct loader *ld, const struct section *sec, uint32_t map,
                          const uint32_t *seen, void *base)
{
    struct tg_upstream *u = base;
    u->index = ld->item;
    bool added;
    const struct strset_slot *e =
        strset_add(&ld->upstream_names, u->name, strlen(u->name), (uint32_t)ld->item, &added);
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    if (!added)
        return fail_key(ld, sec, seen, map, "name",
                        "upstream %s is already defined at upstreams[%u]", u->name, e->val);
    size_t mark = path_key(ld, "url", 3);
    if (parse_url(ld, seen_node(sec, seen, "url", map), u) < 0) return -1;
    path_pop(ld, mark);
    return 0;
}

static int check_route(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_route *r = base;
    r->path_len = strlen(r->path);
    if (r->default_max_tokens == 0) r->default_max_tokens = ld->cfg->costs.default_max_tokens;
    bool added;
    const struct strset_slot *e =
        strset_add(&ld->route_paths, r->path, r->path_len, (uint32_t)ld->item, &added);
    if (!e) return fail_at(ld, 1, 1, "out of memory");
    if (!added)
        return fail_key(ld, sec, seen, map, "path", "route %s is already defined at routes[%u]",
                        r->path, e->val);
    return 0;
}

static int check_limit(struct loader *ld, const struct section *sec, uint32_t map,
                       const uint32_t *seen, void *base)
{
    struct tg_limit *l = base;
    const struct tg_limit *all = ld->items;
    for (size_t i = 0; i < ld->item; i++) {
        if (strcmp(all[i].name, l->name) == 0)
            return fail_key(ld, sec, seen, map, "name",
                            "limit %s is already defined in this tenant at limits[%zu]", l->name,
                            i);
    }
    if (l->burst == 0) l->burst = l->rate;
    if (l->unit == TG_UNIT_REQUESTS && l->burst < 1)
        return fail_key(ld, sec, seen, map,
                        seen_node(sec, seen, "burst", NONE) != NONE ? "burst" : "rate",
                        "a requests limit needs a burst of at least 1 (one request costs 1)");
    return 0;
}

/* ---- the schema (DESIGN.md); keys are applied in table order ---- */

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const backend_names[] = {"local", "redis", NULL};
static const char *const on_error_names[] = {"allow", "deny", NULL};
static const char *const sink_names[] = {"file", "kafka", "none", NULL};
static const char *const fsync_names[] = {"always", "interval", NULL};
static const char *const full_names[] = {"reject", "drop_oldest", NULL};
static const char *const cost_names[] = {"requests", "tokens", "video", NULL};
static const char *const unit_names[] = {"requests", "tokens", "video_seconds", NULL};

_Static_assert(TG_LOG_ERROR == 3 && TG_LIMITER_REDIS == 1 && TG_REDIS_ERROR_DENY == 1 &&
                   TG_SINK_NONE == 2 && TG_SPOOL_FSYNC_INTERVAL == 1 &&
                   TG_SPOOL_FULL_DROP_OLDEST == 1 && TG_COST_VIDEO == 2 &&
                   TG_UNIT_VIDEO_SECONDS == 2 && sizeof(enum tg_unit) == sizeof(int),
               "choice tables follow the enums of config.h");

#define KEY(n, type, setter, offset) .name = n, .node = type, .set = setter, .off = offset
#define CFG(f) offsetof(struct tg_config, f)
/* A section's table, checked at compile time to fit apply_section's arrays. */
#define SECTION(keys, check)                                                                       \
    {                                                                                              \
        keys,                                                                                      \
            TG_ARRAY_LEN(keys) + 0 * sizeof(char[TG_ARRAY_LEN(keys) <= MAX_DIRECTIVES ? 1 : -1]),  \
            check                                                                                  \
    }

static const struct directive server_keys[] = {
    {KEY("listen", N_SCALAR, set_listen, CFG(server.listen)), .store = ST_LISTEN,
     .defs = TG_DEFAULT_LISTEN},
    {KEY("workers", N_SCALAR, set_int, CFG(server.workers)), .store = ST_INT,
     .defi = TG_DEFAULT_WORKERS, .min = 0, .max = MAX_WORKERS},
    {KEY("max_body_bytes", N_SCALAR, set_i64, CFG(server.max_body_bytes)), .store = ST_I64,
     .defi = TG_DEFAULT_MAX_BODY_BYTES, .min = 1, .max = MAX_BODY_BYTES, .reload_safe = true},
    {KEY("header_timeout_ms", N_SCALAR, set_int, CFG(server.header_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_HEADER_TIMEOUT_MS, .min = 1, .max = MAX_MS_HOUR, .reload_safe = true},
    {KEY("idle_timeout_ms", N_SCALAR, set_int, CFG(server.idle_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_IDLE_TIMEOUT_MS, .min = 1, .max = MAX_MS_DAY, .reload_safe = true},
    {KEY("drain_timeout_ms", N_SCALAR, set_int, CFG(server.drain_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_DRAIN_TIMEOUT_MS, .min = 0, .max = MAX_MS_HOUR, .reload_safe = true},
    {KEY("max_idle_connections", N_SCALAR, set_int, CFG(server.max_idle_connections)),
     .store = ST_INT, .defi = TG_DEFAULT_MAX_IDLE_CONNECTIONS, .min = 1, .max = 1000000,
     .reload_safe = true},
};

static const struct directive admin_keys[] = {
    {KEY("listen", N_SCALAR, set_listen, CFG(admin.listen)), .store = ST_LISTEN,
     .defs = TG_DEFAULT_ADMIN_LISTEN},
    {KEY("token", N_SCALAR, set_str, CFG(admin.token)), .store = ST_STR,
     .defs = TG_DEFAULT_ADMIN_TOKEN, .reload_safe = true},
};

static const struct directive log_keys[] = {
    {KEY("level", N_SCALAR, set_enum, CFG(log.level)), .store = ST_ENUM,
     .defs = TG_DEFAULT_LOG_LEVEL, .choices = level_names, .reload_safe = true},
    {KEY("access_path", N_SCALAR, set_str, CFG(log.access_path)), .store = ST_STR,
     .defs = TG_DEFAULT_ACCESS_PATH},
};

static const struct directive redis_keys[] = {
    {KEY("host", N_SCALAR, set_str, CFG(limiter.redis.host)), .store = ST_STR,
     .defs = TG_DEFAULT_REDIS_HOST},
    {KEY("port", N_SCALAR, set_int, CFG(limiter.redis.port)), .store = ST_INT,
     .defi = TG_DEFAULT_REDIS_PORT, .min = 1, .max = 65535},
    {KEY("password", N_SCALAR, set_str, CFG(limiter.redis.password)), .store = ST_STR,
     .defs = TG_DEFAULT_REDIS_PASSWORD},
    {KEY("db", N_SCALAR, set_int, CFG(limiter.redis.db)), .store = ST_INT,
     .defi = TG_DEFAULT_REDIS_DB, .min = 0, .max = 65535},
    {KEY("timeout_ms", N_SCALAR, set_int, CFG(limiter.redis.timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_REDIS_TIMEOUT_MS, .min = 1, .max = 60000},
    {KEY("key_prefix", N_SCALAR, set_str, CFG(limiter.redis.key_prefix)), .store = ST_STR,
     .defs = TG_DEFAULT_REDIS_KEY_PREFIX},
};
static const struct section redis_section = SECTION(redis_keys, check_redis);

static const struct directive limiter_keys[] = {
    {KEY("backend", N_SCALAR, set_enum, CFG(limiter.backend)), .store = ST_ENUM,
     .defs = TG_DEFAULT_LIMITER_BACKEND, .choices = backend_names},
    {KEY("redis", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &redis_section},
    {KEY("on_redis_error", N_SCALAR, set_enum, CFG(limiter.on_redis_error)), .store = ST_ENUM,
     .defs = TG_DEFAULT_ON_REDIS_ERROR, .choices = on_error_names},
    {KEY("expected_gateways", N_SCALAR, set_int, CFG(limiter.expected_gateways)), .store = ST_INT,
     .defi = TG_DEFAULT_EXPECTED_GATEWAYS, .min = 1, .max = 1000},
};

static const struct directive costs_keys[] = {
    {KEY("chars_per_token", N_SCALAR, set_int, CFG(costs.chars_per_token)), .store = ST_INT,
     .defi = TG_DEFAULT_CHARS_PER_TOKEN, .min = 1, .max = 1000, .reload_safe = true},
    {KEY("default_max_tokens", N_SCALAR, set_int, CFG(costs.default_max_tokens)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_TOKENS, .min = 1, .max = MAX_TOKENS, .reload_safe = true},
};

static const struct directive file_keys[] = {
    {KEY("path", N_SCALAR, set_str, CFG(usage.file.path)), .store = ST_STR,
     .defs = TG_DEFAULT_USAGE_FILE},
};
static const struct section file_section = SECTION(file_keys, check_file);

static const struct directive kafka_keys[] = {
    {KEY("brokers", N_SCALAR, set_str, CFG(usage.kafka.brokers)), .store = ST_STR,
     .defs = TG_DEFAULT_KAFKA_BROKERS},
    {KEY("topic", N_SCALAR, set_str, CFG(usage.kafka.topic)), .store = ST_STR,
     .defs = TG_DEFAULT_KAFKA_TOPIC},
    {KEY("spool_dir", N_SCALAR, set_str, CFG(usage.kafka.spool_dir)), .store = ST_STR,
     .defs = TG_DEFAULT_SPOOL_DIR},
    {KEY("spool_fsync", N_SCALAR, set_enum, CFG(usage.kafka.spool_fsync)), .store = ST_ENUM,
     .defs = TG_DEFAULT_SPOOL_FSYNC, .choices = fsync_names},
    {KEY("spool_fsync_interval_ms", N_SCALAR, set_int, CFG(usage.kafka.spool_fsync_interval_ms)),
     .store = ST_INT, .defi = TG_DEFAULT_SPOOL_FSYNC_INTERVAL_MS, .min = 1, .max = 60000},
    {KEY("spool_max_bytes", N_SCALAR, set_i64, CFG(usage.kafka.spool_max_bytes)), .store = ST_I64,
     .defi = TG_DEFAULT_SPOOL_MAX_BYTES, .min = MIN_SPOOL_BYTES, .max = MAX_SPOOL_BYTES},
    {KEY("spool_full", N_SCALAR, set_enum, CFG(usage.kafka.spool_full)), .store = ST_ENUM,
     .defs = TG_DEFAULT_SPOOL_FULL, .choices = full_names},
    {KEY("properties", N_MAP, set_props, CFG(usage.kafka.properties)), .store = ST_KV,
     .off_n = CFG(usage.kafka.nproperties)},
};
static const struct section kafka_section = SECTION(kafka_keys, check_kafka);

static const struct directive usage_keys[] = {
    {KEY("sink", N_SCALAR, set_enum, CFG(usage.sink)), .store = ST_ENUM,
     .defs = TG_DEFAULT_USAGE_SINK, .choices = sink_names},
    {KEY("file", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &file_section},
    {KEY("kafka", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &kafka_section},
};

#define UP(f) offsetof(struct tg_upstream, f)
static const struct directive upstream_keys[] = {
    {KEY("name", N_SCALAR, set_name, UP(name)), .store = ST_STR, .required = true},
    {KEY("url", N_SCALAR, set_str, UP(url)), .store = ST_STR, .required = true},
    {KEY("headers", N_MAP, set_headers, UP(headers)), .store = ST_KV, .off_n = UP(nheaders)},
    {KEY("connect_timeout_ms", N_SCALAR, set_int, UP(connect_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_CONNECT_TIMEOUT_MS, .min = 1, .max = MAX_MS_HOUR},
    {KEY("response_timeout_ms", N_SCALAR, set_int, UP(response_timeout_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_RESPONSE_TIMEOUT_MS, .min = 1, .max = MAX_MS_DAY},
    {KEY("max_connections", N_SCALAR, set_int, UP(max_connections)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_CONNECTIONS, .min = 1, .max = 65536},
    {KEY("tls_verify", N_SCALAR, set_bool, UP(tls_verify)), .store = ST_BOOL,
     .defi = TG_DEFAULT_TLS_VERIFY},
};
static const struct section upstream_section = SECTION(upstream_keys, check_upstream);

#define RT(f) offsetof(struct tg_route, f)
static const struct directive route_keys[] = {
    {KEY("path", N_SCALAR, set_path, RT(path)), .store = ST_STR, .required = true},
    {KEY("upstream", N_SCALAR, set_route_upstream, RT(upstream)), .required = true},
    {KEY("cost", N_SCALAR, set_enum, RT(cost)), .store = ST_ENUM, .choices = cost_names,
     .required = true},
    {KEY("default_max_tokens", N_SCALAR, set_int, RT(default_max_tokens)), .store = ST_INT,
     .min = 1, .max = MAX_TOKENS}, /* default: costs.default_max_tokens */
    {KEY("max_wait_ms", N_SCALAR, set_int, RT(max_wait_ms)), .store = ST_INT,
     .defi = TG_DEFAULT_MAX_WAIT_MS, .min = 0, .max = 600000},
};
static const struct section route_section = SECTION(route_keys, check_route);

#define LIM(f) offsetof(struct tg_limit, f)
static const struct directive limit_keys[] = {
    {KEY("name", N_SCALAR, set_name, LIM(name)), .store = ST_STR, .required = true},
    {KEY("unit", N_SCALAR, set_enum, LIM(unit)), .store = ST_ENUM, .choices = unit_names,
     .required = true},
    {KEY("rate", N_SCALAR, set_num, LIM(rate)), .store = ST_DBL, .min = 0, .min_excl = true,
     .max = MAX_RATE, .required = true},
    {KEY("per", N_SCALAR, set_per, LIM(per_ms)), .store = ST_I64, .required = true},
    {KEY("burst", N_SCALAR, set_num, LIM(burst)), .store = ST_DBL, .min = 0, .min_excl = true,
     .max = MAX_RATE}, /* default: rate */
    {KEY("models", N_SEQ, set_strlist, LIM(models)), .off_n = LIM(nmodels)},
};
static const struct section limit_section = SECTION(limit_keys, check_limit);

#define TEN(f) offsetof(struct tg_tenant, f)
static const struct directive tenant_keys[] = {
    {KEY("name", N_SCALAR, set_tenant_name, TEN(name)), .store = ST_STR, .required = true},
    {KEY("keys", N_SEQ, set_keys, 0)}, /* into the config's key table */
    {KEY("limits", N_SEQ, set_list, TEN(limits)), .off_n = TEN(nlimits), .sub = &limit_section,
     .item_size = sizeof(struct tg_limit), .max = TG_MAX_LIMITS_PER_TENANT},
};
static const struct section tenant_section = SECTION(tenant_keys, NULL);

static const struct section server_section = SECTION(server_keys, check_server);
static const struct section admin_section = SECTION(admin_keys, NULL);
static const struct section log_section = SECTION(log_keys, NULL);
static const struct section limiter_section = SECTION(limiter_keys, NULL);
static const struct section costs_section = SECTION(costs_keys, NULL);
static const struct section usage_section = SECTION(usage_keys, NULL);

static const struct directive root_keys[] = {
    {KEY("server", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &server_section},
    {KEY("admin", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &admin_section},
    {KEY("log", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &log_section},
    {KEY("limiter", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &limiter_section},
    {KEY("costs", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &costs_section},
    {KEY("usage", N_MAP, set_section, 0), .store = ST_SECTION, .sub = &usage_section},
    {KEY("upstreams", N_SEQ, set_list, CFG(upstreams)), .off_n = CFG(nupstreams),
     .sub = &upstream_section, .item_size = sizeof(struct tg_upstream), .reload_safe = true},
    {KEY("routes", N_SEQ, set_list, CFG(routes)), .off_n = CFG(nroutes), .sub = &route_section,
     .item_size = sizeof(struct tg_route), .reload_safe = true},
    {KEY("tenants", N_SEQ, set_list, CFG(tenants)), .off_n = CFG(ntenants), .sub = &tenant_section,
     .item_size = sizeof(struct tg_tenant), .reload_safe = true},
};
static const struct section root_section = SECTION(root_keys, NULL);

static int apply_default(struct loader *ld, const struct directive *d, void *base)
{
    switch (d->store) {
    case ST_INT:
        *FIELD(base, d, int) = (int)d->defi;
        break;
    case ST_I64:
        *FIELD(base, d, int64_t) = d->defi;
        break;
    case ST_DBL:
        *FIELD(base, d, double) = d->defd;
        break;
    case ST_BOOL:
        *FIELD(base, d, bool) = d->defi != 0;
        break;
    case ST_ENUM:
        *FIELD(base, d, int) = d->defs ? choice_index(d->choices, d->defs) : 0;
        break;
    case ST_STR: {
        const char *s = d->defs ? d->defs : "";
        return (*FIELD(base, d, char *) = ld_strdup(ld, s, strlen(s))) ? 0 : -1;
    }
    case ST_LISTEN:
        return listen_init(ld, NONE, d->defs, strlen(d->defs), FIELD(base, d, struct tg_listen));
    case ST_SECTION:
        return apply_section(ld, d->sub, NONE, base);
    case ST_KV:
    case ST_NONE:
        break; /* empty */
    }
    return 0;
}

static void join_keys(const struct section *sec, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < sec->nkeys && o < cap; i++) {
        int n = snprintf(out + o, cap - o, "%s%s", i ? ", " : "", sec->keys[i].name);
        if (n > 0) o += (size_t)n;
    }
}

/* Fills `base` from mapping `map` (NONE: not written) by the section's table: unknown and
 * duplicate keys are errors, absent keys take their defaults, then the section's check runs. */
static int apply_section(struct loader *ld, const struct section *sec, uint32_t map, void *base)
{
    uint32_t seen[MAX_DIRECTIVES], key_at[MAX_DIRECTIVES];
    for (size_t i = 0; i < sec->nkeys; i++)
        seen[i] = NONE;
    if (map != NONE && is_null(N(ld, map))) map = NONE;
    if (map != NONE && N(ld, map)->type != N_MAP)
        return fail(ld, map, "expected a mapping, got a %s", type_name(N(ld, map)->type));
    for (size_t p = 0; map != NONE && p < N(ld, map)->n; p += 2) {
        uint32_t k = N(ld, map)->u.kids[p];
        const struct node *kn = N(ld, k);
        if (kn->type != N_SCALAR)
            return fail(ld, k, "keys must be scalars, got a %s", type_name(kn->type));
        size_t i = 0;
        while (i < sec->nkeys && !(strlen(sec->keys[i].name) == kn->n &&
                                   memcmp(sec->keys[i].name, kn->u.str, kn->n) == 0))
            i++;
        size_t mark = path_key(ld, kn->u.str, kn->n);
        if (i == sec->nkeys) {
            char known[TG_ERR_LEN];
            join_keys(sec, known, sizeof(known));
            return fail(ld, k, "unknown key (known keys: %s)", known);
        }
        if (seen[i] != NONE)
            return fail(ld, k, "duplicate key (first at line %u)", N(ld, key_at[i])->line + 1);
        seen[i] = N(ld, map)->u.kids[p + 1];
        key_at[i] = k;
        path_pop(ld, mark);
    }
    for (size_t i = 0; i < sec->nkeys; i++) {
        const struct directive *d = &sec->keys[i];
        uint32_t v = seen[i];
        size_t mark = path_key(ld, d->name, strlen(d->name));
        if (v != NONE && N(ld, v)->type != d->node && d->node != N_SCALAR && is_null(N(ld, v)))
            v = NONE; /* `key:` with nothing after it: as if not written */
        if (v == NONE && d->required) return fail(ld, map, "required key is missing");
        if (v != NONE && N(ld, v)->type != d->node)
            return fail(ld, v, "expected a %s, got a %s", type_name(d->node),
                        type_name(N(ld, v)->type));
        if ((v == NONE ? apply_default(ld, d, base) : d->set(ld, d, v, base)) < 0) return -1;
        path_pop(ld, mark);
    }
    return sec->check ? sec->check(ld, sec, map, seen, base) : 0;
}

/* ---- loading ---- */

static int route_order(const void *a, const void *b)
{
    const struct tg_route *x = a, *y = b;
    if (x->path_len != y->path_len) return x->path_len > y->path_len ? -1 : 1;
    return strcmp(x->path, y->path);
}

static struct tg_config *load(const char *name, const char *text, size_t len, const char *path,
                              char err[TG_ERR_LEN])
{
    struct loader ld = {.name = name, .err = err};
    struct tg_config *cfg = calloc(1, sizeof(*cfg));
    err[0] = '\0';
    if (!cfg || !(cfg->tenant_index = calloc(1, sizeof(*cfg->tenant_index)))) {
        free(cfg);
        snprintf(err, TG_ERR_LEN, "%s:1:1: (root): out of memory", name);
        return NULL;
    }
    cfg->refs = 1;
    ld.cfg = cfg;
    if (compose(&ld, text, len) < 0) goto error;
    path_pop(&ld, 0);
    uint32_t root = ld.doc.root;
    if (root == NONE || is_null(N(&ld, root))) {
        fail_at(&ld, 1, 1, "empty configuration");
        goto error;
    }
    if (!(cfg->path = ld_strdup(&ld, path, strlen(path))) ||
        apply_section(&ld, &root_section, root, cfg) < 0)
        goto error;
    if (cfg->nroutes > 1) qsort(cfg->routes, cfg->nroutes, sizeof(*cfg->routes), route_order);
    goto out;
error:
    tg_config_unref(cfg);
    cfg = NULL;
out:
    doc_free(&ld.doc);
    strset_deinit(&ld.upstream_names);
    strset_deinit(&ld.route_paths);
    if (ld.buf) OPENSSL_cleanse(ld.buf, ld.buf_cap); /* may have held an expanded key */
    free(ld.buf);
    return cfg;
}

struct tg_config *tg_config_load_string(const char *name, const char *text, size_t len,
                                        char err[TG_ERR_LEN])
{
    return load(name, text, len, "", err);
}

struct tg_config *tg_config_load(const char *path, char err[TG_ERR_LEN])
{
    struct tg_config *cfg = NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f) goto fail_errno;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 64 * 1024;
            char *t = cap <= MAX_FILE_BYTES ? realloc(text, cap) : NULL;
            if (!t) {
                errno = cap > MAX_FILE_BYTES ? EFBIG : ENOMEM;
                goto fail_errno;
            }
            text = t;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    if (ferror(f)) goto fail_errno;
    cfg = load(path, text, len, path, err);
    goto out;
fail_errno:
    snprintf(err, TG_ERR_LEN, "%s:1:1: (root): cannot read: %s", path, strerror(errno));
out:
    if (f) fclose(f);
    if (text) OPENSSL_cleanse(text, len);
    free(text);
    return cfg;
}

struct tg_config *tg_config_ref(struct tg_config *cfg)
{
    if (cfg) __atomic_add_fetch(&cfg->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void tg_config_unref(struct tg_config *cfg)
{
    if (!cfg || __atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(cfg->keys);
    if (cfg->tenant_index) strset_deinit(cfg->tenant_index);
    free(cfg->tenant_index);
    arena_free(cfg->arena);
    free(cfg);
}

const struct tg_route *tg_config_route(const struct tg_config *cfg, const char *path, size_t len)
{
    const char *q = memchr(path, '?', len);
    if (q) len = (size_t)(q - path);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct tg_route *r = &cfg->routes[i];
        if (r->path_len > len || memcmp(r->path, path, r->path_len) != 0) continue;
        if (r->path_len == len || path[r->path_len] == '/' || r->path[r->path_len - 1] == '/')
            return r;
    }
    return NULL;
}

const struct tg_tenant *tg_config_tenant(const struct tg_config *cfg, const char *name)
{
    const struct strset_slot *e = strset_find(cfg->tenant_index, name, strlen(name));
    return e ? &cfg->tenants[e->val] : NULL;
}

/* ---- reload: which settings differ that only a restart applies ---- */

static bool differs(const struct directive *d, const void *a, const void *b)
{
    switch (d->store) {
    case ST_INT:
    case ST_ENUM:
        return *FIELD(a, d, const int) != *FIELD(b, d, const int);
    case ST_I64:
        return *FIELD(a, d, const int64_t) != *FIELD(b, d, const int64_t);
    case ST_DBL:
        return *FIELD(a, d, const double) != *FIELD(b, d, const double);
    case ST_BOOL:
        return *FIELD(a, d, const bool) != *FIELD(b, d, const bool);
    case ST_STR:
        return strcmp(*FIELD(a, d, char *const), *FIELD(b, d, char *const)) != 0;
    case ST_LISTEN: {
        const struct tg_listen *x = FIELD(a, d, const struct tg_listen);
        const struct tg_listen *y = FIELD(b, d, const struct tg_listen);
        return strcmp(x->text, y->text) != 0 || x->addrlen != y->addrlen ||
               memcmp(&x->addr, &y->addr, x->addrlen) != 0;
    }
    case ST_KV: {
        const struct tg_kv *x = *FIELD(a, d, struct tg_kv *const);
        const struct tg_kv *y = *FIELD(b, d, struct tg_kv *const);
        size_t n = *(const size_t *)(const void *)((const char *)a + d->off_n);
        if (n != *(const size_t *)(const void *)((const char *)b + d->off_n)) return true;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(x[i].key, y[i].key) != 0 || strcmp(x[i].value, y[i].value) != 0) return true;
        }
        return false;
    }
    case ST_SECTION:
    case ST_NONE:
        break;
    }
    return false;
}

static int diff_section(const struct section *sec, const void *a, const void *b, const char *prefix,
                        char what[TG_ERR_LEN])
{
    for (size_t i = 0; i < sec->nkeys; i++) {
        const struct directive *d = &sec->keys[i];
        char path[TG_ERR_LEN];
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", d->name);
        if (d->store == ST_SECTION) {
            if (diff_section(d->sub, a, b, path, what)) return 1;
        } else if (!d->reload_safe && differs(d, a, b)) {
            snprintf(what, TG_ERR_LEN, "%s", path);
            return 1;
        }
    }
    return 0;
}

int tg_config_restart_needed(const struct tg_config *old, const struct tg_config *cur,
                             char what[TG_ERR_LEN])
{
    what[0] = '\0';
    return diff_section(&root_section, old, cur, "", what);
}

/* ---- tollgate --check ---- */

static void print_rate(FILE *out, double v)
{
    fprintf(out, "%.15g", v);
}

void tg_config_print(const struct tg_config *cfg, FILE *out)
{
    fprintf(out, "config: %s\n", cfg->path[0] ? cfg->path : "(embedded default)");
    fprintf(out, "listen: %s, %d worker%s\n", cfg->server.listen.text, cfg->server.workers,
            cfg->server.workers == 1 ? "" : "s");
    fprintf(out,
            "server: max body %lld bytes, header timeout %d ms, idle timeout %d ms, drain "
            "timeout %d ms, at most %d idle connections per worker\n",
            (long long)cfg->server.max_body_bytes, cfg->server.header_timeout_ms,
            cfg->server.idle_timeout_ms, cfg->server.drain_timeout_ms,
            cfg->server.max_idle_connections);
    fprintf(out, "admin: listen %s, token %s\n", cfg->admin.listen.text,
            cfg->admin.token[0] ? "set" : "none");
    fprintf(out, "log: level %s, access log %s\n", level_names[cfg->log.level],
            cfg->log.access_path[0] ? cfg->log.access_path : "stderr");
    if (cfg->limiter.backend == TG_LIMITER_REDIS)
        fprintf(out,
                "limiter: redis %s:%d db %d, key prefix \"%s\", timeout %d ms, password %s, "
                "on redis error %s, expected gateways %d\n",
                cfg->limiter.redis.host, cfg->limiter.redis.port, cfg->limiter.redis.db,
                cfg->limiter.redis.key_prefix, cfg->limiter.redis.timeout_ms,
                cfg->limiter.redis.password[0] ? "set" : "none",
                on_error_names[cfg->limiter.on_redis_error], cfg->limiter.expected_gateways);
    else
        fprintf(out, "limiter: local\n");
    fprintf(out, "costs: %d chars per token, default max tokens %d\n", cfg->costs.chars_per_token,
            cfg->costs.default_max_tokens);
    if (cfg->usage.sink == TG_SINK_FILE) {
        fprintf(out, "usage sink: file %s\n", cfg->usage.file.path);
    } else if (cfg->usage.sink == TG_SINK_KAFKA) {
        const typeof(cfg->usage.kafka) *k = &cfg->usage.kafka;
        fprintf(out, "usage sink: kafka %s topic %s, spool %s (fsync %s", k->brokers, k->topic,
                k->spool_dir, fsync_names[k->spool_fsync]);
        if (k->spool_fsync == TG_SPOOL_FSYNC_INTERVAL)
            fprintf(out, " every %d ms", k->spool_fsync_interval_ms);
        fprintf(out, ", max %lld bytes, when full %s)", (long long)k->spool_max_bytes,
                full_names[k->spool_full]);
        for (size_t i = 0; i < k->nproperties; i++)
            fprintf(out, "%s%s", i ? ", " : ", properties: ", k->properties[i].key);
        fputc('\n', out);
    } else {
        fprintf(out, "usage sink: none\n");
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct tg_upstream *u = &cfg->upstreams[i];
        fprintf(out,
                "upstream %s: %s (Host: %s), connect timeout %d ms, response timeout %d ms, "
                "%d connections per worker",
                u->name, u->url, u->host_header, u->connect_timeout_ms, u->response_timeout_ms,
                u->max_connections);
        if (u->tls) fprintf(out, ", tls verify %s", u->tls_verify ? "on" : "off");
        for (size_t j = 0; j < u->nheaders; j++)
            fprintf(out, "%s%s", j ? ", " : ", sets headers: ", u->headers[j].key);
        fputc('\n', out);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct tg_route *r = &cfg->routes[i];
        fprintf(out, "route %s -> %s, cost %s", r->path, r->upstream->name, cost_names[r->cost]);
        if (r->cost == TG_COST_TOKENS)
            fprintf(out, ", default max tokens %d", r->default_max_tokens);
        if (r->max_wait_ms > 0) fprintf(out, ", waits up to %d ms", r->max_wait_ms);
        fputc('\n', out);
    }
    size_t *nkeys = calloc(cfg->ntenants + 1, sizeof(*nkeys));
    size_t *nplain = calloc(cfg->ntenants + 1, sizeof(*nplain));
    for (size_t i = 0; nkeys && nplain && i < cfg->keys_cap; i++) {
        const struct tg_key *k = &cfg->keys[i];
        if (!k->tenant) continue;
        nkeys[k->tenant->index]++;
        if (k->was_plain) nplain[k->tenant->index]++;
    }
    for (size_t i = 0; i < cfg->ntenants; i++) {
        const struct tg_tenant *t = &cfg->tenants[i];
        size_t n = nkeys ? nkeys[i] : 0;
        fprintf(out, "tenant %s: %zu key%s, %zu limit%s\n", t->name, n, n == 1 ? "" : "s",
                t->nlimits, t->nlimits == 1 ? "" : "s");
        for (size_t j = 0; j < t->nlimits; j++) {
            const struct tg_limit *l = &t->limits[j];
            fprintf(out, "  limit %s: ", l->name);
            print_rate(out, l->rate);
            fprintf(out, " %s per %s, burst ", tg_unit_name(l->unit), per_name(l->per_ms));
            print_rate(out, l->burst);
            for (size_t m = 0; m < l->nmodels; m++)
                fprintf(out, "%s%s", m ? ", " : ", models ", l->models[m]);
            fputc('\n', out);
        }
    }
    for (size_t i = 0; nplain && i < cfg->ntenants; i++) {
        for (size_t j = 0; j < nplain[i]; j++)
            fprintf(out,
                    "warning: tenant %s has a plain-text key; use sha256:<hex> (tollgate "
                    "--hash-key)\n",
                    cfg->tenants[i].name);
    }
    free(nkeys);
    free(nplain);
}
