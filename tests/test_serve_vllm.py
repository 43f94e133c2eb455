"""The vLLM engine: its translation logic against a stubbed `vllm` module (CI, no GPU), and once for real (`gpu`)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import types

import pytest

from protege.config_file import config_from_dict
from protege.errors import MissingExtraError
from protege.paths import AssistantPaths
from serve.engines.base import GenParams
from serve.registry import ModelSpec


class _Rec:
    def __init__(self, **kw):
        self.kw = kw


class _Struct(_Rec):
    pass


class _LoRARequest:
    def __init__(self, name, int_id, path):
        self.lora_name, self.lora_int_id, self.lora_path = name, int_id, path


class _Out:
    def __init__(self, index, text, token_ids, finish_reason=None):
        self.index, self.text, self.token_ids, self.finish_reason, self.logprobs = (index, text, token_ids,
                                                                                    finish_reason, None)


class _RequestOutput:
    def __init__(self, outputs, finished):
        self.outputs, self.finished = outputs, finished


class _AsyncLLM:
    instances: list["_AsyncLLM"] = []

    def __init__(self, args):
        self.args, self.calls, self.aborted = args, [], []
        _AsyncLLM.instances.append(self)

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    async def generate(self, prompt, sp, request_id, *, lora_request=None):
        self.calls.append((prompt, sp, request_id, lora_request))
        words = ["Ahoy", " there", " matey"]
        n = sp.kw["n"]
        for k in range(1, len(words) + 1):
            await asyncio.sleep(0)
            done = k == len(words)
            yield _RequestOutput([_Out(i, ("!" * i) + "".join(words[:k]), list(range(k)), "stop" if done else None)
                                  for i in range(n)], done)

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def shutdown(self):
        pass


@pytest.fixture
def stub_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = _Rec
    vllm.AsyncEngineArgs = _Rec
    vllm.AsyncLLMEngine = _AsyncLLM
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = _Struct
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = _LoRARequest
    for name, mod in {"vllm": vllm, "vllm.sampling_params": sp, "vllm.lora": lora, "vllm.lora.request": req}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    _AsyncLLM.instances.clear()
    return vllm


def _spec(tmp_path, tokenizer_dir, name="pirate", adapter=False, merged=False) -> ModelSpec:
    cfg = config_from_dict({"name": name, "base": {"model": str(tokenizer_dir)}})
    paths = AssistantPaths.for_name(name).ensure()
    if adapter:
        paths.adapter.mkdir()
        (paths.adapter / "adapter_config.json").write_text("{}")
    if merged:
        paths.merged.mkdir()
        (paths.merged / "config.json").write_text("{}")
    return ModelSpec(name, name, "base", cfg, paths)


def _params(model="pirate", **kw) -> GenParams:
    return GenParams(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


def test_missing_vllm_names_the_extra(monkeypatch, tokenizer_dir):
    from serve.engines.vllm import VllmEngine

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingExtraError, match=r"protege\[vllm\]"):
        asyncio.run(VllmEngine(tokenizer_dir).load())


def test_sampling_params_translation(stub_vllm):
    from serve.engines.vllm import sampling_params

    p = _params(temperature=0.2, top_p=0.9, top_k=40, seed=7, stop=["END"], n=2, max_tokens=500, logprobs=True,
                top_logprobs=3, presence_penalty=0.5, frequency_penalty=0.25, repeat_penalty=1.1,
                json_schema={"type": "object", "properties": {"a": {"type": "string"}}})
    sp = sampling_params(stub_vllm, p, room=100)
    assert sp.kw["max_tokens"] == 100  # never past the context
    assert {k: sp.kw[k] for k in ("n", "temperature", "top_p", "top_k", "seed", "stop", "logprobs",
                                  "presence_penalty", "frequency_penalty", "repetition_penalty")} == {
        "n": 2, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["END"], "logprobs": 3,
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "repetition_penalty": 1.1}
    assert sp.kw["structured_outputs"].kw == {"json": p.json_schema}
    sp = sampling_params(stub_vllm, _params(json_object=True), room=50)
    assert sp.kw["structured_outputs"].kw == {"json_object": True} and sp.kw["max_tokens"] == 50
    assert "top_k" not in sampling_params(stub_vllm, _params(), room=5).kw
    from serve.engines.base import EngineError

    with pytest.raises(EngineError, match="n > 1 needs temperature"):
        sampling_params(stub_vllm, _params(n=2, temperature=0), room=5)


def test_merged_model_is_served_without_lora(stub_vllm, tmp_path, tokenizer_dir):
    from protege.config import ServeConfig
    from serve.engines.vllm import VllmEngine

    spec = _spec(tmp_path, tokenizer_dir, merged=True, adapter=True)
    eng = VllmEngine.from_spec(spec, ServeConfig(n_ctx=1024))
    assert eng.engine_args["model"] == str(spec.paths.merged) and eng.engine_args["enable_lora"] is False
    assert eng.lora_request("pirate") is None


def test_base_plus_lora_chosen_by_model_name(stub_vllm, tmp_path, tokenizer_dir):
    from protege.config import ServeConfig
    from serve.engines.vllm import VllmEngine

    spec = _spec(tmp_path, tokenizer_dir, adapter=True)
    eng = VllmEngine.from_spec(spec, ServeConfig(n_ctx=1024, parallel=4))
    assert eng.engine_args["model"] == str(tokenizer_dir) and eng.engine_args["enable_lora"] is True
    assert eng.engine_args["max_model_len"] == 1024 and eng.engine_args["max_lora_rank"] == 16

    async def main():
        await eng.load()
        assert isinstance(_AsyncLLM.instances[0].args, _Rec)
        assert (await eng.chat(_params("pirate"))).texts == ["Ahoy there matey"]
        await eng.chat(_params("plain-base"))
        return _AsyncLLM.instances[0].calls

    calls = asyncio.run(main())
    lora = calls[0][3]
    assert lora.lora_name == "pirate" and lora.lora_path == str(spec.paths.adapter) and lora.lora_int_id >= 1
    assert calls[1][3] is None  # an id without adapter runs on the plain weights
    prompt = calls[0][0]["prompt_token_ids"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == tok(expected, add_special_tokens=False)["input_ids"]  # the model's own chat template


def test_stream_deltas_usage_and_n(stub_vllm, tokenizer_dir):
    from serve.engines.base import Usage
    from serve.engines.vllm import VllmEngine

    eng = VllmEngine(tokenizer_dir, ["m"])

    async def main():
        await eng.load()
        usage = Usage()
        deltas = [d async for d in eng.stream_chat(_params("m", n=2), usage)]
        res = await eng.chat(_params("m", n=2))
        return deltas, usage, res

    deltas, usage, res = asyncio.run(main())
    assert "".join(d.text for d in deltas if d.index == 0) == "Ahoy there matey"
    assert "".join(d.text for d in deltas if d.index == 1) == "!Ahoy there matey"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop", "stop"]
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 6
    assert res.texts == ["Ahoy there matey", "!Ahoy there matey"] and res.finish_reasons == ["stop", "stop"]


def test_output_deltas_are_suffixes_of_cumulative_text():
    from serve.engines.vllm import output_deltas

    prev: dict = {}
    a = output_deltas(prev, _RequestOutput([_Out(0, "Hel", [1])], False))
    b = output_deltas(prev, _RequestOutput([_Out(0, "Hello wor", [1, 2, 3])], False))
    c = output_deltas(prev, _RequestOutput([_Out(0, "Hello world", [1, 2, 3, 4], "length")], True))
    assert [d.text for d in a + b + c] == ["Hel", "lo wor", "ld"] and c[0].finish_reason == "length"


def test_client_gone_aborts_the_request(stub_vllm, tokenizer_dir):
    from serve.engines.vllm import VllmEngine

    eng = VllmEngine(tokenizer_dir, ["m"])

    async def main():
        await eng.load()
        agen = eng.stream_chat(_params("m"))
        await agen.__anext__()
        await agen.aclose()
        llm = _AsyncLLM.instances[0]
        return llm.aborted, llm.calls[0][2]

    aborted, rid = asyncio.run(main())
    assert aborted == [rid]


# ------------------------------------------------------------------------------------------------- real GPU
@pytest.mark.gpu
def test_real_vllm_on_gpu(tmp_path):
    """Real vLLM on CUDA: a SmolLM2-shaped tiny random Llama (head_dim 64) plus a random LoRA adapter picked by
    model name; greedy JSON vs streaming agree, n=2, json_schema constrained output parses, abort on close."""
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # the test process may have touched CUDA
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from serve.engines.base import Usage
    from serve.engines.vllm import VllmEngine
    from tests.tiny_model import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "tiny", hidden=256, layers=2)
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    eng = VllmEngine(model_dir, ["tiny"], {"tiny-lora": adapter}, max_model_len=512, gpu_memory_utilization=0.25,
                     enforce_eager=True, max_lora_rank=8, max_num_seqs=8)

    async def main():
        await eng.load()
        p = lambda m, **kw: GenParams(model=m, messages=[{"role": "user", "content": "Hello there"}],  # noqa: E731
                                      temperature=0, max_tokens=12, **kw)
        full = await eng.chat(p("tiny"))
        usage = Usage()
        streamed = "".join([d.text async for d in eng.stream_chat(p("tiny"), usage)])
        lora = await eng.chat(p("tiny-lora"))
        many = await eng.chat(GenParams(model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0.8,
                                        max_tokens=8, n=2, seed=3))
        # a finite language (`"yes"` or `"no"`, no whitespace anywhere): even random weights reach its end, after
        # which the grammar allows only the end of sequence, well inside 40 tokens
        js = await eng.chat(GenParams(model="tiny", messages=[{"role": "user", "content": "json"}], temperature=0,
                                      max_tokens=40, json_schema={"type": "string", "enum": ["yes", "no"]}))
        agen = eng.stream_chat(p("tiny"))
        await agen.__anext__()
        await agen.aclose()
        await eng.close()
        return full, streamed, usage, lora, many, js

    full, streamed, usage, lora, many, js = asyncio.run(main())
    print("vllm texts:", repr(full.texts[0]), repr(lora.texts[0]), repr(js.texts[0]))
    assert full.completion_tokens > 0 and streamed == full.texts[0] and usage.prompt_tokens > 0
    assert len(many.texts) == 2
    assert lora.texts[0] != full.texts[0] or lora.completion_tokens != full.completion_tokens  # adapter applied
    assert js.finish_reasons == ["stop"] and json.loads(js.texts[0]) in ("yes", "no"), js.texts
