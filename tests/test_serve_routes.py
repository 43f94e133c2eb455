"""Every route of `protege serve` over the deterministic fake engine: shapes, statuses, auth, CORS, limits, RAG."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from protege.config import ServeConfig
from protege.config_file import config_from_dict, save_resolved
from protege.paths import AssistantPaths
from rag.types import Retrieval, Source
from serve.app import create_app
from serve.engines.fake import FakeEngine
from serve.registry import Registry
from tests.fakes import FakeEmbedder

USER = [{"role": "user", "content": "hello there friend"}]


class FakeKB:
    refusal = "I don't know: my documents don't cover that."

    def __init__(self):
        self.calls = 0

    def retrieve(self, question: str) -> Retrieval:
        self.calls += 1
        refused = "unknown" in question
        score = 0.1 if refused else 0.9
        return Retrieval(question, [Source("faq.md", "Billing", None, "faq-1", score)], score, refused)

    def retrieve_conversation(self, messages: list[dict]) -> Retrieval:
        return self.retrieve(next(m["content"] for m in reversed(messages) if m["role"] == "user"))

    def guard_session(self, messages: list[dict], retrieval: Retrieval):
        return None  # the guard itself is tested in tests/test_guard.py and through the real KB

    def build_messages(self, messages: list[dict], retrieval: Retrieval) -> list[dict]:
        q = messages[-1]["content"]
        return [m for m in messages if m["role"] == "system"] + [{"role": "user", "content": f"ctx: faq {q}"}]


class Env:
    def __init__(self, tmp_path, **serve):
        self.engines: dict[str, FakeEngine] = {}
        self.kb = FakeKB()
        gguf = tmp_path / "base.gguf"
        gguf.write_bytes(b"GGUF")
        configs = [config_from_dict({"name": "minimal", "persona": {"system_prompt": "Be brief."}}),
                   config_from_dict({"name": "kbot", "knowledge": {"folder": str(tmp_path)}})]
        self.registry = Registry(configs, embedded_gguf=gguf)
        self.cfg = ServeConfig(**serve)
        self.engine_kwargs: dict = {}

    def factory(self, spec):
        e = FakeEngine(context_length=64, **self.engine_kwargs)
        self.engines[spec.id] = e
        return e

    def app(self, preload=True):
        return create_app(self.registry, self.factory, self.cfg, knowledge_factory=lambda spec: self.kb,
                          embedder_factory=FakeEmbedder, preload=preload)

    @property
    def calls(self) -> int:
        return sum(e.calls for e in self.engines.values())


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


@pytest.fixture
def client(env):
    with TestClient(env.app()) as c:
        yield c


def sse(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def assert_error(r, status: int, code: str | None) -> dict:
    """`r` is the error `status`/`code` in its API's shape: Ollama's `{"error": "<message>"}` (plus `code` and
    `param`) on /api/*, OpenAI's `{"error": {...}}` elsewhere (`code` None: any). Returns it as OpenAI's fields
    (message, code, param)."""
    assert r.status_code == status, r.text
    body = r.json()
    if r.request.url.path.startswith("/api/"):
        assert isinstance(body["error"], str) and set(body) == {"error", "code", "param"}, body
        err = {"message": body["error"], "code": body["code"], "param": body["param"]}
    else:
        err = body["error"]
        assert set(err) >= {"message", "type", "param", "code"} and isinstance(err["type"], str)
    assert isinstance(err["code"], str) and code in (None, err["code"]), err
    assert isinstance(err["message"], str) and err["message"]
    return err


# ----------------------------------------------------------------------------------------------------- OpenAI
def test_chat_completion_json(client):
    r = client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "minimal"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello there friend"}
    assert body["choices"][0]["finish_reason"] == "stop"
    # persona system prompt (2 words + 3) + user (3 words + 3) = 11 prompt tokens; 4 completion tokens
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15,
                             "prompt_tokens_details": {"cached_tokens": 0}}  # the fake engine keeps no KV
    assert "sources" not in body and "confidence" not in body


def test_usage_reports_reused_prefix_as_openai_cached_tokens():
    """The engine's reused-prefix count (prefix reuse, serve/engines/prefix_cache.py) reaches clients where OpenAI
    reports its prompt-cache hits."""
    from serve import protocol as P
    from serve.engines.base import Usage

    wire = P.Usage.of(Usage(prompt_tokens=519, completion_tokens=40, cached_tokens=171)).model_dump(exclude_none=True)
    assert wire == {"prompt_tokens": 519, "completion_tokens": 40, "total_tokens": 559,
                    "prompt_tokens_details": {"cached_tokens": 171}}


def test_chat_max_tokens_stop_and_n(client):
    r = client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "max_tokens": 2, "n": 2})
    body = r.json()
    assert [c["message"]["content"] for c in body["choices"]] == ["Echo: hello"] * 2
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "length"]
    r = client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "stop": " there"})
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hello"


def test_chat_stream_sse_ends_with_done(client):
    r = client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Echo: hello there friend"
    finals = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert finals[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_completions(client):
    r = client.post("/v1/completions", json={"model": "minimal", "prompt": "one two three", "max_tokens": 3})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Echo: one two" and body["choices"][0]["finish_reason"] == "length"
    r = client.post("/v1/completions", json={"model": "minimal", "prompt": "a b", "stream": True})
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == "Echo: a b"


def test_models_lists_built_assistants_with_quant_tags(env, tmp_path):
    paths = AssistantPaths.for_name("pirate").ensure()
    save_resolved(config_from_dict({"name": "pirate"}), paths.root)
    paths.gguf.mkdir()
    for q in ("q4_k_m", "q8_0", "f16"):
        paths.gguf_file(q).write_bytes(b"GGUF")
    with TestClient(env.app(preload=False)) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids == ["kbot", "minimal", "pirate", "pirate:f16", "pirate:q4_k_m", "pirate:q8_0"]
        assert c.get("/v1/models/pirate:q8_0").json()["id"] == "pirate:q8_0"
        tags = {m["name"]: m for m in c.get("/api/tags").json()["models"]}
        assert tags["pirate:latest"]["details"]["quantization_level"] == "Q4_K_M"
        assert tags["pirate:q8_0"]["size"] == 4
        assert_error(c.get("/v1/models/nope"), 404, "model_not_found")


def test_embeddings(client):
    r = client.post("/v1/embeddings", json={"model": "minimal", "input": ["alpha", "beta"]})
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == 8
    assert body["data"][0]["embedding"] == FakeEmbedder().embed(["alpha"])[0]
    r = client.post("/v1/embeddings", json={"model": "fake-embedder", "input": "x", "encoding_format": "base64"})
    assert len(base64.b64decode(r.json()["data"][0]["embedding"])) == 8 * 4
    assert_error(client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model_not_found")


# ----------------------------------------------------------------------------------------------------- errors
def test_unknown_model_is_404_never_a_fallback(client, env):
    assert_error(client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": USER}), 404,
                 "model_not_found")
    assert_error(client.post("/api/chat", json={"model": "llama3", "messages": USER}), 404, "model_not_found")
    assert_error(client.post("/api/show", json={"model": "llama3"}), 404, "model_not_found")
    assert env.calls == 0


def test_context_length_exceeded(client):
    long = [{"role": "user", "content": "word " * 50}]
    assert_error(client.post("/v1/chat/completions", json={"model": "minimal", "messages": long, "max_tokens": 20}),
                 400, "context_length_exceeded")
    assert_error(client.post("/v1/chat/completions", json={"model": "minimal", "messages": [
        {"role": "user", "content": "word " * 70}]}), 400, "context_length_exceeded")
    assert_error(client.post("/api/chat", json={"model": "minimal", "messages": long, "options": {"num_ctx": 32}}),
                 400, "context_length_exceeded")


def test_unsupported_parameters_are_400(env):
    env.engine_kwargs = {"unsupported": {"n", "logprobs", "json_schema"}}
    with TestClient(env.app()) as c:
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "n": 2}), 400,
                     "unsupported_parameter")
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "logprobs": True}),
                     400, "unsupported_parameter")
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER,
                                                          "response_format": fmt}), 400, "unsupported_parameter")
        img = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": img}), 400,
                     "unsupported_parameter")
        assert_error(c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER,
                                                          "tools": [{"type": "function"}]}), 400,
                     "unsupported_parameter")
        assert c.get("/health").status_code == 200


def test_top_logprobs_without_logprobs_is_a_400_naming_it(client):
    """As OpenAI answers it, instead of ignoring top_logprobs."""
    err = assert_error(client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER,
                                                                 "top_logprobs": 3}), 400, None)
    assert "top_logprobs" in err["message"] and "logprobs" in err["message"]
    ok = client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "top_logprobs": 0})
    assert ok.status_code == 200  # 0 asks for nothing


def test_the_400_names_the_capability_the_engine_lacks(env):
    """What a request asks is derived from it (GenParams.requested): each route names the first parameter the
    engine's capabilities lack, in a fixed order, and never calls the engine."""
    env.engine_kwargs = {"unsupported": {"seed", "top_k", "n", "logprobs", "repeat_penalty", "frequency_penalty"}}
    chat, comp, ochat, ogen = "/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"
    cases = [
        (chat, {"messages": USER, "seed": 0}, "seed"),
        (chat, {"messages": USER, "logprobs": True, "n": 2}, "n"),
        (chat, {"messages": USER, "tools": [{"type": "function"}], "n": 2}, "tools"),
        (comp, {"prompt": "a b", "frequency_penalty": 0.5}, "frequency_penalty"),
        (comp, {"prompt": "a b", "logprobs": 1}, "logprobs"),
        (comp, {"prompt": "a b", "suffix": "z", "n": 2}, "suffix"),
        (ochat, {"messages": USER, "options": {"top_k": 40}, "stream": False}, "top_k"),
        (ochat, {"messages": USER, "options": {"repeat_penalty": 1.2}}, "repeat_penalty"),
        (ogen, {"prompt": "x", "options": {"seed": 1}, "think": True}, "seed"),
        (ogen, {"prompt": "x", "images": ["aGk="]}, "images"),
    ]
    with TestClient(env.app()) as c:
        for path, body, param in cases:
            err = assert_error(c.post(path, json={"model": "minimal", **body}), 400, "unsupported_parameter")
            assert err["param"] == param, (path, body, err)
            assert f"'{param}'" in err["message"] and "fake engine" in err["message"]
        # the neutral values ask nothing: Ollama's repeat_penalty 1 (off), top_k 0, one choice
        ok = c.post(ochat, json={"model": "minimal", "messages": USER, "stream": False,
                                 "options": {"repeat_penalty": 1.0, "top_k": 0}})
        assert ok.status_code == 200 and c.post(chat, json={"model": "minimal", "messages": USER, "n": 1,
                                                            "logprobs": False}).status_code == 200
        assert env.calls == 2


def test_a_request_tokenizes_its_prompt_once(env):
    """The context check's token ids are the ones the generation uses (BaseEngine.prompt_ids), RAG or not."""
    tokenized = lambda: sum(e.tokenized for e in env.engines.values())  # noqa: E731
    with TestClient(env.app()) as c:
        for i, model in enumerate(("minimal", "kbot"), 1):
            r = c.post("/v1/chat/completions", json={"model": model, "messages": USER})
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 0
            assert tokenized() == env.calls == i
        r = c.post("/api/generate", json={"model": "minimal", "prompt": "a b", "raw": True, "stream": False})
        assert r.json()["prompt_eval_count"] == 2 and tokenized() == env.calls == 3


def test_malformed_requests_are_400_in_their_api_s_shape(client):
    bad = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad, 400, "invalid_request_error")
    assert_error(client.post("/v1/chat/completions", json={"model": "minimal"}), 400, "invalid_request_error")
    r = client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER, "temperature": 5})
    assert_error(r, 400, "invalid_request_error")
    assert r.json()["error"]["param"] == "temperature"
    assert_error(client.post("/v1/chat/completions", json={"model": "minimal", "messages": []}), 400,
                 "invalid_request_error")
    assert assert_error(client.post("/api/chat", json={"messages": USER}), 400, "invalid_request_error")["param"] \
        == "model"
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/api/nothing-here"), 404, "not_found")
    assert_error(client.get("/api/chat"), 405, "method_not_allowed")
    assert client.get("/health").status_code == 200  # the server stays up


# ----------------------------------------------------------------------------------------------------- Ollama
def test_ollama_digest_is_the_gguf_sha256_and_stable_across_restarts(tmp_path, monkeypatch):
    """Like Ollama's: the same file gives the same digest in every server process, hashed once per file version; a
    rewritten file gets a new one."""
    import hashlib

    from protege import hashing

    reads = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: reads.append(p) or real(p))
    env = Env(tmp_path)
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    want = hashlib.sha256(gguf.read_bytes()).hexdigest()
    seen = []
    for _ in range(2):  # two app instances, as after a restart (the per-process cache emptied in between)
        hashing._cache.clear()
        reads.clear()
        with TestClient(env.app(preload=False)) as c:
            for _ in range(2):
                seen.append({m["name"]: m["digest"] for m in c.get("/api/tags").json()["models"]})
        assert len(reads) == 1  # two models on one file, two listings: one read
    assert seen[0] == seen[-1] == {"kbot:latest": want, "minimal:latest": want}
    gguf.write_bytes(b"GGUF other bytes")  # a new size: hashed again, not served from the cache
    with TestClient(env.app(preload=False)) as c:
        digests = {m["digest"] for m in c.get("/api/tags").json()["models"]}
    assert digests == {hashlib.sha256(b"GGUF other bytes").hexdigest()}


def test_ollama_show_reads_the_gguf_header_and_the_export(tmp_path):
    """/api/show's model_info, details and stops come from the file (checked against the gguf package's own reader)
    and, for an exported assistant, from its export report; nothing is hard-coded."""
    import gguf as gguf_lib

    from builder.base_model import embedded_gguf
    from serve.routers.ollama import human_number

    base = embedded_gguf()
    ref = gguf_lib.GGUFReader(base)
    n_params = sum(int(t.n_elements) for t in ref.tensors)
    eos = ref.fields["tokenizer.ggml.tokens"].contents(ref.fields["tokenizer.ggml.eos_token_id"].contents())
    paths = AssistantPaths.for_name("pirate").ensure()
    save_resolved(config_from_dict({"name": "pirate"}), paths.root)
    paths.gguf.mkdir()
    (paths.gguf_file("q8_0")).symlink_to(base)
    (paths.gguf / "export_report.json").write_text(json.dumps({"template": {"stops": ["<|im_end|>", "<|x|>"]}}))
    registry = Registry([config_from_dict({"name": "minimal"})], embedded_gguf=base)
    app = create_app(registry, lambda spec: FakeEngine([spec.id]), ServeConfig(), embedder_factory=FakeEmbedder,
                     preload=False)
    with TestClient(app) as c:
        show = c.post("/api/show", json={"model": "minimal"}).json()
        info = show["model_info"]
        assert info["general.architecture"] == ref.fields["general.architecture"].contents() == "llama"
        assert info["general.parameter_count"] == n_params and n_params > 100e6
        assert info["llama.context_length"] == ref.fields["llama.context_length"].contents()
        assert info["tokenizer.ggml.tokens"] is None and "tokenizer.chat_template" not in info  # arrays not sent
        assert show["details"]["parameter_size"] == human_number(n_params) == "134.52M"
        assert show["details"]["quantization_level"] == "Q4_1" and show["details"]["family"] == "llama"
        assert show["parameters"].splitlines() == ["num_ctx 2048", f"stop {json.dumps(eos)}"]  # the base: its eos
        assert eos == "<|im_end|>"
        exported = c.post("/api/show", json={"model": "pirate:q8_0"}).json()
        assert exported["parameters"].splitlines()[1:] == ['stop "<|im_end|>"', 'stop "<|x|>"']  # the export's
        assert exported["model_info"]["general.parameter_count"] == n_params
        tags = {m["name"]: m["details"] for m in c.get("/api/tags").json()["models"]}
        assert tags["minimal:latest"]["parameter_size"] == "134.52M"


def test_ollama_basics(client):
    assert client.get("/").text == "Ollama is running"
    assert client.get("/api/version").json()["version"]
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert names == ["kbot:latest", "minimal:latest"]
    show = client.post("/api/show", json={"model": "minimal"}).json()
    assert show["system"] == "Be brief." and show["details"]["format"] == "gguf"
    ps = client.get("/api/ps").json()["models"]
    assert [m["name"] for m in ps] == ["minimal:latest"]  # the preloaded default: the first config


def test_ollama_chat_ndjson_final_line(client):
    r = client.post("/api/chat", json={"model": "minimal:latest", "messages": USER})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert all(not x["done"] for x in lines[:-1]) and lines[-1]["done"] is True
    assert "".join(x["message"]["content"] for x in lines) == "Echo: hello there friend"
    final = lines[-1]
    assert final["done_reason"] == "stop" and final["eval_count"] == 4 and final["prompt_eval_count"] == 11
    for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration", "created_at", "model"):
        assert k in final
    r = client.post("/api/chat", json={"model": "minimal", "messages": USER, "stream": False,
                                       "options": {"num_predict": 2}})
    body = r.json()
    assert body["message"]["content"] == "Echo: hello" and body["done_reason"] == "length"


def test_ollama_reads_bodies_as_json_whatever_the_content_type(client):
    # Ollama's documented calls are `curl URL -d '{...}'`, which sends form data
    body = json.dumps({"model": "minimal", "messages": USER, "stream": False})
    for ctype in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"content-type": ctype} if ctype else {}
        r = client.post("/api/chat", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["message"]["content"] == "Echo: hello there friend", r.text


def test_ollama_generate(client):
    r = client.post("/api/generate", json={"model": "minimal", "prompt": "why sky", "stream": False})
    assert r.json()["response"] == "Echo: why sky" and r.json()["done"] is True
    lines = [json.loads(x) for x in client.post("/api/generate", json={"model": "minimal", "prompt": "a b",
                                                                        "raw": True}).text.splitlines()]
    assert "".join(x["response"] for x in lines) == "Echo: a b" and lines[-1]["eval_count"] == 3
    load = client.post("/api/generate", json={"model": "minimal", "prompt": ""}).json()
    assert load["done"] is True and load["done_reason"] == "load"
    assert_error(client.post("/api/generate", json={"model": "minimal", "prompt": "x", "context": [1, 2]}), 400,
                 "unsupported_parameter")
    for path, body in (("/api/chat", {"messages": USER}), ("/api/generate", {"prompt": "x"})):
        for think in (True, "high"):
            err = assert_error(client.post(path, json={"model": "minimal", **body, "think": think}), 400,
                               "unsupported_parameter")
            assert err["param"] == "think" and "'think'" in err["message"]
        assert client.post(path, json={"model": "minimal", **body, "think": False, "stream": False}).status_code == 200
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert assert_error(client.post("/api/chat", json={"model": "minimal", "messages": USER, "tools": tools}), 400,
                        "unsupported_parameter")["param"] == "tools"
    fmt = client.post("/api/generate", json={"model": "minimal", "prompt": "x", "format": "json", "stream": False})
    assert json.loads(fmt.json()["response"]) == {"echo": "x"}


def test_ollama_embed(client):
    body = client.post("/api/embed", json={"model": "minimal", "input": ["a", "b", "c"]}).json()
    assert len(body["embeddings"]) == 3 and body["embeddings"][1] == FakeEmbedder().embed(["b"])[0]


# -------------------------------------------------------------------------------------------------------- RAG
def test_rag_refusal_never_calls_the_engine(client, env):
    q = [{"role": "user", "content": "something unknown"}]
    body = client.post("/v1/chat/completions", json={"model": "kbot", "messages": q}).json()
    assert body["choices"][0]["message"]["content"] == FakeKB.refusal
    assert body["confidence"] == pytest.approx(0.1) and body["sources"][0]["path"] == "faq.md"
    events = sse(client.post("/v1/chat/completions", json={"model": "kbot", "messages": q, "stream": True}).text)
    assert FakeKB.refusal in "".join(events) and events[-1] == "[DONE]"
    lines = [json.loads(x) for x in client.post("/api/chat", json={"model": "kbot", "messages": q}).text.splitlines()]
    assert lines[0]["message"]["content"] == FakeKB.refusal and lines[-1]["confidence"] == pytest.approx(0.1)
    assert env.calls == 0
    metrics = client.get("/metrics").text
    assert 'protege_rag_refusals_total{model="kbot"} 3.0' in metrics


def test_rag_answer_carries_sources_and_can_be_turned_off(client, env):
    body = client.post("/v1/chat/completions", json={"model": "kbot", "messages": USER}).json()
    assert body["choices"][0]["message"]["content"] == "Echo: ctx: faq hello there friend"
    assert body["sources"] == [{"path": "faq.md", "section": "Billing", "page": None, "chunk_id": "faq-1",
                                "score": 0.9}]
    assert body["confidence"] == pytest.approx(0.9)
    events = sse(client.post("/v1/chat/completions", json={"model": "kbot", "messages": USER, "stream": True}).text)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["sources"][0]["chunk_id"] == "faq-1" and last["confidence"] == 0.9
    text = client.post("/api/chat", json={"model": "kbot", "messages": USER}).text
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines[-1]["done"] and lines[-1]["sources"][0]["path"] == "faq.md"
    kb_calls = env.kb.calls
    assert_error(client.post("/v1/chat/completions", json={"model": "kbot", "messages": USER, "rag": False}), 403,
                 "rag_required")  # the default policy (tests/test_serve_lifecycle.py has the rest)
    env.registry.get("kbot").cfg.serve.allow_rag_off = True
    off = client.post("/v1/chat/completions", json={"model": "kbot", "messages": USER, "rag": False}).json()
    assert off["choices"][0]["message"]["content"] == "Echo: hello there friend" and "sources" not in off
    off = client.post("/api/chat", json={"model": "kbot", "messages": USER, "stream": False,
                                         "options": {"rag": False}}).json()
    assert off["message"]["content"] == "Echo: hello there friend" and "sources" not in off
    assert env.kb.calls == kb_calls


# ------------------------------------------------------------------------------------------------- operations
def test_api_keys_on_every_route_but_health(tmp_path):
    env = Env(tmp_path, api_keys=["s3cret", "other"])
    with TestClient(env.app()) as c:
        assert c.get("/health").status_code == 200
        for method, path, body in [("GET", "/v1/models", None), ("GET", "/api/tags", None), ("GET", "/metrics", None),
                                   ("POST", "/api/chat", {"model": "minimal", "messages": USER}),
                                   ("POST", "/v1/chat/completions", {"model": "minimal", "messages": USER})]:
            r = c.request(method, path, json=body)
            assert_error(r, 401, "invalid_api_key")
            r = c.request(method, path, json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = c.request(method, path, json=body, headers={"Authorization": "Bearer other"})
            assert r.status_code == 200, path


def test_cors_allowlist(tmp_path):
    env = Env(tmp_path, cors_origins=["https://app.example"], api_keys=["k"])
    with TestClient(env.app()) as c:
        pre = c.options("/v1/chat/completions", headers={"Origin": "https://app.example",
                                                         "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert pre.headers["access-control-allow-credentials"] == "true"
        r = c.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in r.headers
    for bad in (["*"], ["https://*.example"], ["app.example"]):  # an allowlist, as documented: never a wildcard
        with pytest.raises(ValueError, match="not allowed|not an origin"):
            ServeConfig(cors_origins=bad)


def test_body_limit(tmp_path):
    env = Env(tmp_path, max_body_bytes=500)
    with TestClient(env.app()) as c:
        big = {"model": "minimal", "messages": [{"role": "user", "content": "x" * 1000}]}
        assert_error(c.post("/v1/chat/completions", json=big), 413, "request_too_large")
        assert_error(c.post("/api/chat", json=big), 413, "request_too_large")  # Ollama's shape on /api
        assert c.post("/v1/chat/completions", json={"model": "minimal", "messages": USER}).status_code == 200


def test_health_503_until_loaded(tmp_path):
    env = Env(tmp_path)
    env.engine_kwargs = {"load_delay": 0.5}
    with TestClient(env.app()) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        deadline = time.time() + 5
        while c.get("/health").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/health").json()["status"] == "ok"


async def _achat(client: httpx.AsyncClient, text: str, **kw) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": "minimal", "stream": True, "messages": [
        {"role": "user", "content": text}], **kw})


def test_queue_full_is_429_with_retry_after(tmp_path):
    env = Env(tmp_path, parallel=1, max_queue=1)
    env.engine_kwargs = {"delay": 0.02}
    app = env.app(preload=False)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*[_achat(c, f"w{i} " * 10) for i in range(3)])

    rs = asyncio.run(main())
    statuses = sorted(r.status_code for r in rs)
    assert statuses == [200, 200, 429]
    r429 = next(r for r in rs if r.status_code == 429)
    assert r429.headers["retry-after"] == "1" and r429.json()["error"]["code"] == "rate_limit_exceeded"


def test_concurrent_streams_never_mix(tmp_path):
    env = Env(tmp_path, parallel=8)
    env.engine_kwargs = {"delay": 0.001}
    app = env.app(preload=False)
    words = [" ".join(f"c{i}w{k}" for k in range(8)) for i in range(8)]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*[_achat(c, w) for w in words])

    for w, r in zip(words, asyncio.run(main())):
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in sse(r.text)[:-1])
        assert text == f"Echo: {w}"


def test_client_disconnect_stops_generation(tmp_path):
    env = Env(tmp_path)
    env.engine_kwargs = {"delay": 0.05}
    app = env.app(preload=False)
    body = json.dumps({"model": "minimal", "stream": True, "messages": [{"role": "user", "content": "w " * 40}]})
    sent: list[dict] = []

    async def main():
        state = {"n": 0}

        async def receive():
            state["n"] += 1
            if state["n"] == 1:
                return {"type": "http.request", "body": body.encode(), "more_body": False}
            await asyncio.sleep(0.3)
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "headers": [(b"content-type", b"application/json")], "scheme": "http",
                 "server": ("t", 80), "client": ("c", 1), "root_path": ""}
        await asyncio.wait_for(app(scope, receive, send), 5)

    t0 = time.time()
    asyncio.run(main())
    assert time.time() - t0 < 1.5  # 41 tokens x 50 ms would take > 2 s
    engine = env.engines["minimal"]
    assert engine.cancelled == 1 and engine.completed == 0
    assert app.state.service.admission.inflight == 0


def test_metrics(client):
    client.post("/v1/chat/completions", json={"model": "minimal", "messages": USER})
    client.post("/v1/chat/completions", json={"model": "nope", "messages": USER})
    text = client.get("/metrics").text
    assert 'protege_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'protege_errors_total{code="model_not_found"} 1.0' in text
    assert 'protege_generated_tokens_total{model="minimal"} 4.0' in text
    assert "protege_time_to_first_token_seconds_count" in text and "protege_queue_depth 0.0" in text
