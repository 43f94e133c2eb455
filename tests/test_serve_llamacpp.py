"""A real `protege serve` subprocess on loopback, llama.cpp engine, the embedded SmolLM2 GGUF (configs/minimal.yaml),
driven by the official `openai` (sync, async, streaming) and `ollama` clients and LangChain's ChatOpenAI."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
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
    """json_object: the JSON grammar constrains every token; the prompt asks for a one-key object and max_tokens leaves
    room for several times its length, so greedy decoding closes it and ends the turn: "stop", and it parses."""
    r = _openai(server).chat.completions.create(
        model=MODEL, temperature=0, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply with a JSON object with one key, \"city\", naming the capital "
                                              "of France."}])
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj, dict) and "city" in obj, obj


# A finite language: an enum and a boolean, no other keys, and llama.cpp's schema grammar allows at most one space
# between tokens, so the longest document is under 70 characters: 128 tokens always reach "}" and the end of turn.
CAPITAL_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["capital", "is_largest_city"],
                  "properties": {"capital": {"type": "string", "enum": ["Paris", "Lyon", "Marseille"]},
                                 "is_largest_city": {"type": "boolean"}}}


def test_json_schema_output_validates_against_the_schema(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA, "strict": True}}
    client = _openai(server)
    for q in ("What is the capital of France? Answer in JSON.", QUESTIONS[4]):  # on topic, and not at all
        r = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=128, response_format=fmt,
                                           messages=[{"role": "user", "content": q}])
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        obj = json.loads(text)
        assert set(obj) == {"capital", "is_largest_city"}, obj
        assert obj["capital"] in ("Paris", "Lyon", "Marseille") and isinstance(obj["is_largest_city"], bool), obj


def _stream_text(client, **kw) -> tuple[str, str | None, list]:
    """(text, finish_reason, token logprobs) of one streamed chat completion."""
    parts, finish, lps = [], None, []
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kw):
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
            lps += ch.logprobs.content if ch.logprobs and ch.logprobs.content else []
    return "".join(parts), finish, lps


def test_logprobs_are_the_sampled_tokens_and_their_log_probabilities(server):
    """Greedy decoding: each token's logprob is <= 0 and the best of its top 3 (sorted, summing to at most 1 as
    probabilities); the tokens concatenate to the reply, one per completion token, streamed or not."""
    client = _openai(server)
    kw = dict(temperature=0, max_tokens=24, logprobs=True, top_logprobs=3,
              messages=[{"role": "user", "content": QUESTIONS[2]}])
    r = client.chat.completions.create(model=MODEL, **kw)
    text, lps = r.choices[0].message.content, r.choices[0].logprobs.content
    assert text.strip() and text.isascii()  # ASCII: every token's text is exactly its bytes
    assert "".join(t.token for t in lps) == text and len(lps) == r.usage.completion_tokens
    for t in lps:
        assert t.logprob <= 0
        top = [(a.token, a.logprob) for a in t.top_logprobs]
        assert len(top) == 3 and [v for _, v in top] == sorted((v for _, v in top), reverse=True)
        assert top[0] == (t.token, pytest.approx(t.logprob)) and sum(math.exp(v) for _, v in top) <= 1 + 1e-6
    streamed, finish, slps = _stream_text(client, **kw)
    assert (streamed, finish) == (text, r.choices[0].finish_reason)
    assert [(t.token, round(t.logprob, 4)) for t in slps] == [(t.token, round(t.logprob, 4)) for t in lps]


def test_a_stop_string_split_across_tokens_is_held_back_and_cut(server):
    """A stop string that starts at one token and ends inside the next: the first token must be held back (it could
    begin the stop), so neither the stream nor the reply shows any of it, and everything before it arrives intact.
    A string that only starts like a stop releases the held text: the reply is unchanged."""
    client = _openai(server)
    kw = dict(temperature=0, max_tokens=24, messages=[{"role": "user", "content": QUESTIONS[1]}])
    r = client.chat.completions.create(model=MODEL, logprobs=True, **kw)
    text, tokens = r.choices[0].message.content, [t.token for t in r.choices[0].logprobs.content]
    assert "".join(tokens) == text and len(tokens) >= 6
    i = next(i for i in range(len(tokens) // 3, len(tokens) - 1) if tokens[i].strip() and tokens[i + 1]
             and text.find(tokens[i] + tokens[i + 1][0]) == len("".join(tokens[:i])))
    stop, before = tokens[i] + tokens[i + 1][0], "".join(tokens[:i])
    streamed, finish, _ = _stream_text(client, stop=[stop], **kw)
    assert (streamed, finish) == (before, "stop") and stop not in streamed
    cut = client.chat.completions.create(model=MODEL, stop=[stop], **kw).choices[0]
    assert (cut.message.content, cut.finish_reason) == (before, "stop")
    streamed, finish, _ = _stream_text(client, stop=[tokens[i] + "\u2603never"], **kw)
    assert (streamed, finish) == (text, r.choices[0].finish_reason)


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


def _alone_then_together(server) -> tuple[list, list]:
    """Each question streamed alone, then all 8 at once (decoded in one batch), temperature 0."""
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

    return asyncio.run(main())


def test_eight_concurrent_streams_each_get_their_own_answer(server):
    """The default unified KV cache: 8 clients at once each get a complete answer to their own question (the batch
    may sum floats in another order than alone, so a few greedy tokens can differ; bench/soak.py probes cross-talk
    with code words)."""
    alone, together = _alone_then_together(server)
    for q, (a, _), (t, ft) in zip(QUESTIONS, alone, together):
        assert ft in ("stop", "length") and t.strip(), q
    assert len({t for t, _ in together}) == len(QUESTIONS)  # no two clients got the same (mixed) stream
    assert sum(t == a for (a, _), (t, _) in zip(alone, together)) >= len(QUESTIONS) // 4  # the same model's answers


@pytest.fixture(scope="module")
def invariant_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home-invariant")
    with protege_serve(home, str(REPO / "configs" / "minimal.yaml"), "--no-registry", "--parallel", "8", "--n-ctx",
                       "1024", "--log-level", "warning", "--set", "serve.batch_invariant=true",
                       env={"PROTEGE_API_KEYS": "test-key"}, timeout=120) as base:
        yield base


def test_batch_invariant_streams_are_bit_identical_to_alone(invariant_server):
    """serve.batch_invariant: per-sequence KV streams + flash attention make batched decoding bit-identical to
    decoding alone."""
    alone, together = _alone_then_together(invariant_server)
    for q, (a, _), (t, ft) in zip(QUESTIONS, alone, together):
        assert ft in ("stop", "length") and t == a, (q, a, t)
    assert len({t for t, _ in together}) == len(QUESTIONS)


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


@pytest.fixture(scope="module")
def engine():
    """The real engine in process, one decoding slot."""
    from builder.base_model import embedded_gguf
    from serve.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(embedded_gguf(), parallel=1, n_ctx=512)
    asyncio.run(engine.load())
    yield engine
    asyncio.run(engine.close())


def test_the_real_engine_tokenizes_a_request_once(engine):
    """Service.prepare's context check and the generation share one tokenization (BaseEngine.prompt_ids), and the
    shared ids are exactly what a fresh tokenization of the same prompt gives."""
    from serve.engines.base import GenParams, Usage

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
        del engine.prompt_tokens  # the class's method again


def test_cancelling_frees_the_sequence_and_its_slot(engine):
    """Closing a stream mid-generation stops its decoding at once and frees its slot and sampler; a request cancelled
    while still waiting for the slot is freed without ever decoding; the next request then runs in the freed slot and
    gets exactly the answer it got before (the slot's KV cache was cleared)."""
    from serve.engines.base import GenParams

    def params(q: str, n: int) -> GenParams:
        return GenParams("m", [{"role": "user", "content": q}], max_tokens=n, temperature=0)

    async def text(p: GenParams) -> str:
        return "".join([d.text async for d in engine.stream_chat(p)])

    async def settled() -> None:
        """Until no sequence is active or waiting and the slot is free again (a stream's last item reaches its client
        just before the scheduler thread releases the slot)."""
        deadline = time.monotonic() + 10
        while engine._active or engine._waiting or engine._free != [0]:
            assert time.monotonic() < deadline, "the cancelled sequences were not freed"
            await asyncio.sleep(0.01)

    async def main():
        before = await text(params(QUESTIONS[5], 12))
        long = engine.stream_chat(params("Write a long story about a ship lost at sea.", 400))
        first = await long.__anext__()
        running = engine._active[0]
        waiting = engine.stream_chat(params(QUESTIONS[0], 400))
        parked = asyncio.ensure_future(waiting.__anext__())
        while not engine._waiting:
            await asyncio.sleep(0.01)
        queued = engine._waiting[0]
        parked.cancel()  # the client of the waiting request goes away
        await asyncio.gather(parked, return_exceptions=True)
        generated = running.generated
        await long.aclose()  # the streaming client goes away
        await settled()
        after = await text(params(QUESTIONS[5], 12))
        await settled()
        return before, first, running, generated, queued, after

    before, first, running, generated, queued, after = asyncio.run(main())
    assert first.text and running.cancelled and running.sampler is None
    assert running.usage.eval_ns == 0  # never finished on its own (a finish records the decode time)
    assert running.generated <= generated + 2 < 400  # at most the step in flight after the close
    assert queued.cancelled and queued.sampler is None and queued.generated == 0 and queued.slot == -1
    assert after == before and after.strip()


def test_a_shared_prefix_is_not_prefilled_again_and_answers_stay_the_same(engine):
    """Prefix reuse: a request whose prompt starts like the slot's last one (the persona's system turn) prefills only
    the rest, and answers exactly as it does with the slot cleared first; a prompt sharing nothing reuses nothing."""
    from serve.engines.base import GenParams, Usage

    system = {"role": "system", "content": "You are Captain Byte, the cheerful pirate-voiced support assistant of "
                                           "Byte Harbor Cloud. Every reply begins with \"Ahoy!\"."}

    def ask(question: str) -> tuple[str, Usage]:
        usage = Usage()
        params = GenParams("m", [system, {"role": "user", "content": question}], max_tokens=16, temperature=0)

        async def run() -> str:
            return "".join([d.text async for d in engine.stream_chat(params, usage)])

        return asyncio.run(run()), usage

    assert engine.slots.enabled
    ask(QUESTIONS[0])
    reused, usage = ask(QUESTIONS[1])
    system_ids = engine.prompt_tokens(GenParams("m", [system, {"role": "user", "content": ""}]))
    assert len(system_ids) - 8 <= usage.cached_tokens < usage.prompt_tokens  # the system turn, not the question
    again, usage_again = ask(QUESTIONS[1])  # the whole prompt is cached now: one token is decoded for its logits
    assert usage_again.cached_tokens == usage_again.prompt_tokens - 1
    engine.slots.enabled = False
    try:
        fresh, cold = ask(QUESTIONS[1])
    finally:
        engine.slots.enabled = True
    assert cold.cached_tokens == 0
    assert reused == again == fresh and fresh.strip()
    plain = GenParams("m", [{"role": "user", "content": QUESTIONS[2]}], prompt="Once upon a time", max_tokens=4,
                      temperature=0)
    usage = Usage()

    async def run_plain() -> str:
        return "".join([d.text async for d in engine.stream_chat(plain, usage)])

    asyncio.run(run_plain())
    assert usage.cached_tokens == 0  # a raw completion shares no prefix with the chat template
