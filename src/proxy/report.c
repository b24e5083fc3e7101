/* The end of a request: settled, recorded, counted, logged (exactly once, whatever its outcome). */
#include "conn.h"

/* Upstream failures are logged at most once a second per worker, with the
 * number of similar lines left out: a dead upstream must not flood the log. */
#define UPSTREAM_LOG_EVERY_MS 1000
static __thread int64_t upstream_log_ms;
static __thread long long upstream_log_skipped;

TG_PRINTF(2, 3) void log_upstream_failure(const struct tg_req *r, const char *fmt, ...)
{
    int64_t now = tg_now_mono_ms();
    if (upstream_log_ms && now - upstream_log_ms < UPSTREAM_LOG_EVERY_MS) {
        upstream_log_skipped++;
        return;
    }
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    const char *tenant = r->tenant ? r->tenant->name : NULL;
    if (upstream_log_skipped)
        tg_log_req(TG_LOG_WARN, r->id, tenant, "%s (%lld similar in the last second not logged)",
                   line, upstream_log_skipped);
    else
        tg_log_req(TG_LOG_WARN, r->id, tenant, "%s", line);
    upstream_log_ms = now;
    upstream_log_skipped = 0;
}

/* ---- the end of a request: settle, record, count, log ---- */

/* The actual cost of a finished request, and the settle of actual − estimate.
 * What reached the client is charged, however the request ended: a stream cut
 * by the upstream or left by the client costs what was delivered of it (the
 * usage the upstream reported, or else the text that passed). A failed
 * upstream call (no reply, or a 5xx one) or a client gone before any reply
 * byte costs only its request unit, and so does a bodyless request. */
static void settle(struct tg_conn *c, enum tg_decision decision, struct tg_cost *actual,
                   struct tg_usage_record *rec)
{
    struct tg_req *r = c->req;
    const struct tg_usage *usage = r->scanning ? &r->scan.usage : NULL;
    bool reported = usage && (usage->have_tokens || usage->have_video);
    bool delivered = r->resp_head && r->umsg.status < 500;
    bool nothing_delivered = r->status == 499 && !r->resp_started;
    const struct tg_outcome out = {
        .refused = r->refused,
        .bodyless = r->bodyless,
        .failed_undelivered = decision == TG_DECISION_ERROR && !delivered && !reported &&
                              (r->upstream_failed || nothing_delivered),
        .usage = usage,
    };
    tg_account_actual(r->route->cost, r->cfg->costs.chars_per_token, &r->info, &out, actual);
    int64_t charged = tg_account_commit(c->w->limiter, r->cfg, r->info.model, &r->lreq, actual);
    if (charged >= 0) {
        rec->credits = true;
        rec->credits_charged = charged;
        rec->ledger_seq = r->ledger_seq;
    }
    r->charged = false;
}

static void count(struct tg_conn *c, const struct tg_usage_record *rec, bool admitted)
{
    /* This worker's series for the labels of its last request, reused while the
     * labels stay the same. Labels are compared by content, never by address: a
     * reload frees the old config's strings and a new one may reuse the memory.
     * A label longer than its copy is `unkept`: its series are looked up again. */
    static __thread struct {
        char route[128], tenant[128], upstream[128], model[TG_MODEL_LEN];
        int status;
        unsigned unkept;
        struct tg_metric_series *req, *dur, *up, *cost[TG_UNIT_COUNT][2], *tok[2];
    } memo;
    enum { ROUTE = 1, TENANT = 2, UPSTREAM = 4, MODEL = 8, STATUS = 16 };
    struct tg_req *r = c->req;
    const char *tenant = rec->tenant;
    const char *route = rec->route;
    /* Models are labelled only when some limit names them; others are "other". */
    const char *model = NULL;
    if (tenant && admitted)
        for (size_t i = 0; i < r->tenant->nlimits && model == NULL; i++)
            for (size_t k = 0; k < r->tenant->limits[i].nmodels; k++)
                if (strcmp(r->tenant->limits[i].models[k], rec->model) == 0) model = rec->model;
    const char *now[] = {route, tenant, rec->upstream, model};
    char *copy[] = {memo.route, memo.tenant, memo.upstream, memo.model};
    const size_t cap[] = {sizeof(memo.route), sizeof(memo.tenant), sizeof(memo.upstream),
                          sizeof(memo.model)};
    unsigned changed = rec->status != memo.status ? STATUS : 0;
    memo.status = rec->status;
    for (unsigned i = 0; i < 4; i++) {
        const char *v = now[i] ? now[i] : "other"; /* as the metrics write NULL */
        if (!(memo.unkept & 1u << i) && strcmp(copy[i], v) == 0) continue;
        changed |= 1u << i;
        size_t n = strlen(v);
        memo.unkept &= ~(1u << i);
        if (n < cap[i])
            memcpy(copy[i], v, n + 1);
        else
            memo.unkept |= 1u << i;
    }
    if (changed & (ROUTE | TENANT | STATUS)) memo.req = NULL;
    if (changed & ROUTE) memo.dur = NULL;
    if (changed & UPSTREAM) memo.up = NULL;
    if (changed & TENANT) memset(memo.cost, 0, sizeof(memo.cost));
    if (changed & (TENANT | MODEL)) memo.tok[0] = memo.tok[1] = NULL;

    if (memo.req == NULL) {
        char digits[24], code[8];
        size_t cn;
        const char *cd = tg_fmt_int(digits, rec->status, &cn);
        if (cn >= sizeof(code)) cn = sizeof(code) - 1;
        memcpy(code, cd, cn);
        code[cn] = '\0';
        memo.req = tg_metrics_series(TG_M_REQUESTS, (const char *[]){route, tenant, code});
    }
    tg_metrics_series_add(memo.req, 1);
    if (memo.dur == NULL) memo.dur = tg_metrics_series(TG_M_REQUEST_DURATION, &route);
    tg_metrics_series_observe(memo.dur, rec->latency_ms / 1000.0);
    if (rec->upstream_ms >= 0) {
        if (memo.up == NULL) memo.up = tg_metrics_series(TG_M_UPSTREAM_DURATION, &rec->upstream);
        tg_metrics_series_observe(memo.up, rec->upstream_ms / 1000.0);
    }
    if (tenant == NULL || !admitted) return;
    static const char *const phase[] = {"estimated", "actual"};
    for (int u = 0; u < TG_UNIT_COUNT; u++) {
        const int64_t micro[] = {rec->estimated.u[u], rec->actual.u[u]};
        for (int p = 0; p < 2; p++) {
            if (micro[p] == 0) continue;
            if (memo.cost[u][p] == NULL) {
                const char *l[] = {tenant, tg_unit_name((enum tg_unit)u), phase[p]};
                memo.cost[u][p] = tg_metrics_series(TG_M_COST_UNITS, l);
            }
            tg_metrics_series_add(memo.cost[u][p], (double)micro[p] / TG_MICRO);
        }
    }
    if (rec->usage.have_tokens) {
        static const char *const kind[] = {"prompt", "completion"};
        for (int k = 0; k < 2; k++)
            if (memo.tok[k] == NULL)
                memo.tok[k] =
                    tg_metrics_series(TG_M_TOKENS, (const char *[]){tenant, model, kind[k]});
        tg_metrics_series_add(memo.tok[0], (double)rec->usage.prompt_tokens);
        tg_metrics_series_add(memo.tok[1], (double)rec->usage.completion_tokens);
    }
    if (rec->usage.have_video) {
        const char *lv[] = {tenant, model};
        tg_metrics_add(TG_M_VIDEO_SECONDS, lv, rec->usage.video_seconds);
    }
}

static void access_log(const struct tg_usage_record *rec)
{
    char line[TG_USAGE_ACCESS_LINE_MAX];
    size_t n = tg_usage_access_line(rec, line, sizeof(line));
    if (n) tg_log_access(line, n);
}

/* Every request ends here exactly once, whatever its outcome. */
void req_finish(struct tg_conn *c, enum tg_decision decision)
{
    struct tg_req *r = c->req;
    struct tg_worker *w = c->w;
    int64_t t_end = now_us();
    struct tg_usage_record rec;
    memset(&rec, 0, sizeof(rec));
    memcpy(rec.id, r->id, sizeof(rec.id));
    if (rec.id[0] == '\0') tg_usage_new_id(rec.id);
    rec.ts_ms = r->ts_ms;
    rec.tenant = r->tenant ? r->tenant->name : NULL;
    if (r->tenant) {
        static const char hex[] = "0123456789abcdef";
        for (int i = 0; i < 6; i++) {
            rec.key[2 * i] = hex[r->key_digest[i] >> 4];
            rec.key[2 * i + 1] = hex[r->key_digest[i] & 15];
        }
        rec.key[12] = '\0';
    }
    rec.route = r->route ? r->route->path : NULL;
    rec.model = r->info.model;
    rec.requested_model = r->requested_model[0] ? r->requested_model : NULL;
    rec.upstream = r->tup_us ? r->upstream->name : NULL;
    rec.status = r->status;
    rec.stream = r->info.stream;
    rec.priority = r->priority;
    rec.decision = decision;
    if (decision == TG_DECISION_LIMITED && r->denied >= 0)
        rec.limit = r->lreq.b[r->denied].limit->name;
    rec.fallback = r->lreq.fallback;
    rec.paid_by = r->charged ? r->lreq.credit.paid_by : TG_PAID_NONE;
    if (r->scanning) rec.usage = r->scan.usage;
    rec.estimated = r->est;
    bool admitted = r->charged;
    if (admitted) settle(c, decision, &rec.actual, &rec);
    rec.latency_ms = (double)(t_end - r->t0_us) / 1000.0;
    rec.upstream_ms = r->tup_us ? (double)(t_end - r->tup_us) / 1000.0 : -1;
    rec.bytes_in = r->bytes_in;
    rec.bytes_out = r->bytes_out;
    /* A record the sink cannot keep is counted and logged (at most once a
     * second) by the sink itself. */
    (void)tg_usage_emit(w->sink, &rec);
    count(c, &rec, admitted);
    access_log(&rec);
    req_release(c);

    /* The reply's last bytes are still queued: they are written below (or by
     * the close), after the record was handed to the sink, so that a client
     * never holds a complete answer whose record a crash could lose. */
    if (c->state == C_CLOSING) return; /* the client is gone: its close is under way */
    if (!c->keep_alive || w->draining) {
        conn_close_after_write(c);
        return;
    }
    flush_out(c->bev, true);
    c->state = C_IDLE;
    arm_timer(c, w->cfg->server.idle_timeout_ms);
    client_reading(c, true);
    idle_enter(c);
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}
