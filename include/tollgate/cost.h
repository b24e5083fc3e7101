/* The cost model: what a request is estimated to cost, and what it actually used. */
#ifndef TOLLGATE_COST_H
#define TOLLGATE_COST_H

#include "tollgate/config.h"

#define TG_MODEL_LEN 128
/* Reference resolution of one video_seconds unit (docs/usage-records.md). */
#define TG_VIDEO_REF_PIXELS (1280LL * 720LL)
/* Sora's defaults when a request omits them. */
#define TG_VIDEO_DEFAULT_SECONDS 4
#define TG_VIDEO_DEFAULT_WIDTH 720
#define TG_VIDEO_DEFAULT_HEIGHT 1280

/* Cost in micro-units per unit (index: enum tg_unit). */
struct tg_cost {
    int64_t u[TG_UNIT_COUNT];
};

/* What the estimator learned from the request body. */
struct tg_request_info {
    char model[TG_MODEL_LEN]; /* "" if none */
    bool stream;              /* "stream": true */
    bool client_wants_usage;  /* stream_options.include_usage was true */
    int64_t prompt_tokens_est;
    int64_t video_seconds; /* as requested (video routes) */
    int width, height;     /* as requested (video routes) */
};

/* Estimates the cost of a request on a route of cost model `model` from its
 * body (may be empty for TG_COST_REQUESTS). requests = 1 always; tokens =
 * ceil(text chars / chars_per_token) + (max_completion_tokens | max_tokens |
 * default_max_tokens) * n for chat/completions; only the prompt part for
 * embeddings (a body with "input" and no "messages"/"prompt"); video_seconds =
 * seconds * w*h / (1280*720). Returns 0, or -1 with `err` set to a message fit
 * for a client (bad JSON, wrong field type, bad size).
 * The body must be JSON as jansson reads it (RFC 8259, UTF-8, integers in
 * int64, depth <= 2048); it is checked and read in place, without building a tree.
 * Text is counted in code points. `prompt`/`input` token-id arrays count as
 * tokens. A video body may also be multipart/form-data (fields model, seconds,
 * size), as OpenAI's SDKs send it; a started second is charged whole. A
 * requests route accepts any body and reads model/stream when it is JSON. */
int tg_cost_estimate(enum tg_cost_model model, int chars_per_token, int default_max_tokens,
                     const char *body, size_t len, struct tg_cost *out,
                     struct tg_request_info *info, char err[TG_ERR_LEN]) TG_WUR;

/* For a streamed chat request whose client did not ask for usage: returns a
 * new body (malloc'd, caller frees, length in *outlen) with
 * "stream_options":{"include_usage":true} set, or NULL on failure (not a JSON
 * object, out of memory). Without stream_options the member is inserted
 * after the first '{'; with one, only include_usage inside it is set. Every
 * other byte of the body is kept as it was. */
char *tg_cost_request_usage(const char *body, size_t len, size_t *outlen) TG_WUR;

/* The same, for a body that tg_cost_estimate has just accepted on a
 * TG_COST_TOKENS route (so it is known to be a valid JSON object): it is not
 * checked again. Any other body is the caller's error. */
char *tg_cost_request_usage_valid(const char *body, size_t len, size_t *outlen) TG_WUR;

/* The body of a request already checked valid with its top-level "model" string replaced by
 * `model` (a model alias resolved), malloc'd with its length in *outlen; NULL when the body
 * has no model string, or out of memory. */
char *tg_cost_request_model(const char *body, size_t len, const char *model,
                            size_t *outlen) TG_WUR;

/* Actual usage read from a reply. */
struct tg_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    bool have_tokens;     /* a `usage` object was seen */
    double video_seconds; /* from a video job reply */
    int width, height;
    bool have_video;
    int64_t content_chars; /* streamed delta text, for settling without usage */
};

/* Actual cost from actual usage. When a token route saw no usage, tokens are
 * estimated as prompt_tokens_est + content_chars / chars_per_token (rounded
 * up). A video route uses the reply's seconds (and size, when it has one),
 * else the requested ones. */
void tg_cost_actual(enum tg_cost_model model, int chars_per_token,
                    const struct tg_request_info *info, const struct tg_usage *usage,
                    struct tg_cost *out);

/* Receives the bytes of a filtered stream that go to the client. */
typedef void (*tg_scan_emit_fn)(void *arg, const char *data, size_t len);

#define TG_SCAN_MAX_JSON (4 * 1024 * 1024)

/* Incremental reader of a reply body (already de-chunked), fed in arbitrary
 * splits. JSON mode keeps the body (up to TG_SCAN_MAX_JSON) and reads `usage`
 * or the video job's `seconds`/`size` at finish. SSE mode reads `data:` events
 * as they complete: the `usage` object of any chunk, and the length of
 * choices[].delta.content. With `strip_usage` set, events whose only payload is
 * usage (empty `choices`) are not emitted; everything else is passed to `emit`
 * unchanged, one complete event at a time. Without `strip_usage`, `emit` may be
 * NULL and the caller forwards the bytes itself.
 * Details: with `strip_usage`, `emit` gets whole events only (several at once
 * when they arrived together); without it, each fed piece goes to `emit` (if
 * set) at once. Lines end in \n or \r\n. An SSE event over 1 MiB passes
 * through unread; past TG_SCAN_MAX_JSON, JSON mode keeps only the last 64 KiB
 * and finds `usage` there; both set `overflow`. finish emits (and reads) a
 * trailing event that lacks its blank line. Any split of the input gives the
 * same usage and the same emitted bytes. */
struct tg_scan {
    bool sse;
    bool strip_usage;
    tg_scan_emit_fn emit;
    void *emit_arg;
    char *buf; /* pending bytes: the JSON body or the current SSE event */
    size_t len, cap;
    bool overflow;
    struct tg_usage usage;
    /* private to the scanner */
    unsigned char nl; /* SSE: where the last byte left the current line */
    bool passthrough; /* SSE: the pending event outgrew the buffer; emitted as it arrives */
};

void tg_scan_init(struct tg_scan *s, bool sse, bool strip_usage, tg_scan_emit_fn emit, void *arg);
void tg_scan_feed(struct tg_scan *s, const char *data, size_t len);
/* Ends the body: parses what is pending and flushes a trailing partial event. */
void tg_scan_finish(struct tg_scan *s);
void tg_scan_deinit(struct tg_scan *s);

#endif
