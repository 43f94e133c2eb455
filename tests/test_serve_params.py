"""Wire types translate themselves into GenParams (`to_gen_params()`), what a request asks of an engine is derived
from it (`requested()`), engines declare `capabilities`, and an engine tokenizes a request's prompt once."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from serve import protocol as P
from serve import protocol_ollama as O
from serve.engines.fake import FakeEngine
from serve.engines.llamacpp import LlamaCppEngine
from serve.engines.vllm import VllmEngine
from serve.params import CAPABILITIES, GenParams, ordered

USER = [{"role": "user", "content": "hi"}]


def test_openai_chat_to_gen_params():
    req = P.ChatCompletionRequest(
        model="m", messages=[{"role": "developer", "content": "Be terse."},
                             {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                          {"type": "image_url", "image_url": {"url": "data:,"}}]}],
        temperature=0, top_p=0.5, seed=3, stop="END", n=2, logprobs=True, top_logprobs=2, presence_penalty=0.5,
        response_format={"type": "json_object"}, max_completion_tokens=9, max_tokens=20, tools=[{"type": "function"}])
    p = req.to_gen_params()
    assert p == GenParams(model="m", messages=[{"role": "system", "content": "Be terse."},
                                               {"role": "user", "content": "hi"}],
                          max_tokens=9, temperature=0, top_p=0.5, seed=3, stop=["END"], n=2, logprobs=True,
                          top_logprobs=2, json_object=True, presence_penalty=0.5,
                          features={"temperature", "tools", "images"})
    assert p.requested() == {"temperature", "top_p", "seed", "stop", "n", "logprobs", "presence_penalty",
                             "json_object", "tools", "images"}


def test_openai_defaults_ask_nothing_and_a_schema_is_json_schema():
    p = P.ChatCompletionRequest(model="m", messages=USER).to_gen_params()
    assert p == GenParams(model="m", messages=USER) and p.requested() == frozenset()
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    p = P.ChatCompletionRequest(model="m", messages=USER, response_format=fmt, logit_bias={"1": 2.0}, tools=[],
                                temperature=1.0, top_p=1.0).to_gen_params()
    # an explicit temperature counts (it has no neutral value); top_p 1 is the neutral value; empty tools ask nothing
    assert p.json_schema == {"type": "object"} and not p.json_object
    assert p.requested() == {"json_schema", "logit_bias", "temperature"}


def test_openai_completion_to_gen_params():
    req = P.CompletionRequest(model="m", prompt=["a b"], suffix="x", echo=True, logprobs=2, frequency_penalty=0.1,
                              seed=0)
    p = req.to_gen_params()
    assert p == GenParams(model="m", prompt="a b", max_tokens=16, seed=0, frequency_penalty=0.1,
                          features={"suffix", "echo", "logprobs"})
    assert p.requested() == {"seed", "frequency_penalty", "suffix", "echo", "logprobs"}
    assert P.CompletionRequest(model="m", prompt="x", logprobs=0).to_gen_params().requested() == frozenset()


def test_ollama_chat_to_gen_params():
    req = O.OllamaChatRequest(model="m", messages=[{"role": "user", "content": "hi", "images": ["aGk="]}],
                              format={"type": "object"}, think=True,
                              options={"temperature": 0.2, "top_k": 40, "repeat_penalty": 1.0, "num_predict": -1,
                                       "stop": "END", "rag": False, "num_ctx": 128})
    p = req.to_gen_params()
    assert p == GenParams(model="m", messages=USER, temperature=0.2, top_k=40, stop=["END"],
                          json_schema={"type": "object"}, features={"temperature", "images", "think"})
    # repeat_penalty 1.0 is Ollama's "off": not asked of the engine
    assert p.requested() == {"temperature", "top_k", "stop", "json_schema", "images", "think"}
    assert req.rag_choice() is False and req.ctx_limit() == 128
    plain = O.OllamaChatRequest(model="m", messages=USER)
    assert plain.to_gen_params() == GenParams(model="m", messages=USER, temperature=0.8)
    assert plain.to_gen_params().requested() == frozenset() and plain.rag_choice() is None
    assert plain.ctx_limit() is None


def test_ollama_generate_to_gen_params():
    raw = O.OllamaGenerateRequest(model="m", prompt="p", raw=True, suffix="s", context=[1], format="json",
                                  options={"repeat_penalty": 1.3, "num_predict": 5, "rag": True})
    p = raw.to_gen_params()
    assert p == GenParams(model="m", prompt="p", max_tokens=5, temperature=0.8, json_object=True,
                          repeat_penalty=1.3, features={"suffix", "context"})
    assert p.requested() == {"json_object", "repeat_penalty", "suffix", "context"}
    assert raw.rag_choice() is False  # a raw prompt has no retrieval, whatever options.rag says
    p = O.OllamaGenerateRequest(model="m", prompt="why", system="Be kind.", images=["aGk="]).to_gen_params()
    assert p.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "why"}]
    assert p.prompt is None and p.requested() == {"images"}


@pytest.mark.parametrize("cls", [O.OllamaChatRequest, O.OllamaGenerateRequest])
def test_ollama_format_is_json_or_a_schema(cls):
    with pytest.raises(ValidationError, match="must be 'json' or a JSON schema"):
        cls(model="m", format="xml")
    assert cls(model="m", format="").format == ""


def test_every_gen_params_field_is_derived_or_exempt():
    """A new GenParams field must say whether a request setting it needs an engine capability: this fails until
    the field is classified (here and in GenParams.requested)."""
    off_neutral = {"top_p": 0.5, "seed": 0, "stop": ["x"], "top_k": 5, "n": 2, "logprobs": True, "json_schema": {},
                   "json_object": True, "presence_penalty": 0.1, "frequency_penalty": -0.1, "repeat_penalty": 1.1}
    # the request itself, the contract every engine honours, a refinement of logprobs, and the bookkeeping
    exempt = {"model", "messages", "prompt", "max_tokens", "temperature", "top_logprobs", "features",
              "prompt_cache"}
    assert {f.name for f in dataclasses.fields(GenParams)} == set(off_neutral) | exempt
    for name, value in off_neutral.items():
        assert GenParams("m", **{name: value}).requested() == {name}
    assert GenParams("m", max_tokens=5, temperature=0.3, top_logprobs=3).requested() == frozenset()


def test_capabilities_are_known_names_in_a_fixed_order():
    for cls in (FakeEngine, LlamaCppEngine, VllmEngine):
        assert cls.capabilities <= set(CAPABILITIES), cls
    assert "n" in VllmEngine.capabilities and "n" not in LlamaCppEngine.capabilities
    assert not {"images", "tools"} & (LlamaCppEngine.capabilities | VllmEngine.capabilities)
    assert FakeEngine(unsupported={"seed"}).capabilities == FakeEngine.capabilities - {"seed"}
    assert FakeEngine(unsupported={"seed"}).supports("top_p") and not FakeEngine(unsupported={"seed"}).supports("seed")
    assert ordered({"images", "zz", "n", "temperature", "tools"}) == ["temperature", "tools", "n", "images", "zz"]


class _Model:
    """The bits of llama_cpp's LlamaModel that prompt_tokens uses; one id per byte, counting tokenize calls."""

    def __init__(self):
        self.calls = 0

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        self.calls += 1
        return list(text)

    def add_bos_token(self) -> bool:
        return False


def _llama() -> LlamaCppEngine:
    eng = LlamaCppEngine("none.gguf", ["m"])
    eng.model = _Model()
    eng.formatter = lambda messages: SimpleNamespace(prompt="".join(f"<{m['role']}>{m['content']}|" for m in messages))
    return eng


def test_llamacpp_tokenizes_a_prompt_once_per_request():
    eng = _llama()
    params = GenParams("m", [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    n = eng.count_tokens(params)  # Service.prepare's context check
    calls = eng.model.calls
    ids = eng.prompt_ids(params)  # what stream_chat hands the scheduler
    assert eng.model.calls == calls and len(ids) == n and ids == eng.prompt_tokens(params)
    assert eng.prompt_ids(params) is ids
    params.messages[1]["content"] = "hello"  # the messages changed after the count: tokenize again
    assert bytes(eng.prompt_ids(params)).decode() == "<system>S|<user>hello|"
    params.messages.append({"role": "user", "content": "more"})
    assert bytes(eng.prompt_ids(params)).decode().endswith("<user>more|")
    other = _llama()  # another engine (another tokenizer) never reuses this one's ids
    other.model = SimpleNamespace(tokenize=lambda text, add_bos, special: [0] * len(text), add_bos_token=lambda: False)
    assert set(other.prompt_ids(params)) == {0}


def test_llamacpp_stream_uses_the_counted_ids(monkeypatch):
    """stream_chat queues the very list the context check produced (no second tokenization)."""
    import asyncio

    eng = _llama()
    monkeypatch.setattr(eng, "_make_sampler", lambda p: None)
    params = GenParams("m", USER, max_tokens=3)
    eng.count_tokens(params)
    calls, ids = eng.model.calls, params.prompt_cache[1]

    async def main():
        agen = eng.stream_chat(params)
        with pytest.raises(asyncio.TimeoutError):  # no scheduler thread here: the request waits in the queue
            await asyncio.wait_for(agen.__anext__(), 0.05)

    asyncio.run(main())
    assert eng._waiting[0].tokens is ids and eng.model.calls == calls
