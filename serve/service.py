"""What both APIs share: resolving a model id to a loaded engine, persona, RAG gate, honest limits, admission.

Routers only translate wire types; every decision that must be the same for OpenAI and Ollama clients lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from serve.engines.base import (ContextLengthExceeded, Engine, EngineUnavailable, GenDelta, GenParams, ModelNotFound,
                                UnsupportedParameter, Usage)
from serve.registry import ModelSpec, Registry

log = logging.getLogger("protege.serve")

RAG_MAX_TOKENS = 200
RAG_REPEAT_PENALTY = 1.1
EngineFactory = Callable[[ModelSpec], Engine]
KnowledgeFactory = Callable[[ModelSpec], Any]


def engine_key(spec: ModelSpec) -> str:
    """Ids that share weights share one loaded engine (e.g. `name` and `name:q4_k_m`, or two personas on the base)."""
    return str(spec.gguf) if spec.gguf else spec.assistant


class ModelManager:
    """Loads engines on first use (like Ollama) and keeps them; the default model is preloaded at startup."""

    def __init__(self, registry: Registry, factory: EngineFactory, key: Callable[[ModelSpec], str] = engine_key):
        """`key` groups ids onto one engine; a factory may carry its own `.key` (vLLM: one engine per assistant)."""
        self.registry, self.factory = registry, factory
        self.key = getattr(factory, "key", key)
        self.engines: dict[str, Engine] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.load_seconds: dict[str, float] = {}

    def spec(self, model_id: str) -> ModelSpec:
        spec = self.registry.get(model_id)
        if spec is None:
            self.registry.refresh()  # an assistant built after startup
            spec = self.registry.get(model_id)
        if spec is None:
            known = ", ".join(self.registry.ids()) or "none"
            raise ModelNotFound(f"The model '{model_id}' does not exist. Available models: {known}.", "model")
        return spec

    async def get(self, model_id: str) -> tuple[ModelSpec, Engine]:
        spec = self.spec(model_id)
        key = self.key(spec)
        engine = self.engines.get(key)
        if engine is None or not engine.loaded:
            async with self._locks.setdefault(key, asyncio.Lock()):
                engine = self.engines.get(key)
                if engine is None:
                    if spec.gguf is None and spec.merged is None and spec.adapter is None:
                        raise EngineUnavailable(f"model '{model_id}' has no weights to serve (no GGUF exported).")
                    engine = self.factory(spec)
                    t0 = time.perf_counter()
                    await engine.load()
                    self.load_seconds[key] = time.perf_counter() - t0
                    self.engines[key] = engine
        if spec.id not in engine.model_ids:
            engine.model_ids.append(spec.id)
            if hasattr(engine, "register"):
                engine.register(spec)
        return spec, engine

    def is_loaded(self, model_id: str | None) -> bool:
        if model_id is None:
            return bool(self.engines)
        spec = self.registry.get(model_id)
        return spec is not None and (e := self.engines.get(self.key(spec))) is not None and e.loaded

    async def close(self) -> None:
        for e in self.engines.values():
            await e.close()
        self.engines.clear()


def default_knowledge_factory(spec: ModelSpec) -> Any:
    from rag.knowledge import KnowledgeBase  # heavy (chromadb): only for assistants with a knowledge section

    return KnowledgeBase.open(spec.cfg, spec.paths)


@dataclass
class Prepared:
    """A request ready for the engine, or a RAG refusal that must not reach it."""

    spec: ModelSpec
    engine: Engine | None
    params: GenParams
    prompt_tokens: int = 0
    refusal: str | None = None
    sources: list[dict] | None = None
    confidence: float | None = None
    admission: Any = None
    grounding: str | None = None          # generated | extractive | refused (RAG answers only)
    guard_factory: Callable[[], Any] | None = None   # a fresh GuardedReply per choice (rag/guard.py); None: no guard

    def release(self) -> None:
        """Give the admission slot back (idempotent: the stream's finally and the response's background both call)."""
        if self.admission is not None:
            adm, self.admission = self.admission, None
            adm.leave()

    def rag_fields(self) -> dict[str, Any]:
        """Extra response fields of a RAG answer; read after the stream ended (the guard decides `grounding`)."""
        if self.sources is None:
            return {}
        out: dict[str, Any] = {"sources": self.sources, "confidence": self.confidence}
        if self.grounding is not None:
            out["grounding"] = self.grounding
        return out


class Service:
    def __init__(self, manager: ModelManager, knowledge_factory: KnowledgeFactory | None = None, metrics=None,
                 admission=None):
        self.manager = manager
        self.knowledge_factory = knowledge_factory or default_knowledge_factory
        self.metrics = metrics
        self.admission = admission
        self._kbs: dict[str, Any] = {}

    def knowledge(self, spec: ModelSpec) -> Any:
        kb = self._kbs.get(spec.assistant)
        if kb is None:
            kb = self._kbs[spec.assistant] = self.knowledge_factory(spec)
        return kb

    async def prepare(self, params: GenParams, used: list[str], rag: bool | None = True,
                      ctx_limit: int | None = None) -> Prepared:
        spec, engine = await self.manager.get(params.model)
        for p in used:
            if not engine.supports(p):
                raise UnsupportedParameter(f"Parameter '{p}' is not supported by the {engine.name} engine serving "
                                           f"'{spec.id}'.", p)
        if params.prompt is None and not any(m["role"] == "system" for m in params.messages):
            params.messages = [{"role": "system", "content": spec.system_prompt}] + params.messages
        prep = Prepared(spec, engine, params)
        if spec.has_knowledge and rag is not False and spec.cfg.serve.rag and params.prompt is None:
            kb = await asyncio.to_thread(self.knowledge, spec)
            retrieval = await asyncio.to_thread(kb.retrieve_conversation, params.messages)
            prep.sources = [_source_dict(s) for s in retrieval.sources]
            prep.confidence = float(retrieval.confidence)
            if retrieval.refused:
                prep.refusal = kb.refusal if isinstance(kb.refusal, str) else spec.cfg.knowledge.refusal
                prep.grounding = "refused"
                if self.metrics:
                    self.metrics.rag_refusals.labels(spec.id).inc()
                return prep
            # the guard's evidence embeds the sources' sentences: do it here, in a thread, not on the event loop
            session = await asyncio.to_thread(kb.guard_session, params.messages, retrieval)
            if session is not None:
                prep.guard_factory = session.fresh
            params.messages = kb.build_messages(params.messages, retrieval)
            prep.grounding = "generated"
            rag_sampling_defaults(params, engine)
        limit = min(ctx_limit or engine.context_length, engine.context_length)
        prep.prompt_tokens = n = engine.count_tokens(params)
        if prep.guard_factory is not None and params.max_tokens is None:
            params.max_tokens = max(1, min(RAG_MAX_TOKENS, limit - n))
        want = params.max_tokens or 0
        if n + want > limit or n >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested {n + want} tokens "
                f"({n} in the messages, {want} in the completion). Please reduce the length of the messages or "
                "completion.", "messages")
        if self.admission:  # before any response header: a full queue is still a clean 429
            self.admission.enter()
            prep.admission = self.admission
        return prep

    async def stream(self, prep: Prepared, usage: Usage) -> AsyncIterator[GenDelta]:
        """Admission-bounded, metered stream of deltas; closing it stops the engine's generation."""
        assert prep.engine is not None
        t0 = time.perf_counter()
        first: float | None = None
        agen = prep.engine.stream_chat(prep.params, usage)
        guards: dict[int, Any] = {}
        try:
            async for d in agen:
                if first is None and d.text:
                    first = time.perf_counter()
                if prep.guard_factory is None:
                    yield d
                    continue
                g = guards.get(d.index)
                if g is None:
                    g = guards[d.index] = prep.guard_factory()
                text = g.feed(d.text)
                if g.stopped or d.finish_reason:
                    yield GenDelta(text + g.finish(), d.index, d.finish_reason or "stop")
                    if g.stopped and len(guards) >= prep.params.n and all(x.stopped for x in guards.values()):
                        break  # every choice is complete: stop generating (closing frees the engine's slot)
                elif text:
                    yield GenDelta(text, d.index)
        finally:
            await agen.aclose()
            prep.release()
            if guards:
                kinds = {g.grounding for g in guards.values()}
                prep.grounding = "extractive" if "extractive" in kinds else "refused" if kinds == {"refused"} \
                    else "generated"
            if self.metrics:
                end = time.perf_counter()
                self.metrics.observe_generation(prep.spec.id, None if first is None else first - t0,
                                                usage.completion_tokens, usage.prompt_tokens,
                                                end - (first or t0))


def rag_sampling_defaults(params: GenParams, engine: Engine) -> None:
    """A grounded answer must not loop or leak the prompt scaffold: stop on the scaffold's markers and penalise repeats
    unless the client chose its own penalties (the length cap, RAG_MAX_TOKENS, needs the prompt's size: callers)."""
    from rag.guard import SCAFFOLD

    params.stop = list(dict.fromkeys([*params.stop, *(s.strip("\n") for s in SCAFFOLD[:3])]))
    if (params.repeat_penalty == 1.0 and not params.presence_penalty and not params.frequency_penalty
            and engine.supports("repeat_penalty")):
        params.repeat_penalty = RAG_REPEAT_PENALTY


def _source_dict(s: Any) -> dict:
    if hasattr(s, "to_dict"):
        return s.to_dict()
    return dict(s)
