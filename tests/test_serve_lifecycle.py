"""Lifecycle of requests and engines (issue 12, points 3, 4, 5, 10): a non-streaming request whose client leaves is
cancelled and frees its slot; keep_alive, the resident-model cap and a true /api/ps (and `protege ps`); admission
before retrieval and for embeddings; the server's RAG policy (`serve.allow_rag_off`)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient

from protege.config import ServeConfig, parse_keep_alive
from protege.config_file import config_from_dict, save_resolved
from protege.paths import AssistantPaths
from serve.app import create_app
from tests.fakes import FakeEmbedder
from tests.test_serve_routes import USER, Env, assert_error


class LEnv(Env):
    """Env that counts how often the knowledge base is opened, and a settable clock for keep_alive."""

    def __init__(self, tmp_path, **serve):
        super().__init__(tmp_path, **serve)
        self.kb_opened = 0
        self.now = 1_000_000.0

    def knowledge(self, spec):
        self.kb_opened += 1
        return self.kb

    def app(self, preload=False):
        app = create_app(self.registry, self.factory, self.cfg, knowledge_factory=self.knowledge,
                         embedder_factory=FakeEmbedder, preload=preload)
        app.state.service.manager.clock = lambda: self.now
        return app


def pirate() -> None:
    """A built assistant with three GGUFs: three engines (the fake factory makes one per id)."""
    paths = AssistantPaths.for_name("pirate").ensure()
    save_resolved(config_from_dict({"name": "pirate"}), paths.root)
    paths.gguf.mkdir()
    for q in ("q4_k_m", "q8_0", "f16"):
        paths.gguf_file(q).write_bytes(b"GGUF")


def ps(c) -> dict[str, dict]:
    r = c.get("/api/ps")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------------- 3. non-streaming cancel
def _disconnecting(app, path: str, body: dict, after: float = 0.3) -> list[dict]:
    """Send one request over raw ASGI whose client disconnects `after` seconds in; the messages the app sent."""
    raw = json.dumps(body).encode()
    sent: list[dict] = []
    state = {"n": 0}

    async def receive():
        state["n"] += 1
        if state["n"] == 1:
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(after)
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "scheme": "http", "server": ("t", 80),
             "client": ("c", 1), "root_path": ""}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    return sent


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "minimal", "messages": [{"role": "user", "content": "w " * 10}]}),
    ("/v1/completions", {"model": "minimal", "prompt": "w " * 10}),
    ("/api/chat", {"model": "minimal", "stream": False, "messages": [{"role": "user", "content": "w " * 10}]}),
    ("/api/generate", {"model": "minimal", "stream": False, "prompt": "w " * 10}),
])
def test_non_streaming_request_is_cancelled_when_the_client_leaves(tmp_path, path, body):
    env = LEnv(tmp_path)
    env.engine_kwargs = {"delay": 0.2}  # 11 tokens x 200 ms: 2.2 s if nobody stopped it
    app = env.app()
    t0 = time.time()
    sent = _disconnecting(app, path, body, after=0.3)
    assert time.time() - t0 < 1.5
    engine = env.engines["minimal"]
    assert engine.calls == 1 and engine.cancelled == 1 and engine.completed == 0
    assert app.state.service.admission.inflight == 0
    assert [r.busy for r in app.state.service.manager.running()] == [0]
    assert sent[0]["status"] == 499  # never a 200 with half an answer


def test_non_streaming_request_completes_while_the_client_stays(tmp_path):
    env = LEnv(tmp_path)
    env.engine_kwargs = {"delay": 0.01}
    with TestClient(env.app()) as c:
        r = c.post("/api/chat", json={"model": "minimal", "stream": False, "messages": USER})
        assert r.json()["message"]["content"] == "Echo: hello there friend"
        assert env.engines["minimal"].completed == 1 and env.engines["minimal"].cancelled == 0
        assert c.app.state.service.admission.inflight == 0


# ------------------------------------------------------------------------------------------- 4. keep_alive
@pytest.mark.parametrize("value,seconds", [("5m", 300), ("1h30m", 5400), ("30s", 30), ("500ms", 0.5), ("0", 0),
                                           (0, 0), (45, 45), ("45", 45), ("1.5h", 5400), ("-1", None), (-1, None),
                                           ("-5m", None), (10 ** 12, None)])
def test_parse_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m5", "", "abc", "nan", True])
def test_bad_keep_alive_is_refused(value):
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_keep_alive_from_the_request_and_the_server_default(tmp_path):
    env = LEnv(tmp_path, keep_alive="30s")
    with TestClient(env.app()) as c:
        assert ps(c) == {}
        r = c.post("/api/generate", json={"model": "minimal", "prompt": ""})  # Ollama's load call
        assert r.json()["done_reason"] == "load"
        m = ps(c)["minimal:latest"]
        assert ts(m["expires_at"]) == pytest.approx(env.now + 30)  # serve.keep_alive
        assert m["size"] == 4 and m["size_vram"] == 0 and m["context_length"] == 64
        r = c.post("/api/chat", json={"model": "minimal", "messages": USER, "stream": False, "keep_alive": "10m"})
        assert r.status_code == 200
        assert ts(ps(c)["minimal:latest"]["expires_at"]) == pytest.approx(env.now + 600)
        env.now += 599
        assert "minimal:latest" in ps(c)
        env.now += 2  # past its time: /api/ps (and the reaper) unload it
        assert ps(c) == {} and env.engines["minimal"].loaded is False
        # the next request loads it again, with the server default
        r = c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER})
        assert r.status_code == 200 and ts(ps(c)["minimal:latest"]["expires_at"]) == pytest.approx(env.now + 30)


def test_keep_alive_zero_unloads_and_negative_keeps_forever(tmp_path):
    env = LEnv(tmp_path)
    with TestClient(env.app()) as c:
        r = c.post("/api/chat", json={"model": "minimal", "messages": USER, "stream": False, "keep_alive": 0})
        assert r.json()["message"]["content"] == "Echo: hello there friend"
        assert ps(c) == {}  # unloaded as soon as the answer was done
        first = env.engines["minimal"]
        assert first.loaded is False
        r = c.post("/api/generate", json={"model": "minimal", "prompt": "", "keep_alive": -1})
        assert r.json()["done_reason"] == "load"
        assert ps(c)["minimal:latest"]["expires_at"].startswith("9999-")
        env.now += 10 ** 8
        assert "minimal:latest" in ps(c)
        r = c.post("/api/generate", json={"model": "minimal", "prompt": "", "keep_alive": "0"})
        assert r.json()["done_reason"] == "unload" and ps(c) == {} and env.engines["minimal"].loaded is False


def test_bad_keep_alive_is_400(tmp_path):
    env = LEnv(tmp_path)
    with TestClient(env.app()) as c:
        for path, body in [("/api/chat", {"model": "minimal", "messages": USER}),
                           ("/api/generate", {"model": "minimal", "prompt": ""}),
                           ("/api/generate", {"model": "minimal", "prompt": "hi", "stream": False}),
                           ("/api/embed", {"model": "minimal", "input": "x"})]:
            r = c.post(path, json={**body, "keep_alive": "5 minutes"})
            assert assert_error(r, 400, "invalid_request_error")["param"] == "keep_alive"
        assert c.app.state.service.admission.inflight == 0
    with pytest.raises(ValueError):
        ServeConfig(keep_alive="soon")


def test_resident_models_are_capped_lru(tmp_path):
    pirate()
    env = LEnv(tmp_path, max_loaded_models=2)
    with TestClient(env.app()) as c:
        for mid in ("minimal", "pirate:q8_0"):
            assert c.post("/v1/chat/completions", json={"model": mid, "messages": USER}).status_code == 200
            env.now += 1
        assert set(ps(c)) == {"minimal:latest", "pirate:q8_0"}
        assert c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER}).status_code == 200
        env.now += 1  # now pirate:q8_0 is the least recently used
        assert c.post("/api/generate", json={"model": "pirate:f16", "prompt": ""}).json()["done_reason"] == "load"
        assert set(ps(c)) == {"minimal:latest", "pirate:f16"}
        assert env.engines["pirate:q8_0"].loaded is False and env.engines["minimal"].loaded is True
        assert list(ps(c)) == ["pirate:f16", "minimal:latest"]  # most recently used first


def test_an_engine_in_use_is_never_evicted(tmp_path):
    pirate()
    env = LEnv(tmp_path, max_loaded_models=1)
    env.engine_kwargs = {"delay": 0.05}
    app = env.app()
    done: list[str] = []

    async def ask(c, model: str, wait: float, text: str) -> httpx.Response:
        await asyncio.sleep(wait)
        r = await c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user",
                                                                                      "content": text}]})
        done.append(model)
        return r

    async def main():  # 9 tokens x 50 ms on minimal; the short one would be done first if it could evict minimal
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(ask(c, "minimal", 0, "one two three four five six seven eight"),
                                        ask(c, "pirate:q8_0", 0.2, "hi"))

    slow, other = asyncio.run(main())
    assert slow.json()["choices"][0]["message"]["content"] == "Echo: one two three four five six seven eight"
    assert other.status_code == 200 and done == ["minimal", "pirate:q8_0"]  # the load waited for the busy one
    assert env.engines["minimal"].completed == 1 and env.engines["minimal"].cancelled == 0
    assert env.engines["minimal"].loaded is False  # then it made room
    assert [r.key for r in app.state.service.manager.running()] == [str(AssistantPaths.for_name("pirate")
                                                                        .gguf_file("q8_0"))]


def test_protege_ps_prints_the_servers_table(tmp_path, capsys):
    from protege.cli import main
    from tests.net import app_server

    env = LEnv(tmp_path, api_keys=["k"], keep_alive="10m")
    env.now = time.time()
    with app_server(env.app()) as base:
        port = int(base.rsplit(":", 1)[1])
        headers = {"Authorization": "Bearer k"}
        assert httpx.post(f"{base}/api/generate", json={"model": "minimal", "prompt": ""}, headers=headers,
                          timeout=10).json()["done_reason"] == "load"
        assert main(["ps", "--port", str(port), "--api-key", "k"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
        row = lines[1].split()
        assert row[0] == "minimal:latest" and "100% CPU" in lines[1] and "64" in row
        assert lines[1].endswith("minutes from now") and ("10 minutes" in lines[1] or "9 minutes" in lines[1])
        assert main(["ps", "--host", base, "--api-key", "k", "--json"]) == 0
        assert [m["name"] for m in json.loads(capsys.readouterr().out)["models"]] == ["minimal:latest"]
        assert main(["ps", "--port", str(port)]) == 1  # no key: the server's 401, said in one line
        assert "401" in (err := capsys.readouterr().err) and "missing API key" in err  # the server's own message


# ------------------------------------------------------------------------------ 5. admission before retrieval
def test_full_queue_is_429_before_retrieval_and_for_embeddings(tmp_path):
    env = LEnv(tmp_path, parallel=1, max_queue=1)
    with TestClient(env.app()) as c:
        adm = c.app.state.service.admission
        adm.inflight = adm.active + adm.max_queue  # every slot taken
        for path, body in [("/v1/chat/completions", {"model": "kbot", "messages": USER}),
                           ("/v1/chat/completions", {"model": "kbot", "messages": USER, "stream": True}),
                           ("/api/chat", {"model": "kbot", "messages": USER}),
                           ("/api/generate", {"model": "kbot", "prompt": "hi"}),
                           ("/v1/embeddings", {"model": "minimal", "input": ["a", "b"]}),
                           ("/api/embed", {"model": "kbot", "input": "a"})]:
            r = c.post(path, json=body)
            assert_error(r, 429, "rate_limit_exceeded")
            assert r.headers["retry-after"] == "1"
        assert env.kb_opened == 0 and env.kb.calls == 0 and env.calls == 0  # no retrieval, no generation
        assert adm.inflight == 2
        adm.inflight = 0
        body = c.post("/v1/chat/completions", json={"model": "kbot", "messages": USER}).json()
        assert body["sources"][0]["path"] == "faq.md" and env.kb.calls == 1
        assert len(c.post("/v1/embeddings", json={"model": "minimal", "input": ["a", "b"]}).json()["data"]) == 2
        assert adm.inflight == 0


def test_every_outcome_of_prepare_gives_the_slot_back(tmp_path):
    env = LEnv(tmp_path, parallel=1, max_queue=1)
    with TestClient(env.app()) as c:
        adm, mgr = c.app.state.service.admission, c.app.state.service.manager
        refused = [{"role": "user", "content": "something unknown"}]
        assert c.post("/v1/chat/completions", json={"model": "kbot", "messages": refused}).json()[
            "choices"][0]["message"]["content"].startswith("I don't know")
        assert c.post("/api/chat", json={"model": "kbot", "messages": refused, "stream": False}).status_code == 200
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": [
            {"role": "user", "content": "word " * 70}]}), 400, "context_length_exceeded")
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER,
                                                          "tools": [{"type": "function"}]}), 400,
                     "unsupported_parameter")
        assert adm.inflight == 0 and [r.busy for r in mgr.running()] == [0]
        # both slots are free: two requests in a row still pass
        for _ in range(3):
            assert c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER}).status_code == 200


# ----------------------------------------------------------------------------------------- 10. RAG policy
BYPASSES = [
    ("/v1/chat/completions", {"model": "kbot", "messages": USER, "rag": False}),
    ("/v1/chat/completions", {"model": "kbot", "messages": USER, "rag": False, "stream": True}),
    ("/v1/completions", {"model": "kbot", "prompt": "hello there"}),
    ("/v1/completions", {"model": "kbot", "prompt": "hello there", "stream": True}),
    ("/api/chat", {"model": "kbot", "messages": USER, "options": {"rag": False}}),
    ("/api/generate", {"model": "kbot", "prompt": "hello there", "options": {"rag": False}}),
    ("/api/generate", {"model": "kbot", "prompt": "hello there", "raw": True}),
]


def test_rag_cannot_be_turned_off_by_default(tmp_path):
    env = LEnv(tmp_path)
    with TestClient(env.app()) as c:
        for path, body in BYPASSES:
            r = c.post(path, json=body)
            assert_error(r, 403, "rag_required")
            assert path.startswith("/api/") or r.json()["error"]["type"] == "permission_error"
        assert env.calls == 0 and env.kb.calls == 0
        assert c.app.state.service.admission.inflight == 0
        # an assistant without knowledge has nothing to skip: the switch and raw prompts stay open
        assert c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER,
                                                    "rag": False}).status_code == 200
        assert c.post("/v1/completions", json={"model": "minimal", "prompt": "a b"}).status_code == 200
        # and RAG on (the default) is of course fine
        assert c.post("/v1/chat/completions", json={"model": "kbot", "messages": USER}).json()["sources"]


def test_allow_rag_off_lets_clients_skip_retrieval(tmp_path):
    env = LEnv(tmp_path)
    env.registry.get("kbot").cfg.serve.allow_rag_off = True
    with TestClient(env.app()) as c:
        for path, body in BYPASSES:
            r = c.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            assert "sources" not in r.text
        assert env.kb.calls == 0 and env.calls == len(BYPASSES)
