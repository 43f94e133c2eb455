"""A real `protege serve` subprocess on loopback, llama.cpp engine, the embedded SmolLM2 GGUF (configs/minimal.yaml),
driven by the official `openai` (sync, async, streaming) and `ollama` clients and LangChain's ChatOpenAI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.net import protege_serve

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

REPO = Path(__file__).resolve().parent.parent
MODEL = "minimal"
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2+2?", "Tell me a joke.",
             "What is Python?", "Who wrote Hamlet?", "What is water made of?", "Say hello."]



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with protege_serve(home, str(REPO / "configs" / "minimal.yaml"), "--no-registry", "--parallel", "8", "--n-ctx",
                       "1024", "--log-level", "warning", env={"PROTEGE_API_KEYS": "test-key"}, timeout=120) as base:
        yield base


def _openai(server, **kw):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="test-key", max_retries=0, **kw)


def test_openai_sync_and_errors(server):
    import openai

    client = _openai(server)
    assert MODEL in [m.id for m in client.models.list().data]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                       temperature=0, max_tokens=24)
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10
    assert r.choices[0].finish_reason in ("stop", "length")
    c = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert c.choices[0].text.strip()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=1000,
                                       messages=[{"role": "user", "content": "hi " * 300}])
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server}/health").status_code == 200


def test_openai_json_mode_is_valid_json(server):
    import json

    r = _openai(server).chat.completions.create(
        model=MODEL, temperature=0, max_tokens=48, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give a JSON object with a key 'city' for France's capital."}])
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_openai_async_streaming(server):
    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="test-key", max_retries=0)
        full = await client.chat.completions.create(model=MODEL, temperature=0, max_tokens=24, seed=1,
                                                    messages=[{"role": "user", "content": QUESTIONS[2]}])
        stream = await client.chat.completions.create(model=MODEL, temperature=0, max_tokens=24, seed=1, stream=True,
                                                      stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": QUESTIONS[2]}])
        parts, usage, finish = [], None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                parts.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
        return full, "".join(parts), usage, finish

    full, streamed, usage, finish = asyncio.run(main())
    assert streamed == full.choices[0].message.content  # streaming and JSON agree
    assert usage.completion_tokens == full.usage.completion_tokens and finish in ("stop", "length")


def test_ollama_client(server):
    import ollama

    client = ollama.Client(host=server, headers={"Authorization": "Bearer test-key"})
    assert f"{MODEL}:latest" in [m.model for m in client.list().models]
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[1]}],
                    options={"temperature": 0, "num_predict": 24})
    assert r.message.content.strip() and r.done and r.eval_count > 0 and r.prompt_eval_count > 0
    g = client.generate(model=MODEL, prompt=QUESTIONS[5], options={"temperature": 0, "num_predict": 16})
    assert g.response.strip() and g.eval_count > 0
    parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[1]}], stream=True,
                             options={"temperature": 0, "num_predict": 24}))
    assert parts[-1].done and "".join(p.message.content for p in parts) == r.message.content
    assert 'SYSTEM """You are a concise, helpful assistant."""' in client.show(MODEL).modelfile
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404


def test_langchain_chat_openai(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{server}/v1", api_key="test-key", temperature=0, max_tokens=16,
                     max_retries=0)
    assert llm.invoke("Say hello.").content.strip()
    assert "".join(c.content for c in llm.stream("Say hello.")).strip()


def test_eight_concurrent_streams_each_get_their_own_answer(server):
    """8 clients stream at once (decoded in one batch); each gets a complete answer to its own question that matches
    the answer it gets alone (temperature 0)."""
    import openai

    async def ask(client, q):
        stream = await client.chat.completions.create(model=MODEL, temperature=0, seed=7, max_tokens=32, stream=True,
                                                      messages=[{"role": "user", "content": q}])
        parts, finish = [], None
        async for chunk in stream:
            for ch in chunk.choices:
                parts.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
        return "".join(parts), finish

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="test-key", max_retries=0, timeout=300)
        alone = [await ask(client, q) for q in QUESTIONS]
        together = await asyncio.gather(*[ask(client, q) for q in QUESTIONS])
        return alone, together

    alone, together = asyncio.run(main())
    for q, (a, fa), (t, ft) in zip(QUESTIONS, alone, together):
        assert ft in ("stop", "length") and t.strip(), q
        # per-sequence KV streams + flash attention make batched decoding bit-identical to decoding alone
        assert t == a, (q, a, t)
    assert len({t for t, _ in together}) == len(QUESTIONS)  # no two clients got the same (mixed) stream


def test_protege_run_in_process_on_cpu(tmp_path):
    """`protege run CONFIG --local`: the terminal chat without a server, real llama.cpp, streamed to stdout."""
    env = {**os.environ, "PROTEGE_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "protege", "run", str(REPO / "configs" / "minimal.yaml"), "--local",
                        "--prompt", "Say hello.", "--temperature", "0", "--max-tokens", "12"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
    r = subprocess.run([sys.executable, "-m", "protege", "run", str(REPO / "configs" / "minimal.yaml"), "--local",
                        "--max-tokens", "12"],
                       input='"""\nSay\nhello.\n"""\n/clear\n/bye\n', cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "Cleared session context" in r.stdout, r.stderr[-2000:]


def test_the_real_engine_tokenizes_a_request_once():
    """Service.prepare's context check and the generation share one tokenization (BaseEngine.prompt_ids), and the
    shared ids are exactly what a fresh tokenization of the same prompt gives."""
    from builder.base_model import embedded_gguf
    from serve.engines.base import GenParams, Usage
    from serve.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(embedded_gguf(), parallel=1, n_ctx=512)
    asyncio.run(engine.load())
    calls, tokenize = [], engine.prompt_tokens
    engine.prompt_tokens = lambda p: calls.append(1) or tokenize(p)  # type: ignore[method-assign]
    try:
        params = GenParams("m", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                           max_tokens=4, temperature=0)
        n = engine.count_tokens(params)
        usage = Usage()

        async def run() -> str:
            return "".join([d.text async for d in engine.stream_chat(params, usage)])

        assert asyncio.run(run()) and usage.completion_tokens > 0
        assert len(calls) == 1 and usage.prompt_tokens == n
        assert params.prompt_cache[1] == tokenize(params)
    finally:
        asyncio.run(engine.close())
