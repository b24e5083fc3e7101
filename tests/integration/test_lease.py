"""Lease mode as a client and an operator see it: several real tollgate processes leasing
from one redis-server — exact under load (admitted <= burst + rate * t, and close to it),
few script calls for a hot tenant, a killed gateway's leases written off after ttl_ms,
leases returned at shutdown, a live lease spent while Redis is gone."""
import os
import re
import shutil
import subprocess
import threading
import time

import harness as h
from harness import TEST_KEY, auth



def lease_limiter(redis, mode="always", **lease):
    lc = {"mode": mode}
    lc.update(lease)
    return {"backend": "redis", "on_redis_error": "deny", "lease": lc,
            "redis": {"host": "127.0.0.1", "port": redis.port, "timeout_ms": 1000}}


def start(redis, mock, limits, name="tollgate", usage=None, **lease):
    cfg = h.tollgate_config(mock.url, limiter=lease_limiter(redis, **lease),
                            tenants=[{"name": "acme", "keys": [TEST_KEY], "limits": limits}],
                            **({"usage": usage} if usage else {}))
    tg = h.Tollgate(cfg, name=name).start()
    h.wait_until(lambda: tg.admin("/readyz").status == 200, 5.0, what="/readyz 200")
    return tg


def redis_now_ms(redis):
    sec, usec = redis.cli("TIME")
    return int(sec) * 1000 + int(usec) // 1000


def leased(redis, key):
    """(level, O, {gateway: units}) of a bucket key (a missing key: (None, 0, {}))."""
    v = redis.cli("GET", key)
    if v is None:
        return None, 0, {}
    parts = v.split(" ")
    if len(parts) == 2:
        return int(parts[0]), 0, {}
    return int(parts[0]), int(parts[2]), {e.split("=")[0]: int(e.split("=")[1].split("@")[0])
                                         for e in parts[5:]}


def evalsha_calls(redis):
    info = redis.cli("INFO", "commandstats")
    n = 0
    for name in ("evalsha", "eval", "fcall"):
        m = re.search(r"cmdstat_%s:calls=(\d+)" % name, info)
        n += int(m.group(1)) if m else 0
    return n


def embed_req():
    return h.build_request("POST", "/v1/embeddings", json={"model": "e", "input": "hi"},
                           headers=auth(), host="127.0.0.1")


def flood(port, threads, seconds=None, count=None, stop=None, pace=0.0):
    """Keep-alive clients sending embeddings requests one at a time (each at most one per
    `pace` seconds); returns the statuses."""
    out, lock = [], threading.Lock()
    end = time.monotonic() + seconds if seconds else None
    req = embed_req()

    def client():
        c = h.Conn(port, timeout=10)
        mine = []
        try:
            while True:
                if end and time.monotonic() >= end:
                    break
                if count is not None and len(mine) >= count:
                    break
                if stop is not None and stop.is_set():
                    break
                t = time.monotonic()
                c.send(req)
                mine.append(c.read_response("POST").status)
                if pace:
                    time.sleep(max(0.0, t + pace - time.monotonic()))
        finally:
            c.close()
            with lock:
                out.extend(mine)
    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


# ---------------------------------------------------------------------------

def test_hot_tenant_costs_few_script_calls():
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    rpm = {"name": "rpm", "unit": "requests", "rate": 10000000, "per": "minute"}
    tg = start(redis, mock, [rpm], mode="auto", min_rate=20)
    flood(tg.port, 4, seconds=1.0)  # warms up: auto mode takes the tenant to leases
    before = evalsha_calls(redis)
    statuses = flood(tg.port, 8, seconds=4.0)
    calls = evalsha_calls(redis) - before
    assert set(statuses) == {200}, set(statuses)
    per_req = calls / len(statuses)
    m = tg.metrics()
    local = m.get('tollgate_limiter_decisions_total{where="lease"}', 0)
    print("hot tenant: %d requests, %d script calls (%.4f per request), %d decided on the lease"
          % (len(statuses), calls, per_req, local))
    assert per_req <= 0.02, (len(statuses), calls)
    assert m.get('tollgate_lease_events_total{event="granted"}', 0) > 0


def test_idle_leased_tenant_costs_no_calls():
    """mode always keeps the tenant leased when it goes quiet: the lease shrinks with the
    demand and is given back, then no call is sent (not one every sync interval)."""
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    rpm = {"name": "rpm", "unit": "requests", "rate": 600000, "per": "minute"}
    tg = start(redis, mock, [rpm], mode="always", sync_interval_ms=50)
    flood(tg.port, 4, seconds=1.0)
    assert leased(redis, "tg:{acme}:rpm")[1] > 0
    time.sleep(0.5)
    before = evalsha_calls(redis)
    time.sleep(1.0)
    idle = evalsha_calls(redis) - before
    assert idle <= 2, idle  # a call every 50 ms would be 20
    assert leased(redis, "tg:{acme}:rpm")[1] == 0  # what it held went back


def wrk_lua(path, key):
    """A wrk script: chat requests with max_tokens from 10 to 200, the mock told to use them
    all, so that actual = estimate (3 prompt tokens + max_tokens)."""
    with open(path, "w") as f:
        f.write('''
math.randomseed(os.time())
request = function()
  local n = math.random(10, 200)
  local body = '{"model":"gpt-4o","messages":[{"role":"user","content":"hello world!"}],"max_tokens":' .. n .. '}'
  return wrk.format("POST", "/v1/chat/completions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s",
     ["x-mock-completion-tokens"] = tostring(n)}, body)
end
''' % key)


@h.timeout(240)
def test_four_gateways_exact_under_load():
    if shutil.which("wrk") is None:
        raise AssertionError("wrk is not installed (scripts/install-deps.sh installs it)")
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    rate = 30000  # tokens/s: far below what 4 x 200 clients ask for
    tps = {"name": "tps", "unit": "tokens", "rate": rate, "per": "second", "burst": rate}
    gws = [start(redis, mock, [tps], name="tollgate%d" % i,
                 usage={"file": {"path": "var/usage-%d.jsonl" % i}}) for i in range(4)]
    script = os.path.join(h.tmpdir(), "vary.lua")
    wrk_lua(script, TEST_KEY)
    seconds = 8
    t0 = redis_now_ms(redis)
    procs = [subprocess.Popen(["wrk", "-t1", "-c200", "-d%ds" % seconds, "-s", script, tg.url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for tg in gws]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    t1 = redis_now_ms(redis)
    for tg in gws:
        tg.stop()  # drained: every record written, leases returned
    recs = []
    for i in range(4):
        recs += h.read_jsonl(os.path.join(h.tmpdir(), "var/usage-%d.jsonl" % i))
    charged = [r for r in recs if r["decision"] not in ("limited", "rejected")]
    admitted = sum(r["cost"]["actual"].get("tokens", 0) for r in charged)
    allowed = sum(1 for r in recs if r["decision"] == "allowed")
    limited = sum(1 for r in recs if r["decision"] == "limited")
    bound = rate + rate * (t1 - t0) / 1000.0
    print("4 gateways x 200 clients, %d s: %d records, %d allowed, %d limited; admitted %d "
          "tokens of a bound of %.0f (%.2f%%); wrk: %s"
          % (seconds, len(recs), allowed, limited, admitted, bound, 100.0 * admitted / bound,
             ", ".join(re.findall(r"(\d+) requests in", o)[0] for o in outs)))
    assert limited > 0 and allowed > 0
    assert all(r["cost"]["actual"].get("tokens") == r["cost"]["estimated"].get("tokens")
               for r in recs if r["decision"] == "allowed")
    assert admitted <= bound, "over-admitted: %d > %.0f" % (admitted, bound)
    assert admitted >= 0.95 * bound, "under-admitted: %d < 95%% of %.0f" % (admitted, bound)


def test_auto_mode_leases_a_busy_tenant_and_gives_back_when_it_cools():
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    rpm = {"name": "rpm", "unit": "requests", "rate": 600000, "per": "minute"}
    tg = start(redis, mock, [rpm], mode="auto", min_rate=100)
    flood(tg.port, 1, count=20, pace=0.05)  # 20/s: under min_rate, strict
    m = tg.metrics()
    assert m.get('tollgate_lease_events_total{event="granted"}', 0) == 0, m
    assert leased(redis, "tg:{acme}:rpm")[1] == 0
    flood(tg.port, 4, seconds=1.5)  # busy: leased
    _, o, leases = leased(redis, "tg:{acme}:rpm")
    assert o > 0 and len(leases) == 1, (o, leases)
    assert tg.metrics().get('tollgate_limiter_decisions_total{where="lease"}', 0) > 0
    # idle: the rate falls under half of min_rate within a few ticks, the lease goes back
    h.wait_until(lambda: leased(redis, "tg:{acme}:rpm")[1] == 0, 3.0, what="the lease returned")
    assert tg.metrics().get('tollgate_lease_events_total{event="returned"}', 0) > 0


def test_killed_gateway_lease_written_off_after_ttl():
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    burst = 400
    rps = {"name": "rps", "unit": "requests", "rate": 200, "per": "second", "burst": burst}
    ttl, sync = 1000, 400
    a = start(redis, mock, [rps], name="a", ttl_ms=ttl, sync_interval_ms=sync)
    flood(a.port, 4, seconds=2.0, pace=0.04)  # 100/s, half the rate: a lease of ~2 syncs of it
    level, o, leases = leased(redis, "tg:{acme}:rps")
    assert o > 0 and len(leases) == 1, (level, o, leases)
    a.kill()
    t_kill = time.monotonic()
    b = start(redis, mock, [rps], name="b", mode="off")  # strict: sees the bucket itself
    # Before the lease expires the bucket is short of what it leased; after ttl it is not.
    time.sleep(max(0.0, t_kill + (ttl + sync) / 1000.0 + burst / 200.0 - time.monotonic()))
    statuses = flood(b.port, 16, count=burst // 16 + 2)
    ok = statuses.count(200)
    print("after a killed gateway's lease of %.1f units expired: %d of a burst of %d admitted"
          % (o / 1e6, ok, burst))
    assert ok >= burst * 0.97, (ok, burst)
    _, o2, leases2 = leased(redis, "tg:{acme}:rps")
    assert o2 == 0 and not leases2, (o2, leases2)


def test_shutdown_returns_leases():
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    rpm = {"name": "rpm", "unit": "requests", "rate": 100000, "per": "minute"}
    tg = start(redis, mock, [rpm])
    flood(tg.port, 4, seconds=1.0)
    _, o, leases = leased(redis, "tg:{acme}:rpm")
    assert o > 0, (o, leases)
    tg.stop()
    level, o, leases = leased(redis, "tg:{acme}:rpm")
    assert o == 0 and not leases, (level, o, leases)


def test_live_lease_spent_while_redis_is_down_then_deny():
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    rpm = {"name": "rpm", "unit": "requests", "rate": 100000, "per": "minute"}
    tg = start(redis, mock, [rpm], ttl_ms=3000, sync_interval_ms=50)
    # A trickle of demand goes on throughout: an idle bucket would give its lease back at
    # the next sync, and the test is about a lease that is still held when Redis goes.
    trickle = threading.Event()
    bg = threading.Thread(target=flood, args=(tg.port, 1), kwargs={"stop": trickle, "pace": 0.01})
    bg.start()
    flood(tg.port, 4, seconds=1.0)
    _, o, _ = leased(redis, "tg:{acme}:rpm")
    assert o > 0
    redis.kill()
    statuses = flood(tg.port, 1, count=5)
    trickle.set()
    bg.join(10)
    assert statuses.count(200) >= 1, statuses  # from the lease, Redis gone
    # the lease runs out or expires: then on_redis_error (deny) answers
    h.wait_until(lambda: tg.request("POST", "/v1/embeddings", headers=auth(),
                                    json={"model": "e", "input": "hi"}).status == 503,
                 timeout=6.0, what="503 once the lease is spent or expired")


def test_reload_with_a_changed_limit_gives_its_lease_back():
    redis = h.RedisServer().start()
    mock = h.MockModel(threads=2).start()
    big = {"name": "rpm", "unit": "requests", "rate": 600000, "per": "minute"}
    tg = start(redis, mock, [big])
    flood(tg.port, 4, seconds=1.0)
    _, o, _ = leased(redis, "tg:{acme}:rpm")
    assert o > 50 * 10**6, o  # more than the new capacity is leased
    small = dict(big, rate=50)
    cfg = h.tollgate_config(mock.url, limiter=lease_limiter(redis),
                            tenants=[{"name": "acme", "keys": [TEST_KEY], "limits": [small]}])
    cfg = h.deep_merge(cfg, {"server": {"listen": "127.0.0.1:%d" % tg.port},
                             "admin": {"listen": "127.0.0.1:%d" % tg.admin_port}})
    tg.reload(h.to_yaml(cfg) + "\n")
    h.wait_until(lambda: tg.metrics().get('tollgate_config_reloads_total{result="ok"}', 0) == 1,
                 5.0, what="the reload")
    statuses = flood(tg.port, 1, count=60)  # the next call returns the old lease
    time.sleep(0.2)
    level, o, _ = leased(redis, "tg:{acme}:rpm")
    assert level + o <= 50 * 10**6, (level, o)  # the new capacity holds, leases included
    assert 40 <= statuses.count(200) <= 51, statuses.count(200)  # about the new burst


if __name__ == "__main__":
    h.main()
