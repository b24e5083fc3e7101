/* The YAML document: libyaml events composed into compact nodes, and errors at their positions. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "tollgate/buf.h"
#include "loader.h"

#define ALIAS_BUDGET 1000000 /* nodes aliases may add beyond 8 per input byte */

/* ---- errors: "FILE:LINE:COLUMN: key.path: reason" ---- */

static void path_append(struct loader *ld, const char *s, size_t n)
{
    if (n > sizeof(ld->path) - 1 - ld->plen) n = sizeof(ld->path) - 1 - ld->plen;
    memcpy(ld->path + ld->plen, s, n);
    ld->plen += n;
    ld->path[ld->plen] = '\0';
}

size_t path_key(struct loader *ld, const char *key, size_t len)
{
    size_t mark = ld->plen;
    if (mark) path_append(ld, ".", 1);
    path_append(ld, key, len);
    return mark;
}

size_t path_index(struct loader *ld, size_t i)
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

void path_pop(struct loader *ld, size_t mark)
{
    ld->plen = mark;
    ld->path[mark] = '\0';
}

TG_PRINTF(4, 0)
int vfail_at(struct loader *ld, size_t line, size_t col, const char *fmt, va_list ap)
{
    int n = snprintf(ld->err, TG_ERR_LEN, "%s:%zu:%zu: %s: ", ld->name, line, col,
                     ld->plen ? ld->path : "(root)");
    if (n >= 0 && n < TG_ERR_LEN) vsnprintf(ld->err + n, TG_ERR_LEN - (size_t)n, fmt, ap);
    return -1;
}

/* Fills the error at a 1-based position; returns -1. */
TG_PRINTF(4, 5)
int fail_at(struct loader *ld, size_t line, size_t col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, line, col, fmt, ap);
    va_end(ap);
    return -1;
}

/* Fills the error at node `id` (1:1 if NONE); returns -1. */
TG_PRINTF(3, 4)
int fail(struct loader *ld, uint32_t id, const char *fmt, ...)
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
int fail_got(struct loader *ld, uint32_t id, const char *s, size_t n, const char *fmt, ...)
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

void *ld_alloc(struct loader *ld, size_t n)
{
    void *p = arena_alloc(&ld->cfg->arena, n);
    if (!p) fail_at(ld, 1, 1, "out of memory");
    return p;
}

char *ld_strdup(struct loader *ld, const char *s, size_t n)
{
    char *p = arena_strndup(&ld->cfg->arena, s, n);
    if (!p) fail_at(ld, 1, 1, "out of memory");
    return p;
}

/* ---- composing libyaml events into the document ---- */

static uint32_t doc_add(struct loader *ld, int type, const yaml_mark_t *m)
{
    struct doc *d = &ld->doc;
    if (d->nnodes + 1 >= NONE || !tg_grow(&d->nodes, &d->cap, d->nnodes + 1, sizeof(*d->nodes),
                                          d->cap_hint)) {
        fail_at(ld, 1, 1, "out of memory");
        return NONE;
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
    if (!tg_grow(&d->kids, &d->kids_cap, d->nkids + 1, sizeof(*d->kids), 256))
        return fail_at(ld, 1, 1, "out of memory");
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
int compose(struct loader *ld, const char *text, size_t len)
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

void doc_free(struct doc *d)
{
    free(d->nodes);
    free(d->kids);
    strset_deinit(&d->anchors);
    arena_free(d->mem);
}

/* ---- scalars ---- */

bool is_null(const struct node *nd)
{
    if (nd->type != N_SCALAR || !nd->plain) return false;
    const char *s = nd->u.str;
    return nd->n == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}
