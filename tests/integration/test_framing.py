"""HTTP/1.1 framing hardening (issue 13): raw bytes sent to the real daemon in front of a
RawUpstream that records exactly what it receives. Each refused request must get a clean
4xx/5xx, a closed connection and nothing forwarded; each accepted one must reach the
upstream framed exactly as a strict reader reads the client's bytes."""
import json
import os
import re
import socket
import threading
import time

import harness as h
from harness import TEST_KEY, auth, chat_body

KEY = TEST_KEY.encode()
HEADER_TIMEOUT_MS = 20000  # long: "at once" answers must come well before it
PROMPT = 1.0               # what "at once" means here, in seconds

up = None   # the RawUpstream behind the shared daemon
tg = None   # the shared daemon


def setup_module():
    global up, tg
    up = h.RawUpstream()
    cfg = h.tollgate_config(up.url, server={"workers": 1, "header_timeout_ms": HEADER_TIMEOUT_MS,
                                            "idle_timeout_ms": 60000},
                            upstreams=[{"name": "mock", "url": up.url, "response_timeout_ms": 3000}])
    tg = h.Tollgate(cfg).start()


def usage_records():
    return h.read_jsonl(os.path.join(h.session_dir(), "var", "usage.jsonl"))


def record_of(request_id, timeout=5.0):
    """The usage record of the request with this x-request-id."""
    return h.wait_until(lambda: next((r for r in usage_records() if r.get("id") == request_id), None),
                        timeout, what="the usage record of %s" % request_id)


def req(method, target, headers=(), body=None, version="HTTP/1.1", host=b"x", key=True):
    """Raw request bytes: the request line as given, Host and Authorization (unless
    host=None / key=False), headers (raw lines as bytes, or (name, value) pairs), then
    body (raw bytes: frame it yourself with the headers, or give Content-Length)."""
    lines = [b"%s %s %s" % (_b(method), _b(target), _b(version))]
    if host is not None:
        lines.append(b"Host: " + _b(host))
    if key:
        lines.append(b"Authorization: Bearer " + KEY)
    for hd in headers:
        lines.append(_b(hd) if not isinstance(hd, tuple) else _b(hd[0]) + b": " + _b(hd[1]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _b(x):
    return x if isinstance(x, bytes) else str(x).encode("latin-1")


def cl_req(method, target, body=b"", headers=(), **kw):
    """req() with a Content-Length body."""
    return req(method, target, list(headers) + [("Content-Length", len(body))], body, **kw)


CHAT = json.dumps(chat_body("hello there")).encode()


def exchange(raw, timeout=5.0, method="GET", close_wait=1.0):
    """Sends raw on a new connection and reads one response. Returns (Response, seconds
    until the head, closed after it: waited for after an error only; None after a
    success)."""
    with h.Conn(tg.port, timeout=timeout) as c:
        t0 = time.monotonic()
        c.send(raw)
        r = c.read_response(method)
        return r, r.t_head - t0, (c.closed_by_peer(close_wait) if r.status >= 400 else None)


def short(raw):
    """raw for a message: its start and its end."""
    return repr(raw) if len(raw) <= 200 else "%r...%r" % (raw[:100], raw[-100:])


def refused(raw, status, prompt=PROMPT, **kw):
    """Asserts raw is answered with `status` (an OpenAI-shaped error) within `prompt`
    seconds, the connection closed after it, and nothing reached the upstream."""
    up.reset()
    what = short(raw)
    r, took, closed = exchange(raw, **kw)
    assert r.status == status, "%s: got %d %s, wanted %d" % (what, r.status, r.text[:200], status)
    assert took < prompt, "%s: answered after %.2fs" % (what, took)
    assert closed, "%s: the connection stayed open after %d" % (what, status)
    assert "error" in r.json(), r.text
    up.assert_nothing_received()
    return r


def accepted(raw, n=1, method="POST", reply=None):
    """Sends raw, expects a 2xx; returns (Response, the requests the upstream read)."""
    up.reset(reply)
    with h.Conn(tg.port, timeout=5) as c:
        c.send(raw)
        r = c.read_response(method)
    assert 200 <= r.status < 300, "%s: got %d %s" % (short(raw), r.status, r.text[:300])
    got = up.wait_requests(n)
    time.sleep(0.05)
    assert len(up.requests) == n, up.requests
    assert all(cn.error is None for cn in up.conns), up.conns
    return r, got


# ---------------------------------------------------------------------------
# the route-cost bypass: the path is normalised before routing, and forwarded so

def test_dot_segments_route_on_the_normalised_path():
    for i, target in enumerate((b"/v1/models/../chat/completions", b"/v1/models/%2e%2e/chat/completions",
                                b"/v1/models/%2E%2E/chat/completions", b"/v1/./models/.%2e/chat//completions")):
        up.reset()
        rid = "dots-%d-%d" % (os.getpid(), i)
        raw = cl_req("POST", target, CHAT, [("Content-Type", "application/json"), ("x-request-id", rid)])
        r, _, closed = exchange(raw, method="POST")
        if r.status == 400:
            assert closed
            up.assert_nothing_received()
            continue
        assert r.status == 200, (target, r.status, r.text)
        [m] = up.wait_requests(1)
        # Forwarded in normal form: the model server sees the route it was judged on.
        assert (m.method, m.target) == ("POST", "/v1/chat/completions"), (target, m.target)
        assert json.loads(m.body)["messages"] == json.loads(CHAT)["messages"]
        rec = record_of(rid)
        assert rec["route"] == "/v1/chat/completions", rec
        # Charged as a chat completion (tokens), not as a models listing.
        assert rec["cost"]["actual"].get("tokens", 0) > 0, (target, rec)


def test_encoded_separators_and_bytes_outside_rfc3986_are_400():
    for target in (b"/v1/chat%2Fcompletions", b"/v1/chat%2fcompletions", b"/v1/models/..%2F..%2Fchat/completions",
                   b"/v1/chat%5Ccompletions", b"/v1/chat%5ccompletions", b"/v1/models\\..\\chat/completions",
                   b"/v1/chat/completions%00", b"/v1/chat/completions%zz", b"/v1/chat/compl\xc3\xa9tions",
                   b"/v1/chat/<completions>", b"/v1/chat/completions\"", b"/v1/chat/{x}", b"/v1/chat/a|b",
                   b"/v1/chat/a^b", b"/v1/chat/a`b", b"/v1/chat/completions?q=\xff", b"/v1/chat/completions?a|b"):
        refused(cl_req("POST", target, CHAT, [("Content-Type", "application/json")]), 400)


# ---------------------------------------------------------------------------
# header fields

def test_trailer_fields_never_reach_the_upstream():
    body = h.chunked(CHAT[:10], CHAT[10:], trailers=b"X-Forwarded-For: 6.6.6.6\r\nX-Trailer-Only: 1\r\n")
    raw = req("POST", "/v1/chat/completions", [("Content-Type", "application/json"),
                                               ("Transfer-Encoding", "chunked")], body)
    r, [m] = accepted(raw)
    assert m.framing == "length" and m.trailers == []
    assert json.loads(m.body)["messages"] == json.loads(CHAT)["messages"]
    names = m.header_names()
    assert "x-trailer-only" not in names and "transfer-encoding" not in names and "trailer" not in names
    assert m.headers.get_all("x-forwarded-for") == ["127.0.0.1"], m.headers
    assert b"6.6.6.6" not in up.received()


def test_obs_fold_is_400():
    for fold in (b"X-Fold: a\r\n b", b"X-Fold: a\r\n\tb", b"X-Fold: a\r\n \r\nX-Other: c"):
        refused(req("GET", "/v1/models", [fold]), 400)


def test_whitespace_in_or_before_field_names_is_400():
    refused(req("POST", "/v1/chat/completions", [b"Content-Length : %d" % len(CHAT)], CHAT), 400)
    refused(req("POST", "/v1/chat/completions", [b"Content-Length\t: %d" % len(CHAT)], CHAT), 400)
    refused(req("GET", "/v1/models", [b"X Custom: 1"]), 400)
    refused(req("GET", "/v1/models", [b"X-Custom : 1"]), 400)
    # The first header line starting with whitespace.
    refused(b"GET /v1/models HTTP/1.1\r\n Host: x\r\nAuthorization: Bearer " + KEY + b"\r\n\r\n", 400)
    refused(b"GET /v1/models HTTP/1.1\r\n\tX-A: 1\r\nHost: x\r\nAuthorization: Bearer " + KEY + b"\r\n\r\n", 400)


# ---------------------------------------------------------------------------
# bodies: chunked framing and codings

def chunked_req(body, headers=()):
    return req("POST", "/v1/chat/completions", [("Content-Type", "application/json"),
                                                ("Transfer-Encoding", "chunked")] + list(headers), body)


def test_chunk_data_not_followed_by_crlf_is_400():
    half = len(CHAT) // 2
    a, b = CHAT[:half], CHAT[half:]
    refused(chunked_req(b"%x\r\n%sXX%x\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)), 400)
    refused(chunked_req(b"%x\r\n%s%x\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)), 400)
    refused(chunked_req(b"%x\r\n%s\n%x\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)), 400)
    refused(chunked_req(b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT) - 1, CHAT)), 400)  # one byte too many


def test_transfer_codings_other_than_chunked():
    body = h.chunked(CHAT)
    refused(req("POST", "/v1/chat/completions", [("Transfer-Encoding", "gzip, chunked")], body), 501)
    refused(req("POST", "/v1/chat/completions", [("Transfer-Encoding", "gzip"),
                                                 ("Transfer-Encoding", "chunked")], body), 501)
    # chunked not last, or twice: the length cannot be known at all (RFC 9112 6.3).
    refused(req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked, gzip")], body), 400)
    refused(req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked, chunked")], body), 400)


def test_chunk_extensions_valid_ones_are_accepted():
    half = len(CHAT) // 2
    a, b = CHAT[:half], CHAT[half:]
    for ext in (b";name=value", b';name="quoted"', b';n="q \\" \\\\ x"', b";a", b";a=1;b=2;c"):
        raw = chunked_req(b"%x%s\r\n%s\r\n%x%s\r\n%s\r\n0%s\r\n\r\n" % (len(a), ext, a, len(b), ext, b, ext))
        r, [m] = accepted(raw)
        assert m.body == CHAT, (ext, m.body[:100])
        assert m.framing == "length" and m.chunk_exts == []
        assert b";" not in up.received().split(b"\r\n\r\n", 1)[0].split(b"\r\n", 1)[0]


def test_chunk_extensions_with_bws_are_accepted():
    # RFC 9112 7.1.1: BWS around ';' and '=' is part of the grammar (a recipient parses
    # and drops it).
    r, [m] = accepted(chunked_req(b"%x ; a = b\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)))
    assert m.body == CHAT


def test_chunk_extensions_invalid_ones_are_400():
    wrong = []
    for ext in (b";", b";=v", b'; "quoted"', b';a="open', b";a=", b";a b", b';a="x"y', b";a=\x01"):
        for where, body in (("data chunk", b"%x%s\r\n%s\r\n0\r\n\r\n" % (len(CHAT), ext, CHAT)),
                            ("last chunk", b"%x\r\n%s\r\n0%s\r\n\r\n" % (len(CHAT), CHAT, ext))):
            try:
                refused(chunked_req(body), 400)
            except AssertionError as e:
                m = re.search(r"got \d+|answered after \S+|stayed open|forwarded upstream", str(e))
                wrong.append("%r on the %s: %s" % (ext, where, m.group(0) if m else str(e)[-80:]))
    assert not wrong, "invalid chunk extensions not refused:\n" + "\n".join(wrong)


# ---------------------------------------------------------------------------
# the request line and the head's size

def test_too_many_headers_is_431_at_once():
    # 10,000 tiny header lines (60 KB, under the 64 KiB head limit), the head not ended:
    # a reader that only counts lines once the head is whole would wait for the header
    # timeout (20 s here).
    many = b"a: b\r\n" * 10000
    assert len(many) < 64 * 1024
    refused(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + many, 431)
    refused(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431)
    # 128 is the bound: 127 headers besides Host pass.
    r, [m] = accepted(req("GET", "/v1/models", [b"a%d: b" % i for i in range(126)]), method="GET")


def test_long_request_line_is_414_at_once():
    line = b"GET /v1/models?q=" + b"a" * (9 * 1024)
    refused(line, 414)                                   # the line not even ended
    refused(line + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)


def test_request_line_without_version_is_400_at_once():
    # The HTTP/0.9 form: one line, no head to wait for.
    refused(b"GET /v1/models\r\n", 400)


def test_request_line_without_version_then_blank_line_is_400():
    refused(b"GET /v1/models\r\n\r\n", 400)
    refused(b"GET /v1/models\r\nHost: x\r\n\r\n", 400)


def test_unsupported_versions_are_505():
    for v in (b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0"):
        refused(req("GET", "/v1/models", version=v), 505)


def test_malformed_request_lines_are_400():
    for line in (b"GET  /v1/models HTTP/1.1", b"GET /v1/models  HTTP/1.1", b"GET\t/v1/models HTTP/1.1",
                 b"GET /v1/models\tHTTP/1.1", b" GET /v1/models HTTP/1.1", b"GET /v1/models HTTP/1.1 ",
                 b"G(T /v1/models HTTP/1.1", b"GET /v1/models http/1.1", b"GET /v1/models HTTP/1"):
        refused(line + b"\r\nHost: x\r\nAuthorization: Bearer " + KEY + b"\r\n\r\n", 400)


def test_host_header_count():
    refused(req("GET", "/v1/models", host=None), 400)
    refused(req("GET", "/v1/models", [("Host", "y")]), 400)
    refused(req("GET", "/v1/models", [("Host", "x")]), 400)  # even the same value twice
    # HTTP/1.0 needs none.
    r, [m] = accepted(req("GET", "/v1/models", version="HTTP/1.0", host=None), method="GET")
    assert m.version == "HTTP/1.1"


# A path or query refused on a bodyless request (GET, DELETE) closes the connection too,
# as every refused request does.
def test_bad_paths_on_bodyless_requests_close_the_connection():
    wrong = []
    for method, target in (("GET", b"/v1/chat%2Fcompletions"), ("GET", b"/v1/models?a|b"),
                           ("DELETE", b"/v1/videos%5Cx"), ("GET", b"/v1/models#frag")):
        try:
            refused(req(method, target), 400, close_wait=0.3)
        except AssertionError as e:
            why = re.search(r"got \d+|answered after \S+|stayed open|forwarded upstream", str(e))
            wrong.append("%s %s: %s" % (method, target.decode(), why.group(0) if why else str(e)[-80:]))
    assert not wrong, "\n".join(wrong)


# A Host value that is not uri-host[:port] is 400 (RFC 9112 3.2).
def test_invalid_host_value_is_400():
    refused(req("GET", "/v1/models", host=b"a b"), 400)
    refused(req("GET", "/v1/models", host=b"x/y"), 400)


def test_nothing_after_connection_close_is_read():
    up.reset()
    got = read_all(req("GET", "/v1/models", [("Connection", "close")]) + req("GET", "/v1/models"))
    assert got.count(b"HTTP/1.1 ") == 1, got
    time.sleep(0.05)
    assert len(up.requests) == 1


def test_absolute_form_target_is_routed_on_its_path():
    raw = cl_req("POST", "http://elsewhere.example/v1/chat/completions?x=1", CHAT,
                 [("Content-Type", "application/json")])
    r, [m] = accepted(raw)
    assert m.target == "/v1/chat/completions?x=1", m.target
    assert m.headers.get_all("host") == ["127.0.0.1:%d" % up.port]
    assert m.body == CHAT
    # The path of an absolute-form target is normalised like any other.
    r, [m] = accepted(cl_req("POST", "http://h/v1/models/../chat/completions", CHAT,
                             [("Content-Type", "application/json")]))
    assert m.target == "/v1/chat/completions", m.target


# ---------------------------------------------------------------------------
# HTTP/1.0 clients get no chunks

def read_all(raw, timeout=5.0):
    """Sends raw on a new connection and returns every byte until the daemon closes it
    (raises TimeoutError if it does not within timeout seconds)."""
    s = socket.create_connection((h.LOCALHOST, tg.port), timeout=timeout)
    try:
        s.sendall(raw)
        out = b""
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise TimeoutError("the connection stayed open; got %r" % out[-300:])
            except ConnectionResetError:
                return out + b"<RESET>"
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def sse_events(n):
    events = []
    for i in range(n):
        events.append(b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
                      b'"delta":{"content":"w%d "},"finish_reason":null}]}\n\n' % i)
    events.append(b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
                  b'"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n, n + 3))
    events.append(b"data: [DONE]\n\n")
    return events


def test_http10_client_gets_sse_without_chunks():
    events = sse_events(5)
    head = h.http_reply(200, b"", {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
    # The upstream sends its chunks apart in time: the reply is streamed, not one piece.
    pieces = [head]
    for e in events:
        pieces += [b"%x\r\n%s\r\n" % (len(e), e), 0.02]
    pieces.append(b"0\r\n\r\n")
    up.reset(pieces)
    body = json.dumps(chat_body(stream=True, include_usage=True)).encode()
    got = read_all(cl_req("POST", "/v1/chat/completions", body, [("Content-Type", "application/json")],
                          version="HTTP/1.0", host=None))
    m, _ = h.read_message(got, "reply", eof=True)
    assert m.status == 200, got[:300]
    assert m.framing == "close", m.headers
    assert "transfer-encoding" not in m.header_names() and "content-length" not in m.header_names()
    assert m.body == b"".join(events), m.body
    [fwd] = up.requests
    assert json.loads(fwd.body)["stream"] is True


def test_http10_client_gets_chunked_reply_dechunked():
    parts = [b'{"object":"list",', b'"data":[{"id":"gpt-4o","object":"model"}', b"]}"]
    up.reset([h.http_reply(200, b"", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
              b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts[:2]), 0.05,
              b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(parts[2]), parts[2])])
    got = read_all(req("GET", "/v1/models", version="HTTP/1.0"))
    m, _ = h.read_message(got, "reply", eof=True)
    assert m.status == 200 and m.framing == "close", got[:300]
    assert "transfer-encoding" not in m.header_names()
    assert m.body == b"".join(parts), m.body
    assert b"X-Trailer" not in got
    # An HTTP/1.1 client of the same reply gets it chunked, the same bytes de-chunked.
    up.reset([h.http_reply(200, b"", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
              h.chunked(*parts)])
    r, _, _ = exchange(req("GET", "/v1/models"))
    assert r.status == 200 and r.body == b"".join(parts)


# ---------------------------------------------------------------------------
# the upstream's replies are read as strictly

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
BODY5 = b'{"a":1}'

BAD_REPLIES = [
    ("two Content-Length", OK_HEAD + b"Content-Length: 7\r\nContent-Length: 7\r\n\r\n" + BODY5),
    ("two different Content-Length", OK_HEAD + b"Content-Length: 7\r\nContent-Length: 3\r\n\r\n" + BODY5),
    ("Content-Length list", OK_HEAD + b"Content-Length: 7, 7\r\n\r\n" + BODY5),
    ("CL and TE", OK_HEAD + b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n" + BODY5 + b"\r\n0\r\n\r\n"),
    ("obs-fold", OK_HEAD + b"X-Fold: a\r\n b\r\nContent-Length: 7\r\n\r\n" + BODY5),
    ("obs-fold tab", OK_HEAD + b"X-Fold: a\r\n\tb\r\nContent-Length: 7\r\n\r\n" + BODY5),
    ("bare LF in a field", OK_HEAD + b"X-A: 1\nContent-Length: 7\r\n\r\n" + BODY5),
    ("bare LF status line", b"HTTP/1.1 200 OK\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n" + BODY5),
    ("bare LF head end", OK_HEAD + b"Content-Length: 7\r\n\n" + BODY5),
    ("space before colon", OK_HEAD + b"Content-Length : 7\r\n\r\n" + BODY5),
    ("gzip coding", OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n7\r\n" + BODY5 + b"\r\n0\r\n\r\n"),
    ("101 not asked for", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"),
    ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
    ("HTTP/2.0 status line", b"HTTP/2.0 200 OK\r\nContent-Length: 7\r\n\r\n" + BODY5),
]

# Broken after a good head: the head may already be on its way to the client, so a
# cut connection (no last chunk) is as right as a 502. The bytes from the error on
# must not reach the client.
BAD_BODIES = [
    ("bad chunk size", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"zz\r\n" + BODY5 + b"\r\n0\r\n\r\n"),
    ("chunk without CRLF", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n7\r\n" + BODY5, b"XX0\r\n\r\n"),
    ("folded trailer", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n7\r\n" + BODY5 + b"\r\n0\r\n",
     b"X-T: a\r\n b\r\n\r\n"),
]


def upstream_says(reply, raw=None, close=True):
    """The client's bytes (read until close) when the upstream answers with `reply`."""
    up.reset(reply, close=close)
    return read_all(raw or req("GET", "/v1/models", [("Connection", "close")]))


def test_bad_upstream_replies_are_502():
    wrong = []
    for what, reply in BAD_REPLIES:
        got = upstream_says([reply, "close"])
        try:
            m, _ = h.read_message(got, "reply", eof=True)
            ok = m.status == 502 and "error" in json.loads(m.body)
        except (h.ProtocolError, ValueError):
            ok = False
        if not ok:
            wrong.append("%s: client got %r" % (what, got[:160]))
        if b'{"a":1}' in got or b"x-fold" in got.lower():
            wrong.append("%s: the reply's bytes were passed on" % what)
    assert not wrong, "\n".join(wrong)


def test_bad_upstream_reply_bodies_are_502_or_cut():
    wrong = []
    for what, good, bad in BAD_BODIES:
        for split in (False, True):
            got = upstream_says([good + bad, "close"] if not split else [good, 0.1, bad, "close"])
            try:
                m, _ = h.read_message(got, "reply", eof=True)
                if m.status != 502:
                    wrong.append("%s%s: client got a complete %d reply: %r"
                                 % (what, " (split)" if split else "", m.status, got[-200:]))
            except h.ProtocolError as e:
                if not str(e).startswith("cut"):  # cut: the client can tell the reply is incomplete
                    wrong.append("%s%s: client got a reply a strict reader refuses (%s): %r"
                                 % (what, " (split)" if split else "", e, got[-200:]))
            if bad[:6] in got:
                wrong.append("%s%s: the bad bytes reached the client: %r" % (what, " (split)" if split else "", got[-200:]))
    assert not wrong, "\n".join(wrong)


def test_bad_upstream_reply_chunk_extensions_are_502_or_cut():
    wrong = []
    for ext in (b";", b";=zz", b'; "q"', b';a="open'):
        for split in (False, True):
            good = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
            bad = b"7%s\r\n" % ext + BODY5 + b"\r\n0\r\n\r\n"
            got = upstream_says([good + bad, "close"] if not split else [good, 0.1, bad, "close"])
            try:
                m, _ = h.read_message(got, "reply", eof=True)
                if m.status != 502:
                    wrong.append("%r: client got a complete %d reply" % (ext, m.status))
            except h.ProtocolError as e:
                if not str(e).startswith("cut"):
                    wrong.append("%r%s: passed on to the client (%s)" % (ext, " (split)" if split else "", e))
    assert not wrong, "\n".join(wrong)


def test_upstream_interim_head_and_extra_bytes():
    # A 100 Continue before the reply is not passed on as the reply.
    up.reset([b"HTTP/1.1 100 Continue\r\n\r\n", h.http_reply(200, b'{"ok":1}', {"Content-Type": "application/json"})])
    r, _, _ = exchange(req("GET", "/v1/models"))
    assert (r.status, r.body) == (200, b'{"ok":1}')
    # A reply to HEAD has a length but no body; the connection goes on.
    up.reset(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with h.Conn(tg.port, timeout=5) as c:
        c.send(req("HEAD", "/v1/models"))
        r = c.read_response("HEAD")
        assert r.status == 200 and r.headers["content-length"] == "100"
        up.reset()
        assert c.request("GET", "/v1/models", headers=auth()).status == 200
    # Bytes after a complete reply on a keep-alive upstream connection (a second,
    # unasked-for reply) are never taken as the answer to the next request.
    evil = h.http_reply(200, b'{"evil":true}', {"Content-Type": "application/json"})
    first = h.http_reply(200, b'{"first":1}', {"Content-Type": "application/json"})
    for script in ([first + evil], [first, 0.05, evil]):
        up.reset(script)
        with h.Conn(tg.port, timeout=5) as c:
            assert c.request("GET", "/v1/models", headers=auth()).body == b'{"first":1}'
        time.sleep(0.15)
        up.script(h.http_reply(200, b'{"second":1}', {"Content-Type": "application/json"}))
        for _ in range(2):
            with h.Conn(tg.port, timeout=5) as c:
                r = c.request("GET", "/v1/models", headers=auth())
            assert r.body == b'{"second":1}', r.body


def test_upstream_reply_cut_short():
    # Cut before its head ends, or inside a body whose length or chunks say more is
    # coming: a 502 while the client has nothing yet, else a cut connection without the
    # end of the body; never a complete reply framed otherwise.
    cases = [
        ("inside the head", OK_HEAD + b"Content-Len"),
        ("Content-Length body", OK_HEAD + b"Content-Length: 100\r\n\r\n" + BODY5),
        ("chunked, in a chunk", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n20\r\n" + BODY5),
        ("chunked, before the last chunk", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n7\r\n" + BODY5 + b"\r\n"),
        ("chunked, in the trailer", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n7\r\n" + BODY5 + b"\r\n0\r\nX-T: 1"),
    ]
    wrong = []
    for route, raw in (("models", req("GET", "/v1/models", [("Connection", "close")])),
                       ("chat", cl_req("POST", "/v1/chat/completions", CHAT,
                                       [("Content-Type", "application/json"), ("Connection", "close")]))):
        for what, reply in cases:
            got = upstream_says([reply, 0.05, "close"], raw)
            try:
                m, _ = h.read_message(got, "reply", eof=True)
            except h.ProtocolError as e:
                if not str(e).startswith("cut"):
                    wrong.append("%s, %s: client got a reply a strict reader refuses (%s)" % (route, what, e))
                continue  # cut: the client can tell the reply is incomplete
            if m.status != 502:
                wrong.append("%s, %s: client got a complete %d reply: %r" % (route, what, m.status, got[:300]))
    assert not wrong, "\n".join(wrong)


def test_upstream_sse_cut_after_head_cuts_the_client():
    events = sse_events(3)
    head = h.http_reply(200, b"", {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events[:2])
    got = upstream_says([head, body, 0.1, b"40\r\ndata: {", "close"],
                        cl_req("POST", "/v1/chat/completions", json.dumps(chat_body(stream=True)).encode(),
                               [("Content-Type", "application/json")]))
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    try:
        m, _ = h.read_message(got, "reply", eof=True)
        raise AssertionError("a cut stream reached the client as a complete reply: %r" % got[-200:])
    except h.ProtocolError:
        pass
    assert b"\r\n0\r\n\r\n" not in got


def test_refused_requests_are_recorded_as_rejected():
    mock = h.RawUpstream()
    t = h.Tollgate(h.tollgate_config(mock.url)).start()
    cases = [(req("GET", "/v1/models", [b"X-Fold: a", b" b"]), 400),
             (b"GET /v1/models?q=" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
             (b"GET /v1/models HTTP/1.1\r\n" + b"a: b\r\n" * 200 + b"\r\n", 431),
             (req("POST", "/v1/chat/completions", [("Transfer-Encoding", "gzip, chunked")], h.chunked(CHAT)), 501),
             (req("GET", "/v1/models", version="HTTP/2.0"), 505),
             (req("GET", "/v1/chat%2Fcompletions"), 400)]
    for raw, status in cases:
        with h.Conn(t.port, timeout=5) as c:
            c.send(raw)
            assert c.read_response().status == status
    h.wait_until(lambda: len(h.read_jsonl(t.usage_path)) >= len(cases), 5, what="the records")
    recs = h.read_jsonl(t.usage_path)
    assert [(r["status"], r["decision"]) for r in recs] == [(st, "rejected") for _, st in cases], recs
    assert mock.received() == b""


# ---------------------------------------------------------------------------
# lengths, bytes and what follows a refused request

def test_length_smuggling_and_bad_bytes_are_400():
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY + b"\r\n\r\n"
    body = h.chunked(CHAT)
    for raw in (
            req("POST", "/v1/chat/completions", [("Content-Length", len(body)), ("Transfer-Encoding", "chunked")], body),
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked"), ("Content-Length", "5")], body),
            req("POST", "/v1/chat/completions", [("Content-Length", len(CHAT)), ("Content-Length", len(CHAT))], CHAT),
            req("POST", "/v1/chat/completions", [("Content-Length", "%d, %d" % (len(CHAT), len(CHAT)))], CHAT),
            req("POST", "/v1/chat/completions", [("Content-Length", "+%d" % len(CHAT))], CHAT),
            req("POST", "/v1/chat/completions", [("Content-Length", "0x10")], CHAT),
            req("POST", "/v1/chat/completions", [("Content-Length", "-1")], CHAT),
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")], b"-5\r\nhello\r\n0\r\n\r\n"),
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")], b"0x5\r\nhello\r\n0\r\n\r\n"),
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")], b"5 \r\nhello\r\n0\r\n\r\n"),
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")],
                b"1" + b"0" * 17 + b"\r\nhello\r\n0\r\n\r\n"),
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")],
                b"%x\r\n%s\r\n0\r\nX-T: a\r\n b\r\n\r\n" % (len(CHAT), CHAT)),      # folded trailer
            req("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")],
                b"%x\r\n%s\r\n0\r\nX-T : a\r\n\r\n" % (len(CHAT), CHAT)),          # bad trailer name
            req("GET", "/v1/models", [b"X-A: a\x00b"]),
            req("GET", "/v1/models", [b"X-A: a\rb"]),
            req("GET", "/v1/models", [b"X-A: a\x7fb"]),
            b"GET /v1/models HTTP/1.1\nHost: x\r\nAuthorization: Bearer " + KEY + b"\r\n\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost: x\nAuthorization: Bearer " + KEY + b"\r\n\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY + b"\r\n\n",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY + b"\n\n",
            # a request smuggled after a refused one is never read
            req("GET", "/v1/models", [b"X-Fold: a", b" b"]) + smuggled,
            req("POST", "/v1/models", [("Content-Length", "0"), ("Transfer-Encoding", "chunked")],
                b"0\r\n\r\n" + smuggled),
    ):
        refused(raw, 400)


def test_connect_and_trace_are_405():
    refused(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 405)
    refused(req("TRACE", "/v1/models"), 405)


def test_hop_by_hop_and_connection_listed_headers_are_dropped():
    raw = cl_req("POST", "/v1/chat/completions", CHAT, [
        ("Content-Type", "application/json"), ("Connection", "keep-alive, X-Secret, x-other"),
        ("X-Secret", "s"), ("X-Other", "o"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
        ("Upgrade", "h2c"), ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic eA=="),
        ("X-Kept", "k"), ("Trailer", "X-T")])
    r, [m] = accepted(raw)
    names = m.header_names()
    for gone in ("connection", "x-secret", "x-other", "keep-alive", "te", "upgrade", "proxy-connection",
                 "proxy-authorization", "trailer", "authorization"):
        assert gone not in names, (gone, m.headers)
    assert m.headers.get("x-kept") == "k" and m.headers.get("content-type") == "application/json"


# ---------------------------------------------------------------------------
# timeouts

def test_header_timeout_runs_from_the_accept():
    mock = h.RawUpstream()
    t = h.Tollgate(h.tollgate_config(mock.url, server={"workers": 1, "header_timeout_ms": 500,
                                                       "idle_timeout_ms": 60000})).start()

    def closed_after(sock, limit=5.0):
        t0 = time.monotonic()
        sock.settimeout(limit)
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        return time.monotonic() - t0, got

    # Sends nothing at all: closed at the header timeout, not the idle timeout.
    s = socket.create_connection((h.LOCALHOST, t.port))
    took, got = closed_after(s)
    s.close()
    assert 0.35 < took < 2.0, took
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got
    # A head that never ends: 408 at the header timeout, counted from the accept.
    s = socket.create_connection((h.LOCALHOST, t.port))
    t0 = time.monotonic()
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    _, got = closed_after(s)
    s.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert 0.35 < time.monotonic() - t0 < 2.0
    # A head that dribbles in a byte at a time does not restart the timer.
    s = socket.create_connection((h.LOCALHOST, t.port))
    t0 = time.monotonic()
    try:
        for b in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            s.sendall(bytes([b]))
            time.sleep(0.05)
            if time.monotonic() - t0 > 3:
                break
    except OSError:
        pass
    _, got = closed_after(s)
    s.close()
    assert time.monotonic() - t0 < 2.0, "a dribbling head kept the connection %.1fs" % (time.monotonic() - t0)
    # Between requests the idle timeout governs: a served connection waits longer.
    with h.Conn(t.port, timeout=5) as c:
        assert c.request("GET", "/v1/models", headers=auth()).status == 200
        assert not c.closed_by_peer(1.0), "a keep-alive connection was closed at the header timeout"
        assert c.request("GET", "/v1/models", headers=auth()).status == 200
    assert not [cn for cn in mock.conns if cn.error]


# ---------------------------------------------------------------------------
# the video route: bodyless requests cost one request and are forwarded

def test_video_poll_download_list_and_delete():
    big = os.urandom(4 << 20)
    release = threading.Event()
    job = b'{"id":"video_123","object":"video","status":"completed","seconds":"8"}'

    def reply(m):
        if m.path.endswith("/content"):
            head = h.http_reply(200, b"", {"Content-Type": "video/mp4", "Content-Length": len(big)})
            # The first MiB, then the rest only once the client has seen the first: a
            # gateway that buffered the whole download would never let it through.
            return [head, big[:1 << 20], lambda: release.wait(10), big[1 << 20:]]
        if m.method == "DELETE":
            return h.http_reply(200, b'{"id":"video_123","object":"video.deleted","deleted":true}',
                                {"Content-Type": "application/json"})
        if m.path == "/v1/videos":
            return h.http_reply(200, b'{"object":"list","data":[' + job + b"]}", {"Content-Type": "application/json"})
        return h.http_reply(200, job, {"Content-Type": "application/json"})

    up.reset(reply)
    ids = ["video-%d-%d" % (os.getpid(), i) for i in range(4)]
    with h.Conn(tg.port, timeout=10) as c:
        r = c.request("GET", "/v1/videos/video_123", headers=auth(**{"x-request-id": ids[0]}))
        assert r.status == 200 and r.body == job, (r.status, r.text)
        c.send_request("GET", "/v1/videos/video_123/content", headers=auth(**{"x-request-id": ids[1]}))
        head = c.read_head()
        assert head.status == 200 and head.headers["content-type"] == "video/mp4"
        assert int(head.headers["content-length"]) == len(big)
        got = []
        n = 0
        for piece in c.iter_body(head):
            got.append(piece)
            n += len(piece)
            if n >= 1 << 20:
                release.set()
        assert b"".join(got) == big
        r = c.request("GET", "/v1/videos?limit=1", headers=auth(**{"x-request-id": ids[2]}))
        assert r.status == 200 and json.loads(r.body)["data"][0]["id"] == "video_123"
        r = c.request("DELETE", "/v1/videos/video_123", headers=auth(**{"x-request-id": ids[3]}))
        assert r.status == 200 and r.json()["deleted"] is True
    got = [(m.method, m.target, m.body, m.framing) for m in up.requests]
    assert got == [("GET", "/v1/videos/video_123", b"", "none"),
                   ("GET", "/v1/videos/video_123/content", b"", "none"),
                   ("GET", "/v1/videos?limit=1", b"", "none"),
                   ("DELETE", "/v1/videos/video_123", b"", "none")], got
    for rid in ids:
        rec = record_of(rid)
        assert rec["status"] == 200 and rec["decision"] == "allowed", rec
        assert rec["route"] == "/v1/videos", rec
        assert {k: v for k, v in rec["cost"]["actual"].items() if v} == {"requests": 1}, rec
    assert record_of(ids[1])["bytes_out"] >= len(big)


# ---------------------------------------------------------------------------
# differential: what the upstream reads is what a strict reader reads from the client

HOP = {"host", "authorization", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
       "trailer", "expect", "x-request-id", "x-forwarded-for", "upgrade", "proxy-connection",
       "proxy-authorization", "proxy-authenticate"}


def _chunks(body, size, ext=b""):
    return b"".join(b"%04X%s\r\n%s\r\n" % (len(body[i:i + size]), ext, body[i:i + size])
                    for i in range(0, len(body), size))


def differential_cases():
    ct = [("Content-Type", "application/json")]
    te = ct + [("Transfer-Encoding", "chunked")]
    binary = bytes(range(256)) * 4
    looks_like_http = (b"0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
                       b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    one_cl = cl_req("POST", "/v1/chat/completions", CHAT, ct + [("X-Custom", "a b"), ("x-custom", "c")])
    one_chunked = req("POST", "/v1/chat/completions", te + [("X-Before", "1")],
                      _chunks(CHAT, 7, b';name=value;q="a \\" b"') + b"0;last\r\nX-Trailer: t\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    get = req("GET", "/v1/models?limit=2&order=desc", [("Accept", "application/json")])
    raw_body = cl_req("POST", "/v1/models", looks_like_http, [("Content-Type", "text/plain")])
    raw_chunked = req("POST", "/v1/models", [("Content-Type", "application/octet-stream"),
                                             ("Transfer-Encoding", "chunked")],
                      _chunks(binary, 100) + b"0\r\n\r\n")
    empty = cl_req("POST", "/v1/models", b"")
    http10 = cl_req("POST", "/v1/chat/completions", CHAT, ct, version="HTTP/1.0", host=None)
    return [
        ("Content-Length", [one_cl]),
        ("chunked with extensions and trailers", [one_chunked]),
        ("a body that looks like requests", [raw_body]),
        ("binary chunked body", [raw_chunked]),
        ("empty body", [empty]),
        ("HTTP/1.0", [http10]),
        ("pipelined in one write", [one_cl + one_chunked + get + raw_body + raw_chunked + empty]),
        ("pipelined, split across writes", [one_chunked + get + one_cl + raw_chunked]),
    ]


def test_upstream_reads_what_a_strict_reader_reads():
    wrong = []
    for what, [data] in differential_cases():
        want = h.read_messages(data)  # the client's bytes, read strictly: a valid case
        up.reset()
        with h.Conn(tg.port, timeout=5) as c:
            if what.endswith("split across writes"):
                for i in range(0, len(data), 97):
                    c.send(data[i:i + 97])
                    time.sleep(0.002)
            else:
                c.send(data)
            statuses = [c.read_response(m.method).status for m in want]
        if statuses != [200] * len(want):
            wrong.append("%s: statuses %r" % (what, statuses))
            continue
        up.wait_requests(len(want))
        time.sleep(0.05)
        got = []
        for cn in up.conns:
            try:
                got += h.read_messages(cn.data)  # strict, and nothing left over
            except h.ProtocolError as e:
                wrong.append("%s: the upstream's bytes are not strict HTTP/1.1: %s" % (what, e))
        if len(got) != len(want):
            wrong.append("%s: %d requests sent, %d forwarded" % (what, len(want), len(got)))
            continue
        for i, (w, g) in enumerate(zip(want, got)):
            where = "%s, request %d" % (what, i + 1)
            if (g.method, g.target, g.version) != (w.method, w.target, "HTTP/1.1"):
                wrong.append("%s: %s %s %s forwarded as %s %s %s" % (where, w.method, w.target, w.version,
                                                                     g.method, g.target, g.version))
            if g.body != w.body:
                wrong.append("%s: body of %d bytes forwarded as %d bytes" % (where, len(w.body), len(g.body)))
            if g.trailers or g.headers.get("transfer-encoding"):
                wrong.append("%s: forwarded chunked" % where)
            cl = g.headers.get_all("content-length")
            if w.body or w.method == "POST":
                if cl != [str(len(w.body))]:
                    wrong.append("%s: Content-Length %r for %d bytes" % (where, cl, len(w.body)))
            elif cl not in ([], ["0"]):
                wrong.append("%s: Content-Length %r on a bodyless request" % (where, cl))
            e2e_w = [(k.lower(), v) for k, v in w.headers if k.lower() not in HOP]
            e2e_g = [(k.lower(), v) for k, v in g.headers if k.lower() not in HOP]
            if e2e_w != e2e_g:
                wrong.append("%s: end-to-end headers %r forwarded as %r" % (where, e2e_w, e2e_g))
            names = [k.lower() for k, _ in w.trailers]
            if any(n in g.header_names() for n in names if n != "x-forwarded-for") or \
                    any("6.6.6.6" in v for v in g.headers.get_all("x-forwarded-for")):
                wrong.append("%s: a trailer field became a header" % where)
    assert not wrong, "\n".join(wrong)


if __name__ == "__main__":
    h.main()
