"""OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Streaming is SSE (sse-starlette) ending in `data: [DONE]`; the RAG fields travel on a last chunk with empty `choices`
(like the usage chunk) before [DONE]. Parameters the engine cannot honour are rejected with 400, never ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from sse_starlette.sse import EventSourceResponse

from serve import protocol as P
from serve.engines.base import EngineError, UnsupportedParameter, Usage
from serve.ops import error_body
from serve.service import CLIENT_GONE, Prepared, Service, wait_disconnect
from serve.wire import Grounded

router = APIRouter()


def _svc(request: Request) -> Service:
    return request.app.state.service


def _logprobs(lps) -> P.ChoiceLogprobs | None:
    if not lps:
        return None
    return P.ChoiceLogprobs(content=[P.TokenLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                                                    top_logprobs=[P.TopLogprob(token=a, logprob=b) for a, b in t.top])
                                     for t in lps])


@router.post("/v1/chat/completions")
async def chat_completions(req: P.ChatCompletionRequest, request: Request) -> Any:
    svc = _svc(request)
    prep = await svc.prepare(req.to_gen_params(), rag=req.rag)
    if req.stream:
        return EventSourceResponse(_chat_events(svc, prep, req), ping=15, background=BackgroundTask(prep.release))
    if prep.refusal is not None:
        texts, reasons, usage = [prep.refusal] * req.n, ["stop"] * req.n, Usage(0, 0)
        lps = None
    else:
        usage = Usage()
        res = await svc.collect(prep, usage, lambda: wait_disconnect(request.receive))
        if res is None:
            return Response(status_code=CLIENT_GONE)
        texts, reasons, lps = res.texts, res.finish_reasons, res.logprobs
    out = P.ChatCompletionResponse(
        model=req.model,
        choices=[P.ChatChoice(index=i, message=P.AssistantMessage(content=t), finish_reason=reasons[i],
                              logprobs=_logprobs(lps[i]) if lps else None) for i, t in enumerate(texts)],
        usage=P.Usage.of(usage),
        **prep.rag_fields())
    return JSONResponse(dump(out))


def dump(obj: Grounded) -> dict:
    """Unset optional fields are left out (a source keeps its own nulls, e.g. `page: null`: wire.SourceOut)."""
    return obj.model_dump(exclude_none=True)


async def _chat_events(svc: Service, prep: Prepared, req: P.ChatCompletionRequest) -> AsyncIterator[dict]:
    cid, created = P.new_id("chatcmpl"), int(time.time())

    def chunk(**kw: Any) -> dict:
        c = P.ChatCompletionChunk(id=cid, created=created, model=req.model, **kw)
        return {"data": json.dumps(dump(c), ensure_ascii=False)}

    for i in range(req.n):
        yield chunk(choices=[P.ChunkChoice(index=i, delta=P.ChunkDelta(role="assistant", content=""))])
    usage = Usage()
    try:
        if prep.refusal is not None:
            for i in range(req.n):
                yield chunk(choices=[P.ChunkChoice(index=i, delta=P.ChunkDelta(content=prep.refusal))])
                yield chunk(choices=[P.ChunkChoice(index=i, delta=P.ChunkDelta(), finish_reason="stop")])
        else:
            async for d in svc.stream(prep, usage):
                if d.text or d.logprobs:
                    yield chunk(choices=[P.ChunkChoice(index=d.index, delta=P.ChunkDelta(content=d.text),
                                                       logprobs=_logprobs(d.logprobs))])
                if d.finish_reason:
                    yield chunk(choices=[P.ChunkChoice(index=d.index, delta=P.ChunkDelta(),
                                                       finish_reason=d.finish_reason)])
    except EngineError as e:
        yield {"data": json.dumps(error_body(str(e), e.code, e.type, e.param))}
        return
    if req.stream_options and req.stream_options.include_usage:
        yield chunk(choices=[], usage=P.Usage.of(usage))
    if prep.sources is not None:
        yield chunk(choices=[], **prep.rag_fields())
    yield {"data": "[DONE]"}


@router.post("/v1/completions")
async def completions(req: P.CompletionRequest, request: Request) -> Any:
    svc = _svc(request)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1:
        raise UnsupportedParameter("Only one prompt per request is supported (send one request per prompt).",
                                   "prompt")
    prep = await svc.prepare(req.to_gen_params(), rag=False)
    if req.stream:
        return EventSourceResponse(_completion_events(svc, prep, req), ping=15,
                                   background=BackgroundTask(prep.release))
    usage = Usage()
    res = await svc.collect(prep, usage, lambda: wait_disconnect(request.receive))
    if res is None:
        return Response(status_code=CLIENT_GONE)
    out = P.CompletionResponse(
        model=req.model,
        choices=[P.CompletionChoice(index=i, text=t, finish_reason=res.finish_reasons[i])  # type: ignore[arg-type]
                 for i, t in enumerate(res.texts)],
        usage=P.Usage.of(usage))
    return JSONResponse(out.model_dump(exclude_none=True))


async def _completion_events(svc: Service, prep: Prepared, req: P.CompletionRequest) -> AsyncIterator[dict]:
    cid, created = P.new_id("cmpl"), int(time.time())
    usage = Usage()
    try:
        async for d in svc.stream(prep, usage):
            c = P.CompletionResponse(id=cid, created=created, model=req.model, choices=[
                P.CompletionChoice(index=d.index, text=d.text, finish_reason=d.finish_reason)])  # type: ignore
            yield {"data": c.model_dump_json(exclude_none=True)}
    except EngineError as e:
        yield {"data": json.dumps(error_body(str(e), e.code, e.type, e.param))}
        return
    if req.stream_options and req.stream_options.include_usage:
        c = P.CompletionResponse(id=cid, created=created, model=req.model, choices=[], usage=P.Usage.of(usage))
        yield {"data": c.model_dump_json(exclude_none=True)}
    yield {"data": "[DONE]"}


@router.get("/v1/models")
async def list_models(request: Request) -> Any:
    reg = _svc(request).manager.registry
    reg.refresh()
    cards = [P.ModelCard(id=s.id, created=int(s.modified)) for s in sorted(reg.specs.values(), key=lambda s: s.id)]
    return JSONResponse(P.ModelList(data=cards).model_dump())


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Any:
    spec = _svc(request).manager.spec(model_id)
    return JSONResponse(P.ModelCard(id=spec.id, created=int(spec.modified)).model_dump())


@router.post("/v1/embeddings")
async def embeddings(req: P.EmbeddingRequest, request: Request) -> Any:
    texts = req.texts()
    if not texts or any(not isinstance(t, str) for t in texts):
        raise EngineError("'input' must be a string or a list of strings (token arrays are not supported).", "input")
    if req.dimensions:
        raise UnsupportedParameter("'dimensions' is not supported by the local embedder.", "dimensions")
    embedder = await get_embedder(request, req.model)
    with _svc(request).admitted():  # embeddings share the admission bound with generations: 429 when full
        vecs = await asyncio.to_thread(embed_texts, embedder, texts)
    data: list[P.EmbeddingData] = []
    for i, v in enumerate(vecs):
        if req.encoding_format == "base64":
            import base64
            import struct

            data.append(P.EmbeddingData(index=i, embedding=base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()))
        else:
            data.append(P.EmbeddingData(index=i, embedding=v))
    n = sum(len(t.split()) for t in texts)
    out = P.EmbeddingResponse(data=data, model=req.model, usage={"prompt_tokens": n, "total_tokens": n})
    return JSONResponse(out.model_dump())


async def get_embedder(request: Request, model: str) -> Any:
    """The RAG embedder; `model` must be a served model id or the embedder's own name (no silent default)."""
    state = request.app.state
    if state.embedder is None:
        state.embedder = await asyncio.to_thread(state.embedder_factory)
    name = embedder_name(state.embedder)
    if model not in (name, name.rsplit("/", 1)[-1]):
        _svc(request).manager.spec(model)  # raises model_not_found
    return state.embedder


def embedder_name(embedder: Any) -> str:
    return str(getattr(embedder, "model_name", None) or getattr(embedder, "name", None) or "all-minilm-l6-v2")


def embed_texts(embedder: Any, texts: list[str]) -> list[list[float]]:
    """Accept the common embedder shapes (ours: `embed`; LangChain: `embed_documents`; sentence-transformers)."""
    for meth in ("embed", "embed_documents", "encode"):
        fn = getattr(embedder, meth, None)
        if fn is not None:
            vecs = fn(texts)
            return [[float(x) for x in v] for v in vecs]
    raise TypeError(f"embedder {type(embedder).__name__} has no embed/embed_documents/encode method")
