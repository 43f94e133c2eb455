"""The official `ollama` Python client against `protege serve` (the fake engine under a real uvicorn): what a real
Ollama client reads from our /api/chat, /api/generate, /api/tags, /api/show, /api/ps and /api/embed, streaming and
not, parsed by the client's own response models (ollama._types), and every field we send is one those models (or
Ollama's own server) know, so a misspelt field cannot pass unnoticed."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterator

import httpx
import pytest
from pydantic import BaseModel

from tests.fakes import FakeEmbedder
from tests.net import app_server
from tests.test_serve_routes import USER, Env, FakeKB

ollama = pytest.importorskip("ollama")
from ollama import _types as T  # noqa: E402  (the client's response models)

ANSWER = "Echo: hello there friend"
RAG = {"sources", "confidence", "grounding"}  # Protégé's extras on a RAG answer's last line


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Env]]:
    env = Env(tmp_path)
    with app_server(env.app()) as base:
        yield base, env


@pytest.fixture
def client(server) -> ollama.Client:
    return ollama.Client(host=server[0], timeout=30)


def _known(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def assert_fields(body: dict, model: type[BaseModel], extra: set[str] = frozenset()) -> None:
    """Every key of `body` is a field of the client's `model`, or one of `extra` (Ollama's own server sends it too,
    or it is Protégé's)."""
    assert set(body) - _known(model) <= extra, set(body) - _known(model) - extra


def test_chat_json_and_streaming(client):
    r = client.chat(model="minimal", messages=USER)
    assert isinstance(r, T.ChatResponse) and r.message.role == "assistant" and r.message.content == ANSWER
    assert r.model == "minimal" and r.done is True and r.done_reason == "stop"
    assert r.eval_count == 4 and r.prompt_eval_count == 11 and r.total_duration > 0 and r.load_duration == 0
    assert datetime.fromisoformat(r.created_at.replace("Z", "+00:00")).tzinfo is not None

    parts = list(client.chat(model="minimal:latest", messages=USER, stream=True))
    assert len(parts) > 2 and "".join(p.message.content for p in parts) == ANSWER
    assert all(p.done is False and p.done_reason is None and p.eval_count is None for p in parts[:-1])
    last = parts[-1]
    assert last.done is True and last.done_reason == "stop" and last.eval_count == 4 and last.message.content == ""
    assert {p.model for p in parts} == {"minimal:latest"}

    short = client.chat(model="minimal", messages=USER, options={"num_predict": 2})
    assert short.message.content == "Echo: hello" and short.done_reason == "length" and short.eval_count == 2
    cut = list(client.chat(model="minimal", messages=USER, stream=True, options={"num_predict": 2}))
    assert "".join(p.message.content for p in cut) == "Echo: hello" and cut[-1].done_reason == "length"


def test_generate_json_streaming_raw_and_format(client):
    g = client.generate(model="minimal", prompt="why sky", system="Be brief.")
    assert isinstance(g, T.GenerateResponse) and g.response == "Echo: why sky" and g.done_reason == "stop"
    assert g.model == "minimal" and g.eval_count == 3 and g.context is None  # stateless: no token context
    parts = list(client.generate(model="minimal", prompt="a b", raw=True, stream=True))
    assert "".join(p.response for p in parts) == "Echo: a b" and parts[-1].done and parts[-1].eval_count == 3
    assert all(not p.done and p.done_reason is None for p in parts[:-1])
    assert client.generate(model="minimal", prompt="x", format="json").response == '{"echo": "x"}'


def test_load_and_unload_calls(client, server):
    env = server[1]
    assert client.generate(model="minimal").done_reason == "load"  # no prompt: Ollama's load call
    assert client.chat(model="kbot", messages=[]).done_reason == "load"
    assert sorted(m.model for m in client.ps().models) == ["kbot:latest", "minimal:latest"]  # one GGUF: one engine
    r = client.chat(model="kbot", messages=[], keep_alive=0)
    assert r.done is True and r.done_reason == "unload" and r.message.content == ""
    assert list(client.ps().models) == [] and not env.engines["minimal"].loaded


def test_list_show_ps(client):
    models = client.list().models
    assert [m.model for m in models] == ["kbot:latest", "minimal:latest"]
    m = models[1]
    assert isinstance(m.modified_at, datetime) and m.size == 4 and len(m.digest) == 64  # the 4-byte test GGUF
    assert m.details.format == "gguf" and m.details.family == "llama" and m.details.families == ["llama"]

    show = client.show("minimal")
    assert isinstance(show, T.ShowResponse) and 'SYSTEM """Be brief."""' in show.modelfile
    assert show.parameters.splitlines()[0] == "num_ctx 2048" and show.capabilities == ["completion"]
    assert show.modelinfo["protege.knowledge"] is False and client.show("kbot").modelinfo["protege.knowledge"]
    assert show.details.format == "gguf" and isinstance(show.modified_at, datetime)

    ps = client.ps().models
    assert [p.model for p in ps] == ["minimal:latest"]  # the preloaded default
    assert ps[0].context_length == 64 and ps[0].size_vram == 0 and isinstance(ps[0].expires_at, datetime)


def test_embed(client):
    e = client.embed(model="minimal", input=["a", "b"])
    assert isinstance(e, T.EmbedResponse) and [list(v) for v in e.embeddings] == FakeEmbedder().embed(["a", "b"])
    assert e.model == "minimal" and e.prompt_eval_count == 2


def test_rag_answers_and_errors(client):
    assert client.chat(model="kbot", messages=USER).message.content == "Echo: ctx: faq hello there friend"
    refused = list(client.chat(model="kbot", messages=[{"role": "user", "content": "something unknown"}],
                               stream=True))
    assert "".join(p.message.content for p in refused) == FakeKB.refusal and refused[-1].done_reason == "stop"
    for call, status, needle in (
            (lambda: client.chat(model="llama3", messages=USER), 404, "llama3"),
            (lambda: list(client.chat(model="llama3", messages=USER, stream=True)), 404, "llama3"),
            (lambda: client.show("llama3"), 404, "llama3"),
            (lambda: client.generate(model="minimal", prompt="x", suffix="s"), 400, "'suffix'"),
            (lambda: list(client.generate(model="minimal", prompt="x", think=True, stream=True)), 400, "'think'"),
            (lambda: client.generate(model="minimal", prompt="x", top_logprobs=2), 400, "top_logprobs"),
            (lambda: client.chat(model="minimal", messages=USER, tools=[{"type": "function", "function": {
                "name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]), 400,
             "'tools'")):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == status and isinstance(e.value.error, str), e.value  # Ollama's error shape
        assert needle in e.value.error, e.value.error


@pytest.mark.parametrize("fail", [None, RuntimeError("/very/secret/path: kaboom")])
def test_a_stream_failing_part_way_ends_in_an_error_line(tmp_path, fail):
    """Ollama ends a broken stream with an `{"error": "..."}` line (the 200 is already sent): its client raises
    ResponseError there. An unexpected error's line names only the id it is logged under."""
    env = Env(tmp_path)
    env.engine_kwargs = {"fail_after": 2, "fail": fail}
    with app_server(env.app()) as base:
        client = ollama.Client(host=base, timeout=30)
        for call in (lambda: client.chat(model="minimal", messages=USER, stream=True),
                     lambda: client.generate(model="minimal", prompt="a b c", stream=True)):
            got = []
            with pytest.raises(ollama.ResponseError) as e:
                got.extend(call())
            assert len(got) == 2 and isinstance(e.value.error, str), (got, e.value)
            if fail is None:
                assert "stopped in the middle" in e.value.error
            else:
                assert "Internal server error (id " in e.value.error and "secret" not in e.value.error
        lines = httpx.post(base + "/api/chat", json={"model": "minimal", "messages": USER}, timeout=30).text
        last = json.loads(lines.splitlines()[-1])
        assert set(last) == {"error", "code", "param"} and last["code"] in ("model_not_loaded", "server_error")
        with pytest.raises(ollama.ResponseError) as e:  # not streaming: the error status, before any answer
            client.chat(model="minimal", messages=USER)
        assert e.value.status_code == (503 if fail is None else 500) and isinstance(e.value.error, str)


def test_logprobs(client):
    """Ollama's `logprobs`: each line's tokens (the whole answer when not streaming), `top_logprobs` only when asked."""
    r = client.chat(model="minimal", messages=USER, logprobs=True)
    assert [(lp.token, lp.logprob, lp.top_logprobs) for lp in r.logprobs] == [
        (w, -0.5, None) for w in ("Echo:", " hello", " there", " friend")]
    parts = list(client.generate(model="minimal", prompt="a b", logprobs=True, top_logprobs=3, stream=True))
    assert [[lp.token for lp in p.logprobs] for p in parts[:-1]] == [["Echo:"], [" a"], [" b"]]
    assert parts[-1].done and parts[-1].logprobs is None
    assert [t.token for t in parts[1].logprobs[0].top_logprobs] == [" a"]  # the fake engine knows one alternative
    assert client.chat(model="minimal", messages=USER).logprobs is None
    assert client.generate(model="minimal", prompt="a", logprobs=False, top_logprobs=0).logprobs is None


def test_every_field_we_send_is_known_to_the_client(server):
    """The raw JSON, key by key, against the client's models: Ollama's own server also sends `name` (tags, ps) and
    `system` (show), which this client does not model; the RAG extras are ours. /api/ps has no `modified_at`, as in
    Ollama (its running model is not a listed model)."""
    base = server[0]

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(base + path, json=body, timeout=30)

    lines = [json.loads(x) for x in post("/api/chat", {"model": "kbot", "messages": USER}).text.splitlines()]
    for line in lines:
        assert_fields(line, T.ChatResponse, RAG)
        assert_fields(line["message"], T.Message)
    assert RAG <= set(lines[-1]) and not RAG & set(lines[0])
    gen = post("/api/generate", {"model": "minimal", "prompt": "hi", "stream": False}).json()
    assert_fields(gen, T.GenerateResponse)
    lp = post("/api/chat", {"model": "minimal", "messages": USER, "stream": False, "logprobs": True,
                            "top_logprobs": 1}).json()
    assert_fields(lp, T.ChatResponse)
    for x in lp["logprobs"]:
        assert_fields(x, T.Logprob)
        assert_fields(x["top_logprobs"][0], T.TokenLogprob)
    tags = httpx.get(base + "/api/tags").json()
    assert_fields(tags, T.ListResponse)
    for m in tags["models"]:
        assert_fields(m, T.ListResponse.Model, {"name"})
        assert_fields(m["details"], T.ModelDetails)
    running = httpx.get(base + "/api/ps").json()["models"]
    assert running
    for p in running:
        assert_fields(p, T.ProcessResponse.Model, {"name"})
        assert "modified_at" not in p
    assert_fields(post("/api/show", {"model": "minimal"}).json(), T.ShowResponse, {"system"})
    assert_fields(post("/api/embed", {"model": "minimal", "input": "a"}).json(), T.EmbedResponse)
