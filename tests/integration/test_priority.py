"""Priority classes and the wait queue as clients see them: a key's class and the header that
lowers it, a limit's reserve that background requests never take (local, Redis strict and
Redis with leases alike), denied requests waiting in a per-tenant queue woken when the bucket
has room (interactive first), bounded, left at once by a client that goes, answered 503 on
SIGTERM."""
import signal
import threading
import time

import harness as h
from harness import TEST_KEY, auth

BG_KEY = "sk-background-key"


def limiter(backend, redis=None, lease="off"):
    if backend == "redis":
        return {"backend": "redis", "on_redis_error": "deny", "lease": {"mode": lease},
                "redis": {"host": "127.0.0.1", "port": redis.port, "timeout_ms": 1000}}
    return {"backend": "local"}


def config(mock, limits, backend="local", redis=None, lease="off", max_wait_ms=0, max_queue=None):
    tenant = {"name": "acme", "keys": [TEST_KEY, {"key": BG_KEY, "priority": "background"}],
              "limits": limits}
    if max_queue is not None:
        tenant["max_queue"] = max_queue
    cfg = h.tollgate_config(mock.url, limiter=limiter(backend, redis, lease), tenants=[tenant])
    for r in cfg["routes"]:
        r["max_wait_ms"] = max_wait_ms
    return cfg


def embed(tg, key=TEST_KEY, headers=None):
    hdr = auth(key)
    hdr.update(headers or {})
    return tg.request("POST", "/v1/embeddings", headers=hdr, json={"model": "e", "input": "hi"})


def test_a_keys_class_and_the_header_that_lowers_it():
    mock = h.MockModel().start()
    tg = h.Tollgate(config(mock, [{"name": "rpm", "unit": "requests", "rate": 1000, "per": "minute"}])).start()
    assert embed(tg).status == 200
    assert embed(tg, headers={"x-tollgate-priority": "background"}).status == 200
    assert embed(tg, key=BG_KEY).status == 200
    assert embed(tg, key=BG_KEY, headers={"x-tollgate-priority": "interactive"}).status == 200  # never raised
    r = embed(tg, headers={"x-tollgate-priority": "urgent"})
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_priority", r.text
    tg.term()
    recs = h.read_jsonl(tg.usage_path)
    assert [x["priority"] for x in recs] == ["interactive", "background", "background", "background",
                                            "interactive"], [x["priority"] for x in recs]
    mock.stop()


def reserve_counts(backend, lease="off"):
    """A bucket of 10 with a reserve of 0.3: background takes 7, interactive the last 3."""
    mock = h.MockModel().start()
    redis = h.RedisServer().start() if backend == "redis" else None
    tg = h.Tollgate(config(mock, [{"name": "rpm", "unit": "requests", "rate": 10, "per": "hour",
                                   "reserve": 0.3}], backend, redis, lease)).start()
    h.wait_until(lambda: tg.admin("/readyz").status == 200, 5.0, what="/readyz 200 (Redis connected)")
    bg = [embed(tg, key=BG_KEY).status for _ in range(12)]
    inter = [embed(tg).status for _ in range(5)]
    tg.term()
    if redis:
        redis.stop()
    mock.stop()
    return bg.count(200), inter.count(200)


def test_background_never_takes_the_reserve_local():
    got = reserve_counts("local")
    assert got == (7, 3), got


def test_background_never_takes_the_reserve_redis_strict():
    got = reserve_counts("redis")
    assert got == (7, 3), got


def test_background_never_takes_the_reserve_redis_leases():
    got = reserve_counts("redis", lease="always")
    assert got == (7, 3), got


def timed(tg, key, out, lock, headers=None, replies=None):
    t0 = time.monotonic()
    r = embed(tg, key=key, headers=headers)
    with lock:
        out.append((r.status, time.monotonic() - t0, key))
        if replies is not None:
            replies.append(r)


def test_queued_requests_finish_in_n_over_rate():
    """30 requests at once on a bucket of 1 refilled 20 times a second: each waits its turn,
    woken when the bucket has room — about 30/20 s for the last, no polling storms."""
    mock = h.MockModel().start()
    tg = h.Tollgate(config(mock, [{"name": "rps", "unit": "requests", "rate": 20, "per": "second",
                                   "burst": 1}], max_wait_ms=5000, max_queue=100)).start()
    out, lock = [], threading.Lock()
    threads = [threading.Thread(target=timed, args=(tg, TEST_KEY, out, lock)) for _ in range(30)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    total = time.monotonic() - t0
    assert [s for s, _, _ in out].count(200) == 30, out
    assert 1.3 <= total <= 1.45 + 1.0, total  # 29 waits of 50 ms, with slack for a busy machine
    m = tg.metrics()
    assert m.get('tollgate_wait_seconds_count{class="interactive"}', 0) >= 25, m
    assert m.get('tollgate_wait_queue_requests{class="interactive"}') == 0
    tg.term()
    print("    30 requests at 20/s: %.2f s" % total)
    mock.stop()


def test_interactive_waiters_go_before_background_ones():
    mock = h.MockModel().start()
    tg = h.Tollgate(config(mock, [{"name": "rps", "unit": "requests", "rate": 10, "per": "second",
                                   "burst": 1}], max_wait_ms=8000, max_queue=100)).start()
    out, lock = [], threading.Lock()
    bg = [threading.Thread(target=timed, args=(tg, BG_KEY, out, lock)) for _ in range(12)]
    for t in bg:  # background first: they queue before any interactive request arrives
        t.start()
    time.sleep(0.15)
    inter = [threading.Thread(target=timed, args=(tg, TEST_KEY, out, lock)) for _ in range(12)]
    for t in inter:
        t.start()
    for t in bg + inter:
        t.join(30)
    assert [s for s, _, _ in out].count(200) == 24, out
    wi = sorted(d for _, d, k in out if k == TEST_KEY)
    wb = sorted(d for _, d, k in out if k == BG_KEY)
    p90_inter = wi[int(len(wi) * 0.9) - 1]
    median_bg = wb[len(wb) // 2]
    assert p90_inter < median_bg, (wi, wb)
    tg.term()
    print("    interactive p90 %.2f s, background median %.2f s" % (p90_inter, median_bg))
    mock.stop()


def test_the_queue_is_bounded_and_a_client_that_leaves_is_gone_at_once():
    mock = h.MockModel().start()
    tg = h.Tollgate(config(mock, [{"name": "rpm", "unit": "requests", "rate": 1, "per": "minute",
                                   "burst": 1}], max_wait_ms=120000, max_queue=2)).start()
    assert embed(tg).status == 200  # the bucket is empty for a minute now
    conns = []
    for _ in range(2):
        c = h.Conn(tg.port, timeout=5)
        c.send_request("POST", "/v1/embeddings", headers=auth(), json={"model": "e", "input": "x"})
        conns.append(c)
    h.wait_until(lambda: tg.metrics().get('tollgate_wait_queue_requests{class="interactive"}') == 2, 5.0,
                 what="two waiters")
    t0 = time.monotonic()
    r = embed(tg)  # the third: the tenant's queue is full
    assert r.status == 429 and time.monotonic() - t0 < 1.0, r.status
    for c in conns:
        c.close()
    h.wait_until(lambda: tg.metrics().get('tollgate_wait_queue_requests{class="interactive"}') == 0, 5.0,
                 what="the waiters gone with their clients")
    tg.term()
    recs = h.read_jsonl(tg.usage_path)
    assert sorted(x["status"] for x in recs) == [200, 429, 499, 499], [x["status"] for x in recs]
    mock.stop()


def test_waiters_are_served_within_max_wait_and_sigterm_answers_the_rest_503():
    mock = h.MockModel().start()
    tg = h.Tollgate(config(mock, [{"name": "rpm", "unit": "requests", "rate": 60, "per": "minute",
                                   "burst": 1}], max_wait_ms=3000)).start()
    assert embed(tg).status == 200
    t0 = time.monotonic()
    out, lock = [], threading.Lock()
    th = [threading.Thread(target=timed, args=(tg, TEST_KEY, out, lock)) for _ in range(2)]
    for t in th:
        t.start()
    for t in th:
        t.join(10)
    # one second per request: the first waits ~1 s, the second ~2 s, both within 3 s
    assert sorted(s for s, _, _ in out) == [200, 200], out
    assert 1.6 <= time.monotonic() - t0 <= 3.5
    # three more: they queue; SIGTERM answers those still waiting 503 with Retry-After
    replies = []
    th = [threading.Thread(target=timed, args=(tg, TEST_KEY, out, lock, None, replies))
          for _ in range(3)]
    out.clear()
    for t in th:
        t.start()
    time.sleep(0.3)
    tg.send_signal(signal.SIGTERM)
    for t in th:
        t.join(10)
    statuses = sorted(s for s, _, _ in out)
    assert 503 in statuses, statuses
    for r in replies:
        if r.status == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "shutting_down"
    tg.stop()
    mock.stop()


if __name__ == "__main__":
    h.main()
