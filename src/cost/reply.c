/* What a reply says: the usage and text in its JSON objects, and the cost they settle to. */
#include <math.h>
#include <string.h>
#include "tollgate/cost.h"
#include "json.h"
#include "units.h"
#include "reply.h"

/* Usage numbers from a reply are clamped to this, so that micro-units never overflow. */
#define MAX_USAGE_TOKENS 1000000000000LL

/* ---- what a reply says ---- */

/* A non-negative integer (a fraction is ignored), clamped to MAX_USAGE_TOKENS. */
static bool jint(const char *v, const char *ve, int64_t *out)
{
    int64_t x = 0;
    bool neg = v < ve && *v == '-';
    v += neg;
    if (v >= ve || *v < '0' || *v > '9') return false;
    for (; v < ve && *v >= '0' && *v <= '9'; v++) {
        x = x * 10 + (*v - '0');
        if (x > MAX_USAGE_TOKENS) x = MAX_USAGE_TOKENS;
    }
    if (neg && x != 0) return false;
    *out = x;
    return true;
}

static bool jis_string(const char *v, const char *ve)
{
    return ve - v >= 2 && *v == '"';
}

/* usage {prompt_tokens|input_tokens, completion_tokens|output_tokens, total_tokens} */
void read_usage(struct tg_usage *u, const char *v, const char *ve)
{
    struct jit it;
    const char *mv, *mve;
    enum key k;
    int64_t p = 0, c = 0, t = -1, x;
    if (!jopen(&it, v, ve, '{')) return;
    while (jmember(&it, &k, &mv, &mve)) {
        if (!jint(mv, mve, &x)) continue;
        if (k == K_PROMPT_TOKENS || k == K_INPUT_TOKENS)
            p = x;
        else if (k == K_COMPLETION_TOKENS || k == K_OUTPUT_TOKENS)
            c = x;
        else if (k == K_TOTAL_TOKENS)
            t = x;
    }
    u->prompt_tokens = p;
    u->completion_tokens = c;
    u->total_tokens = t >= 0 ? t : p + c;
    u->have_tokens = true;
}

/* Generated text of a message or delta: content, reasoning, refusal, tool call arguments. */
static int64_t message_chars(const char *v, const char *ve)
{
    struct jit it, arr, fn;
    const char *mv, *mve, *ev, *eve, *fv, *fve;
    enum key k;
    int64_t c = 0;
    if (!jopen(&it, v, ve, '{')) return 0;
    while (jmember(&it, &k, &mv, &mve)) {
        if (k == K_CONTENT || k == K_REASONING_CONTENT || k == K_REFUSAL) {
            c += jstr_chars(mv, mve);
        } else if (k == K_TOOL_CALLS && jopen(&arr, mv, mve, '[')) {
            while (jelement(&arr, &ev, &eve)) {
                if (!jopen(&fn, ev, eve, '{')) continue;
                while (jmember(&fn, &k, &fv, &fve)) {
                    struct jit args;
                    const char *av, *ave;
                    enum key ak;
                    if (k != K_FUNCTION || !jopen(&args, fv, fve, '{')) continue;
                    while (jmember(&args, &ak, &av, &ave))
                        if (ak == K_ARGUMENTS) c += jstr_chars(av, ave);
                }
            }
        }
    }
    return c;
}

/* choices[]: adds their generated text; returns how many there were. */
static size_t read_choices(struct tg_usage *u, const char *v, const char *ve)
{
    struct jit arr, it;
    const char *ev, *eve, *mv, *mve;
    enum key k;
    size_t n = 0;
    if (!jopen(&arr, v, ve, '[')) return 0;
    while (jelement(&arr, &ev, &eve)) {
        n++;
        if (!jopen(&it, ev, eve, '{')) continue;
        while (jmember(&it, &k, &mv, &mve)) {
            if (k == K_DELTA || k == K_MESSAGE)
                u->content_chars += message_chars(mv, mve);
            else if (k == K_TEXT)
                u->content_chars += jstr_chars(mv, mve);
        }
    }
    return n;
}

/* read_object, member by member as each value's end is found. */
static bool read_object_lax(struct tg_usage *u, const char *p, const char *e, bool video)
{
    struct jit it, sub;
    const char *v, *ve, *sv, *sve;
    enum key k, sk;
    bool choices_empty = false, have_usage = false, have_sec = false;
    double sec = 0;
    int w = 0, h = 0;
    if (!jopen(&it, p, e, '{')) return false;
    while (jmember(&it, &k, &v, &ve)) {
        if (k == K_CHOICES) {
            choices_empty = *v == '[' && read_choices(u, v, ve) == 0;
        } else if (k == K_USAGE) {
            if (*v == '{') {
                read_usage(u, v, ve);
                have_usage = true;
            }
        } else if (k == K_RESPONSE && jopen(&sub, v, ve, '{')) {
            while (jmember(&sub, &sk, &sv, &sve))
                if (sk == K_USAGE && *sv == '{') read_usage(u, sv, sve);
        } else if (video && k == K_SECONDS) {
            if (jis_string(v, ve))
                have_sec = parse_seconds(v + 1, (size_t)(ve - v - 2), &sec);
            else
                have_sec = parse_seconds(v, (size_t)(ve - v), &sec);
        } else if (video && k == K_SIZE && jis_string(v, ve)) {
            if (!parse_size(v + 1, (size_t)(ve - v - 2), &w, &h)) w = h = 0;
        }
    }
    if (have_sec) {
        u->have_video = true;
        u->video_seconds = sec;
        u->width = w;
        u->height = h;
    }
    return choices_empty && have_usage;
}

/* ---- reply objects in one pass (the walker is in json.c) ---- */

static bool jw_usage(struct tg_usage *u, struct jw *up)
{
    struct jw w;
    enum key k;
    const char *v, *ve;
    int64_t p = 0, c = 0, t = -1, x;
    jw_open(&w, up->p, up->e);
    while (jw_member(&w, &k)) {
        if (!jw_skip(&w, &v, &ve)) return false;
        if (!jint(v, ve, &x)) continue;
        if (k == K_PROMPT_TOKENS || k == K_INPUT_TOKENS)
            p = x;
        else if (k == K_COMPLETION_TOKENS || k == K_OUTPUT_TOKENS)
            c = x;
        else if (k == K_TOTAL_TOKENS)
            t = x;
    }
    if (w.bad) return false;
    up->p = w.p;
    u->prompt_tokens = p;
    u->completion_tokens = c;
    u->total_tokens = t >= 0 ? t : p + c;
    u->have_tokens = true;
    return true;
}

/* tool_calls[]: the text of function.arguments */
static bool jw_tool_calls(int64_t *c, struct jw *up)
{
    struct jw arr, fn, args;
    enum key k;
    const char *v, *ve;
    jw_open(&arr, up->p, up->e);
    while (jw_element(&arr)) {
        if (*arr.p != '{') {
            if (!jw_skip(&arr, &v, &ve)) return false;
            continue;
        }
        jw_open(&fn, arr.p, arr.e);
        while (jw_member(&fn, &k)) {
            if (k != K_FUNCTION || *fn.p != '{') {
                if (!jw_skip(&fn, &v, &ve)) return false;
                continue;
            }
            jw_open(&args, fn.p, fn.e);
            while (jw_member(&args, &k)) {
                if (!jw_skip(&args, &v, &ve)) return false;
                if (k == K_ARGUMENTS) *c += jstr_chars(v, ve);
            }
            if (args.bad) return false;
            fn.p = args.p;
        }
        if (fn.bad) return false;
        arr.p = fn.p;
    }
    if (arr.bad) return false;
    up->p = arr.p;
    return true;
}

/* As message_chars, the value at up->p being an object. */
static bool jw_message(int64_t *c, struct jw *up)
{
    struct jw w;
    enum key k;
    const char *v, *ve;
    jw_open(&w, up->p, up->e);
    while (jw_member(&w, &k)) {
        if (k == K_TOOL_CALLS && *w.p == '[') {
            if (!jw_tool_calls(c, &w)) return false;
            continue;
        }
        if (!jw_skip(&w, &v, &ve)) return false;
        if (k == K_CONTENT || k == K_REASONING_CONTENT || k == K_REFUSAL) *c += jstr_chars(v, ve);
    }
    if (w.bad) return false;
    up->p = w.p;
    return true;
}

/* As read_choices, the value at up->p being an array. */
static bool jw_choices(struct tg_usage *u, struct jw *up, size_t *n)
{
    struct jw arr, it;
    enum key k;
    const char *v, *ve;
    *n = 0;
    jw_open(&arr, up->p, up->e);
    while (jw_element(&arr)) {
        ++*n;
        if (*arr.p != '{') {
            if (!jw_skip(&arr, &v, &ve)) return false;
            continue;
        }
        jw_open(&it, arr.p, arr.e);
        while (jw_member(&it, &k)) {
            if ((k == K_DELTA || k == K_MESSAGE) && *it.p == '{') {
                if (!jw_message(&u->content_chars, &it)) return false;
                continue;
            }
            if (!jw_skip(&it, &v, &ve)) return false;
            if (k == K_TEXT) u->content_chars += jstr_chars(v, ve);
        }
        if (it.bad) return false;
        arr.p = it.p;
    }
    if (arr.bad) return false;
    up->p = arr.p;
    return true;
}

/* read_object in one pass: false if it gave up (u is then half written). */
static bool jw_object(struct tg_usage *u, const char *p, const char *e, bool video, bool *drop)
{
    struct jw w, sub;
    enum key k, sk;
    const char *v, *ve;
    bool choices_empty = false, have_usage = false, have_sec = false;
    double sec = 0;
    int wd = 0, ht = 0;
    size_t n;
    jw_open(&w, p, e);
    while (jw_member(&w, &k)) {
        if (k == K_CHOICES && *w.p == '[') {
            if (!jw_choices(u, &w, &n)) return false;
            choices_empty = n == 0;
            continue;
        }
        if (k == K_USAGE && *w.p == '{') {
            if (!jw_usage(u, &w)) return false;
            have_usage = true;
            continue;
        }
        if (k == K_RESPONSE && *w.p == '{') {
            jw_open(&sub, w.p, w.e);
            while (jw_member(&sub, &sk)) {
                if (sk == K_USAGE && *sub.p == '{') {
                    if (!jw_usage(u, &sub)) return false;
                } else if (!jw_skip(&sub, &v, &ve)) {
                    return false;
                }
            }
            if (sub.bad) return false;
            w.p = sub.p;
            continue;
        }
        if (!jw_skip(&w, &v, &ve)) return false;
        if (k == K_CHOICES) {
            choices_empty = false;
        } else if (video && k == K_SECONDS) {
            if (jis_string(v, ve))
                have_sec = parse_seconds(v + 1, (size_t)(ve - v - 2), &sec);
            else
                have_sec = parse_seconds(v, (size_t)(ve - v), &sec);
        } else if (video && k == K_SIZE && jis_string(v, ve)) {
            if (!parse_size(v + 1, (size_t)(ve - v - 2), &wd, &ht)) wd = ht = 0;
        }
    }
    if (w.bad) return false;
    if (have_sec) {
        u->have_video = true;
        u->video_seconds = sec;
        u->width = wd;
        u->height = ht;
    }
    *drop = choices_empty && have_usage;
    return true;
}

/* One JSON object of a reply (the whole body, or an SSE payload). Returns true
 * when it carries usage and an empty `choices` (the usage-only chunk). */
bool read_object(struct tg_usage *u, const char *p, const char *e, bool video)
{
    const char *q = skip_ws(p, e);
    struct tg_usage was;
    bool drop;
    if (q >= e || *q != '{') return false;
    was = *u;
    if (jw_object(u, q, e, video, &drop)) return drop;
    *u = was;
    return read_object_lax(u, q, e, video);
}

/* ---- settling ---- */

void tg_cost_actual(enum tg_cost_model model, int chars_per_token,
                    const struct tg_request_info *info, const struct tg_usage *usage,
                    struct tg_cost *out)
{
    int cpt = chars_per_token > 0 ? chars_per_token : 1;
    memset(out, 0, sizeof *out);
    out->u[TG_UNIT_REQUESTS] = TG_MICRO;
    if (model == TG_COST_TOKENS) {
        int64_t t;
        if (usage->have_tokens) {
            t = usage->total_tokens;
            if (t <= 0) t = usage->prompt_tokens + usage->completion_tokens;
        } else {
            t = info->prompt_tokens_est + ceil_div(usage->content_chars, cpt);
        }
        if (t < 0) t = 0;
        if (t > MAX_USAGE_TOKENS) t = MAX_USAGE_TOKENS;
        out->u[TG_UNIT_TOKENS] = t * TG_MICRO;
    } else if (model == TG_COST_VIDEO) {
        double sec = info->video_seconds;
        int w = info->width, h = info->height;
        if (usage->have_video) {
            sec = usage->video_seconds;
            if (usage->width > 0 && usage->height > 0) {
                w = usage->width;
                h = usage->height;
            }
        }
        if (w <= 0 || h <= 0 || w > MAX_VIDEO_SIDE || h > MAX_VIDEO_SIDE) {
            w = TG_VIDEO_DEFAULT_WIDTH;
            h = TG_VIDEO_DEFAULT_HEIGHT;
        }
        if (!(sec >= 0)) sec = 0;
        if (sec > MAX_VIDEO_SECONDS) sec = MAX_VIDEO_SECONDS;
        /* A started second counts whole, as in the estimate: a settle must not
         * refund the estimate's own rounding. */
        out->u[TG_UNIT_VIDEO_SECONDS] = video_micro((int64_t)ceil(sec) * TG_MICRO, w, h);
    }
}
