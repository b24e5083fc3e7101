"""What an operator sees of the real daemon: /metrics, /healthz, /readyz, reload (SIGHUP),
drain (SIGTERM), the access log and its rotation (SIGUSR1), the admin token."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import harness as h
from harness import TEST_KEY, auth, chat_body

SMALL_KEY = "sk-test-small"
CHAT = "/v1/chat/completions"


def start(mock=None, **sections):
    mock = mock or h.MockModel().start()
    tg = h.Tollgate(h.tollgate_config(mock.url, **sections)).start()
    return mock, tg


def records(tg, n, timeout=5.0):
    h.wait_until(lambda: len(h.read_jsonl(tg.usage_path)) >= n, timeout, what="%d usage records" % n)
    return h.read_jsonl(tg.usage_path)


def metric_lines(text):
    """{"name{labels}": value} of a /metrics page."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def series(m, name, **labels):
    """Values of the series of `name` whose labels include `labels`: [(labels dict, value)]."""
    out = []
    for k, v in m.items():
        base, _, rest = k.partition("{")
        if base != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(got.get(a) == b for a, b in labels.items()):
            out.append((got, v))
    return out


def total(m, name, **labels):
    return sum(v for _, v in series(m, name, **labels))


def promtool_check(text):
    path = os.path.join(h.tmpdir(), "metrics.txt")
    with open(path, "w") as f:
        f.write(text)
    with open(path, "rb") as f:
        r = subprocess.run(["promtool", "check", "metrics"], stdin=f, capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode == 0, "promtool check metrics failed:\n%s" % out
    return out


def config_text(tg, cfg):
    """YAML for a reload of tg: cfg with tg's listen addresses."""
    cfg = h.deep_merge(cfg, {"server": dict(cfg.get("server", {}), listen="127.0.0.1:%d" % tg.port),
                             "admin": dict(cfg.get("admin", {}), listen="127.0.0.1:%d" % tg.admin_port)})
    return h.to_yaml(cfg) + "\n"


def reloads(tg, result):
    return tg.metrics().get('tollgate_config_reloads_total{result="%s"}' % result, 0)


# ---------------------------------------------------------------------------
# metrics


def test_metrics_after_mixed_traffic():
    mock, tg = start(tenants=[
        {"name": "acme", "keys": [TEST_KEY], "limits": [
            {"name": "rpm", "unit": "requests", "rate": 100000, "per": "minute"},
            {"name": "tpm", "unit": "tokens", "rate": 10000000, "per": "minute"},
            {"name": "gpt4o-tpm", "unit": "tokens", "rate": 10000000, "per": "minute", "models": ["gpt-4o"]},
        ]},
        {"name": "small", "keys": [SMALL_KEY], "limits": [
            {"name": "rpm", "unit": "requests", "rate": 2, "per": "hour"},
        ]},
    ])
    usage = {"prompt": 0, "completion": 0, "total": 0}

    def chat(**kw):
        r = tg.request("POST", CHAT, **kw)
        if r.status == 200:
            u = r.json()["usage"]
            usage["prompt"] += u["prompt_tokens"]
            usage["completion"] += u["completion_tokens"]
            usage["total"] += u["total_tokens"]
        return r

    # 3 allowed chats on gpt-4o (a model a limit names), 1 on a model nobody names.
    for tokens in (5, 10, 15):
        r = chat(headers=auth(**{"x-mock-completion-tokens": tokens}), json=chat_body(max_tokens=100))
        assert r.status == 200, r.text
    r = chat(headers=auth(), json=chat_body(model="mystery-model-123", max_tokens=100))
    assert r.status == 200, r.text
    # One streamed chat; its usage comes from the SSE usage chunk.
    with h.stream(tg.port, "POST", CHAT, headers=auth(**{"x-mock-completion-tokens": "7"}),
                  json=chat_body(stream=True, include_usage=True, max_tokens=100)) as s:
        assert s.response.status == 200
        events = list(s.events())
    u = [e.json()["usage"] for e in events if not e.done and e.json().get("usage")][0]
    usage["prompt"] += u["prompt_tokens"]
    usage["completion"] += u["completion_tokens"]
    usage["total"] += u["total_tokens"]
    # An upstream 500 passed on.
    r = tg.request("POST", CHAT, headers=auth(**{"x-mock-status": "500"}), json=chat_body(max_tokens=100))
    assert r.status == 500, r.text
    # 401 (no key, unknown key), 404 (no route).
    assert tg.request("POST", CHAT, json=chat_body()).status == 401
    assert tg.request("POST", CHAT, headers=auth("sk-nope"), json=chat_body()).status == 401
    assert tg.request("GET", "/v2/nothing/%d" % time.time_ns(), headers=auth()).status == 404
    # The small tenant: 2 allowed, then 3 limited by rpm.
    codes = [tg.request("GET", "/v1/models", headers=auth(SMALL_KEY)).status for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429], codes

    recs = records(tg, 14)
    assert len(recs) == 14
    text = tg.admin("/metrics").text
    promtool_check(text)
    m = metric_lines(text)

    # tollgate_requests_total per route, tenant, code.
    req = {(l["route"], l["tenant"], l["code"]): v for l, v in series(m, "tollgate_requests_total")}
    assert req == {
        (CHAT, "acme", "200"): 5,
        (CHAT, "acme", "500"): 1,
        (CHAT, "other", "401"): 2,
        ("other", "other", "404"): 1,  # routed before the key is read
        ("/v1/models", "small", "200"): 2,
        ("/v1/models", "small", "429"): 3,
    }, req
    assert series(m, "tollgate_ratelimited_total") == [({"tenant": "small", "limit": "rpm"}, 3)]

    # Tokens: what the upstream reported, per model; the unnamed model is "other".
    tok = {(l["tenant"], l["model"], l["kind"]): v for l, v in series(m, "tollgate_tokens_total")}
    assert set(l for _, l, _ in tok) == {"gpt-4o", "other"}, tok
    assert not any("mystery" in k for k in m), "an unknown model became a label value"
    assert tok[("acme", "other", "prompt")] == 3 and tok[("acme", "other", "completion")] == 30
    assert sum(v for (t, _, k), v in tok.items() if k == "prompt") == usage["prompt"]
    assert sum(v for (t, _, k), v in tok.items() if k == "completion") == usage["completion"]
    assert tok[("acme", "gpt-4o", "completion")] == 5 + 10 + 15 + 7

    # Cost units. Estimated tokens: prompt estimate (12 chars / 4) + max_tokens, for the 6
    # requests admitted (the 500 included); actual: the usage, and nothing for the 500.
    assert total(m, "tollgate_cost_units_total", tenant="acme", unit="tokens", phase="estimated") == 6 * (3 + 100)
    assert total(m, "tollgate_cost_units_total", tenant="acme", unit="tokens", phase="actual") == usage["total"]
    assert total(m, "tollgate_cost_units_total", tenant="acme", unit="requests", phase="estimated") == 6
    assert total(m, "tollgate_cost_units_total", tenant="acme", unit="requests", phase="actual") == 6
    assert total(m, "tollgate_cost_units_total", tenant="small", unit="requests", phase="actual") == 2
    est = sum(r["cost"]["estimated"].get("tokens", 0) for r in recs if r["tenant"] == "acme"
              and r["decision"] in ("allowed", "error"))
    assert est == 6 * 103, est

    # Histograms: one observation per request; upstream ones for those forwarded.
    assert total(m, "tollgate_request_duration_seconds_count") == 14
    assert total(m, "tollgate_request_duration_seconds_count", route=CHAT) == 8
    assert total(m, "tollgate_request_duration_seconds_count", route="other") == 1
    assert total(m, "tollgate_upstream_duration_seconds_count", upstream="mock") == 8
    assert total(m, "tollgate_limiter_duration_seconds_count") == 6 + 5
    inf = total(m, "tollgate_request_duration_seconds_bucket", le="+Inf")
    assert inf == 14

    assert series(m, "tollgate_build_info")[0][1] == 1
    assert series(m, "tollgate_build_info")[0][0]["version"]
    assert total(m, "tollgate_usage_records_total", sink="file", result="written") == 14
    # Every client closed its connection: the gauge is back to 0.
    h.wait_until(lambda: tg.metrics().get('tollgate_connections{side="client"}') == 0, 3,
                 what="client connections back to 0")


# ---------------------------------------------------------------------------
# health


def test_healthz_and_readyz_follow_redis():
    redis = h.RedisServer().start()
    mock, tg = start(limiter={"backend": "redis", "on_redis_error": "deny",
                              "redis": {"host": "127.0.0.1", "port": redis.port, "timeout_ms": 50}})
    assert tg.admin("/healthz").status == 200
    assert tg.admin("/healthz").text == "ok\n"
    assert tg.request("POST", CHAT, headers=auth(), json=chat_body()).status == 200
    r = tg.admin("/readyz")
    assert (r.status, r.text) == (200, "ready\n")
    redis.sigstop()
    try:
        # The limiter notices on its next Redis call; with deny the request is refused.
        r = tg.request("POST", CHAT, headers=auth(), json=chat_body(), timeout=5)
        assert r.status == 503, r.text
        h.wait_until(lambda: tg.admin("/readyz").status == 503, 3, what="/readyz 503")
        r = tg.admin("/readyz")
        assert r.text.startswith("not ready: ") and "redis" in r.text, r.text
        assert tg.admin("/healthz").status == 200
    finally:
        redis.sigcont()
    h.wait_until(lambda: tg.admin("/readyz").status == 200, 5, what="/readyz 200 after SIGCONT")
    assert tg.request("POST", CHAT, headers=auth(), json=chat_body()).status == 200
    assert tg.metrics().get('tollgate_redis_errors_total{kind="timeout"}', 0) >= 1


# ---------------------------------------------------------------------------
# reload


def test_reload_new_key_keeps_buckets_and_bad_file_keeps_config():
    limits = [{"name": "rpm", "unit": "requests", "rate": 10, "per": "hour"}]
    mock = h.MockModel().start()
    cfg = h.tollgate_config(mock.url, tenants=[{"name": "acme", "keys": [TEST_KEY], "limits": limits}])
    tg = h.Tollgate(cfg).start()
    for i in range(3):
        r = tg.request("GET", "/v1/models", headers=auth())
        assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == str(9 - i)
    assert tg.request("GET", "/v1/models", headers=auth("sk-new")).status == 401

    # A request in flight while the reload happens completes normally.
    slow = h.Conn(tg.port)
    slow.send_request("POST", CHAT, headers=auth(**{"x-mock-delay-ms": "800", "x-request-id": "inflight"}),
                      json=chat_body())
    h.wait_until(lambda: mock.stats()["requests"] == 4, 3, what="the slow request reached the upstream")

    cfg2 = h.deep_merge(cfg, {"tenants": [{"name": "acme", "keys": [TEST_KEY, "sk-new"], "limits": limits}]})
    tg.reload(config_text(tg, cfg2))
    h.wait_until(lambda: reloads(tg, "ok") == 1, 3, what="reload ok counted")
    r = h.wait_until(lambda: (lambda r: r if r.status == 200 else None)(
        tg.request("GET", "/v1/models", headers=auth("sk-new"))), 3, what="the new key works")
    resp = slow.read_response("POST")
    slow.close()
    assert resp.status == 200 and resp.headers["x-request-id"] == "inflight"
    # The bucket was not reset: 3 before + the slow one + this one.
    assert r.headers["x-ratelimit-remaining-requests"] == "5", r.headers
    assert "configuration reloaded" in tg.stderr
    assert "restart" not in tg.stderr, tg.stderr_tail(3)

    # A broken file: refused with file:line:column, counted, and the old config still serves.
    bad = config_text(tg, cfg2).replace("rate: 10", "rate: ten")
    assert "ten" in bad
    tg.reload(bad)
    h.wait_until(lambda: reloads(tg, "error") == 1, 3, what="reload error counted")
    line_no = next(i for i, l in enumerate(bad.splitlines(), 1) if "rate: ten" in l)
    m = re.search(re.escape(tg.config_path) + r":(\d+):(\d+): .*", tg.stderr)
    assert m, tg.stderr_tail(5)
    assert int(m.group(1)) == line_no, (m.group(0), line_no)
    r = tg.request("GET", "/v1/models", headers=auth("sk-new"))
    assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "4"
    assert reloads(tg, "ok") == 1

    # Fixed again: the next reload is ok; the key removed stops working. A setting only a
    # restart applies is named in the log and keeps its running value; the rest applies.
    cfg3 = h.deep_merge(cfg, {"tenants": [{"name": "acme", "keys": ["sk-new"], "limits": limits}],
                              "server": {"workers": 1, "max_body_bytes": 64},
                              "usage": {"file": {"path": "var/elsewhere.jsonl"}}})
    tg.reload(config_text(tg, cfg3))
    h.wait_until(lambda: reloads(tg, "ok") == 2, 3, what="second reload ok counted")
    h.wait_until(lambda: tg.request("GET", "/v1/models", headers=auth()).status == 401, 3,
                 what="the removed key is refused")
    r = tg.request("GET", "/v1/models", headers=auth("sk-new"))
    assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "3"
    assert re.search(r"WARN reload: usage\.file\.path changed.*restart", tg.stderr), tg.stderr_tail(3)
    assert "server.max_body_bytes" not in tg.stderr
    assert tg.request("POST", CHAT, headers=auth("sk-new"), json=chat_body()).status == 413
    h.wait_until(lambda: r.headers["x-request-id"] in {x["id"] for x in h.read_jsonl(tg.usage_path)}, 3,
                 what="the record in the old usage file")
    assert not os.path.exists(os.path.join(h.tmpdir(), "var", "elsewhere.jsonl"))
    assert tg.alive()


# ---------------------------------------------------------------------------
# drain


def test_sigterm_drains_request_in_flight():
    mock, tg = start(server={"workers": 2, "drain_timeout_ms": 5000})
    idle = h.Conn(tg.port)
    assert idle.request("GET", "/v1/models", headers=auth()).status == 200
    c = h.Conn(tg.port)
    c.send_request("POST", CHAT, headers=auth(**{"x-mock-delay-ms": "1500", "x-request-id": "draining-1"}),
                   json=chat_body())
    # A stream in flight finishes too (10 events 100 ms apart).
    s = h.stream(tg.port, "POST", CHAT, headers=auth(**{"x-mock-chunk-delay-ms": "100",
                                                         "x-mock-completion-tokens": "8",
                                                         "x-request-id": "draining-2"}),
                 json=chat_body(stream=True))
    assert s.response.status == 200
    h.wait_until(lambda: mock.stats()["requests"] == 3, 3, what="the requests reached the upstream")
    t0 = time.monotonic()
    tg.send_signal(signal.SIGTERM)
    # New connections are refused at once; an idle keep-alive connection is closed.
    h.wait_until(lambda: not h.port_open(tg.port), 1.0, what="the listener closed")
    assert idle.closed_by_peer(1.0)
    idle.close()
    r = tg.admin("/readyz")
    assert r.status == 503 and "draining" in r.text, r.text
    events = list(s.events())
    s.close()
    assert len(events) == 10 and events[-1].done
    resp = c.read_response("POST")
    c.close()
    assert resp.status == 200 and resp.json()["usage"]["completion_tokens"] == 30
    assert tg.wait(5) == 0
    took = time.monotonic() - t0
    assert took < 4.0, took
    recs = {r["id"]: r for r in h.read_jsonl(tg.usage_path)}
    assert len(recs) == 3
    rec = recs["draining-1"]
    assert (rec["status"], rec["decision"], rec["usage"]["total_tokens"]) == (200, "allowed", 33), rec
    rec = recs["draining-2"]
    assert (rec["status"], rec["decision"], rec["usage"]["completion_tokens"]) == (200, "allowed", 8), rec


def test_sigterm_with_hanging_request_exits_within_drain_timeout():
    mock, tg = start(server={"drain_timeout_ms": 400})
    c = h.Conn(tg.port)
    c.send_request("POST", CHAT, headers=auth(**{"x-mock-hang": "1", "x-request-id": "hung-1"}),
                   json=chat_body())
    h.wait_until(lambda: mock.stats()["requests"] == 1, 3, what="the request reached the upstream")
    t0 = time.monotonic()
    tg.send_signal(signal.SIGTERM)
    assert tg.wait(5) == 0
    took = time.monotonic() - t0
    assert 0.35 <= took < 3.0, took
    # The client sees its connection end, not a hang.
    try:
        got = c.read_response("POST")
        assert got.status >= 500, got
    except (h.ProtocolError, ConnectionError):
        pass
    c.close()
    assert "drain timeout" in tg.stderr
    rec = [r for r in h.read_jsonl(tg.usage_path) if r["id"] == "hung-1"]
    assert len(rec) == 1 and (rec[0]["status"], rec[0]["decision"]) == (503, "error"), rec


# ---------------------------------------------------------------------------
# access log


ACCESS_FIELDS = {"ts", "id", "tenant", "route", "model", "status", "decision", "priority", "latency_ms",
                 "upstream_ms", "bytes_in", "bytes_out"}


def test_access_log_lines_and_reopen():
    mock, tg = start(log={"level": "info", "access_path": "var/access.log"})
    path = os.path.join(h.tmpdir(), "var", "access.log")
    body = json.dumps(chat_body()).encode()
    r = tg.request("POST", CHAT, headers=auth(**{"x-request-id": "acc-1", "Content-Type": "application/json"}),
                   body=body)
    assert r.status == 200
    assert tg.request("GET", "/v1/models", headers=auth("sk-nope", x_request_id="acc-2")).status == 401
    assert tg.request("GET", "/nowhere", headers=auth(x_request_id="acc-3")).status == 404
    lines = h.wait_until(lambda: (lambda l: l if len(l) >= 3 else None)(h.read_jsonl(path)), 3,
                         what="3 access lines")
    assert len(lines) == 3
    for l in lines:
        assert set(l) == ACCESS_FIELDS, l
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", l["ts"]), l
    a, b, c = lines
    assert (a["id"], a["tenant"], a["route"], a["model"], a["status"], a["decision"]) == \
        ("acc-1", "acme", CHAT, "gpt-4o", 200, "allowed")
    assert a["bytes_in"] > len(body) and a["bytes_out"] > len(r.body) + 100, a
    assert a["latency_ms"] >= a["upstream_ms"] > 0
    assert (b["id"], b["tenant"], b["status"], b["decision"]) == ("acc-2", None, 401, "rejected")
    assert (c["id"], c["route"], c["status"], c["decision"]) == ("acc-3", None, 404, "rejected")
    assert c["upstream_ms"] == 0
    # The access log is not the leveled log: nothing of it on stderr.
    assert "acc-1" not in tg.stderr

    # logrotate: rename, SIGUSR1, new lines go to a new file at the path.
    os.rename(path, path + ".1")
    shutil.move(tg.usage_path, tg.usage_path + ".1")
    tg.send_signal(signal.SIGUSR1)
    h.wait_until(lambda: "log files reopened" in tg.stderr, 3, what="reopen logged")
    for i in range(2):
        assert tg.request("GET", "/v1/models", headers=auth(x_request_id="after-%d" % i)).status == 200
    new = h.wait_until(lambda: (lambda l: l if len(l) >= 2 else None)(h.read_jsonl(path)), 3,
                       what="2 lines in the new access log")
    assert [l["id"] for l in new] == ["after-0", "after-1"]
    assert [l["id"] for l in h.read_jsonl(path + ".1")] == ["acc-1", "acc-2", "acc-3"]
    # The usage file is reopened the same way.
    recs = records(tg, 2)
    assert [r["id"] for r in recs] == ["after-0", "after-1"]
    assert len(h.read_jsonl(tg.usage_path + ".1")) == 3
    assert tg.term() == 0
    assert len(h.read_jsonl(path)) == 2


# ---------------------------------------------------------------------------
# admin token


def test_admin_token():
    mock, tg = start(admin={"token": "s3cret-admin"})
    r = tg.admin("/metrics")
    assert r.status == 401 and r.headers.get("www-authenticate", "").startswith("Bearer"), r
    assert tg.admin("/metrics", headers={"Authorization": "Bearer wrong"}).status == 401
    assert tg.admin("/readyz").status == 401
    r = tg.admin("/metrics", headers={"Authorization": "Bearer s3cret-admin"})
    assert r.status == 200 and "tollgate_build_info" in r.text
    assert tg.admin("/readyz", headers={"Authorization": "Bearer s3cret-admin"}).status == 200
    assert tg.admin("/healthz").status == 200
    # The token changes on reload.
    tg.reload(config_text(tg, h.tollgate_config(mock.url, admin={"token": "rotated"})))
    h.wait_until(lambda: tg.admin("/metrics", headers={"Authorization": "Bearer rotated"}).status == 200, 3,
                 what="the new admin token accepted")
    assert tg.admin("/metrics", headers={"Authorization": "Bearer s3cret-admin"}).status == 401
    assert tg.admin("/healthz").status == 200


def test_only_workers_preempt():
    """Workers run as SCHED_OTHER; every other thread (main loop, access log,
    file writer) as SCHED_BATCH, so that waking one never preempts a worker."""
    mock, tg = start(server={"workers": 3})
    assert tg.request("POST", CHAT, headers=auth(), json=chat_body()).status == 200
    policies = [os.sched_getscheduler(int(t)) for t in os.listdir("/proc/%d/task" % tg.pid)]
    assert policies.count(os.SCHED_OTHER) == 3, policies
    assert policies.count(os.SCHED_BATCH) == len(policies) - 3 >= 2, policies


if __name__ == "__main__":
    h.main()
