"""The GPU engine: vLLM's async engine (AsyncLLM, continuous batching and paged attention on CUDA).

One engine per weights: an assistant's merged model (`paths.merged`) or its base with LoRA adapters, where the model
id picks the adapter through a `LoRARequest` (several assistants trained on the same base share one engine). vllm is
imported lazily; without it the error names the extra to install (`protege[vllm]`).

The translation (GenParams -> SamplingParams, cumulative outputs -> deltas, model id -> LoRARequest) is kept in small
functions so CI can test it with a stubbed `vllm` module; tests/test_serve_vllm.py also runs it on a real GPU.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from protege.errors import require
from serve.engines.base import BaseEngine, EngineError, GenDelta, GenParams, TokenLogprob, Usage

log = logging.getLogger("protege.serve")

_lora_ids = itertools.count(1)


def sampling_params(vllm: Any, p: GenParams, room: int) -> Any:
    """GenParams -> vllm.SamplingParams; every parameter we accept maps to a real vLLM knob (none dropped)."""
    if p.n > 1 and p.temperature <= 0:
        raise EngineError("n > 1 needs temperature > 0 (greedy decoding would return n identical choices)", "n")
    kw: dict[str, Any] = dict(n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=min(p.max_tokens or room,
                                                                                                room),
                              stop=list(p.stop) or None, seed=p.seed, presence_penalty=p.presence_penalty,
                              frequency_penalty=p.frequency_penalty, repetition_penalty=p.repeat_penalty)
    if p.top_k > 0:
        kw["top_k"] = p.top_k
    if p.logprobs:
        kw["logprobs"] = max(p.top_logprobs, 0)
    if p.json_schema is not None or p.json_object:
        kw.update(_structured(vllm, p))
    try:
        return vllm.SamplingParams(**kw)
    except ValueError as e:  # vLLM validates ranges itself: report it as a 400, not a 500
        raise EngineError(f"invalid sampling parameters: {e}") from None


def _structured(vllm: Any, p: GenParams) -> dict[str, Any]:
    """vLLM >= 0.11 calls it `structured_outputs=StructuredOutputsParams`, older ones `guided_decoding=...`."""
    sp = _submodule(vllm, "sampling_params")
    schema = p.json_schema if p.json_schema is not None else {"type": "object"}
    cls = getattr(sp, "StructuredOutputsParams", None)
    if cls is not None:
        return {"structured_outputs": cls(json=schema) if p.json_schema is not None else cls(json_object=True)}
    cls = getattr(sp, "GuidedDecodingParams", None)
    if cls is not None:
        return {"guided_decoding": cls(json=schema) if p.json_schema is not None else cls(json_object=True)}
    raise EngineError("this vLLM has no structured output support", "response_format")


def output_deltas(prev: dict[int, tuple[int, int]], out: Any) -> list[GenDelta]:
    """Cumulative RequestOutput -> per-choice text deltas; `prev[i]` = (chars, logprob entries) already sent."""
    deltas = []
    for c in out.outputs:
        sent_chars, sent_lps = prev.get(c.index, (0, 0))
        text = c.text[sent_chars:]
        lps = None
        if getattr(c, "logprobs", None):
            lps = [_lp(entry, tok) for entry, tok in zip(c.logprobs[sent_lps:], c.token_ids[sent_lps:])]
        prev[c.index] = (len(c.text), len(c.logprobs) if getattr(c, "logprobs", None) else 0)
        reason = c.finish_reason if c.finish_reason in ("stop", "length") else ("stop" if c.finish_reason else None)
        if text or reason or lps:
            deltas.append(GenDelta(text, c.index, reason, lps or None))
    return deltas


def _lp(entry: dict, tok: int) -> TokenLogprob:
    chosen = entry.get(tok)
    top = sorted(entry.values(), key=lambda x: -x.logprob)
    return TokenLogprob(getattr(chosen, "decoded_token", "") or "", float(getattr(chosen, "logprob", 0.0)),
                        [(t.decoded_token or "", float(t.logprob)) for t in top])


class VllmEngine(BaseEngine):
    name = "vllm"
    # every knob `sampling_params` maps; text only
    capabilities = frozenset({"temperature", "top_p", "top_k", "seed", "stop", "n", "logprobs", "json_object",
                              "json_schema", "presence_penalty", "frequency_penalty", "repeat_penalty"})

    def __init__(self, model: str | Path, model_ids: list[str] | None = None, adapters: dict[str, Path] | None = None,
                 max_model_len: int = 2048, max_num_seqs: int = 32, gpu_memory_utilization: float = 0.85,
                 enforce_eager: bool = False, max_lora_rank: int = 64, dtype: str = "auto", **engine_kwargs: Any):
        super().__init__(model_ids, max_model_len)
        self.model = str(model)
        self.adapters: dict[str, Path] = dict(adapters or {})
        self._lora_int: dict[str, int] = {}
        self.engine_args = dict(model=self.model, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                                dtype=dtype, enable_lora=bool(self.adapters), **engine_kwargs)
        if self.adapters:
            self.engine_args["max_lora_rank"] = max_lora_rank
        self.engine: Any = None

    @classmethod
    def from_spec(cls, spec: Any, cfg: Any) -> "VllmEngine":
        """Merged model when exported, else the base + the assistant's LoRA adapter (chosen by model id)."""
        scale = {"tensor_parallel_size": cfg.tensor_parallel_size}
        if spec.merged is not None:
            return cls(spec.merged, [spec.id], max_model_len=cfg.n_ctx, max_num_seqs=max(cfg.parallel, 8), **scale)
        from builder.base_model import resolve_base

        base = resolve_base(spec.cfg.base.model)
        adapters = {spec.id: spec.adapter} if spec.adapter is not None else {}
        return cls(base, [spec.id], adapters, max_model_len=cfg.n_ctx, max_num_seqs=max(cfg.parallel, 8),
                   max_lora_rank=max(16, spec.cfg.train.lora.r), **scale)

    def register(self, spec: Any) -> None:
        if spec.adapter is not None and spec.merged is None:
            self.adapters.setdefault(spec.id, spec.adapter)

    async def load(self) -> None:
        vllm = require("vllm", "vllm")
        from transformers import AutoTokenizer

        self.vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        args = vllm.AsyncEngineArgs(**self.engine_args)
        engine_cls = getattr(vllm, "AsyncLLMEngine", None)
        self.engine = engine_cls.from_engine_args(args)
        self.loaded = True

    async def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "shutdown"):
            self.engine.shutdown()
        self.loaded = False

    def _prompt(self, p: GenParams) -> str:
        if p.prompt is not None:
            return p.prompt
        return self.tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)

    def prompt_tokens(self, p: GenParams) -> list[int]:
        return self.tokenizer(self._prompt(p), add_special_tokens=False)["input_ids"]

    def lora_request(self, model_id: str) -> Any:
        """The LoRARequest for `model_id`, or None when it is served by the plain (merged/base) weights."""
        path = self.adapters.get(model_id)
        if path is None:
            return None
        if model_id not in self._lora_int:
            self._lora_int[model_id] = next(_lora_ids)
        return _submodule(self.vllm, "lora.request").LoRARequest(model_id, self._lora_int[model_id], str(path))

    async def stream_chat(self, p: GenParams, usage: Usage | None = None) -> AsyncIterator[GenDelta]:
        usage = usage if usage is not None else Usage()
        prompt_ids = self.prompt_ids(p)  # already tokenized by the context check (Service.prepare)
        usage.prompt_tokens = len(prompt_ids)
        room = self.context_length - len(prompt_ids)
        sp = sampling_params(self.vllm, p, room)
        rid = f"protege-{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        prev: dict[int, tuple[int, int]] = {}
        finished = False
        first = None
        gen = self.engine.generate({"prompt_token_ids": prompt_ids}, sp, rid, lora_request=self.lora_request(p.model))
        try:
            async for out in gen:
                if first is None:
                    first = loop.time()
                    usage.prompt_ns = int((first - t0) * 1e9)
                usage.completion_tokens = sum(len(c.token_ids) for c in out.outputs)
                for d in output_deltas(prev, out):
                    yield d
                finished = bool(getattr(out, "finished", False))
        finally:
            usage.eval_ns = int((loop.time() - (first or t0)) * 1e9)
            if not finished:  # client gone: free the sequence on the GPU now
                await _maybe_await(self.engine.abort(rid))


def _submodule(vllm: Any, name: str) -> Any:
    import importlib

    return importlib.import_module(f"{vllm.__name__}.{name}")


async def _maybe_await(x: Any) -> Any:
    if asyncio.iscoroutine(x):
        return await x
    return x


__all__ = ["VllmEngine", "sampling_params", "output_deltas"]
