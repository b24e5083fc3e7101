"""Concurrency limits (`unit: concurrent`) as tenants and operators see them: at most `max`
of a tenant's requests in flight across every gateway, slots given back however a request
ends, a crashed gateway's slots lapsing after limiter.slot_ttl_ms, waiting for a slot when
the route allows, 429 concurrency_limit_exceeded otherwise."""
import datetime
import threading
import time

import harness as h
from harness import TEST_KEY, auth


def config(mock, backend="local", redis=None, max_inflight=2, max_wait_ms=0, slot_ttl_ms=None):
    lim = {"backend": "local"}
    if backend == "redis":
        lim = {"backend": "redis", "on_redis_error": "deny", "lease": {"mode": "off"},
               "redis": {"host": "127.0.0.1", "port": redis.port, "timeout_ms": 1000}}
        if slot_ttl_ms:
            lim["slot_ttl_ms"] = slot_ttl_ms
    cfg = h.tollgate_config(mock.url, limiter=lim, tenants=[{
        "name": "acme", "keys": [TEST_KEY],
        "limits": [{"name": "rpm", "unit": "requests", "rate": 100000, "per": "minute"},
                   {"name": "inflight", "unit": "concurrent", "max": max_inflight}]}])
    for r in cfg["routes"]:
        r["max_wait_ms"] = max_wait_ms
    return cfg


def slow(tg, delay_ms, out, lock, extra=None):
    hdr = auth()
    hdr["x-mock-delay-ms"] = str(delay_ms)
    hdr.update(extra or {})
    try:
        r = tg.request("POST", "/v1/embeddings", headers=hdr, json={"model": "e", "input": "x"},
                       timeout=20)
        item = (r.status, r.json()["error"]["code"] if r.status != 200 else None,
                r.headers.get("x-ratelimit-reset-requests"))
    except (OSError, h.ProtocolError) as e:
        item = (None, str(e), None)
    with lock:
        out.append(item)


def iso_ms(ts):
    d = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return d.timestamp() * 1000


def max_overlap(recs):
    """The most requests at the upstream at once, from the records' times (ms)."""
    ev = []
    for x in recs:
        if x["upstream_ms"] is None:
            continue
        end = iso_ms(x["ts"]) + x["latency_ms"]
        ev.append((end - x["upstream_ms"], 1))
        ev.append((end, -1))
    n = best = 0
    for _, d in sorted(ev, key=lambda e: (e[0], e[1])):
        n += d
        best = max(best, n)
    return best


def test_over_the_limit_is_429_without_a_reset_time_local():
    mock = h.MockModel(threads=8).start()
    tg = h.Tollgate(config(mock, max_inflight=2)).start()
    out, lock = [], threading.Lock()
    th = [threading.Thread(target=slow, args=(tg, 400, out, lock)) for _ in range(6)]
    for t in th:
        t.start()
    for t in th:
        t.join(20)
    ok = [o for o in out if o[0] == 200]
    busy = [o for o in out if o[0] == 429]
    assert len(ok) == 2 and len(busy) == 4, out
    assert all(o[1] == "concurrency_limit_exceeded" and o[2] is None for o in busy), busy
    assert tg.metrics().get('tollgate_slots_in_use{tenant="acme"}', 0) == 0
    tg.term()
    mock.stop()


def test_three_gateways_never_more_than_max_in_flight_and_slots_come_back():
    mock = h.MockModel(threads=16).start()
    redis = h.RedisServer().start()
    tgs = [h.Tollgate(config(mock, "redis", redis, max_inflight=3, max_wait_ms=20000),
                      name="tg%d" % i).start() for i in range(3)]
    for tg in tgs:
        h.wait_until(lambda: tg.admin("/readyz").status == 200, 5.0, what="/readyz 200")
    out, lock = [], threading.Lock()
    th = []
    for i in range(30):
        extra = None
        if i % 10 == 3:
            extra = {"x-mock-status": "500"}  # an upstream error gives its slot back too
        th.append(threading.Thread(target=slow, args=(tgs[i % 3], 150, out, lock, extra)))
    for t in th:
        t.start()
    # a client that leaves mid-request gives its slot back
    c = h.Conn(tgs[0].port, timeout=5)
    hdr = auth()
    hdr["x-mock-delay-ms"] = "300"
    c.send_request("POST", "/v1/embeddings", headers=hdr, json={"model": "e", "input": "x"})
    time.sleep(0.1)
    c.close()
    for t in th:
        t.join(60)
    statuses = sorted(o[0] for o in out)
    assert statuses.count(200) == 27 and statuses.count(500) == 3, statuses
    h.wait_until(lambda: redis.cli("ZCARD", "tg:{acme}:$slots:inflight") == 0, 5.0,
                 what="every slot given back")
    for tg in tgs:
        assert tg.metrics().get('tollgate_slots_in_use{tenant="acme"}', 0) == 0
        tg.term()
    recs = h.read_jsonl(tgs[0].usage_path)  # the three gateways append to one file here
    assert len(recs) == 31, len(recs)
    assert max_overlap(recs) <= 3, max_overlap(recs)
    redis.stop()
    mock.stop()


def test_a_killed_gateways_slots_lapse_after_slot_ttl():
    mock = h.MockModel(threads=8).start()
    redis = h.RedisServer().start()
    a = h.Tollgate(config(mock, "redis", redis, max_inflight=2, slot_ttl_ms=1500), name="a").start()
    b = h.Tollgate(config(mock, "redis", redis, max_inflight=2, slot_ttl_ms=1500), name="b").start()
    for tg in (a, b):
        h.wait_until(lambda: tg.admin("/readyz").status == 200, 5.0, what="/readyz 200")
    out, lock = [], threading.Lock()
    th = [threading.Thread(target=slow, args=(a, 10000, out, lock)) for _ in range(2)]
    for t in th:
        t.start()
    h.wait_until(lambda: redis.cli("ZCARD", "tg:{acme}:$slots:inflight") == 2, 5.0, what="two slots")
    time.sleep(2.0)  # longer than the ttl: gateway a refreshes its slots
    r = b.request("POST", "/v1/embeddings", headers=auth(), json={"model": "e", "input": "x"})
    assert r.status == 429 and r.json()["error"]["code"] == "concurrency_limit_exceeded", r.text
    a.kill()
    t0 = time.monotonic()
    while True:
        r = b.request("POST", "/v1/embeddings", headers=auth(), json={"model": "e", "input": "x"})
        if r.status == 200:
            break
        assert time.monotonic() - t0 < 1.5 + 1.0, "the dead gateway's slots never lapsed"
        time.sleep(0.05)
    print("    admitted again %.2f s after the kill (slot_ttl_ms 1500)" % (time.monotonic() - t0))
    assert b.metrics().get('tollgate_slots_expired_total{tenant="acme"}', 0) >= 2
    for t in th:
        t.join(15)
    b.term()
    redis.stop()
    mock.stop()


def test_a_request_over_the_limit_waits_for_a_slot_when_the_route_allows():
    mock = h.MockModel(threads=8).start()
    tg = h.Tollgate(config(mock, max_inflight=1, max_wait_ms=5000)).start()
    out, lock = [], threading.Lock()
    th = [threading.Thread(target=slow, args=(tg, 200, out, lock)) for _ in range(4)]
    t0 = time.monotonic()
    for t in th:
        t.start()
    for t in th:
        t.join(20)
    assert [o[0] for o in out] == [200] * 4, out
    assert time.monotonic() - t0 >= 0.75  # one at a time
    tg.term()
    assert max_overlap(h.read_jsonl(tg.usage_path)) == 1
    mock.stop()


def test_a_slot_comes_back_after_an_upstream_timeout():
    mock = h.MockModel(threads=4).start()
    cfg = config(mock, max_inflight=1)
    cfg["upstreams"][0]["response_timeout_ms"] = 300
    tg = h.Tollgate(cfg).start()
    hdr = auth()
    hdr["x-mock-hang"] = "1"
    r = tg.request("POST", "/v1/embeddings", headers=hdr, json={"model": "e", "input": "x"}, timeout=10)
    assert r.status == 504, r.status
    assert tg.metrics().get('tollgate_slots_in_use{tenant="acme"}', 0) == 0
    r = tg.request("POST", "/v1/embeddings", headers=auth(), json={"model": "e", "input": "x"})
    assert r.status == 200, r.text  # the one slot is free again
    tg.term()
    mock.stop()


def gate_config(mock, max_inflight, queue_timeout_ms):
    cfg = h.tollgate_config(mock.url, tenants=[{
        "name": "acme", "keys": [TEST_KEY, {"key": "sk-bg", "priority": "background"}],
        "limits": [{"name": "rpm", "unit": "requests", "rate": 100000, "per": "minute"}]}])
    cfg["upstreams"][0]["max_inflight"] = max_inflight
    cfg["upstreams"][0]["queue_timeout_ms"] = queue_timeout_ms
    return cfg


def test_upstream_max_inflight_queues_then_503_with_retry_after():
    mock = h.MockModel(threads=8).start()
    tg = h.Tollgate(gate_config(mock, 2, 300)).start()
    out, lock = [], threading.Lock()
    th = [threading.Thread(target=slow, args=(tg, 600, out, lock)) for _ in range(5)]
    for t in th:
        t.start()
    for t in th:
        t.join(20)
    statuses = sorted(o[0] for o in out)
    assert statuses == [200, 200, 503, 503, 503], out
    assert all(o[1] == "upstream_busy" for o in out if o[0] == 503), out
    tg.term()
    recs = h.read_jsonl(tg.usage_path)
    assert max_overlap(recs) <= 2
    mock.stop()


def test_upstream_queue_serves_interactive_before_background():
    mock = h.MockModel(threads=8).start()
    tg = h.Tollgate(gate_config(mock, 1, 10000)).start()
    order, lock = [], threading.Lock()

    def one(key):
        hdr = auth(key)
        hdr["x-mock-delay-ms"] = "100"
        r = tg.request("POST", "/v1/embeddings", headers=hdr, json={"model": "e", "input": "x"}, timeout=20)
        with lock:
            order.append((key, r.status, time.monotonic()))

    bg = [threading.Thread(target=one, args=("sk-bg",)) for _ in range(4)]
    for t in bg:
        t.start()
    time.sleep(0.05)
    inter = [threading.Thread(target=one, args=(TEST_KEY,)) for _ in range(4)]
    for t in inter:
        t.start()
    for t in bg + inter:
        t.join(30)
    assert all(s == 200 for _, s, _ in order), order
    keys = [k for k, _, _ in sorted(order, key=lambda o: o[2])]
    # the first background request was already in; then every interactive one before the rest
    assert keys[1:5] == [TEST_KEY] * 4, keys
    assert h.Tollgate.metrics(tg).get('tollgate_upstream_queue_requests{upstream="mock"}', 0) == 0
    tg.term()
    mock.stop()


if __name__ == "__main__":
    h.main()
