"""The usage-record guarantees against the real daemon with the Kafka sink: one record per
answered request with the right fields and key, nothing lost while the brokers are down, across
a graceful stop, across SIGKILL (while the brokers are down or hung, in either spool_fsync mode,
and while records are in flight to a healthy broker: every record is written to the spool before
it is produced), and what happens when the spool is full (reject: 503 and not ready;
drop_oldest: drops counted and logged)."""
import hashlib
import json
import os
import re
import threading
import time

import harness as h
from harness import TEST_KEY, auth, chat_body

CHAT = "/v1/chat/completions"
TINY_KEY = "sk-test-tiny"
# Fail over to the spool and come back fast: the test has seconds, not minutes.
FAST = {"message.timeout.ms": "1500", "reconnect.backoff.ms": "50",
        "reconnect.backoff.max.ms": "250", "retry.backoff.ms": "50"}
TENANTS = [
    {"name": "acme", "keys": [TEST_KEY], "limits": [
        {"name": "rpm", "unit": "requests", "rate": 1000000, "per": "minute"},
        {"name": "tpm", "unit": "tokens", "rate": 100000000, "per": "minute"}]},
    {"name": "tiny", "keys": [TINY_KEY], "limits": [
        {"name": "rpm", "unit": "requests", "rate": 2, "per": "minute"}]},
]
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
              "video_seconds": 0, "width": 0, "height": 0}
KAFKA_SERIES = ("delivered", "spooled", "replayed", "dropped", "skipped", "error")


def spool_dir():
    return os.path.join(h.tmpdir(), "spool")


def config(mock, kb, properties=None, limiter=None, **kafka):
    """A tollgate config with the Kafka sink on kb and the spool in the test dir (and the
    given limiter section, else the local limiter)."""
    k = {"brokers": kb.bootstrap, "topic": kb.topic, "spool_dir": spool_dir(),
         "properties": dict(FAST if properties is None else properties)}
    k.update(kafka)
    more = {"limiter": limiter} if limiter else {}
    return h.tollgate_config(mock.url, usage={"sink": "kafka", "kafka": k}, tenants=TENANTS, **more)


def redis_limiter(redis):
    """The strict Redis limiter on a real redis-server."""
    return {"backend": "redis", "on_redis_error": "deny",
            "redis": {"host": h.LOCALHOST, "port": redis.port, "timeout_ms": 500}}


def start(**kafka):
    kb = h.KafkaBroker(partitions=3).start()
    mock = h.MockModel().start()
    tg = h.Tollgate(config(mock, kb, **kafka)).start()
    return kb, mock, tg


def counts(tg):
    """tollgate_usage_records_total{sink="kafka"} by result, tollgate_spool_bytes and
    tollgate_kafka_queue_messages ("queue")."""
    m = tg.metrics()
    out = {r: int(m.get('tollgate_usage_records_total{sink="kafka",result="%s"}' % r, 0))
           for r in KAFKA_SERIES}
    out["spool_bytes"] = int(m.get("tollgate_spool_bytes", 0))
    out["queue"] = int(m.get("tollgate_kafka_queue_messages", 0))
    return out


def wait_drained(tg, timeout=20.0):
    """Waits until the spool and the producer's queue are empty; returns counts()."""
    def drained():
        c = counts(tg)
        return c if c["spool_bytes"] == 0 and c["queue"] == 0 else None
    return h.wait_until(drained, timeout, interval=0.1, what="spool drained into Kafka")


def kafka_records(kb, n=0, timeout=2.0):
    """[(key, record dict)] from the topic: n messages, or all once none came for `timeout`."""
    return [(k, json.loads(v)) for k, v in kb.consume(n=n, timeout=timeout)]


def key_digest(key):
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def kafka_ids(kb):
    """Reads the whole topic; checks every message's key is its record's tenant. Returns
    (number of messages, {id: record})."""
    recs = kafka_records(kb)
    ids = {}
    for k, r in recs:
        assert k == (r["tenant"] or ""), (k, r)
        ids[r["id"]] = r
    return len(recs), ids


def assert_delivered(kb, answered, extra_ok=0):
    """Every id in `answered` is in Kafka with its status (duplicates allowed: at least
    once), and Kafka holds no id outside it but at most `extra_ok` (requests whose reply
    never reached the client). Returns (messages, distinct ids)."""
    nmsgs, ids = kafka_ids(kb)
    missing = set(answered) - set(ids)
    assert not missing, "%d of %d answered requests have no record (%d messages read), e.g. %s" % (
        len(missing), len(answered), nmsgs, sorted(missing)[:5])
    strays = set(ids) - set(answered)
    assert len(strays) <= extra_ok, "%d records of unknown requests, e.g. %s" % (len(strays), sorted(strays)[:3])
    for rid, status in answered.items():
        assert ids[rid]["status"] == status, (rid, status, ids[rid])
    return nmsgs, len(ids)


class Load:
    """Client threads, each on its own keep-alive connection, sending chat requests (JSON and
    SSE in turn) until stop(). `answered` maps the x-request-id of every request whose whole
    reply arrived to its status. A thread whose connection fails reconnects, unless the
    daemon is gone (stop_on_error)."""

    def __init__(self, port, threads=3, stop_on_error=False, pause=0.0):
        self.port = port
        self.answered = {}
        self.errors = []
        self.statuses = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.stop_on_error = stop_on_error
        self.pause = pause
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        conn = None
        n = 0
        while not self.stopping.is_set():
            n += 1
            stream = n % 2 == 0
            try:
                if conn is None:
                    conn = h.Conn(self.port, timeout=15)
                r = conn.request("POST", CHAT, headers=auth(**{"x-mock-completion-tokens": 3}),
                                 json=chat_body("load %d %d" % (i, n), stream=stream))
                with self.lock:
                    self.answered[r.headers["x-request-id"]] = r.status
                    self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                if r.headers.get("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, h.ProtocolError) as e:
                if conn:
                    conn.close()
                conn = None
                if self.stop_on_error:
                    return
                with self.lock:
                    self.errors.append(repr(e))
                time.sleep(0.05)
            if self.pause:
                time.sleep(self.pause)
        if conn:
            conn.close()

    def count(self):
        with self.lock:
            return len(self.answered)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "client threads did not stop"
        return self.answered


# ---------------------------------------------------------------------------

def test_one_record_per_request_with_the_right_fields():
    kb, mock, tg = start()
    expect = []  # (response, {the record fields it must produce})

    def send(path, key=TEST_KEY, body=None, raw=None, headers=None, **exp):
        hd = dict(headers or {})
        if key:
            hd["Authorization"] = "Bearer %s" % key
        if raw is not None:
            hd["Content-Type"] = "application/json"
            r = tg.request("POST", path, headers=hd, body=raw)
        else:
            r = tg.request("POST" if body is not None else "GET", path, headers=hd, json=body)
        expect.append((r, exp))
        return r

    acme = dict(tenant="acme", route=CHAT, upstream="mock")
    # allowed, JSON: the usage the model server put in its reply
    for i in range(4):
        r = send(CHAT, body=chat_body("x" * (10 + 7 * i)), headers={"x-mock-completion-tokens": 5 + i},
                 decision="allowed", status=200, stream=False, **acme)
        expect[-1][1]["usage"] = r.json()["usage"]
    r = send("/v1/embeddings", body={"model": "text-embedding-3-small", "input": ["abcdefgh", "ijk"]},
             decision="allowed", status=200, stream=False, tenant="acme", route="/v1/embeddings",
             upstream="mock")
    expect[-1][1]["usage"] = dict(r.json()["usage"], completion_tokens=0)
    # allowed, streamed: the usage chunk the client asked for ...
    for i in range(2):
        r = send(CHAT, body=chat_body("stream me %d" % i, stream=True, include_usage=True),
                 headers={"x-mock-completion-tokens": 2 + i}, decision="allowed", status=200,
                 stream=True, **acme)
        usage = [e.json()["usage"] for e in r.sse() if not e.done and e.json().get("usage")]
        assert len(usage) == 1, r.text
        expect[-1][1]["usage"] = usage[0]
    # ... and the one tollgate asked for on the client's behalf and stripped (the mock model
    # reports ceil(chars / 4) prompt tokens and the x-mock-completion-tokens it was asked for)
    content = "no usage for the client, please"
    r = send(CHAT, body=chat_body(content, stream=True), headers={"x-mock-completion-tokens": 4},
             decision="allowed", status=200, stream=True, **acme)
    assert not any(not e.done and e.json().get("usage") for e in r.sse())
    pt = (len(content) + 3) // 4
    expect[-1][1]["usage"] = {"prompt_tokens": pt, "completion_tokens": 4, "total_tokens": pt + 4}
    # limited: tenant tiny may make 2 requests a minute
    for i in range(4):
        send(CHAT, key=TINY_KEY, body=chat_body("tiny %d" % i), tenant="tiny", route=CHAT,
             status=200 if i < 2 else 429, decision="allowed" if i < 2 else "limited",
             limit=None if i < 2 else "rpm", upstream="mock" if i < 2 else None, stream=False)
        if i < 2:
            expect[-1][1]["usage"] = expect[-1][0].json()["usage"]
    # rejected: no key, a wrong key, a body that is not JSON, a path no route serves
    send(CHAT, key=None, body=chat_body(), status=401, decision="rejected", tenant=None, route=CHAT)
    send(CHAT, key="sk-wrong", body=chat_body(), status=401, decision="rejected", tenant=None, route=CHAT)
    send(CHAT, raw="{not json", status=400, decision="rejected", tenant="acme", route=CHAT)
    send("/v1/nowhere", body=chat_body(), status=404, decision="rejected", tenant=None, route=None)
    n = len(expect)
    assert n == 16

    h.wait_until(lambda: counts(tg)["delivered"] >= n, 10, what="%d records delivered" % n)
    c = counts(tg)
    assert c["spooled"] == 0 and c["error"] == 0 and c["dropped"] == 0, c
    recs = kafka_records(kb, n=n + 1, timeout=1.5)  # one more than expected: none may come
    assert len(recs) == n, "expected exactly %d records, got %d" % (n, len(recs))
    by_id = {r["id"]: (k, r) for k, r in recs}
    assert len(by_id) == n, "ids are not distinct"
    for resp, exp in expect:
        rid = resp.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        assert rid in by_id, (rid, exp)
        key, rec = by_id[rid]
        assert resp.status == exp["status"], (resp.status, resp.text, exp)
        ctx = (rec, exp)
        # the message key is the tenant; a record without a tenant has no key
        assert key == (exp["tenant"] or ""), ctx
        assert rec["tenant"] == exp["tenant"], ctx
        assert rec["status"] == exp["status"], ctx
        assert rec["decision"] == exp["decision"], ctx
        assert rec["limit"] == exp.get("limit"), ctx
        assert rec["route"] == exp["route"], ctx
        assert rec["upstream"] == exp.get("upstream"), ctx
        assert rec["stream"] is exp.get("stream", False), ctx
        assert rec["key"] == (key_digest(TEST_KEY if exp["tenant"] == "acme" else TINY_KEY)
                              if exp["tenant"] else None), ctx
        assert rec["bytes_out"] >= len(resp.body or b""), ctx
        usage = exp.get("usage")
        if usage is None:
            assert rec["usage"] == ZERO_USAGE, ctx
            assert rec["cost"]["actual"] == {} and rec["upstream_ms"] is None, ctx
        else:
            for f in ("prompt_tokens", "completion_tokens", "total_tokens"):
                assert rec["usage"][f] == usage[f], (f, ctx)
            assert usage["total_tokens"] > 0, ctx
            if exp["tenant"] == "acme":
                assert rec["cost"]["actual"] == {"requests": 1, "tokens": usage["total_tokens"]}, ctx
        if exp["decision"] == "limited":
            assert rec["cost"]["estimated"].get("requests") == 1 and rec["cost"]["actual"] == {}, ctx
        if exp["status"] >= 400:
            err = resp.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}, err
    assert tg.term() == 0


def test_brokers_down_under_load_loses_nothing():
    kb, mock, tg = start()
    # paced (~1000 requests/s): the mock broker keeps only the newest 5 MiB of each partition
    load = Load(tg.port, threads=3, pause=0.002)
    h.wait_until(lambda: load.count() >= 50, 10, what="load running")
    t_down = time.monotonic()
    kb.down()
    n_down = load.count()
    peak = 0
    while time.monotonic() - t_down < 10:
        peak = max(peak, counts(tg)["spool_bytes"])
        time.sleep(0.5)
    before_up = load.count()
    kb.up()
    t_up = time.monotonic()
    h.wait_until(lambda: load.count() >= before_up + 100, 15, what="load continuing after the brokers came back")
    answered = load.stop()
    c = wait_drained(tg, 30)
    t_drained = time.monotonic() - t_up
    assert not load.errors, load.errors[:5]
    assert set(load.statuses) == {200}, load.statuses
    assert c["error"] == 0 and c["dropped"] == 0, c
    assert c["spooled"] > 0 and peak > 0, (c, peak)
    assert c["delivered"] + c["replayed"] >= len(answered), (c, len(answered))
    msgs, distinct = assert_delivered(kb, answered)
    assert distinct == len(answered), (distinct, len(answered))
    print("  %d requests answered (%d during the 10 s outage); records: delivered %d, spooled %d, "
          "replayed %d, %d messages in Kafka (%d duplicates); spool peak %d bytes; spool empty %.1f s "
          "after the brokers came back"
          % (len(answered), before_up - n_down, c["delivered"], c["spooled"], c["replayed"], msgs,
             msgs - distinct, peak, t_drained))
    assert tg.term() == 0


def test_graceful_stop_while_down_then_restart():
    # librdkafka's own message.timeout.ms (300 s): the stop must not wait for it
    kb, mock, tg = start(properties={"reconnect.backoff.max.ms": "250"})
    answered = {}
    for i in range(20):
        r = tg.request("POST", CHAT, headers=auth(), json=chat_body("before %d" % i))
        answered[r.headers["x-request-id"]] = r.status
    h.wait_until(lambda: counts(tg)["delivered"] >= 20, 10, what="first records delivered")
    kb.down()
    load = Load(tg.port, threads=2)
    h.wait_until(lambda: load.count() >= 200, 15, what="requests while the brokers are down")
    answered.update(load.stop())
    t0 = time.monotonic()
    assert tg.term(timeout=20) == 0
    stop_s = time.monotonic() - t0
    files = [f for f in os.listdir(spool_dir()) if f.endswith(".spool")]
    assert files, "nothing spooled"
    assert "stopped" in tg.stderr
    kb.up()
    tg2 = h.Tollgate(config(mock, kb), name="tollgate2").start()
    c = wait_drained(tg2, 20)
    assert c["replayed"] >= len(answered) - 20, (c, len(answered))
    msgs, distinct = assert_delivered(kb, answered)
    assert distinct == len(answered)
    assert not [f for f in os.listdir(spool_dir()) if f.endswith(".spool")]
    print("  %d requests answered, %d while down; stop took %.2f s; after restart %d replayed, "
          "%d messages (%d duplicates)" % (len(answered), len(answered) - 20, stop_s, c["replayed"],
                                            msgs, msgs - distinct))
    assert stop_s < 10, "stopping while the brokers were down took %.1f s" % stop_s
    assert tg2.term() == 0


def test_sigkill_with_fsync_always_loses_no_answered_record():
    kb, mock, tg = start(spool_fsync="always")
    r = tg.request("POST", CHAT, headers=auth(), json=chat_body())
    answered = {r.headers["x-request-id"]: r.status}
    h.wait_until(lambda: counts(tg)["delivered"] >= 1, 10, what="first record delivered")
    kb.down()
    load = Load(tg.port, threads=3, stop_on_error=True, pause=0.002)
    # longer than message.timeout.ms: what the producer held when the brokers went away is
    # in the spool by now, and new records go there directly
    time.sleep(2.5)  # load while the brokers are down
    c = h.wait_until(lambda: (lambda c: c if c["spooled"] > 0 else None)(counts(tg)), 10,
                     what="records spooled")
    tg.kill()
    answered.update(load.stop())
    assert len(answered) > 50, len(answered)
    kb.up()
    tg2 = h.Tollgate(config(mock, kb, spool_fsync="always"), name="tollgate2").start()
    c2 = wait_drained(tg2, 20)
    # each client thread may have had one request whose record was written but whose reply
    # never arrived
    msgs, distinct = assert_delivered(kb, answered, extra_ok=len(load.threads))
    print("  %d requests answered before SIGKILL (%d spooled by then); after restart %d replayed, "
          "%d distinct records (%d messages)" % (len(answered), c["spooled"], c2["replayed"], distinct, msgs))
    assert tg2.term() == 0


# librdkafka's own message.timeout.ms (300 s): a record the producer took stays in its memory
# for the whole outage, and only the spool (write-ahead) has it on disk.
SLOW_FAIL = {"reconnect.backoff.ms": "50", "reconnect.backoff.max.ms": "250"}


def sigkill_during_outage(outage, fsync=None, n=200):
    """The Redis limiter on a real redis-server; 3 client threads under load, records
    delivered by a broker that answers 100 ms late (so that records are in flight when the
    outage starts, as when Kafka slows down before it fails); then the brokers go down (`down`: connections dropped and refused) or hang
    (`hung`: the broker process stopped, its sockets open, nothing answers) while the load
    goes on; once n more requests are answered the daemon is SIGKILLed (in interval mode well
    inside the 100 ms fsync interval of the last records). The brokers come back, a new daemon
    on the same spool directory delivers every answered request's record."""
    redis = h.RedisServer().start()
    kb = h.KafkaBroker(partitions=3, rtt_ms=100).start()
    mock = h.MockModel().start()
    kafka = {"spool_fsync": fsync} if fsync else {}
    cfg = config(mock, kb, properties=SLOW_FAIL, limiter=redis_limiter(redis), **kafka)
    tg = h.Tollgate(cfg).start()
    h.wait_until(lambda: tg.admin("/readyz").status == 200, 5, what="/readyz 200")
    load = Load(tg.port, threads=3, stop_on_error=True, pause=0.002)
    h.wait_until(lambda: counts(tg)["delivered"] >= 20, 10, what="first records delivered")
    if outage == "down":
        kb.down()
    else:
        kb.sigstop()
    t0 = time.monotonic()
    n0 = load.count()
    h.wait_until(lambda: load.count() >= n0 + n, 30, what="%d requests answered during the outage" % n)
    took = time.monotonic() - t0
    tg.kill()
    answered = load.stop()
    assert set(load.statuses) == {200}, load.statuses
    if outage == "down":
        kb.up()
    else:
        kb.sigcont()
    tg2 = h.Tollgate(cfg, name="tollgate2").start()
    c2 = wait_drained(tg2, 30)
    # each client thread may have had one request whose record was written but whose reply
    # never arrived
    msgs, distinct = assert_delivered(kb, answered, extra_ok=len(load.threads))
    print("  brokers %s, spool_fsync %s: %d requests answered (%d in the %.2f s of the outage), "
          "SIGKILL; after restart %d replayed, %d messages in Kafka for %d records (%d duplicates)"
          % (outage, fsync or "interval (default)", len(answered), len(answered) - n0, took,
             c2["replayed"], msgs, distinct, msgs - distinct))
    assert c2["error"] == 0 and c2["dropped"] == 0, c2
    assert tg2.term() == 0


def test_sigkill_while_brokers_down_default_fsync_loses_nothing():
    sigkill_during_outage("down")


def test_sigkill_while_brokers_down_fsync_always_loses_nothing():
    sigkill_during_outage("down", fsync="always")


def test_sigkill_while_broker_hangs_loses_nothing():
    sigkill_during_outage("hung")


def test_sigkill_with_records_in_flight_loses_nothing():
    """Kafka up but answering 300 ms late, so that records are always in flight; load from 3
    client threads; SIGKILL. The new daemon replays what was not acknowledged: every answered
    request's record arrives, those the broker had already taken arrive twice (counted)."""
    redis = h.RedisServer().start()
    kb = h.KafkaBroker(partitions=3, rtt_ms=300).start()
    mock = h.MockModel().start()
    cfg = config(mock, kb, limiter=redis_limiter(redis))
    tg = h.Tollgate(cfg).start()
    h.wait_until(lambda: tg.admin("/readyz").status == 200, 5, what="/readyz 200")
    load = Load(tg.port, threads=3, stop_on_error=True, pause=0.002)
    h.wait_until(lambda: counts(tg)["delivered"] >= 100 and load.count() >= 500, 20,
                 what="records delivered under load")
    c = h.wait_until(lambda: (lambda c: c if c["queue"] > 0 else None)(counts(tg)), 5,
                     what="records in flight")
    tg.kill()
    answered = load.stop()
    assert c["spooled"] == 0, c
    tg2 = h.Tollgate(cfg, name="tollgate2").start()
    c2 = wait_drained(tg2, 30)
    msgs, distinct = assert_delivered(kb, answered, extra_ok=len(load.threads))
    dups = msgs - distinct
    print("  %d requests answered, %d delivered before SIGKILL with ~%d in flight; after restart "
          "%d replayed; %d messages in Kafka for %d records (%d duplicates)"
          % (len(answered), c["delivered"], c["queue"], c2["replayed"], msgs, distinct, dups))
    # a duplicate is a record the broker had and whose acknowledgement the daemon had not
    # processed: at most what was not acknowledged at the kill
    assert dups <= c2["replayed"], (dups, c2)
    assert c2["error"] == 0 and c2["dropped"] == 0, c2
    assert tg2.term() == 0


def test_spool_full_reject_answers_503_and_is_not_ready():
    cap = 1 << 20
    kb, mock, tg = start(spool_max_bytes=cap, spool_full="reject")
    kb.down()
    load = Load(tg.port, threads=3)
    h.wait_until(lambda: load.statuses.get(503, 0) >= 20, 30, interval=0.05, what="503 from a full spool")
    t_full = time.monotonic()
    ready = tg.admin("/readyz")
    assert ready.status == 503 and "usage sink kafka is not accepting records" in ready.text, ready.text
    assert tg.admin("/healthz").status == 200
    r = tg.request("POST", CHAT, headers=auth(), json=chat_body())
    assert r.status == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "usage_sink_unavailable" and err["type"] == "server_error", err
    assert err["param"] is None and err["message"], err
    answered = {r.headers["x-request-id"]: 503}
    # a request rejected before the sink is asked is still answered; its record is not kept
    r = tg.request("POST", CHAT, headers=auth("sk-wrong"), json=chat_body())
    assert r.status == 401
    unauth = r.headers["x-request-id"]
    answered[unauth] = 401
    time.sleep(0.5)
    full = counts(tg)
    assert full["dropped"] == 0 and full["error"] == 0, full
    # past the cap only by the records of requests admitted before it was reached
    assert cap <= full["spool_bytes"] < cap + 32 * 1024, full
    assert full["skipped"] >= 22, full
    kb.up()
    h.wait_until(lambda: tg.admin("/readyz").status == 200, 20, what="ready again")
    t_ready = time.monotonic() - t_full
    ok = load.statuses.get(200, 0)
    h.wait_until(lambda: load.statuses.get(200, 0) > ok + 50, 10, what="requests admitted again")
    answered.update(load.stop())
    c = wait_drained(tg, 20)
    assert c["error"] == 0 and c["dropped"] == 0, c
    _, ids = kafka_ids(kb)
    assert set(ids) <= set(answered), "records of unknown requests"
    kept = {rid for rid, status in answered.items() if status != 503 and rid != unauth}
    missing = kept - set(ids)
    assert not missing, "%d admitted requests have no record, e.g. %s" % (len(missing), sorted(missing)[:5])
    assert unauth not in ids
    # every reply is either in Kafka or counted as skipped (a 503 decided an instant before
    # the spool had room again may have been kept)
    assert len(ids) + c["skipped"] == len(answered), (len(ids), c, len(answered))
    n503 = sum(1 for s in answered.values() if s == 503)
    print("  %d answered: %d 503 while the spool was full, %d records skipped, %d in Kafka; spool "
          "%d bytes at the cap of %d; ready again %.1f s after the brokers came back"
          % (len(answered), n503, c["skipped"], len(ids), full["spool_bytes"], cap, t_ready))
    assert tg.term() == 0


def test_spool_full_drop_oldest_counts_and_logs_drops():
    kb, mock, tg = start(spool_max_bytes=1 << 20, spool_full="drop_oldest")
    kb.down()
    load = Load(tg.port, threads=3)
    h.wait_until(lambda: counts(tg)["dropped"] > 0, 40, interval=0.1, what="records dropped")
    h.wait_until(lambda: "usage spool full (drop_oldest): deleted the oldest" in tg.stderr, 5,
                 what="the drop logged")
    answered = load.stop()
    assert set(load.statuses) == {200}, load.statuses
    assert tg.admin("/readyz").status == 200
    c = counts(tg)
    assert c["spool_bytes"] <= 1 << 20, c
    kb.up()
    c = wait_drained(tg, 20)
    time.sleep(1.2)  # the drop log is rate-limited to one line a second
    logged = sum(int(n) for n in re.findall(r"deleted the oldest (\d+) records", tg.stderr))
    _, ids = kafka_ids(kb)
    assert set(ids) <= set(answered), "records of unknown requests"
    distinct = len(ids)
    print("  %d answered while down; %d dropped (%d in the log); %d distinct records in Kafka"
          % (len(answered), c["dropped"], logged, distinct))
    assert logged == c["dropped"], (logged, c)
    assert distinct + c["dropped"] == len(answered), (distinct, c, len(answered))
    assert tg.term() == 0


if __name__ == "__main__":
    h.main()
