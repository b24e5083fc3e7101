/* The cost model: request estimates (jansson), usage read from replies (JSON and SSE), settling. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "tollgate/cost.h"

#define MAX_N 128
#define MAX_TOKENS_PARAM 2147483647LL
#define MAX_VIDEO_SECONDS 3600
#define MAX_VIDEO_SIDE 8192
/* Usage numbers from a reply are clamped to this, so that micro-units never overflow. */
#define MAX_USAGE_TOKENS 1000000000000LL
/* SSE: a pending event larger than this is passed through unparsed. */
#define SSE_MAX_EVENT (1024 * 1024)
/* JSON mode past TG_SCAN_MAX_JSON: the last bytes kept to find `usage` in. */
#define JSON_TAIL (64 * 1024)

enum { NL_MID, NL_START, NL_CR };

static const char bad_json_msg[] =
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)";

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a <= 0 ? 0 : (a + b - 1) / b;
}

/* Code points in UTF-8 text: every byte that does not continue a sequence. */
static int64_t utf8_chars(const char *s, size_t n)
{
    int64_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* micro-units of `usec` micro-seconds of video at w x h */
static int64_t video_micro(int64_t usec, int w, int h)
{
    return ceil_div(usec * w * h, TG_VIDEO_REF_PIXELS);
}

/* "WxH", each side 1..MAX_VIDEO_SIDE, nothing else. */
static bool parse_size(const char *s, size_t n, int *w, int *h)
{
    int v[2] = {0, 0};
    size_t i = 0;
    for (int k = 0; k < 2; k++) {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 6)
            v[k] = v[k] * 10 + (s[i++] - '0');
        if (i == start || v[k] < 1 || v[k] > MAX_VIDEO_SIDE) return false;
        if (k == 0) {
            if (i >= n || (s[i] != 'x' && s[i] != 'X')) return false;
            i++;
        }
    }
    if (i != n) return false;
    *w = v[0];
    *h = v[1];
    return true;
}

/* A plain decimal ("8", "4.5") in [0, MAX_VIDEO_SECONDS]. */
static bool parse_seconds(const char *s, size_t n, double *out)
{
    char tmp[32];
    size_t digits = 0, dots = 0;
    if (n == 0 || n >= sizeof tmp) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else if (s[i] == '.' && dots++ == 0)
            ;
        else
            return false;
    }
    if (digits == 0) return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    double d = strtod(tmp, NULL);
    if (!(d >= 0 && d <= MAX_VIDEO_SECONDS)) return false;
    *out = d;
    return true;
}

/* ---- request side (jansson) ---- */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a decimal number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static int bad_type(char err[TG_ERR_LEN], const char *param, const char *expected,
                    const json_t *got)
{
    snprintf(err, TG_ERR_LEN, "Invalid type for '%s': expected %s, but got %s instead.", param,
             expected, type_name(got));
    return -1;
}

/* A member that is absent or null reads as absent. */
static json_t *member(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

/* An integer parameter in [lo, hi]; decimals with an integral value are accepted. */
static int int_param(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out,
                     char err[TG_ERR_LEN])
{
    json_t *v = member(obj, key);
    int64_t x;
    if (!v) return 0;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e18) {
        x = (int64_t)json_real_value(v);
    } else {
        return bad_type(err, key, "an integer", v);
    }
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

static void add_text(struct prompt *pr, const json_t *s)
{
    pr->chars += utf8_chars(json_string_value(s), json_string_length(s));
}

/* A message's content: a string, null, or an array of parts whose `text` counts. */
static int count_content(json_t *content, const char *param, struct prompt *pr,
                         char err[TG_ERR_LEN])
{
    size_t i;
    json_t *part;
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) {
        add_text(pr, content);
        return 0;
    }
    if (!json_is_array(content)) return bad_type(err, param, "a string or an array", content);
    json_array_foreach (content, i, part) {
        json_t *text = json_is_object(part) ? json_object_get(part, "text") : NULL;
        if (json_is_string(text)) add_text(pr, text);
    }
    return 0;
}

static int count_messages(json_t *msgs, struct prompt *pr, char err[TG_ERR_LEN])
{
    size_t i;
    json_t *m;
    char param[48];
    if (!json_is_array(msgs)) return bad_type(err, "messages", "an array", msgs);
    json_array_foreach (msgs, i, m) {
        if (!json_is_object(m)) {
            snprintf(param, sizeof param, "messages[%zu]", i);
            return bad_type(err, param, "an object", m);
        }
        snprintf(param, sizeof param, "messages[%zu].content", i);
        if (count_content(json_object_get(m, "content"), param, pr, err) < 0) return -1;
    }
    return 0;
}

/* `prompt` or `input`: a string, or an array of strings, token ids, token-id
 * arrays, or (Responses-style) message items. */
static int count_inputs(json_t *v, const char *name, struct prompt *pr, char err[TG_ERR_LEN])
{
    static const char expected[] = "a string or an array";
    size_t i, j;
    json_t *el, *tok;
    char param[48];
    if (json_is_string(v)) {
        add_text(pr, v);
        return 0;
    }
    if (!json_is_array(v)) return bad_type(err, name, expected, v);
    json_array_foreach (v, i, el) {
        snprintf(param, sizeof param, "%s[%zu]", name, i);
        if (json_is_string(el)) {
            add_text(pr, el);
        } else if (json_is_integer(el)) {
            pr->tokens++;
        } else if (json_is_array(el)) {
            json_array_foreach (el, j, tok) {
                if (!json_is_integer(tok)) {
                    snprintf(param, sizeof param, "%s[%zu][%zu]", name, i, j);
                    return bad_type(err, param, "an integer", tok);
                }
            }
            pr->tokens += (int64_t)json_array_size(el);
        } else if (json_is_object(el)) {
            json_t *c = json_object_get(el, "content");
            json_t *t = json_object_get(el, "text");
            if (json_is_string(t)) add_text(pr, t);
            if (c && count_content(c, param, pr, err) < 0) return -1;
        } else {
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

static void common_info(json_t *root, struct tg_request_info *info)
{
    json_t *model = json_object_get(root, "model");
    json_t *so = json_object_get(root, "stream_options");
    if (json_is_string(model)) copy_model(info, json_string_value(model), json_string_length(model));
    info->stream = json_is_true(json_object_get(root, "stream"));
    info->client_wants_usage = json_is_object(so) && json_is_true(json_object_get(so, "include_usage"));
}

static int estimate_tokens(json_t *root, int cpt, int default_max, struct tg_cost *out,
                           struct tg_request_info *info, char err[TG_ERR_LEN])
{
    struct prompt pr = {0, 0};
    json_t *msgs = member(root, "messages");
    json_t *prompt = member(root, "prompt");
    json_t *input = member(root, "input");
    int64_t max = default_max > 0 ? default_max : 0, n = 1;
    int rc;

    if (msgs && count_messages(msgs, &pr, err) < 0) return -1;
    if (prompt && count_inputs(prompt, "prompt", &pr, err) < 0) return -1;
    if (input && count_inputs(input, "input", &pr, err) < 0) return -1;
    int64_t tokens = ceil_div(pr.chars, cpt) + pr.tokens;
    info->prompt_tokens_est = tokens;

    if (!(input && !msgs && !prompt)) {
        rc = int_param(root, "max_completion_tokens", 1, MAX_TOKENS_PARAM, &max, err);
        if (rc < 0) return -1;
        if (rc == 0 && int_param(root, "max_tokens", 1, MAX_TOKENS_PARAM, &max, err) < 0)
            return -1;
        if (int_param(root, "n", 1, MAX_N, &n, err) < 0) return -1;
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

static int video_json(json_t *root, struct video_req *vr, char err[TG_ERR_LEN])
{
    json_t *sec = member(root, "seconds");
    json_t *size = member(root, "size");
    if (sec) {
        if (json_is_string(sec)) {
            if (video_seconds_param(true, json_string_value(sec), json_string_length(sec), 0, vr,
                                    err) < 0)
                return -1;
        } else if (json_is_number(sec)) {
            if (video_seconds_param(false, NULL, 0, json_number_value(sec), vr, err) < 0)
                return -1;
        } else {
            return bad_type(err, "seconds", "a string or a number", sec);
        }
    }
    if (size) {
        if (!json_is_string(size)) return bad_type(err, "size", "a string", size);
        if (video_size_param(json_string_value(size), json_string_length(size), vr, err) < 0)
            return -1;
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

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

int tg_cost_estimate(enum tg_cost_model model, int chars_per_token, int default_max_tokens,
                     const char *body, size_t len, struct tg_cost *out,
                     struct tg_request_info *info, char err[TG_ERR_LEN])
{
    json_t *root = NULL;
    json_error_t jerr;
    struct video_req vr = {TG_VIDEO_DEFAULT_SECONDS, TG_VIDEO_DEFAULT_WIDTH,
                           TG_VIDEO_DEFAULT_HEIGHT};
    int cpt = chars_per_token > 0 ? chars_per_token : 1;
    int rc = -1;
    const char *first = body ? skip_ws(body, body + len) : NULL;

    memset(out, 0, sizeof *out);
    memset(info, 0, sizeof *info);
    err[0] = '\0';
    out->u[TG_UNIT_REQUESTS] = TG_MICRO;

    if (model == TG_COST_VIDEO && first && body + len - first >= 2 && first[0] == '-' &&
        first[1] == '-') {
        if (video_multipart(first, (size_t)(body + len - first), &vr, info, err) < 0) goto out;
        goto video;
    }
    if (model == TG_COST_REQUESTS) {
        /* no body needed: read model and stream when it is a JSON object */
        if (first && first < body + len && *first == '{')
            root = json_loadb(body, len, 0, &jerr);
        if (json_is_object(root)) common_info(root, info);
        rc = 0;
        goto out;
    }
    if (len > 0 && body) root = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    if (!root) {
        snprintf(err, TG_ERR_LEN, "%s", bad_json_msg);
        goto out;
    }
    if (!json_is_object(root)) {
        snprintf(err, TG_ERR_LEN, "Invalid request body: expected a JSON object, but got %s instead.",
                 type_name(root));
        goto out;
    }
    common_info(root, info);
    if (model == TG_COST_TOKENS) {
        rc = estimate_tokens(root, cpt, default_max_tokens, out, info, err);
        goto out;
    }
    if (video_json(root, &vr, err) < 0) goto out;
video:
    /* a started second is charged whole */
    info->video_seconds = (int64_t)ceil(vr.seconds);
    info->width = vr.width;
    info->height = vr.height;
    out->u[TG_UNIT_VIDEO_SECONDS] =
        video_micro(info->video_seconds * TG_MICRO, info->width, info->height);
    rc = 0;
out:
    json_decref(root);
    if (rc < 0) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- a small JSON reader for replies: no allocation, walks the bytes ---- */

/* p at an opening quote: returns just past the closing one, or NULL. */
static const char *jstr_end(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        if (*p == '\\') {
            if (++p == e) return NULL;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/* p at a value: returns just past it, or NULL if it does not end before e. */
static const char *jskip(const char *p, const char *e)
{
    if (p >= e) return NULL;
    if (*p == '"') return jstr_end(p, e);
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        for (; p < e; p++) {
            if (*p == '"') {
                p = jstr_end(p, e);
                if (!p) return NULL;
                p--;
            } else if (*p == '{' || *p == '[') {
                depth++;
            } else if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
        }
        return NULL;
    }
    const char *s = p;
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
           *p != '\n' && *p != '\r' && *p != ':' && *p != '"' && *p != '{' && *p != '[')
        p++;
    return p > s ? p : NULL;
}

struct jit {
    const char *p, *e;
};

static bool jopen(struct jit *it, const char *p, const char *e, char open)
{
    p = skip_ws(p, e);
    if (p >= e || *p != open) return false;
    it->p = p + 1;
    it->e = e;
    return true;
}

/* Next member of an object: key bytes (between the quotes, undecoded) and value span. */
static bool jmember(struct jit *it, const char **k, size_t *kl, const char **v, const char **ve)
{
    const char *e = it->e, *p = skip_ws(it->p, e);
    if (p < e && *p == ',') p = skip_ws(p + 1, e);
    if (p >= e || *p != '"') return false;
    const char *kend = jstr_end(p, e);
    if (!kend) return false;
    *k = p + 1;
    *kl = (size_t)(kend - 1 - *k);
    p = skip_ws(kend, e);
    if (p >= e || *p != ':') return false;
    p = skip_ws(p + 1, e);
    const char *end = jskip(p, e);
    if (!end) return false;
    *v = p;
    *ve = end;
    it->p = end;
    return true;
}

static bool jelement(struct jit *it, const char **v, const char **ve)
{
    const char *e = it->e, *p = skip_ws(it->p, e);
    if (p < e && *p == ',') p = skip_ws(p + 1, e);
    if (p >= e || *p == ']') return false;
    const char *end = jskip(p, e);
    if (!end) return false;
    *v = p;
    *ve = end;
    it->p = end;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long hex4(const char *s, size_t n)
{
    long v = 0;
    if (n < 4) return -1;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/* A key (raw bytes between its quotes) equals the ASCII `lit` once its escapes are decoded. */
static bool key_is(const char *k, size_t kl, const char *lit, size_t ll)
{
    if (kl == ll && memcmp(k, lit, ll) == 0) return true;
    if (kl <= ll || !memchr(k, '\\', kl)) return false;
    size_t i = 0, j = 0;
    while (i < kl) {
        long c = (unsigned char)k[i++];
        if (c == '\\') {
            if (i >= kl) return false;
            char e = k[i++];
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *f = e == 'u' ? NULL : memchr(from, e, sizeof from - 1);
            if (e == 'u') {
                c = hex4(k + i, kl - i);
                if (c < 0 || c > 0x7f) return false;
                i += 4;
            } else if (f) {
                c = to[f - from];
            } else {
                return false;
            }
        }
        if (j >= ll || lit[j++] != c) return false;
    }
    return j == ll;
}

#define KEY_IS(k, kl, lit) key_is((k), (kl), (lit), sizeof(lit) - 1)

/* Code points of the JSON string [v, ve) (quotes included), escapes decoded. */
static int64_t jstr_chars(const char *v, const char *ve)
{
    if (ve - v < 2 || *v != '"') return 0;
    const char *s = v + 1;
    size_t n = (size_t)(ve - v - 2), i = 0;
    int64_t c = 0;
    while (i < n) {
        if (s[i] != '\\') {
            c += ((unsigned char)s[i] & 0xC0) != 0x80;
            i++;
            continue;
        }
        c++;
        if (i + 1 < n && s[i + 1] == 'u') {
            long hi = hex4(s + i + 2, n - i - 2);
            i += 6;
            if (hi >= 0xD800 && hi <= 0xDBFF && i + 1 < n && s[i] == '\\' && s[i + 1] == 'u') {
                long lo = hex4(s + i + 2, n - i - 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) i += 6;
            }
        } else {
            i += 2;
        }
    }
    return c;
}

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
static void read_usage(struct tg_usage *u, const char *v, const char *ve)
{
    struct jit it;
    const char *k, *mv, *mve;
    size_t kl;
    int64_t p = 0, c = 0, t = -1, x;
    if (!jopen(&it, v, ve, '{')) return;
    while (jmember(&it, &k, &kl, &mv, &mve)) {
        if (!jint(mv, mve, &x)) continue;
        if (KEY_IS(k, kl, "prompt_tokens") || KEY_IS(k, kl, "input_tokens"))
            p = x;
        else if (KEY_IS(k, kl, "completion_tokens") || KEY_IS(k, kl, "output_tokens"))
            c = x;
        else if (KEY_IS(k, kl, "total_tokens"))
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
    const char *k, *mv, *mve, *ev, *eve, *fv, *fve;
    size_t kl;
    int64_t c = 0;
    if (!jopen(&it, v, ve, '{')) return 0;
    while (jmember(&it, &k, &kl, &mv, &mve)) {
        if (KEY_IS(k, kl, "content") || KEY_IS(k, kl, "reasoning_content") ||
            KEY_IS(k, kl, "refusal")) {
            c += jstr_chars(mv, mve);
        } else if (KEY_IS(k, kl, "tool_calls") && jopen(&arr, mv, mve, '[')) {
            while (jelement(&arr, &ev, &eve)) {
                if (!jopen(&fn, ev, eve, '{')) continue;
                while (jmember(&fn, &k, &kl, &fv, &fve)) {
                    struct jit args;
                    const char *ak, *av, *ave;
                    size_t akl;
                    if (!KEY_IS(k, kl, "function") || !jopen(&args, fv, fve, '{')) continue;
                    while (jmember(&args, &ak, &akl, &av, &ave))
                        if (KEY_IS(ak, akl, "arguments")) c += jstr_chars(av, ave);
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
    const char *ev, *eve, *k, *mv, *mve;
    size_t kl, n = 0;
    if (!jopen(&arr, v, ve, '[')) return 0;
    while (jelement(&arr, &ev, &eve)) {
        n++;
        if (!jopen(&it, ev, eve, '{')) continue;
        while (jmember(&it, &k, &kl, &mv, &mve)) {
            if (KEY_IS(k, kl, "delta") || KEY_IS(k, kl, "message"))
                u->content_chars += message_chars(mv, mve);
            else if (KEY_IS(k, kl, "text"))
                u->content_chars += jstr_chars(mv, mve);
        }
    }
    return n;
}

/* One JSON object of a reply (the whole body, or an SSE payload). Returns true
 * when it carries usage and an empty `choices` (the usage-only chunk). */
static bool read_object(struct tg_usage *u, const char *p, const char *e, bool video)
{
    struct jit it, sub;
    const char *k, *v, *ve, *sk, *sv, *sve;
    size_t kl, skl;
    bool choices_empty = false, have_usage = false, have_sec = false;
    double sec = 0;
    int w = 0, h = 0;
    if (!jopen(&it, p, e, '{')) return false;
    while (jmember(&it, &k, &kl, &v, &ve)) {
        if (KEY_IS(k, kl, "choices")) {
            choices_empty = *v == '[' && read_choices(u, v, ve) == 0;
        } else if (KEY_IS(k, kl, "usage")) {
            if (*v == '{') {
                read_usage(u, v, ve);
                have_usage = true;
            }
        } else if (KEY_IS(k, kl, "response") && jopen(&sub, v, ve, '{')) {
            while (jmember(&sub, &sk, &skl, &sv, &sve))
                if (KEY_IS(sk, skl, "usage") && *sv == '{') read_usage(u, sv, sve);
        } else if (video && KEY_IS(k, kl, "seconds")) {
            if (jis_string(v, ve))
                have_sec = parse_seconds(v + 1, (size_t)(ve - v - 2), &sec);
            else
                have_sec = parse_seconds(v, (size_t)(ve - v), &sec);
        } else if (video && KEY_IS(k, kl, "size") && jis_string(v, ve)) {
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

/* ---- the scanner ---- */

void tg_scan_init(struct tg_scan *s, bool sse, bool strip_usage, tg_scan_emit_fn emit, void *arg)
{
    memset(s, 0, sizeof *s);
    s->sse = sse;
    s->strip_usage = sse && strip_usage;
    s->emit = emit;
    s->emit_arg = arg;
    s->nl = NL_START;
}

void tg_scan_deinit(struct tg_scan *s)
{
    free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}

static bool reserve(struct tg_scan *s, size_t need)
{
    if (need <= s->cap) return true;
    size_t cap = s->cap ? s->cap * 2 : need;
    if (cap < need) cap = need;
    char *b = realloc(s->buf, cap);
    if (!b) return false;
    s->buf = b;
    s->cap = cap;
    return true;
}

static void json_feed(struct tg_scan *s, const char *data, size_t len)
{
    if (!s->overflow) {
        if (s->len + len <= TG_SCAN_MAX_JSON && reserve(s, s->len + len)) {
            memcpy(s->buf + s->len, data, len);
            s->len += len;
            return;
        }
        s->overflow = true;
        /* from now on keep only the tail, where `usage` is */
        size_t keep = s->len < JSON_TAIL ? s->len : JSON_TAIL;
        if (keep > 0) memmove(s->buf, s->buf + s->len - keep, keep);
        s->len = keep;
        char *b = realloc(s->buf, 2 * JSON_TAIL);
        if (!b) {
            free(s->buf);
            s->len = 0;
        }
        s->buf = b;
        s->cap = b ? 2 * JSON_TAIL : 0;
    }
    if (!s->buf) return;
    if (len >= JSON_TAIL) {
        memcpy(s->buf, data + len - JSON_TAIL, JSON_TAIL);
        s->len = JSON_TAIL;
        return;
    }
    if (s->len + len > s->cap) {
        size_t keep = s->len < JSON_TAIL ? s->len : JSON_TAIL;
        memmove(s->buf, s->buf + s->len - keep, keep);
        s->len = keep;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
}

/* After an overflow: the last `"usage": {...}` member in the kept tail. */
static void json_tail_usage(struct tg_scan *s)
{
    /* exactly the last JSON_TAIL bytes, however the body was split */
    const char *e = s->buf + s->len, *b = s->len > JSON_TAIL ? e - JSON_TAIL : s->buf;
    const char *p = b, *found = NULL, *fend = NULL;
    while (p < e && (p = memmem(p, (size_t)(e - p), "\"usage\"", 7)) != NULL) {
        size_t bs = 0;
        while (p - bs > b && p[-1 - (ptrdiff_t)bs] == '\\')
            bs++;
        const char *q = skip_ws(p + 7, e);
        if (bs % 2 == 0 && q < e && *q == ':') {
            q = skip_ws(q + 1, e);
            const char *qe = q < e && *q == '{' ? jskip(q, e) : NULL;
            if (qe) {
                found = q;
                fend = qe;
            }
        }
        p += 7;
    }
    if (found) read_usage(&s->usage, found, fend);
}

static void emit_out(struct tg_scan *s, const char *p, size_t n)
{
    if (s->strip_usage && s->emit && n > 0) s->emit(s->emit_arg, p, n);
}

/* The payload of one event: data lines joined by '\n'. Returns true if the
 * event is to be dropped. */
static bool sse_event(struct tg_scan *s, const char *ev, size_t n)
{
    const char *e = ev + n, *p = ev, *first = NULL;
    size_t first_len = 0, ndata = 0;
    char *joined = NULL;
    bool drop = false;

    for (int pass = 0; pass < 2; pass++) {
        size_t jl = 0;
        for (p = ev; p < e;) {
            const char *nl = memchr(p, '\n', (size_t)(e - p));
            const char *le = nl ? nl : e, *next = nl ? nl + 1 : e;
            if (le > p && le[-1] == '\r') le--;
            if (le == p || *p == ':' || le - p < 4 || memcmp(p, "data", 4) != 0 ||
                (le - p > 4 && p[4] != ':')) {
                p = next;
                continue;
            }
            const char *val = p + 4 < le ? p + 5 : le;
            if (val < le && *val == ' ') val++;
            if (pass == 0) {
                if (ndata++ == 0) {
                    first = val;
                    first_len = (size_t)(le - val);
                }
            } else {
                if (jl > 0) joined[jl++] = '\n';
                memcpy(joined + jl, val, (size_t)(le - val));
                jl += (size_t)(le - val);
            }
            p = next;
        }
        if (pass == 0) {
            if (ndata < 2) break;
            joined = malloc(n);
            if (!joined) return false;
        } else {
            first = joined;
            first_len = jl;
        }
    }
    if (ndata == 0 || (first_len == 6 && memcmp(first, "[DONE]", 6) == 0)) goto out;
    drop = read_object(&s->usage, first, first + first_len, false) && s->strip_usage;
out:
    free(joined);
    return drop;
}

/* Scans for the end of the current event (a blank line). Returns the length
 * up to and including it, or 0 if it is not in p[0..n). */
static size_t event_end(struct tg_scan *s, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s->nl == NL_MID) {
            const char *q = memchr(p + i, '\n', n - i);
            if (!q) return 0;
            i = (size_t)(q - p) + 1;
            s->nl = NL_START;
            continue;
        }
        char c = p[i++];
        if (c == '\n') return i; /* state stays NL_START: a new event begins */
        s->nl = (c == '\r' && s->nl == NL_START) ? NL_CR : NL_MID;
    }
    return 0;
}

static void sse_feed(struct tg_scan *s, const char *data, size_t len)
{
    const char *p = data, *run = data; /* run: bytes of `data` to emit, not yet emitted */
    size_t n = len;
    if (!s->strip_usage && s->emit) s->emit(s->emit_arg, data, len);
    while (n > 0) {
        size_t end = event_end(s, p, n);
        if (end == 0) {
            if (!s->passthrough && s->len + n > SSE_MAX_EVENT) {
                emit_out(s, s->buf, s->len);
                s->len = 0;
                s->passthrough = s->overflow = true;
            }
            if (!s->passthrough) {
                if (reserve(s, s->len + n)) {
                    memcpy(s->buf + s->len, p, n);
                    s->len += n;
                    emit_out(s, run, (size_t)(p - run));
                    return;
                }
                emit_out(s, s->buf, s->len);
                s->len = 0;
                s->passthrough = s->overflow = true;
            }
            break;
        }
        if (s->passthrough) {
            s->passthrough = false;
        } else if (s->len == 0 && end > SSE_MAX_EVENT) {
            s->overflow = true; /* as if it had come in pieces: passed on unread */
        } else if (s->len == 0) {
            if (sse_event(s, p, end)) {
                emit_out(s, run, (size_t)(p - run));
                run = p + end;
            }
        } else if (s->len + end <= SSE_MAX_EVENT && reserve(s, s->len + end)) {
            memcpy(s->buf + s->len, p, end);
            s->len += end;
            if (!sse_event(s, s->buf, s->len)) emit_out(s, s->buf, s->len);
            s->len = 0;
            run = p + end;
        } else {
            emit_out(s, s->buf, s->len);
            s->len = 0;
            s->overflow = true;
        }
        p += end;
        n -= end;
    }
    emit_out(s, run, (size_t)(data + len - run));
}

void tg_scan_feed(struct tg_scan *s, const char *data, size_t len)
{
    if (len == 0) return;
    if (s->sse) {
        sse_feed(s, data, len);
        return;
    }
    if (s->emit) s->emit(s->emit_arg, data, len);
    json_feed(s, data, len);
}

void tg_scan_finish(struct tg_scan *s)
{
    if (s->sse) {
        if (s->len > 0) {
            (void)sse_event(s, s->buf, s->len);
            emit_out(s, s->buf, s->len);
        }
        s->len = 0;
        s->passthrough = false;
        s->nl = NL_START;
        return;
    }
    if (s->overflow) {
        if (s->buf) json_tail_usage(s);
        return;
    }
    if (s->len > 0) {
        struct tg_usage *u = &s->usage;
        (void)read_object(u, s->buf, s->buf + s->len, true);
    }
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
        out->u[TG_UNIT_VIDEO_SECONDS] = video_micro(llround(sec * TG_MICRO), w, h);
    }
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

/* Sets include_usage inside an existing stream_options, touching only those
 * bytes. NULL if the body's layout is not what it was expected to be. */
static char *edit_stream_options(const char *body, size_t len, size_t *outlen)
{
    static const char obj[] = "{\"include_usage\":true}";
    struct jit it, so;
    const char *k, *v, *ve, *sv = NULL, *sve = NULL, *iv = NULL, *ive = NULL;
    size_t kl;
    if (!jopen(&it, body, body + len, '{')) return NULL;
    while (jmember(&it, &k, &kl, &v, &ve)) {
        if (KEY_IS(k, kl, "stream_options")) {
            sv = v;
            sve = ve;
        }
    }
    if (!sv) return NULL;
    if (*sv != '{') return splice(body, len, (size_t)(sv - body), (size_t)(sve - sv), obj,
                                  sizeof obj - 1, outlen);
    jopen(&so, sv, sve, '{');
    bool empty = true;
    while (jmember(&so, &k, &kl, &v, &ve)) {
        empty = false;
        if (KEY_IS(k, kl, "include_usage")) {
            iv = v;
            ive = ve;
        }
    }
    if (iv) return splice(body, len, (size_t)(iv - body), (size_t)(ive - iv), "true", 4, outlen);
    if (empty) return splice(body, len, (size_t)(sv - body), (size_t)(sve - sv), obj,
                             sizeof obj - 1, outlen);
    return splice(body, len, (size_t)(sv - body) + 1, 0, "\"include_usage\":true,", 21, outlen);
}

char *tg_cost_request_usage(const char *body, size_t len, size_t *outlen)
{
    static const char ins[] = "\"stream_options\":{\"include_usage\":true},";
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    char *out = NULL;
    if (!json_is_object(root)) goto out;
    if (!json_object_get(root, "stream_options")) {
        /* the object's own '{' is the first one: only white space precedes it */
        const char *open = memchr(body, '{', len), *e = body + len;
        const char *next = skip_ws(open + 1, e);
        bool empty = next < e && *next == '}';
        out = splice(body, len, (size_t)(open - body) + 1, 0, ins, sizeof ins - (empty ? 2 : 1),
                     outlen);
        goto out;
    }
    out = edit_stream_options(body, len, outlen);
    if (out) {
        /* the edit must have given what jansson reads as include_usage: true */
        json_t *check = json_loadb(out, *outlen, 0, &jerr);
        json_t *so = json_object_get(check, "stream_options");
        bool ok = json_is_true(json_object_get(so, "include_usage"));
        json_decref(check);
        if (ok) goto out;
        free(out);
        out = NULL;
    }
    json_t *so = json_object_get(root, "stream_options");
    if (!json_is_object(so)) {
        so = json_object();
        if (!so || json_object_set_new(root, "stream_options", so) < 0) goto out;
    }
    if (json_object_set_new(so, "include_usage", json_true()) < 0) goto out;
    out = json_dumps(root, JSON_COMPACT);
    if (out) *outlen = strlen(out);
out:
    json_decref(root);
    return out;
}
