"""Routing by model: a route's `models` patterns pick the upstream from the body's model (the
route's `upstream` is the default), a route without a default answers an unknown model 404
model_not_found in OpenAI's shape, and `model_aliases` rename a model before it is routed,
limited and forwarded — the record keeps both names."""
import re

import harness as h
from harness import TEST_KEY, auth


def start(a, b):
    cfg = h.tollgate_config(a.url)
    cfg["upstreams"] = [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}]
    cfg["routes"] = [
        {"path": "/v1/chat/completions", "upstream": "a", "cost": "tokens",
         "models": {"llama-*": "b", "mixtral-*": "b"}, "model_aliases": {"fast": "llama-3.1-8b"}},
        {"path": "/v1/embeddings", "cost": "tokens", "models": {"emb-*": "a"}},
    ]
    return h.Tollgate(cfg).start()


def test_models_pick_the_upstream_aliases_rename_unknown_is_404():
    a, b = h.MockModel().start(), h.MockModel().start()
    tg = start(a, b)
    for model in ("gpt-4o", "llama-3-70b", "fast"):
        r = tg.request("POST", "/v1/chat/completions", headers=auth(), json=h.chat_body(model=model))
        assert r.status == 200, r.text
        # the model server saw the model the alias stands for (its reply echoes it)
        assert r.json()["model"] == ("llama-3.1-8b" if model == "fast" else model), r.text
    r = tg.request("POST", "/v1/embeddings", headers=auth(), json={"model": "emb-small", "input": "x"})
    assert r.status == 200, r.text
    r = tg.request("POST", "/v1/embeddings", headers=auth(), json={"model": "other", "input": "x"})
    assert r.status == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error", err
    assert "other" in err["message"]
    tg.term()
    recs = h.read_jsonl(tg.usage_path)
    got = [(x["model"], x["requested_model"], x["upstream"], x["status"]) for x in recs]
    assert got == [("gpt-4o", None, "a", 200), ("llama-3-70b", None, "b", 200),
                   ("llama-3.1-8b", "fast", "b", 200), ("emb-small", None, "a", 200),
                   ("other", None, None, 404)], got
    a.stop()
    b.stop()


def test_routing_config_errors():
    mock = h.MockModel().start()
    base = "upstreams:\n  - { name: a, url: \"%s\" }\nroutes:\n" % mock.url
    rc, out, err = h.Tollgate.check(base + "  - { path: /v1/x, cost: tokens, models: { \"m*\": nope } }\n")
    assert rc != 0 and "routes[0].models.m*: no upstream has this name" in err, err
    assert re.search(r"check\.yaml:4:\d+: routes\[0\]\.models\.m\*", err), err
    rc, out, err = h.Tollgate.check(base + "  - { path: /v1/x, cost: tokens }\n")
    assert rc != 0 and "routes[0].upstream: is required (or models" in err, err
    rc, out, err = h.Tollgate.check(base + "  - { path: /v1/x, cost: tokens, models: { \"m*\": a }, "
                                           "model_aliases: { fast: m1 } }\n")
    assert rc == 0, err
    assert "model m* -> a" in out and "alias fast = m1" in out, out
    mock.stop()


if __name__ == "__main__":
    h.main()
