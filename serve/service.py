"""What both APIs share: resolving a model id to a loaded engine, persona, RAG gate, honest limits, admission.

Routers only translate wire types; every decision that must be the same for OpenAI and Ollama clients lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from serve.engines.base import (ContextLengthExceeded, Engine, EngineError, GenDelta, GenParams, GenResult,
                                UnsupportedParameter, Usage, collect)
from serve.models import EngineFactory, ModelManager, engine_key
from serve.params import ordered
from serve.registry import ModelSpec

log = logging.getLogger("protege.serve")

RAG_MAX_TOKENS = 200
RAG_REPEAT_PENALTY = 1.1
KnowledgeFactory = Callable[[ModelSpec], Any]
__all__ = ["EngineFactory", "KnowledgeFactory", "ModelManager", "Prepared", "RagRequired", "Service", "engine_key"]


class RagRequired(EngineError):
    """A client asked to skip retrieval on an assistant with knowledge and `serve.allow_rag_off` is false."""

    status = 403
    code = "rag_required"
    type = "permission_error"


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
    why: str | None = None                # which gate refused, as Retrieval.why says it (a RAG refusal only)
    guard_factory: Callable[[], Any] | None = None   # a fresh GuardedReply per choice (rag/guard.py); None: no guard
    lease: Callable[[], None] | None = None           # lets the engine go (keep_alive / LRU may unload it again)

    def release(self) -> None:
        """Give the admission slot and the engine back (idempotent: the stream's finally, the response's background
        and a refusal all call it)."""
        if self.admission is not None:
            adm, self.admission = self.admission, None
            adm.leave()
        if self.lease is not None:
            lease, self.lease = self.lease, None
            lease()

    def rag_fields(self) -> dict[str, Any]:
        """Extra response fields of a RAG answer; read after the stream ended (the guard decides `grounding`)."""
        if self.sources is None:
            return {}
        out: dict[str, Any] = {"sources": self.sources, "confidence": self.confidence}
        if self.grounding is not None:
            out["grounding"] = self.grounding
        if self.grounding == "refused" and self.why:
            out["why"] = self.why
        return out


class Service:
    def __init__(self, manager: ModelManager, knowledge_factory: KnowledgeFactory | None = None, metrics=None,
                 admission=None, allow_rag_off: bool | None = None):
        """`allow_rag_off`: None: each assistant's `serve.allow_rag_off` decides (the server); True: always (the
        local `protege run --no-rag`, whose user owns the files)."""
        self.manager = manager
        self.allow_rag_off = allow_rag_off
        self.knowledge_factory = knowledge_factory or default_knowledge_factory
        self.metrics = metrics
        self.admission = admission
        self._kbs: dict[str, Any] = {}

    def knowledge(self, spec: ModelSpec) -> Any:
        kb = self._kbs.get(spec.assistant)
        if kb is None:
            kb = self._kbs[spec.assistant] = self.knowledge_factory(spec)
        return kb

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold an admission slot for work that is not a generation (embeddings): 429 when the queue is full."""
        if self.admission is None:
            yield
            return
        self.admission.enter()
        try:
            yield
        finally:
            self.admission.leave()

    def check_rag_policy(self, spec: ModelSpec, rag: bool | None, raw_prompt: bool) -> None:
        """403 when a client would skip the knowledge base of an assistant that does not allow it."""
        if not (spec.has_knowledge and spec.cfg.serve.rag) or (rag is not False and not raw_prompt):
            return
        if self.allow_rag_off or (self.allow_rag_off is None and spec.cfg.serve.allow_rag_off):
            return
        how = "a raw prompt (no retrieval)" if raw_prompt else "turning retrieval off"
        raise RagRequired(f"The model '{spec.id}' answers from its documents only: {how} is not allowed on this "
                          "server (serve.allow_rag_off is false).", "prompt" if raw_prompt else "rag")

    async def prepare(self, params: GenParams, rag: bool | None = True, ctx_limit: int | None = None,
                      keep_alive: Any = None) -> Prepared:
        """Admission first (a full queue is a 429 before any retrieval or model load), then the engine, then RAG.
        What the request asks of the engine comes from `params.requested()`: a capability it lacks is a 400."""
        spec = self.manager.spec(params.model)  # 404/403 need no slot
        self.check_rag_policy(spec, rag, params.prompt is not None)
        prep = Prepared(spec, None, params)
        if self.admission:  # before any response header: a full queue is still a clean 429
            self.admission.enter()
            prep.admission = self.admission
        try:
            await self._prepare(prep, rag, ctx_limit, keep_alive)
        except BaseException:
            prep.release()
            raise
        if prep.refusal is not None:
            prep.release()  # a refusal never reaches the engine: no slot to hold
        return prep

    async def _prepare(self, prep: Prepared, rag: bool | None, ctx_limit: int | None, keep_alive: Any) -> None:
        """Retrieval and the gate first: a refused question is answered without loading the model. Then the engine,
        the grounded prompt and the token count."""
        params, spec = prep.params, prep.spec
        if params.prompt is None and not any(m["role"] == "system" for m in params.messages):
            params.messages = [{"role": "system", "content": spec.system_prompt}] + params.messages
        kb = retrieval = None
        if spec.has_knowledge and rag is not False and spec.cfg.serve.rag and params.prompt is None:
            kb = await asyncio.to_thread(self.knowledge, spec)
            retrieval = await asyncio.to_thread(kb.retrieve_conversation, params.messages)
            prep.sources = [_source_dict(s) for s in retrieval.sources]
            prep.confidence = float(retrieval.confidence)
            if retrieval.refused:
                prep.refusal = kb.refusal if isinstance(kb.refusal, str) else spec.cfg.knowledge.refusal
                prep.grounding, prep.why = "refused", retrieval.why or None
                if self.metrics:
                    self.metrics.rag_refusals.labels(spec.id).inc()
                return
        spec, engine, prep.lease = await self.manager.acquire(params.model, keep_alive)
        prep.engine = engine
        missing = ordered(params.requested() - engine.capabilities)
        if missing:
            raise UnsupportedParameter(f"Parameter '{missing[0]}' is not supported by the {engine.name} engine "
                                       f"serving '{spec.id}'.", missing[0])
        if kb is not None and retrieval is not None:
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

    async def collect(self, prep: Prepared, usage: Usage,
                      disconnected: Callable[[], Awaitable[Any]]) -> GenResult | None:
        """A non-streaming answer, unless `disconnected()` returns first: then the generation is cancelled like a
        stream's (closing it frees the engine's slot) and None comes back. The slot is released either way."""
        task = asyncio.ensure_future(collect(self.stream(prep, usage), prep.params.n, usage))
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            log.info("client went away: cancelling a non-streaming generation of %s", prep.spec.id)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        finally:
            for t in (task, gone):
                t.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)
            prep.release()

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
    from rag.degenerate import SCAFFOLD

    params.stop = list(dict.fromkeys([*params.stop, *(s.strip("\n") for s in SCAFFOLD[:3])]))
    if (params.repeat_penalty == 1.0 and not params.presence_penalty and not params.frequency_penalty
            and "repeat_penalty" in engine.capabilities):
        params.repeat_penalty = RAG_REPEAT_PENALTY


def _source_dict(s: Any) -> dict:
    if hasattr(s, "to_dict"):
        return s.to_dict()
    return dict(s)


# nginx's "client closed request": the status (for metrics) of a non-streaming request whose client left
CLIENT_GONE = 499


async def wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return when the ASGI client disconnects (the body was read already: the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)
