/* Private to src/config/: the YAML document, the loader's state, the directive tables' types. */
#ifndef TOLLGATE_CONFIG_LOADER_H
#define TOLLGATE_CONFIG_LOADER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/config.h"

/* Limits of the loader itself (the defaults of the settings are in config.h; the bounds of
 * their values in schema.c). */
#define MAX_DEPTH 64      /* nesting of mappings and sequences */
#define MAX_DIRECTIVES 16 /* keys of the largest section */
#define NONE UINT32_MAX

/* ---- memory (arena.c): every string and array of a config lives in its arena ---- */

/* Zeroed memory aligned to `align` (a power of two up to that of max_align_t) that lives
 * until arena_free; NULL if out of memory. */
void *arena_alloc_aligned(struct tg_arena **a, size_t n, size_t align);
void *arena_alloc(struct tg_arena **a, size_t n);
char *arena_strndup(struct tg_arena **a, const char *s, size_t n);
void arena_free(struct tg_arena *a);

/* ---- string set (arena.c): open addressing over borrowed strings ---- */

struct strset_slot {
    const char *s; /* NULL = empty slot */
    uint32_t len, hash, val;
};

struct tg_strset {
    struct strset_slot *slots;
    size_t cap, n; /* cap: power of two, at least twice n */
};

const struct strset_slot *strset_find(const struct tg_strset *set, const char *s, size_t len);
/* Finds `s` or adds it with `val` (`s` is borrowed: it must outlive the set). Returns the
 * slot, *added telling which happened; NULL if out of memory. */
struct strset_slot *strset_add(struct tg_strset *set, const char *s, size_t len, uint32_t val,
                               bool *added);
void strset_deinit(struct tg_strset *set);

/* ---- the YAML document (yaml.c): composed from libyaml events into compact nodes ---- */

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

static inline struct node *N(struct loader *ld, uint32_t id)
{
    return &ld->doc.nodes[id];
}

static inline const char *type_name(int type)
{
    return type == N_MAP ? "mapping" : type == N_SEQ ? "sequence" : "scalar";
}

/* ---- errors (yaml.c): "FILE:LINE:COLUMN: key.path: reason" ---- */

/* The key path grows by a key or an index; each returns the mark path_pop goes back to. */
size_t path_key(struct loader *ld, const char *key, size_t len);
size_t path_index(struct loader *ld, size_t i);
void path_pop(struct loader *ld, size_t mark);
TG_PRINTF(4, 0)
int vfail_at(struct loader *ld, size_t line, size_t col, const char *fmt, va_list ap);
/* Fills the error at a 1-based position; returns -1. */
TG_PRINTF(4, 5)
int fail_at(struct loader *ld, size_t line, size_t col, const char *fmt, ...);
/* Fills the error at node `id` (1:1 if NONE); returns -1. */
TG_PRINTF(3, 4)
int fail(struct loader *ld, uint32_t id, const char *fmt, ...);
/* Same, with ` (got "VALUE")` appended when the value is short and printable. */
TG_PRINTF(5, 6)
int fail_got(struct loader *ld, uint32_t id, const char *s, size_t n, const char *fmt, ...);
/* The config's arena, "out of memory" filled on failure. */
void *ld_alloc(struct loader *ld, size_t n);
char *ld_strdup(struct loader *ld, const char *s, size_t n);

/* Builds ld->doc from the YAML text; the root is NONE for an empty stream. One document only. */
int compose(struct loader *ld, const char *text, size_t len);
void doc_free(struct doc *d);
bool is_null(const struct node *nd);

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

/* Fills `base` from mapping `map` (NONE: not written) by the section's table (config.c). */
int apply_section(struct loader *ld, const struct section *sec, uint32_t map, void *base);

/* The root of the schema and the choice names --check prints (schema.c). */
extern const struct section root_section;
extern const char *const level_names[];
extern const char *const on_error_names[];
extern const char *const lease_mode_names[];
extern const char *const priority_names[];
extern const char *const fsync_names[];
extern const char *const full_names[];
extern const char *const cost_names[];

/* ---- the directive tables' setters (directives.c) ---- */

int set_int(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_i64(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_num(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_bool(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_enum(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_str(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_name(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_path(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_section(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_list(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_strlist(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_headers(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_props(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_listen(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_per(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_route_upstream(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_tenant_name(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_price(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_route_models(struct loader *ld, const struct directive *d, uint32_t id, void *base);
int set_keys(struct loader *ld, const struct directive *d, uint32_t id, void *base);

/* The index of `s` among `choices` (NULL-terminated), or -1. */
int choice_index(const char *const *choices, const char *s);
/* Resolves host:port once; numeric addresses first, names through getaddrinfo, IPv4 preferred. */
int resolve(struct loader *ld, uint32_t id, const char *host, int port, struct sockaddr_storage *ss,
            socklen_t *len);
/* Splits "host:port", "[v6]:port" (with_port) or "host", "[v6]", "host:port" (optional port).
 * Returns the port (`def_port` when absent) or -1; host goes to `host`. */
int split_host_port(const char *s, size_t n, bool need_port, int def_port, int min_port, char *host,
                    size_t host_cap);
/* Parses and resolves a listen address `s` (node `id`, NONE for a default) into `out`. */
int listen_init(struct loader *ld, uint32_t id, const char *s, size_t n, struct tg_listen *out);
/* The `per:` name of a period in milliseconds. */
const char *per_name(int64_t ms);

#endif
