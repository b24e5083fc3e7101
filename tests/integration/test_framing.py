"""HTTP/1.1 framing hardening (issue 13): raw bytes sent to the real daemon in front of a
RawUpstream that records exactly what it receives. Each refused request must get a clean
4xx/5xx, a closed connection and nothing forwarded; each accepted one must reach the
upstream framed exactly as a strict reader reads the client's bytes."""
import json
import os
import socket
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


def exchange(raw, timeout=5.0, method="GET", pieces=None, gap=0.0):
    """Sends raw on a new connection (pieces: a list sent `gap` seconds apart instead)
    and reads one response. Returns (Response, seconds until the head, closed after it:
    waited for after an error only; None after a success)."""
    with h.Conn(tg.port, timeout=timeout) as c:
        t0 = time.monotonic()
        for i, p in enumerate(pieces or [raw]):
            if i and gap:
                time.sleep(gap)
            c.send(p)
        r = c.read_response(method)
        return r, r.t_head - t0, (c.closed_by_peer(2.0) if r.status >= 400 else None)


def refused(raw, status, prompt=PROMPT, **kw):
    """Asserts raw is answered with `status` (an OpenAI-shaped error) within `prompt`
    seconds, the connection closed after it, and nothing reached the upstream."""
    up.reset()
    r, took, closed = exchange(raw, **kw)
    assert r.status == status, "%r: got %d %s, wanted %d" % (raw[:120], r.status, r.text[:200], status)
    assert took < prompt, "%r: answered after %.2fs" % (raw[:120], took)
    assert closed, "%r: the connection stayed open after %d" % (raw[:120], status)
    assert "error" in r.json(), r.text
    up.assert_nothing_received()
    return r


def accepted(raw, n=1, method="POST", reply=None):
    """Sends raw, expects a 2xx; returns (Response, the requests the upstream read)."""
    up.reset(reply)
    with h.Conn(tg.port, timeout=5) as c:
        c.send(raw)
        r = c.read_response(method)
    assert 200 <= r.status < 300, "%r: got %d %s" % (raw[:120], r.status, r.text[:300])
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


if __name__ == "__main__":
    h.main()
