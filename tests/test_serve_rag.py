"""RAG in the serving loop with the real parts: Chroma index + all-MiniLM-L6-v2 + the confidence gate, behind the
OpenAI and Ollama routes (the fake engine stands in for the LLM so the test can count calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow
pytest.importorskip("chromadb")

CORPUS = Path(__file__).resolve().parent / "assets" / "rag_corpus"


@pytest.fixture
def rag_app(tmp_path):
    yield from _rag_app(tmp_path, preload=True)


def _rag_app(tmp_path, preload: bool):
    from protege.config_file import config_from_dict
    from protege.paths import AssistantPaths
    from rag.knowledge import KnowledgeBase
    from serve.app import create_app
    from serve.engines.fake import FakeEngine
    from serve.registry import Registry

    cfg = config_from_dict({"name": "battery", "knowledge": {"folder": str(CORPUS), "min_score": 0.35},
                            "serve": {"allow_rag_off": True}})  # the test turns RAG off once
    KnowledgeBase.open(cfg, AssistantPaths.for_name("battery").ensure()).index()
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    engines: list[FakeEngine] = []

    def factory(spec):
        engines.append(FakeEngine(context_length=4096))
        return engines[-1]

    app = create_app(Registry([cfg], embedded_gguf=gguf), factory, preload=preload)  # the real knowledge + embedder
    with TestClient(app) as client:
        yield client, engines


def test_answer_with_sources_and_refusal_without_engine(rag_app):
    client, engines = rag_app
    q = [{"role": "user", "content": "Who is allowed to install the home battery?"}]
    body = client.post("/v1/chat/completions", json={"model": "battery", "messages": q}).json()
    assert body["confidence"] >= 0.35 and body["sources"]
    assert any(s["path"] == "guides/installation.md" for s in body["sources"])
    assert engines[0].last_params.messages[-1]["content"].startswith("<documents>\n[1] ")  # the grounded prompt
    # the fake echoes the prompt back: the guard cuts the leaked scaffold and says it quoted the source instead
    reply = body["choices"][0]["message"]["content"]
    assert "<documents>" not in reply and body["grounding"] == "extractive" and "electrician" in reply
    assert "why" not in body
    calls = engines[0].calls
    off = [{"role": "user", "content": "What is the best recipe for chocolate cake?"}]
    body = client.post("/v1/chat/completions", json={"model": "battery", "messages": off}).json()
    assert body["choices"][0]["message"]["content"].startswith("I don't know") and body["confidence"] < 0.35
    assert body["why"].startswith("below min_score")  # which gate refused (an answer carries no "why")
    text = client.post("/api/chat", json={"model": "battery", "messages": off}).text
    lines = [json.loads(x) for x in text.split("\n") if x]
    assert lines[0]["message"]["content"].startswith("I don't know") and lines[-1]["done"]
    assert lines[-1]["why"] == body["why"] and list(lines[-1])[-1] == "why"  # Ollama's final line, last
    text = client.post("/v1/chat/completions", json={"model": "battery", "messages": off, "stream": True}).text
    final = [json.loads(x[6:]) for x in text.split("\n") if x.startswith("data: {")][-1]
    assert final["grounding"] == "refused" and final["why"] == body["why"]  # SSE's final chunk
    assert engines[0].calls == calls  # refusals never reached the model
    body = client.post("/v1/chat/completions", json={"model": "battery", "messages": off, "rag": False}).json()
    assert "sources" not in body and engines[0].calls == calls + 1


def test_embeddings_use_the_rag_embedder(rag_app):
    client, _ = rag_app
    body = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["battery", "bolts"]}).json()
    assert len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 384
    norm = sum(x * x for x in body["data"][0]["embedding"]) ** 0.5
    assert abs(norm - 1) < 1e-3
    out = client.post("/api/embed", json={"model": "battery", "input": "battery"}).json()
    assert out["embeddings"][0] == pytest.approx(body["data"][0]["embedding"], abs=1e-5)


def test_a_refused_question_never_loads_the_model(tmp_path):
    """The gate runs before the engine is acquired: an off-topic first question is answered with no model loaded."""
    client, engines = next(app := _rag_app(tmp_path, preload=False))
    off = [{"role": "user", "content": "What is the best recipe for chocolate cake?"}]
    body = client.post("/v1/chat/completions", json={"model": "battery", "messages": off}).json()
    assert body["grounding"] == "refused" and body["choices"][0]["message"]["content"].startswith("I don't know")
    assert engines == []  # no engine was made
    q = [{"role": "user", "content": "Who is allowed to install the home battery?"}]
    assert client.post("/v1/chat/completions", json={"model": "battery", "messages": q}).json()["sources"]
    assert len(engines) == 1 and engines[0].calls == 1
    app.close()
