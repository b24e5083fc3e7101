"""Sanity tests of the test support programs (mock_model, kafka_broker, kafka_consume) and
of the harness itself (processes, HTTP client, SSE reader, Redis client, stunnel)."""

import os
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

mock = None


def setup_module():
    global mock
    mock = h.MockModel().start()


def chat(conn_or_port, body, **hdrs):
    headers = {k.replace("_", "-"): str(v) for k, v in hdrs.items()}
    if isinstance(conn_or_port, h.Conn):
        return conn_or_port.request("POST", "/v1/chat/completions", headers, json=body)
    return h.request(conn_or_port, "POST", "/v1/chat/completions", headers, json=body)


def test_chat_json_usage_and_caps():
    r = chat(mock.port, h.chat_body("hello world!!", model="gpt-4o"))  # 13 chars -> 4 tokens
    assert r.status == 200, r
    assert r.headers.get("content-type") == "application/json"
    j = r.json()
    assert j["object"] == "chat.completion" and j["model"] == "gpt-4o"
    assert j["choices"][0]["message"]["content"] == "tok " * 30
    assert j["choices"][0]["finish_reason"] == "stop"
    assert j["usage"] == {"prompt_tokens": 4, "completion_tokens": 30, "total_tokens": 34}

    r = chat(mock.port, h.chat_body("abcd", max_tokens=5), x_mock_completion_tokens=50)
    j = r.json()
    assert j["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    assert j["choices"][0]["finish_reason"] == "length"
    r = chat(mock.port, h.chat_body("abcd", max_completion_tokens=7, max_tokens=100), x_mock_completion_tokens=9)
    assert r.json()["usage"]["completion_tokens"] == 7

    r = h.request(mock.port, "POST", "/v1/completions", {"x-mock-completion-tokens": "2"},
                  json={"model": "m", "prompt": ["abcdefgh", "ij"]})
    j = r.json()
    assert j["object"] == "text_completion" and j["choices"][0]["text"] == "tok tok "
    assert j["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_chat_stream_with_and_without_usage():
    with h.stream(mock.port, "POST", "/v1/chat/completions", headers={"x-mock-completion-tokens": "3"},
                  json=h.chat_body("12345678", stream=True, include_usage=True)) as s:
        assert s.response.status == 200
        assert s.response.headers["content-type"] == "text/event-stream"
        assert s.response.headers["transfer-encoding"] == "chunked"
        evs = list(s.events())
    assert [e.json()["choices"][0]["delta"]["content"] for e in evs[:3]] == ["tok "] * 3
    assert evs[3].json()["choices"][0]["finish_reason"] == "stop"
    usage = evs[4].json()
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3,
                                                         "total_tokens": 5}
    assert evs[5].done and len(evs) == 6

    r = chat(mock.port, h.chat_body("x", stream=True), x_mock_completion_tokens=2)
    evs = r.sse()
    assert len(evs) == 4 and evs[-1].done
    assert all("usage" not in e.json() for e in evs[:-1])


def test_stream_chunk_delay_spacing():
    with h.stream(mock.port, "POST", "/v1/chat/completions",
                  headers={"x-mock-completion-tokens": "3", "x-mock-chunk-delay-ms": "100"},
                  json=h.chat_body(stream=True)) as s:
        evs = list(s.events())
    gaps = [b.t - a.t for a, b in zip(evs, evs[1:])]
    assert len(evs) == 5 and all(g >= 0.08 for g in gaps), gaps


def test_status_delay_and_hang_knobs():
    r = chat(mock.port, h.chat_body(), x_mock_status=429)
    assert r.status == 429 and r.json()["error"]["type"] == "rate_limit_exceeded"
    r = chat(mock.port, h.chat_body(), x_mock_status=503)
    assert r.status == 503 and "message" in r.json()["error"]

    t0 = time.monotonic()
    r = chat(mock.port, h.chat_body(), x_mock_delay_ms=300)
    assert r.status == 200 and time.monotonic() - t0 >= 0.29

    c = h.Conn(mock.port, timeout=0.3)
    c.send_request("POST", "/v1/chat/completions", {"x-mock-hang": "1"}, json=h.chat_body())
    try:
        c.read_response()
        raise AssertionError("x-mock-hang replied")
    except TimeoutError:
        pass
    finally:
        c.close()


def test_reset_after_chunks():
    with h.stream(mock.port, "POST", "/v1/chat/completions",
                  headers={"x-mock-completion-tokens": "10", "x-mock-reset-after-chunks": "2"},
                  json=h.chat_body(stream=True)) as s:
        got = []
        try:
            for e in s.events():
                got.append(e)
            raise AssertionError("stream was not cut")
        except ConnectionError:
            pass
    assert len(got) == 2, got

    try:
        r = chat(mock.port, h.chat_body(), x_mock_reset_after_chunks=0)
        raise AssertionError("non-stream reset replied %r" % r)
    except ConnectionError:
        pass


def test_stats_count_connections_keepalive_and_cancels():
    mock.reset()
    with h.Conn(mock.port) as c:
        for _ in range(5):
            assert chat(c, h.chat_body()).status == 200
        st = mock.stats()
        assert st["requests"] == 5 and st["connections"] == 1 and st["open_connections"] == 1, st
    for _ in range(2):
        chat(mock.port, h.chat_body())
    h.wait_until(lambda: mock.stats()["open_connections"] == 0, 3)
    st = mock.stats()
    assert st == {"requests": 7, "connections": 3, "open_connections": 0, "cancelled": 0}, st

    # client gone during a delay, during a stream, and during a hang
    c = h.Conn(mock.port)
    c.send_request("POST", "/v1/chat/completions", {"x-mock-delay-ms": "3000"}, json=h.chat_body())
    time.sleep(0.1)
    c.close()
    h.wait_until(lambda: mock.stats()["cancelled"] == 1, 3)
    with h.stream(mock.port, "POST", "/v1/chat/completions",
                  headers={"x-mock-completion-tokens": "50", "x-mock-chunk-delay-ms": "50"},
                  json=h.chat_body(stream=True)) as s:
        next(iter(s.events()))
    h.wait_until(lambda: mock.stats()["cancelled"] == 2, 3)
    c = h.Conn(mock.port)
    c.send_request("GET", "/v1/models", {"x-mock-hang": "1"})
    time.sleep(0.1)
    c.close()
    h.wait_until(lambda: mock.stats()["cancelled"] == 3, 3)
    mock.reset()
    assert mock.stats()["requests"] == 0


def test_last_request_headers_body_query():
    body = b'{"model":"gpt-4o","messages":[]}'
    r = h.request(mock.port, "POST", "/v1/chat/completions?api-version=2024&x=1",
                  [("Authorization", "Bearer up-key"), ("X-Forwarded-For", "10.0.0.1"),
                   ("x-request-id", "req-42"), ("Via", "a"), ("Via", "b"),
                   ("Content-Type", "application/json")], body=body)
    assert r.status == 200
    last = mock.last()
    assert last["method"] == "POST" and last["path"] == "/v1/chat/completions"
    assert last["query"] == "api-version=2024&x=1"
    assert last["headers"]["authorization"] == "Bearer up-key"
    assert last["headers"]["x-forwarded-for"] == "10.0.0.1"
    assert last["headers"]["x-request-id"] == "req-42"
    assert last["headers"]["host"] == "127.0.0.1:%d" % mock.port
    assert last["headers"]["via"] == "a, b"
    assert ["X-Forwarded-For", "10.0.0.1"] in last["header_list"]
    assert last["body"] == body.decode() and last["body_length"] == len(body)
    h.request(mock.port, "GET", "/__stats")  # control requests do not replace it
    assert mock.last()["path"] == "/v1/chat/completions"


def test_pipelining_chunked_close_and_http10():
    with h.Conn(mock.port) as c:
        c.send(h.build_request("GET", "/v1/models", host="x") +
               h.build_request("POST", "/v1/embeddings", json={"model": "e", "input": ["abcd", "efgh"]}, host="x") +
               h.build_request("POST", "/v1/videos", json={"model": "sora-2", "seconds": 8, "size": "1280x720"},
                               host="x"))
        models = c.read_response().json()
        emb = c.read_response().json()
        video = c.read_response().json()
    assert models["object"] == "list" and len(models["data"]) >= 1
    assert len(emb["data"]) == 2 and emb["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert video["object"] == "video" and video["status"] == "queued" and video["id"].startswith("video_")
    assert video["seconds"] == "8" and video["size"] == "1280x720"
    v = h.request(mock.port, "POST", "/v1/videos", json={"prompt": "x"}).json()
    assert v["seconds"] == "4" and v["size"] == "720x1280"

    r = chat(mock.port, h.chat_body(), x_mock_chunked=1)
    assert r.headers.get("transfer-encoding") == "chunked" and r.json()["usage"]["total_tokens"] == 33

    with h.Conn(mock.port) as c:
        r = chat(c, h.chat_body(), x_mock_close=1)
        assert r.status == 200 and r.headers["connection"] == "close"
        assert c.closed_by_peer(2)

    with h.Conn(mock.port) as c:
        c.send(b"POST /v1/chat/completions HTTP/1.0\r\nx-mock-completion-tokens: 2\r\nContent-Length: 15\r\n\r\n"
               b'{"stream":true}')
        r = c.read_response()
        assert r.status == 200 and "transfer-encoding" not in r.headers
        assert len(r.sse()) == 4 and c.eof

    r = h.send_raw(mock.port, b"GARBAGE\r\n\r\n")
    assert r.status == 400
    assert h.request(mock.port, "GET", "/v1/nothing").status == 404
    assert h.request(mock.port, "GET", "/v1/chat/completions").status == 405


def test_concurrent_load():
    mock.reset()
    nconn, nreq, errors = 64, 40, []

    def worker():
        try:
            with h.Conn(mock.port) as c:
                for _ in range(nreq):
                    r = c.request("POST", "/v1/chat/completions", json={"model": "m", "messages": []})
                    if r.status != 200:
                        errors.append(r.status)
        except Exception as e:
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(nconn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    dt = time.monotonic() - t0
    assert not errors, errors[:5]
    st = mock.stats()
    assert st["requests"] == nconn * nreq and st["connections"] == nconn, st
    print("  %d requests on %d connections in %.2fs (%.0f req/s, client-bound)"
          % (nconn * nreq, nconn, dt, nconn * nreq / dt))


def test_kafka_produce_consume_down_up():
    kb = h.KafkaBroker(topic="t.usage", partitions=3).start()
    assert kb.bootstrap.startswith("127.0.0.1:")
    assert kb.produce([("acme", '{"n":1}'), ("acme", '{"n":2}'), ("beta", '{"n":3}')]) == 3
    got = kb.consume(n=3, timeout=5)
    assert sorted(got) == [("acme", '{"n":1}'), ("acme", '{"n":2}'), ("beta", '{"n":3}')], got

    kb.down()
    assert kb.produce([("acme", "lost")], timeout=1.0) == 0
    kb.up()
    assert kb.produce([("acme", '{"n":4}')], timeout=10) == 1
    got = h.consume(kb.bootstrap, "t.usage", n=4, timeout=5)
    assert len(got) == 4 and ("acme", '{"n":4}') in got
    t0 = time.monotonic()
    # Stops when nothing new arrives. The idle window also covers the consumer's
    # start (metadata, assignment), which can take over half a second under ASan.
    assert len(kb.consume(n=0, timeout=2.0)) == 4
    assert time.monotonic() - t0 < 15
    assert kb.stop() == 0


def test_redis_server_control():
    r = h.RedisServer().start()
    assert r.cli("SET", "k", "v") == "OK" and r.cli("GET", "k") == "v"
    assert r.cli("INCRBY", "n", 5) == 5 and r.cli("GET", "missing") is None
    try:
        r.cli("NOSUCHCOMMAND")
        raise AssertionError("no RedisError")
    except h.RedisError as e:
        assert "unknown command" in str(e).lower()
    with r.client() as c:
        assert c.pipeline([["SET", "a", 1], ["GET", "a"], ["LPUSH", "a", "x"]])[:2] == ["OK", "1"]

    r.sigstop()
    try:
        r.cli("PING", timeout=0.3)
        raise AssertionError("stopped redis answered")
    except (socket.timeout, TimeoutError):
        pass
    r.sigcont()
    assert r.cli("PING") == "PONG"

    port = r.port
    r.restart()
    assert r.port == port and r.cli("GET", "k") is None
    assert r.stop() == 0 and not h.port_open(port)


def test_stunnel_tls_front():
    tls = h.Stunnel(mock.port).start()
    ctx = ssl.create_default_context(cafile=tls.cert)
    with socket.create_connection(("127.0.0.1", tls.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(h.build_request("GET", "/v1/models", host="localhost", headers={"Connection": "close"}))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:100]
    assert b'"object":"list"' in data


def test_tollgate_start_failure_is_reported():
    tg = h.Tollgate("server: [this is not: valid\n")
    try:
        tg.start()
        raise AssertionError("tollgate started on a broken config")
    except h.StartError as e:
        assert "tollgate" in str(e)
    assert not tg.alive()


def test_strict_reader_and_raw_upstream():
    # The strict reader that test_framing judges by: what it reads, what it refuses.
    two = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b'3;n=v;q="a\\"b"\r\nabc\r\n0;e\r\nX-T: 1\r\n\r\nGET /b?c HTTP/1.0\r\n\r\n')
    a, b = h.read_messages(two)
    assert (a.method, a.target, a.body, a.framing, a.trailers) == ("POST", "/a", b"abc", "chunked", [("X-T", "1")])
    assert a.chunk_exts == [';n=v;q="a\\"b"', ";e"]
    assert (b.method, b.path, b.version, b.framing) == ("GET", "/b", "HTTP/1.0", "none")
    assert h.read_message(two[:40]) is None  # incomplete
    head = b"POST / HTTP/1.1\r\nHost: x\r\n"
    for bad in (b"GET  / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", b"GET / HTTP/1.1\r\nA b: 1\r\n\r\n", b"GET / HTTP/1.1\r\nA : 1\r\n\r\n",
                head + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nab",
                head + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                head + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                head + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
                head + b"Transfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n",
                head + b"Transfer-Encoding: chunked\r\n\r\n3;=v\r\nabc\r\n0\r\n\r\n",
                head + b'Transfer-Encoding: chunked\r\n\r\n3; "q"\r\nabc\r\n0\r\n\r\n',
                head + b'Transfer-Encoding: chunked\r\n\r\n3;a="open\r\nabc\r\n0\r\n\r\n',
                head + b"Content-Length: 5\r\n\r\nab"):
        try:
            h.read_messages(bad)
        except h.ProtocolError:
            continue
        raise AssertionError("the strict reader accepted %r" % bad)
    m, n = h.read_message(h.http_reply(200, b"hi", {"X": "1"}) + b"rest", "reply")
    assert (m.status, m.body, n) == (200, b"hi", len(m.raw))
    m, _ = h.read_message(b"HTTP/1.1 200 OK\r\n\r\nuntil close", "reply", eof=True)
    assert (m.framing, m.body) == ("close", b"until close")
    # The raw upstream: bytes recorded as received, scripted replies split in time.
    up = h.RawUpstream([h.http_reply(200, b"", {"Transfer-Encoding": "chunked"}), b"2\r\nok\r\n", 0.05, b"0\r\n\r\n"])
    with h.Conn(up.port) as c:
        sent = h.build_request("POST", "/x", body=b"12345") + h.build_request("GET", "/y")
        c.send(sent)
        assert c.read_response("POST").body == b"ok" and c.read_response().body == b"ok"
    reqs = up.wait_requests(2)
    assert up.received() == sent and [r.target for r in reqs] == ["/x", "/y"] and reqs[0].body == b"12345"
    up.reset(h.http_reply(204), close=True)
    with h.Conn(up.port) as c:
        assert c.request("GET", "/z").status == 204
        assert c.closed_by_peer(2)
    assert [len(cn.requests) for cn in up.conns] == [1]
    up.reset()
    with h.Conn(up.port) as c:
        c.send(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n")
        assert c.closed_by_peer(2)
    assert up.conns[0].error and not up.requests


def test_config_rendering():
    cfg = h.tollgate_config("http://127.0.0.1:1", limiter={"backend": "redis", "redis": {"port": 7}})
    assert cfg["limiter"]["redis"]["port"] == 7 and cfg["upstreams"][0]["url"] == "http://127.0.0.1:1"
    y = h.to_yaml({"server": {"listen": "127.0.0.1:1", "workers": 1},
                   "tenants": [{"name": "a", "keys": ["k"], "limits": [{"rate": 5, "per": "minute"}]}],
                   "flag": True, "empty": {}})
    assert y == ('server:\n  listen: "127.0.0.1:1"\n  workers: 1\ntenants:\n  - name: "a"\n    keys:\n'
                 '      - "k"\n    limits:\n      - rate: 5\n        per: "minute"\nflag: true\nempty: {}'), y
    tg = h.Tollgate(cfg)
    assert "listen: \"127.0.0.1:%d\"" % tg.port in tg.config_text
    assert "listen: \"127.0.0.1:%d\"" % tg.admin_port in tg.config_text
    tg = h.Tollgate("server:\n  listen: \"127.0.0.1:@PORT@\"\nx: @UP@\n", subst={"UP": "u"})
    assert tg.config_text == "server:\n  listen: \"127.0.0.1:%d\"\nx: u\n" % tg.port


def test_mock_model_exits_cleanly():
    m = h.MockModel().start()
    with h.Conn(m.port) as c:
        c.send_request("POST", "/v1/chat/completions", {"x-mock-delay-ms": "5000"}, json=h.chat_body())
        time.sleep(0.1)
        t0 = time.monotonic()
        assert m.stop() == 0
        assert time.monotonic() - t0 < 3


if __name__ == "__main__":
    h.main()
