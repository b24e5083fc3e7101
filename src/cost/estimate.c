/* The request side: a body's estimated cost (tokens, video, multipart), the usage rewrite. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tollgate/cost.h"
#include "tollgate/jsonw.h"
#include "json.h"
#include "units.h"

#define MAX_N 128
#define MAX_TOKENS_PARAM 2147483647LL

static const char bad_json_msg[] =
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)";

/* ---- request side: the body was validated first, so the reader walks valid JSON ---- */

enum jtype { J_OBJECT, J_ARRAY, J_STRING, J_INTEGER, J_REAL, J_TRUE, J_FALSE, J_NULL };

static enum jtype jtype_of(struct span s)
{
    switch (*s.v) {
    case '{':
        return J_OBJECT;
    case '[':
        return J_ARRAY;
    case '"':
        return J_STRING;
    case 't':
        return J_TRUE;
    case 'f':
        return J_FALSE;
    case 'n':
        return J_NULL;
    }
    for (const char *p = s.v; p < s.ve; p++)
        if (*p == '.' || *p == 'e' || *p == 'E') return J_REAL;
    return J_INTEGER;
}

static const char *type_name(struct span s)
{
    static const char *const names[] = {"an object",        "an array",  "a string",  "an integer",
                                        "a decimal number", "a boolean", "a boolean", "null"};
    return names[jtype_of(s)];
}

static bool is_null(struct span s)
{
    return !s.v || jtype_of(s) == J_NULL;
}

/* The last member `key` of the object s (a repeated key: the last one counts, as in jansson). */
static struct span find(struct span s, enum key key)
{
    struct span r = {NULL, NULL};
    struct jit it;
    const char *v, *ve;
    enum key k;
    if (!s.v || !jopen(&it, s.v, s.ve, '{')) return r;
    while (jmember(&it, &k, &v, &ve)) {
        if (k == key) {
            r.v = v;
            r.ve = ve;
        }
    }
    return r;
}

static size_t utf8_put(char *out, uint32_t u)
{
    if (u < 0x80) {
        out[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        out[0] = (char)(0xC0 | (u >> 6));
        out[1] = (char)(0x80 | (u & 0x3F));
        return 2;
    }
    if (u < 0x10000) {
        out[0] = (char)(0xE0 | (u >> 12));
        out[1] = (char)(0x80 | ((u >> 6) & 0x3F));
        out[2] = (char)(0x80 | (u & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (u >> 18));
    out[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((u >> 6) & 0x3F));
    out[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* Decodes the (valid) JSON string s into out, whole characters only, at most
 * cap bytes. Returns the length; *whole is false if the string did not fit. */
static size_t jstr_decode(struct span s, char *out, size_t cap, bool *whole)
{
    static const char esc_from[] = "\"\\/bfnrt", esc_to[] = "\"\\/\b\f\n\r\t";
    const char *p = s.v + 1, *e = s.ve - 1;
    size_t n = 0;
    if ((size_t)(e - p) <= cap && find_quote_bs(p, e) == e) {
        /* no escape and it fits: the bytes as they are (a valid string holds no '"') */
        memcpy(out, p, (size_t)(e - p));
        *whole = true;
        return (size_t)(e - p);
    }
    while (p < e) {
        char tmp[4];
        size_t tl;
        unsigned char c = (unsigned char)*p;
        if (c == '\\' && e - p >= 6 && p[1] == 'u') {
            long u = hex4(p + 2, (size_t)(e - p - 2));
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF && e - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                long lo = hex4(p + 2, (size_t)(e - p - 2));
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            tl = utf8_put(tmp, u < 0 ? 0xFFFD : (uint32_t)u);
        } else if (c == '\\' && e - p >= 2) {
            const char *f = memchr(esc_from, p[1], sizeof esc_from - 1);
            tmp[0] = f ? esc_to[f - esc_from] : p[1];
            tl = 1;
            p += 2;
        } else {
            tl = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if (tl > (size_t)(e - p)) tl = (size_t)(e - p);
            memcpy(tmp, p, tl);
            p += tl;
        }
        if (n + tl > cap) {
            *whole = false;
            return n;
        }
        memcpy(out + n, tmp, tl);
        n += tl;
    }
    *whole = true;
    return n;
}

/* The value of a (valid) number. */
static double jnumber(struct span s)
{
    char small[64], *tmp;
    size_t len = (size_t)(s.ve - s.v);
    tmp = len < sizeof small ? small : malloc(len + 1);
    if (!tmp) return NAN;
    memcpy(tmp, s.v, len);
    tmp[len] = '\0';
    double d = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    return d;
}

/* The value of a (valid, so int64) integer. */
static int64_t jinteger(struct span s)
{
    const char *p = s.v;
    bool neg = *p == '-';
    uint64_t x = 0;
    for (p += neg; p < s.ve; p++)
        x = x * 10 + (uint64_t)(*p - '0');
    return neg ? (int64_t)(0 - x) : (int64_t)x;
}

static int bad_type(char err[TG_ERR_LEN], const char *param, const char *expected, struct span got)
{
    snprintf(err, TG_ERR_LEN, "Invalid type for '%s': expected %s, but got %s instead.", param,
             expected, type_name(got));
    return -1;
}

/* An integer parameter in [lo, hi]; decimals with an integral value are
 * accepted. Returns 1 if set, 0 if absent or null, -1 with err. */
static int int_param(struct span v, const char *key, int64_t lo, int64_t hi, int64_t *out,
                     char err[TG_ERR_LEN])
{
    int64_t x;
    if (is_null(v)) return 0;
    enum jtype t = jtype_of(v);
    double d = t == J_REAL ? jnumber(v) : 0;
    if (t == J_INTEGER)
        x = jinteger(v);
    else if (t == J_REAL && d == floor(d) && fabs(d) < 9e18)
        x = (int64_t)d;
    else
        return bad_type(err, key, "an integer", v);
    if (x < lo) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid '%s': integer below minimum value. Expected a value >= %lld, but got "
                 "%lld instead.",
                 key, (long long)lo, (long long)x);
        return -1;
    }
    if (x > hi) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid '%s': integer above maximum value. Expected a value <= %lld, but got "
                 "%lld instead.",
                 key, (long long)hi, (long long)x);
        return -1;
    }
    *out = x;
    return 1;
}

struct prompt {
    int64_t chars;  /* text, to be divided by chars_per_token */
    int64_t tokens; /* token ids given directly */
};

static void add_text(struct prompt *pr, struct span s)
{
    pr->chars += jstr_chars(s.v, s.ve);
}

/* A message's content: a string, null, or an array of parts whose `text` counts. */
/* Adds the text of a content value (a string, or an array of parts); returns
 * -1, writing nothing, when it is neither: the caller names the parameter
 * (formatted only then, not for every message). */
static int count_content(struct span content, struct prompt *pr)
{
    struct jit it;
    struct span part;
    if (is_null(content)) return 0;
    enum jtype t = jtype_of(content);
    if (t == J_STRING) {
        add_text(pr, content);
        return 0;
    }
    if (t != J_ARRAY) return -1;
    jopen(&it, content.v, content.ve, '[');
    while (jelement(&it, &part.v, &part.ve)) {
        struct span text = *part.v == '{' ? find(part, K_TEXT) : (struct span){NULL, NULL};
        if (text.v && jtype_of(text) == J_STRING) add_text(pr, text);
    }
    return 0;
}

/* The messages walked once (the body is valid, so the walker takes it; if it
 * ever did not, they are counted again the slow way). */
static int count_messages(struct span msgs, struct prompt *pr, char err[TG_ERR_LEN])
{
    struct jit it;
    struct jw arr, obj;
    struct span m;
    struct prompt was = *pr;
    enum key k;
    const char *v, *ve;
    char param[48];
    if (jtype_of(msgs) != J_ARRAY) return bad_type(err, "messages", "an array", msgs);
    jw_open(&arr, msgs.v, msgs.ve);
    for (size_t i = 0; jw_element(&arr); i++) {
        if (*arr.p != '{') {
            if (!jw_skip(&arr, &m.v, &m.ve)) break;
            snprintf(param, sizeof param, "messages[%zu]", i);
            return bad_type(err, param, "an object", m);
        }
        struct span content = {NULL, NULL};
        jw_open(&obj, arr.p, arr.e);
        while (jw_member(&obj, &k)) {
            if (!jw_skip(&obj, &v, &ve)) break;
            if (k == K_CONTENT) {
                content.v = v;
                content.ve = ve;
            }
        }
        if (obj.bad) {
            arr.bad = true;
            break;
        }
        arr.p = obj.p;
        if (count_content(content, pr) < 0) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            return bad_type(err, param, "a string or an array", content);
        }
    }
    if (!arr.bad) return 0;
    *pr = was;
    jopen(&it, msgs.v, msgs.ve, '[');
    for (size_t i = 0; jelement(&it, &m.v, &m.ve); i++) {
        if (jtype_of(m) != J_OBJECT) {
            snprintf(param, sizeof param, "messages[%zu]", i);
            return bad_type(err, param, "an object", m);
        }
        struct span content = find(m, K_CONTENT);
        if (count_content(content, pr) < 0) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            return bad_type(err, param, "a string or an array", content);
        }
    }
    return 0;
}

/* `prompt` or `input`: a string, or an array of strings, token ids, token-id
 * arrays, or (Responses-style) message items. */
static int count_inputs(struct span v, const char *name, struct prompt *pr, char err[TG_ERR_LEN])
{
    struct jit it, tokens;
    struct span el, tok;
    char param[48];
    enum jtype t = jtype_of(v);
    if (t == J_STRING) {
        add_text(pr, v);
        return 0;
    }
    if (t != J_ARRAY) return bad_type(err, name, "a string or an array", v);
    jopen(&it, v.v, v.ve, '[');
    for (size_t i = 0; jelement(&it, &el.v, &el.ve); i++) {
        switch (jtype_of(el)) {
        case J_STRING:
            add_text(pr, el);
            break;
        case J_INTEGER:
            pr->tokens++;
            break;
        case J_ARRAY:
            jopen(&tokens, el.v, el.ve, '[');
            for (size_t j = 0; jelement(&tokens, &tok.v, &tok.ve); j++) {
                if (jtype_of(tok) != J_INTEGER) {
                    snprintf(param, sizeof param, "%s[%zu][%zu]", name, i, j);
                    return bad_type(err, param, "an integer", tok);
                }
                pr->tokens++;
            }
            break;
        case J_OBJECT: {
            struct span text = find(el, K_TEXT), content = find(el, K_CONTENT);
            if (text.v && jtype_of(text) == J_STRING) add_text(pr, text);
            if (count_content(content, pr) < 0) {
                snprintf(param, sizeof param, "%s[%zu]", name, i);
                return bad_type(err, param, "a string or an array", content);
            }
            break;
        }
        default:
            snprintf(param, sizeof param, "%s[%zu]", name, i);
            return bad_type(err, param, "a string, an integer or an array", el);
        }
    }
    return 0;
}

static void copy_model(struct tg_request_info *info, const char *s, size_t n)
{
    if (n > TG_MODEL_LEN - 1) {
        n = TG_MODEL_LEN - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(info->model, s, n);
    info->model[n] = '\0';
}

static void common_info(const struct body *b, struct tg_request_info *info)
{
    bool whole;
    if (b->model.v && jtype_of(b->model) == J_STRING)
        info->model[jstr_decode(b->model, info->model, TG_MODEL_LEN - 1, &whole)] = '\0';
    info->stream = b->stream.v && jtype_of(b->stream) == J_TRUE;
    struct span iu = find(b->stream_options, K_INCLUDE_USAGE);
    info->client_wants_usage = iu.v && jtype_of(iu) == J_TRUE;
}

static int estimate_tokens(const struct body *b, int cpt, int default_max, struct tg_cost *out,
                           struct tg_request_info *info, char err[TG_ERR_LEN])
{
    struct prompt pr = {0, 0};
    bool msgs = !is_null(b->messages), prompt = !is_null(b->prompt), input = !is_null(b->input);
    int64_t max = default_max > 0 ? default_max : 0, n = 1;
    int rc;

    if (msgs && count_messages(b->messages, &pr, err) < 0) return -1;
    if (prompt && count_inputs(b->prompt, "prompt", &pr, err) < 0) return -1;
    if (input && count_inputs(b->input, "input", &pr, err) < 0) return -1;
    int64_t tokens = ceil_div(pr.chars, cpt) + pr.tokens;
    info->prompt_tokens_est = tokens;

    if (!(input && !msgs && !prompt)) {
        rc = int_param(b->max_completion_tokens, "max_completion_tokens", 1, MAX_TOKENS_PARAM, &max,
                       err);
        if (rc < 0) return -1;
        if (rc == 0 && int_param(b->max_tokens, "max_tokens", 1, MAX_TOKENS_PARAM, &max, err) < 0)
            return -1;
        if (int_param(b->n, "n", 1, MAX_N, &n, err) < 0) return -1;
        tokens += max * n;
    }
    out->u[TG_UNIT_TOKENS] = tokens * TG_MICRO;
    return 0;
}

struct video_req {
    double seconds;
    int width, height;
};

static int video_seconds_param(bool is_string, const char *s, size_t n, double num,
                               struct video_req *vr, char err[TG_ERR_LEN])
{
    double d = num;
    if ((is_string && !parse_seconds(s, n, &d)) || !(d > 0 && d <= MAX_VIDEO_SECONDS)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid value for 'seconds': expected a positive number of seconds, at most %d.",
                 MAX_VIDEO_SECONDS);
        return -1;
    }
    vr->seconds = d;
    return 0;
}

static int video_size_param(const char *s, size_t n, struct video_req *vr, char err[TG_ERR_LEN])
{
    if (!parse_size(s, n, &vr->width, &vr->height)) {
        snprintf(err, TG_ERR_LEN,
                 "Invalid value for 'size': expected WIDTHxHEIGHT with each side from 1 to %d, "
                 "like '1280x720'.",
                 MAX_VIDEO_SIDE);
        return -1;
    }
    return 0;
}

static int video_json(const struct body *b, struct video_req *vr, char err[TG_ERR_LEN])
{
    char buf[32];
    bool whole;
    size_t n;
    if (!is_null(b->seconds)) {
        enum jtype t = jtype_of(b->seconds);
        if (t == J_STRING) {
            n = jstr_decode(b->seconds, buf, sizeof buf - 1, &whole);
            if (video_seconds_param(true, whole ? buf : "", whole ? n : 0, 0, vr, err) < 0)
                return -1;
        } else if (t == J_INTEGER || t == J_REAL) {
            if (video_seconds_param(false, NULL, 0, jnumber(b->seconds), vr, err) < 0) return -1;
        } else {
            return bad_type(err, "seconds", "a string or a number", b->seconds);
        }
    }
    if (!is_null(b->size)) {
        if (jtype_of(b->size) != J_STRING) return bad_type(err, "size", "a string", b->size);
        n = jstr_decode(b->size, buf, sizeof buf - 1, &whole);
        if (video_size_param(whole ? buf : "", whole ? n : 0, vr, err) < 0) return -1;
    }
    return 0;
}

/* multipart/form-data (what OpenAI's SDKs send to /v1/videos): reads the
 * `model`, `seconds` and `size` fields. */
static int video_multipart(const char *body, size_t len, struct video_req *vr,
                           struct tg_request_info *info, char err[TG_ERR_LEN])
{
    const char *end = body + len;
    const char *eol = memchr(body, '\r', len);
    char delim[80];
    if (!eol || eol + 1 >= end || eol[1] != '\n' || eol - body < 3 ||
        (size_t)(eol - body) + 2 >= sizeof delim)
        goto bad;
    size_t blen = (size_t)(eol - body); /* "--boundary" */
    delim[0] = '\r';
    delim[1] = '\n';
    memcpy(delim + 2, body, blen);
    size_t dlen = blen + 2;
    const char *p = eol + 2;
    for (;;) {
        const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!hend) goto bad;
        const char *name = NULL;
        size_t nlen = 0;
        for (const char *q = p; q + 6 <= hend; q++) {
            if (memcmp(q, "name=\"", 6) == 0 && q > p && (q[-1] == ' ' || q[-1] == ';')) {
                const char *ne = memchr(q + 6, '"', (size_t)(hend - q - 6));
                if (!ne) goto bad;
                name = q + 6;
                nlen = (size_t)(ne - name);
                break;
            }
        }
        const char *v = hend + 4;
        const char *ve = memmem(v, (size_t)(end - v), delim, dlen);
        if (!ve) goto bad;
        size_t vlen = (size_t)(ve - v);
        if (name && nlen == 7 && memcmp(name, "seconds", 7) == 0) {
            if (video_seconds_param(true, v, vlen, 0, vr, err) < 0) return -1;
        } else if (name && nlen == 4 && memcmp(name, "size", 4) == 0) {
            if (video_size_param(v, vlen, vr, err) < 0) return -1;
        } else if (name && nlen == 5 && memcmp(name, "model", 5) == 0) {
            copy_model(info, v, vlen);
        }
        p = ve + dlen;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') return 0;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') goto bad;
        p += 2;
    }
bad:
    snprintf(err, TG_ERR_LEN, "We could not parse the multipart/form-data body of your request.");
    return -1;
}

int tg_cost_estimate(enum tg_cost_model model, int chars_per_token, int default_max_tokens,
                     const char *body, size_t len, struct tg_cost *out,
                     struct tg_request_info *info, char err[TG_ERR_LEN])
{
    struct body b;
    struct video_req vr = {TG_VIDEO_DEFAULT_SECONDS, TG_VIDEO_DEFAULT_WIDTH,
                           TG_VIDEO_DEFAULT_HEIGHT};
    int cpt = chars_per_token > 0 ? chars_per_token : 1;
    int rc = -1;
    const char *end = body ? body + len : NULL;
    const char *first = body ? skip_ws(body, end) : NULL;

    memset(out, 0, sizeof *out);
    memset(info, 0, sizeof *info);
    err[0] = '\0';
    out->u[TG_UNIT_REQUESTS] = TG_MICRO;

    if (model == TG_COST_VIDEO && first && end - first >= 2 && first[0] == '-' && first[1] == '-') {
        if (video_multipart(first, (size_t)(end - first), &vr, info, err) < 0) goto out;
        goto video;
    }
    if (model == TG_COST_REQUESTS) {
        /* no body needed: read model and stream when it is a JSON object */
        if (first && first < end && *first == '{' && json_valid(body, len, &b))
            common_info(&b, info);
        rc = 0;
        goto out;
    }
    if (!json_valid(body, len, &b)) {
        snprintf(err, TG_ERR_LEN, "%s", bad_json_msg);
        goto out;
    }
    if (*first != '{') {
        snprintf(err, TG_ERR_LEN,
                 "Invalid request body: expected a JSON object, but got %s instead.",
                 type_name((struct span){first, end}));
        goto out;
    }
    common_info(&b, info);
    if (model == TG_COST_TOKENS) {
        rc = estimate_tokens(&b, cpt, default_max_tokens, out, info, err);
        goto out;
    }
    if (video_json(&b, &vr, err) < 0) goto out;
video:
    /* a started second is charged whole */
    info->video_seconds = (int64_t)ceil(vr.seconds);
    info->width = vr.width;
    info->height = vr.height;
    out->u[TG_UNIT_VIDEO_SECONDS] =
        video_micro(info->video_seconds * TG_MICRO, info->width, info->height);
    rc = 0;
out:
    if (rc < 0) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- asking the upstream for usage ---- */

static char *splice(const char *body, size_t len, size_t at, size_t cut, const char *ins,
                    size_t inslen, size_t *outlen)
{
    char *out = malloc(len - cut + inslen + 1);
    if (!out) return NULL;
    memcpy(out, body, at);
    memcpy(out + at, ins, inslen);
    memcpy(out + at + inslen, body + at + cut, len - at - cut);
    *outlen = len - cut + inslen;
    out[*outlen] = '\0';
    return out;
}

/* The work of tg_cost_request_usage on a valid body. */
static char *request_usage(const char *body, size_t len, size_t *outlen)
{
    static const char member[] = "\"stream_options\":{\"include_usage\":true},";
    static const char obj[] = "{\"include_usage\":true}";
    const char *end = body + len, *open = skip_ws(body, end);
    if (open >= end || *open != '{') return NULL;
    struct span top = {open, end};
    struct span so = find(top, K_STREAM_OPTIONS);
    if (!so.v) {
        /* insert after the '{'; no comma when the object is empty */
        const char *next = skip_ws(open + 1, end);
        size_t n = sizeof member - (*next == '}' ? 2 : 1);
        return splice(body, len, (size_t)(open + 1 - body), 0, member, n, outlen);
    }
    size_t at = (size_t)(so.v - body), cut = (size_t)(so.ve - so.v);
    if (jtype_of(so) != J_OBJECT || *skip_ws(so.v + 1, so.ve) == '}')
        return splice(body, len, at, cut, obj, sizeof obj - 1, outlen);
    struct span iu = find(so, K_INCLUDE_USAGE);
    if (iu.v)
        return splice(body, len, (size_t)(iu.v - body), (size_t)(iu.ve - iu.v), "true", 4, outlen);
    return splice(body, len, at + 1, 0, "\"include_usage\":true,", 21, outlen);
}

char *tg_cost_request_usage(const char *body, size_t len, size_t *outlen)
{
    if (!json_valid(body, len, NULL)) return NULL;
    return request_usage(body, len, outlen);
}

char *tg_cost_request_usage_valid(const char *body, size_t len, size_t *outlen)
{
    if (!body || len == 0) return NULL;
    return request_usage(body, len, outlen);
}

char *tg_cost_request_model(const char *body, size_t len, const char *model, size_t *outlen)
{
    if (!body || len == 0) return NULL;
    const char *end = body + len, *open = skip_ws(body, end);
    if (open >= end || *open != '{') return NULL;
    struct span top = {open, end};
    struct span m = find(top, K_MODEL);
    if (!m.v || jtype_of(m) != J_STRING) return NULL;
    size_t n = strlen(model);
    char *q = malloc(TG_JSONW_STR_MAX(n));
    if (!q) return NULL;
    size_t qn = (size_t)(tg_jsonw_str(q, model, n) - q);
    char *out = splice(body, len, (size_t)(m.v - body), (size_t)(m.ve - m.v), q, qn, outlen);
    free(q);
    return out;
}
