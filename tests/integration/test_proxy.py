"""The data path as a client sees it: the real daemon in front of the mock model server."""
import json
import os
import socket
import threading
import time

import harness as h
from harness import TEST_KEY, auth, chat_body


MODEL_ROUTES = h.tollgate_config("http://x")["routes"]


def start(upstream_url=None, mock=None, **sections):
    if mock is None and upstream_url is None:
        mock = h.MockModel().start()
    url = upstream_url or mock.url
    tg = h.Tollgate(h.tollgate_config(url, **sections)).start()
    return mock, tg


def records(tg, n, timeout=5.0):
    h.wait_until(lambda: len(h.read_jsonl(tg.usage_path)) >= n, timeout,
                 what="%d usage records" % n)
    return h.read_jsonl(tg.usage_path)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def assert_openai_error(resp, status, code=None):
    assert resp.status == status, (resp.status, resp.text)
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    assert resp.headers.get("x-request-id")
    return err


def test_json_reply_is_byte_exact():
    mock, tg = start()
    direct = h.request(mock.port, "GET", "/v1/models")
    via = tg.request("GET", "/v1/models", headers=auth())
    assert via.status == 200
    assert via.body == direct.body
    assert via.headers["content-type"] == direct.headers["content-type"]
    # A chat reply: the same bytes the upstream sent, with the upstream's length.
    r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body("hi there"))
    assert r.status == 200, r.text
    assert int(r.headers["content-length"]) == len(r.body)
    body = r.json()
    assert body["usage"]["completion_tokens"] == 30
    assert body["usage"]["prompt_tokens"] == 2


def test_request_forwarding_headers():
    mock = h.MockModel().start()
    mock, tg = start(mock=mock, upstreams=[{"name": "mock", "url": mock.url,
                                            "headers": {"Authorization": "Bearer upstream-secret"}}])
    r = tg.request("POST", "/v1/chat/completions?x=1", headers=auth(**{
        "x-request-id": "client-id-123", "Connection": "keep-alive", "Keep-Alive": "timeout=5",
        "X-Forwarded-For": "10.9.8.7", "X-Custom": "kept"}), json=chat_body())
    assert r.status == 200
    assert r.headers["x-request-id"] == "client-id-123"
    last = mock.last()
    hd = last["headers"]
    assert last["query"] == "x=1"
    assert hd["authorization"] == "Bearer upstream-secret"
    assert hd["host"] == "127.0.0.1:%d" % mock.port
    assert hd["x-request-id"] == "client-id-123"
    assert hd["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert hd["x-custom"] == "kept"
    assert "keep-alive" not in hd
    # A request without an id gets a new one, forwarded too.
    r2 = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body())
    rid = r2.headers["x-request-id"]
    assert len(rid) == 32 and rid != "client-id-123"
    assert mock.last()["headers"]["x-request-id"] == rid


def test_sse_first_event_arrives_while_upstream_still_sends():
    mock, tg = start()
    with h.stream(tg.port, "POST", "/v1/chat/completions",
                  headers=auth(**{"x-mock-chunk-delay-ms": "150", "x-mock-completion-tokens": "6"}),
                  json=chat_body(stream=True)) as s:
        assert s.response.status == 200
        assert s.response.headers["content-type"].startswith("text/event-stream")
        events = list(s.events())
    assert events[-1].done
    first, last = events[0].t, events[-1].t
    assert last - first > 0.5, "events were buffered: %.3f s apart" % (last - first)
    # The client did not ask for usage: the usage-only chunk was removed.
    payloads = [e.json() for e in events if not e.done]
    assert all(p["choices"] for p in payloads), payloads[-1]
    assert sum(len(p["choices"][0]["delta"].get("content", "")) for p in payloads) == 24
    rec = records(tg, 1)[-1]
    assert rec["stream"] is True
    assert rec["usage"]["completion_tokens"] == 6
    assert rec["cost"]["actual"]["tokens"] == rec["usage"]["total_tokens"]
    # The upstream was asked for usage on the client's behalf.
    assert json.loads(mock.last()["body"])["stream_options"] == {"include_usage": True}


def test_sse_usage_kept_when_client_asks():
    mock, tg = start()
    with h.stream(tg.port, "POST", "/v1/chat/completions",
                  headers=auth(**{"x-mock-completion-tokens": "3"}),
                  json=chat_body(stream=True, include_usage=True)) as s:
        assert s.response.status == 200, (s.response.status, s.response.headers)
        events = list(s.events())
    assert all(e.data for e in events), [e.raw for e in events]
    usage_chunks = [e.json() for e in events if not e.done and e.json().get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == 3


def test_slow_reader_memory_stays_bounded():
    # Under AddressSanitizer freed memory waits in a quarantine and would count
    # as growth: this one test turns the quarantine off.
    asan = os.environ.get("ASAN_OPTIONS", "")
    mock = h.MockModel().start()
    tg = h.Tollgate(h.tollgate_config(mock.url),
                    env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=0"}).start()
    tokens = 60000  # about 12 MB of SSE
    c = h.Conn(tg.port, timeout=30)
    c.send(h.build_request("POST", "/v1/chat/completions",
                           headers=auth(**{"x-mock-completion-tokens": str(tokens)}),
                           json=chat_body(stream=True, include_usage=True)))
    base = rss_kib(tg.pid)
    # The upstream writes as fast as it can; the client reads nothing. Sample
    # the peak for a while: with backpressure broken, 12 MB pile up in seconds.
    peak = base
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        peak = max(peak, rss_kib(tg.pid))
        time.sleep(0.05)
    assert peak - base < 8 * 1024, "tollgate grew by %d KiB for one slow client" % (peak - base)
    # And the upstream is held back: its reply cannot have ended (no record yet).
    assert not h.read_jsonl(tg.usage_path), "the whole stream went through a reader that read nothing"
    resp = c.read_head()
    n = 0
    for ev in c.iter_sse(resp):
        n += 1
    c.close()
    assert n == tokens + 3  # tokens, finish chunk, usage chunk, [DONE]
    rec = records(tg, 1)[-1]
    assert rec["usage"]["completion_tokens"] == tokens and rec["decision"] == "allowed"


def test_client_errors():
    mock, tg = start(server={"max_body_bytes": 4096})
    # 401: no key, unknown key.
    assert_openai_error(tg.request("POST", "/v1/chat/completions", json=chat_body()), 401, "invalid_api_key")
    assert_openai_error(tg.request("POST", "/v1/chat/completions", headers=auth("sk-nope"),
                                   json=chat_body()), 401, "invalid_api_key")
    # 404: no route.
    assert_openai_error(tg.request("GET", "/v2/nothing", headers=auth()), 404)
    # 413: declared and chunked.
    big = json.dumps(chat_body("x" * 8000)).encode()
    assert_openai_error(tg.request("POST", "/v1/chat/completions", headers=auth(), body=big), 413)
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TEST_KEY.encode() +
           b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(b"400\r\n" + b"a" * 1024 + b"\r\n" for _ in range(6)) +
           b"0\r\n\r\n")
    assert h.send_raw(tg.port, raw).status == 413
    # 431: a header block over 64 KiB.
    raw = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(70)) + b"\r\n"
    assert h.send_raw(tg.port, raw).status == 431
    # 400: malformed, and Content-Length with Transfer-Encoding (smuggling).
    assert h.send_raw(tg.port, b"GARBAGE\r\n\r\n").status == 400
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert h.send_raw(tg.port, raw).status == 400
    # 400: a body the cost model cannot read, in OpenAI's shape.
    err = assert_openai_error(tg.request("POST", "/v1/chat/completions", headers=auth(), body=b"{not json"), 400)
    assert err["type"] == "invalid_request_error"
    recs = records(tg, 9)
    assert [r["status"] for r in recs] == [401, 401, 404, 413, 413, 431, 400, 400, 400]
    assert all(r["decision"] == "rejected" for r in recs)
    assert mock.stats()["requests"] == 0
    assert tg.alive()


def test_keep_alive_pipelining_and_expect_continue():
    mock, tg = start()
    with h.Conn(tg.port) as c:
        for _ in range(20):
            assert c.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body()).status == 200
        # Two pipelined requests in one write.
        one = h.build_request("POST", "/v1/chat/completions", headers=auth(**{"x-request-id": "p1"}), json=chat_body())
        two = h.build_request("GET", "/v1/models", headers=auth(**{"x-request-id": "p2"}))
        c.send(one + two)
        r1 = c.read_response("POST")
        r2 = c.read_response("GET")
        assert (r1.status, r1.headers["x-request-id"]) == (200, "p1")
        assert (r2.status, r2.headers["x-request-id"]) == (200, "p2")
    st = mock.stats()
    assert st["requests"] == 22
    assert st["connections"] <= 2, st  # upstream keep-alive reuse
    # Expect: 100-continue gets its interim reply, then the answer.
    with h.Conn(tg.port) as c:
        body = json.dumps(chat_body()).encode()
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TEST_KEY.encode() +
               b"\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        c.sock.settimeout(5)
        interim = c.sock.recv(64)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        c.send(body)
        assert c.read_response("POST").status == 200
    assert "expect" not in mock.last()["headers"]


def test_idle_connections_are_bounded_per_worker():
    mock, tg = start(server={"workers": 1, "max_idle_connections": 3, "idle_timeout_ms": 60000})
    conns = []
    for i in range(5):
        c = h.Conn(tg.port, timeout=5)
        assert c.request("GET", "/v1/models", headers=auth()).status == 200
        conns.append(c)
    # The two idle longest were closed when the fourth and fifth went idle.
    for c in conns[:2]:
        c.sock.settimeout(2)
        assert c.sock.recv(1) == b"", "an idle connection past the bound stayed open"
    for c in conns[2:]:
        assert c.request("GET", "/v1/models", headers=auth()).status == 200
    assert tg.metrics()["tollgate_idle_connections_closed_total"] == 2
    # A connection that never sends a byte counts too: it is idle from its accept.
    silent = [socket.create_connection(("127.0.0.1", tg.port)) for _ in range(4)]
    for c in conns[2:]:
        c.sock.settimeout(2)
        assert c.sock.recv(1) == b""
    silent[0].settimeout(2)
    assert silent[0].recv(1) == b""
    for s in silent:
        s.close()
    for c in conns:
        c.close()


def test_upstream_refused_hung_and_cut():
    closed = h.free_port()
    mock = h.MockModel().start()
    tg = h.Tollgate(h.tollgate_config(mock.url, upstreams=[
        {"name": "mock", "url": mock.url, "response_timeout_ms": 500},
        {"name": "dead", "url": "http://127.0.0.1:%d" % closed},
    ], routes=MODEL_ROUTES + [{"path": "/dead", "upstream": "dead", "cost": "requests"}])).start()
    assert_openai_error(tg.request("GET", "/dead", headers=auth()), 502)
    t0 = time.monotonic()
    assert_openai_error(tg.request("POST", "/v1/chat/completions", headers=auth(**{"x-mock-hang": "1"}),
                                   json=chat_body()), 504)
    assert time.monotonic() - t0 < 2.0
    # A stream reset after 3 events: the client's stream ends, the record says error.
    with h.stream(tg.port, "POST", "/v1/chat/completions",
                  headers=auth(**{"x-mock-reset-after-chunks": "3", "x-mock-completion-tokens": "50"}),
                  json=chat_body(stream=True)) as s:
        got = []
        try:
            for ev in s.events():
                got.append(ev)
        except (ConnectionError, h.ProtocolError, TimeoutError):
            pass
    assert 1 <= len(got) <= 3 and not any(e.done for e in got)
    recs = records(tg, 3)
    assert [(r["status"], r["decision"]) for r in recs] == [(502, "error"), (504, "error"), (200, "error")]
    # A failed call costs only its request unit.
    assert recs[1]["cost"]["actual"] == {"requests": 1}
    # A cut stream is charged for what reached the client: the prompt estimate
    # and the completion text delivered, never less than what the client read.
    chars = sum(len(e.json()["choices"][0]["delta"].get("content") or "") for e in got)
    cut = recs[2]["cost"]
    assert chars > 0
    assert cut["actual"]["requests"] == 1
    assert -(-chars // 4) < cut["actual"]["tokens"] < cut["estimated"]["tokens"], cut
    assert tg.alive()


def test_vanished_client_cancels_upstream_request():
    mock, tg = start()
    s = socket.create_connection(("127.0.0.1", tg.port))
    s.sendall(h.build_request("POST", "/v1/chat/completions", headers=auth(**{"x-mock-delay-ms": "3000"}),
                              json=chat_body()))
    h.wait_until(lambda: mock.stats()["requests"] == 1, 3, what="the request reached the upstream")
    s.close()
    h.wait_until(lambda: mock.stats()["cancelled"] == 1, 2, what="the upstream request was cancelled")
    rec = records(tg, 1)[-1]
    assert rec["status"] == 499 and rec["decision"] == "error"
    assert rec["cost"]["actual"] == {"requests": 1}


def test_https_upstream():
    mock = h.MockModel().start()
    tls = h.Stunnel(mock.port).start()
    tg = h.Tollgate(h.tollgate_config(tls.url, upstreams=[
        {"name": "mock", "url": tls.url, "tls_verify": False},
        {"name": "strict", "url": tls.url},
    ], routes=MODEL_ROUTES + [{"path": "/strict", "upstream": "strict", "cost": "requests"}])).start()
    r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body())
    assert r.status == 200, r.text
    assert r.json()["usage"]["total_tokens"] == 33
    with h.stream(tg.port, "POST", "/v1/chat/completions", headers=auth(**{"x-mock-completion-tokens": "4"}),
                  json=chat_body(stream=True)) as s:
        assert sum(1 for e in s.events()) == 6
    # A self-signed certificate fails verification, which is on by default.
    assert_openai_error(tg.request("GET", "/strict", headers=auth()), 502)


def test_local_limit_429_then_refund_lets_next_through():
    mock, tg = start(tenants=[{"name": "acme", "keys": [TEST_KEY], "limits": [
        {"name": "rpm", "unit": "requests", "rate": 3, "per": "minute"},
    ]}, {"name": "beta", "keys": ["sk-beta"], "limits": [
        {"name": "tpm", "unit": "tokens", "rate": 5000, "per": "hour"},
    ]}])
    for i in range(3):
        r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body())
        assert r.status == 200
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == str(2 - i)
    r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body())
    err = assert_openai_error(r, 429, "rate_limit_exceeded")
    assert err["type"] == "requests"
    assert "tenant acme" in err["message"] and "Please try again in" in err["message"]
    # 3 per minute, all spent at once: the next one fits in about 20 s.
    assert 18000 < int(r.headers["retry-after-ms"]) <= 20000, r.headers["retry-after-ms"]
    assert r.headers["retry-after"] == "20"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "RateLimit" in r.headers and "RateLimit-Policy" in r.headers
    # Tokens: each request reserves ~4000 (max_tokens) but uses 33; the settle
    # refunds the rest, so a second and third request fit in a 5000 bucket.
    for _ in range(3):
        r = tg.request("POST", "/v1/chat/completions", headers=auth("sk-beta"),
                       json=chat_body(max_tokens=4000))
        assert r.status == 200, r.text
    recs = records(tg, 7)
    assert [r["decision"] for r in recs] == ["allowed"] * 3 + ["limited"] + ["allowed"] * 3
    assert recs[3]["limit"] == "rpm"
    assert all(r["cost"]["actual"]["tokens"] == 33 for r in recs[4:])
    # A request that can never fit gets a 400-class error naming the limit.
    r = tg.request("POST", "/v1/chat/completions", headers=auth("sk-beta"), json=chat_body(max_tokens=9000))
    err = assert_openai_error(r, 400)
    assert "tpm" in err["message"]


def test_records_match_upstream_counts():
    mock, tg = start()
    n = 0
    for tokens in (1, 7, 19):
        r = tg.request("POST", "/v1/chat/completions", headers=auth(**{"x-mock-completion-tokens": str(tokens)}),
                       json=chat_body("abcd" * tokens, max_tokens=100))
        assert r.status == 200
        n += 1
    r = tg.request("POST", "/v1/embeddings", headers=auth(), json={"model": "text-embedding-3-small", "input": "abcdefgh"})
    assert r.status == 200
    r = tg.request("POST", "/v1/videos", headers=auth(),
                   json={"model": "sora-2", "prompt": "a cat", "seconds": "8", "size": "1920x1080"})
    assert r.status == 200, r.text
    recs = records(tg, 5)
    assert len(recs) == 5 and len({r["id"] for r in recs}) == 5
    for rec, tokens in zip(recs, (1, 7, 19)):
        assert rec["usage"]["completion_tokens"] == tokens
        assert rec["usage"]["prompt_tokens"] == tokens
        assert rec["cost"]["actual"]["tokens"] == 2 * tokens
        assert rec["cost"]["estimated"]["tokens"] == tokens + 100
        assert rec["tenant"] == "acme" and rec["route"] == "/v1/chat/completions"
        assert rec["upstream"] == "mock" and rec["status"] == 200
    assert recs[3]["usage"]["prompt_tokens"] == 2
    video = recs[4]
    assert video["cost"]["estimated"]["video_seconds"] == 18
    assert video["cost"]["actual"]["video_seconds"] == 18
    assert video["usage"]["width"] == 1920 and video["usage"]["height"] == 1080


def test_bad_config_exits_1_and_check_passes():
    rc, out, err = h.Tollgate.check("server:\n  listen: 1\n  nope: 2\n")
    assert rc == 1
    assert "nope" in err and ":3:" in err, err
    rc, out, err = h.Tollgate.check(open(os.path.join(os.environ["TG_SOURCE_DIR"], "config/tollgate.yaml")).read())
    assert rc == 0, err
    assert "configuration ok" in out
    bad = h.Tollgate("upstreams: []\nroutes:\n  - { path: /x, upstream: missing, cost: tokens }\n", wait_admin=False)
    try:
        bad.start()
        assert False, "a bad config must not start"
    except h.StartError:
        pass
    assert bad.wait(5) == 1
    assert "missing" in bad.stderr


class StaleUpstream:
    """An upstream that answers the first request of each connection and then,
    like a server whose keep-alive timer just fired, closes the connection
    without answering the next request sent on it."""

    BODY = (b'{"id":"x","object":"chat.completion","choices":[],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answered = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _read_request(self, c):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            body += c.recv(65536)
        return True

    def _serve(self, c):
        with c:
            if not self._read_request(c):
                return
            self.answered += 1
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(self.BODY), self.BODY))
            self._read_request(c)  # the second request on this connection: dropped unanswered

    def close(self):
        self.sock.close()


def test_stale_keep_alive_connection_is_retried_once():
    up = StaleUpstream()
    try:
        url = "http://127.0.0.1:%d" % up.port
        tg = h.Tollgate(h.tollgate_config(url)).start()
        for i in range(3):
            r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body())
            assert r.status == 200, (i, r.status, r.text)
        # Requests 2 and 3 each met a connection the upstream had given up on,
        # and went through on a fresh one.
        assert up.answered == 3 and up.connections == 3, (up.answered, up.connections)
        recs = records(tg, 3)
        assert [r["decision"] for r in recs] == ["allowed"] * 3
    finally:
        up.close()


class ClosingUpstream(StaleUpstream):
    """Answers one request per connection with a keep-alive reply, then closes
    the connection a moment later, while tollgate's pool holds it idle."""

    def _serve(self, c):
        with c:
            if not self._read_request(c):
                return
            self.answered += 1
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(self.BODY), self.BODY))
            time.sleep(0.2)


def test_idle_upstream_connection_closed_by_upstream_leaves_the_pool():
    up = ClosingUpstream()
    try:
        url = "http://127.0.0.1:%d" % up.port
        tg = h.Tollgate(h.tollgate_config(url)).start()
        gauge = 'tollgate_connections{side="upstream"}'
        for i in range(3):
            r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=chat_body())
            assert r.status == 200, (i, r.status, r.text)
            assert tg.metrics().get(gauge) == 1  # held idle (the upstream closes it 0.2 s later)
            # The pool watches its idle connection and drops it when the
            # upstream closes it: the next request needs no retry.
            h.wait_until(lambda: tg.metrics().get(gauge, 0) == 0, 5,
                         what="the closed idle connection out of the pool")
        assert up.answered == 3 and up.connections == 3, (up.answered, up.connections)
    finally:
        up.close()


if __name__ == "__main__":
    h.main()
