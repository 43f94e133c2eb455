"""Ollama API: /, /api/version, /api/tags, /api/show, /api/ps, /api/chat, /api/generate, /api/embed.

Streaming is NDJSON; the last line has `done: true`, the timing fields Ollama clients read (nanoseconds) and, for RAG
assistants, `sources` and `confidence`. `options.rag: false` turns retrieval off. With `logprobs`, each line carries
the logprobs of its own tokens (the one non-streaming answer: all of them). Errors are Ollama's `{"error": "<message>"}`
(serve/ops.py `ollama_error_body`, app.py's handlers): the body of an error status before a stream starts, or a line of
the stream when it fails part-way (Ollama's clients raise ResponseError on either).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from starlette.background import BackgroundTask

from protege.hashing import cached_file_sha256
from serve.engines.base import EngineError, TokenLogprob, UnsupportedParameter, Usage
from serve.gguf_meta import GGUFMeta, read_meta
from serve.ops import crash_message, ollama_error_body
from serve.protocol_ollama import (OllamaChatRequest, OllamaChatResponse, OllamaDetails, OllamaEmbedRequest,
                                   OllamaEmbedResponse, OllamaGenerateRequest, OllamaGenerateResponse, OllamaLine,
                                   OllamaLogprob, OllamaMessage, OllamaModel, OllamaPs, OllamaRunning,
                                   OllamaShowRequest, OllamaShowResponse, OllamaTags, OllamaTokenLogprob, OllamaVersion,
                                   iso_time)
from serve.routers.openai import embed_texts, get_embedder
from serve.models import keep_alive_seconds
from serve.service import CLIENT_GONE, Prepared, Service, wait_disconnect

router = APIRouter()
VERSION = "0.12.0"
FOREVER = "9999-12-31T23:59:59Z"  # /api/ps expires_at of a keep_alive < 0 engine


def _svc(request: Request) -> Service:
    return request.app.state.service


@router.get("/")
@router.head("/")
async def root() -> Any:
    return PlainTextResponse("Ollama is running")


@router.get("/api/version")
async def version() -> Any:
    return OllamaVersion(version=VERSION).model_dump()


def human_number(n: int) -> str:
    """Ollama's parameter_size format: 134.52M, 8B, 1.5B."""
    for unit, size, digits in (("B", 1e9, 1), ("M", 1e6, 2)):
        if n >= size:
            x = n / size
            return f"{x:.0f}{unit}" if x == int(x) else f"{x:.{digits}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1e3 else str(n)


def _details(spec, meta: GGUFMeta | None) -> OllamaDetails:
    """From the GGUF's own header where it can be read: the architecture, the parameter count, and the type the file
    was really quantized to (general.file_type: a q4_k_m tag built with the q6_k mix says Q6_K); else the tag."""
    arch = meta.architecture if meta and meta.architecture else "llama"
    return OllamaDetails(parent_model=spec.cfg.base.model, family=arch, families=[arch],
                         quantization_level=(meta and meta.file_type) or spec.quant.upper(),
                         parameter_size=human_number(meta.parameter_count) if meta and meta.parameter_count else "")


def _model(spec) -> OllamaModel:
    """Reads (and hashes, once per file version) the GGUF: call it in a worker thread."""
    has_file = bool(spec.gguf and spec.gguf.is_file())
    name = spec.id if ":" in spec.id else f"{spec.id}:latest"
    return OllamaModel(name=name, model=name, modified_at=iso_time(spec.modified),
                       size=spec.gguf.stat().st_size if has_file else 0,
                       digest=cached_file_sha256(spec.gguf) if has_file else "",
                       details=_details(spec, read_meta(spec.gguf) if has_file else None))


@router.get("/api/tags")
async def tags(request: Request) -> Any:
    reg = _svc(request).manager.registry
    reg.refresh()
    specs = sorted(reg.specs.values(), key=lambda s: s.id)
    return OllamaTags(models=await asyncio.to_thread(lambda: [_model(s) for s in specs])).model_dump()


@router.get("/api/ps")
async def ps(request: Request) -> Any:
    """The engines resident now (expired ones are unloaded first), most recently used first, with the time each
    goes (`expires_at`: far future for keep_alive forever; a busy engine's timer starts when its requests end)."""
    mgr = _svc(request).manager
    await mgr.sweep()
    now, out = mgr.clock(), []
    for res in mgr.running():
        t = res.expires_at(now)
        expires = FOREVER if t is None else iso_time(t)
        for mid in res.engine.model_ids:
            spec = mgr.registry.get(mid)
            if spec:
                m = await asyncio.to_thread(_model, spec)
                out.append(OllamaRunning(**m.model_dump(), expires_at=expires,
                                         size_vram=m.size if res.engine.name == "vllm" else 0,
                                         context_length=res.engine.context_length))
    return OllamaPs(models=out).model_dump()


def export_stops(spec, meta: GGUFMeta | None) -> list[str]:
    """The stops of the export that wrote this GGUF (export_report.json: what its Modelfiles carry); for the embedded
    base, or an export without a report, the file's own end-of-sequence token."""
    if spec.quant != "base":
        try:
            report = json.loads((spec.paths.gguf / "export_report.json").read_text(encoding="utf-8"))
            stops = [s for s in report["template"]["stops"] if isinstance(s, str) and s]
            if stops:
                return stops
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return [meta.eos_token] if meta and meta.eos_token else []


@router.post("/api/show")
async def show(req: OllamaShowRequest, request: Request) -> Any:
    """Model card from the GGUF's header (architecture, parameter count, context length, every scalar key, like
    Ollama's `model_info`) and the export (stops); the header is read once per file version."""
    spec = _svc(request).manager.spec(req.model_name())
    meta = await asyncio.to_thread(read_meta, spec.gguf)
    stops = [f"stop {json.dumps(s)}" for s in export_stops(spec, meta)]
    params = "\n".join([f"num_ctx {spec.cfg.serve.n_ctx}", *stops])
    modelfile = f"FROM {spec.gguf}\nSYSTEM \"\"\"{spec.system_prompt}\"\"\"\nPARAMETER " + params.replace(
        "\n", "\nPARAMETER ")
    info = meta.model_info() if meta else {}
    return OllamaShowResponse(modelfile=modelfile, parameters=params, system=spec.system_prompt,
                              details=_details(spec, meta), capabilities=["completion"],
                              modified_at=iso_time(spec.modified),
                              model_info={**info, "protege.knowledge": spec.has_knowledge}).model_dump()


def _timings(usage: Usage, t0: int, reason: str) -> dict:
    return {"done_reason": reason, "total_duration": time.perf_counter_ns() - t0, "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens, "prompt_eval_duration": usage.prompt_ns,
            "eval_count": usage.completion_tokens, "eval_duration": usage.eval_ns}


# One line of an answer: its text, then OllamaLine's fields (done, done_reason, timings, RAG extras).
Line = Callable[..., OllamaLine]


@router.post("/api/chat")
async def chat(req: OllamaChatRequest, request: Request) -> Any:
    svc, t0 = _svc(request), time.perf_counter_ns()

    def line(text: str = "", **fields: Any) -> OllamaLine:
        return OllamaChatResponse(model=req.model, message=OllamaMessage(role="assistant", content=text), **fields)

    if not req.messages:  # Ollama: an empty chat loads the model (or unloads it, with keep_alive 0)
        return _wire(line(done=True, done_reason=await _load_call(svc, req.model, req.keep_alive)))
    return await _answer(svc, req, t0, line, request)


@router.post("/api/generate")
async def generate(req: OllamaGenerateRequest, request: Request) -> Any:
    svc, t0 = _svc(request), time.perf_counter_ns()

    def line(text: str = "", **fields: Any) -> OllamaLine:
        return OllamaGenerateResponse(model=req.model, response=text, **fields)

    if not req.prompt:  # Ollama: an empty prompt loads the model (or unloads it, with keep_alive 0)
        return _wire(line(done=True, done_reason=await _load_call(svc, req.model, req.keep_alive)))
    return await _answer(svc, req, t0, line, request)


async def _load_call(svc: Service, model: str, keep_alive: Any) -> str:
    """Ollama's load call: load `model` (subject to keep_alive and serve.max_loaded_models), or with keep_alive 0
    unload it; the done_reason to answer."""
    if keep_alive is not None and keep_alive_seconds(keep_alive) == 0:
        await svc.manager.unload(model)
        return "unload"
    await svc.manager.get(model, keep_alive)
    return "load"


async def _answer(svc: Service, req: OllamaChatRequest | OllamaGenerateRequest, t0: int, line: Line,
                  request: Request) -> Any:
    prep = await svc.prepare(req.to_gen_params(), rag=req.rag_choice(), ctx_limit=req.ctx_limit(),
                             keep_alive=req.keep_alive)
    if not req.stream:
        lps = None
        if prep.refusal is not None:
            usage, text, reason = Usage(), prep.refusal, "stop"
        else:
            usage = Usage()
            res = await svc.collect(prep, usage, lambda: wait_disconnect(request.receive))
            if res is None:
                return Response(status_code=CLIENT_GONE)
            text, reason, lps = res.texts[0], res.finish_reasons[0], res.logprobs and res.logprobs[0]
        return JSONResponse(_wire(line(text, done=True, **_logprobs(lps, prep), **_timings(usage, t0, reason),
                                       **prep.rag_fields())))
    return StreamingResponse(_ndjson(svc, prep, t0, line), media_type="application/x-ndjson",
                             background=BackgroundTask(prep.release))


def _logprobs(lps: list[TokenLogprob] | None, prep: Prepared) -> dict[str, Any]:
    """`logprobs=` for a line (nothing when none were asked for or made); `top_logprobs` as many as asked."""
    if not lps:
        return {}
    top = prep.params.top_logprobs
    return {"logprobs": [OllamaLogprob(token=t.token, logprob=t.logprob, top_logprobs=[
        OllamaTokenLogprob(token=a, logprob=b) for a, b in t.top[:top]] if top else None) for t in lps]}


async def _ndjson(svc: Service, prep: Prepared, t0: int, line: Line) -> AsyncIterator[bytes]:
    """The answer's lines; a failure part-way ends the stream with an error line (the status is already sent)."""
    usage, reason = Usage(), "stop"
    try:
        if prep.refusal is not None:
            yield _enc(_wire(line(prep.refusal)))
        else:
            async for d in svc.stream(prep, usage):
                if d.text or d.logprobs:
                    yield _enc(_wire(line(d.text, **_logprobs(d.logprobs, prep))))
                if d.finish_reason:
                    reason = d.finish_reason
    except EngineError as e:
        yield _enc(ollama_error_body(str(e), e.code, e.param))
        return
    except Exception as e:  # noqa: BLE001 - logged with an id; the client gets the id, as from app.py's 500s
        yield _enc(ollama_error_body(crash_message(e, f"a stream of {prep.spec.id}"), "server_error"))
        return
    yield _enc(_wire(line(done=True, **_timings(usage, t0, reason), **prep.rag_fields())))


def _wire(line: OllamaLine) -> dict:
    """Unset fields are left out: only the last line has done_reason, the timings and the RAG extras, as in Ollama."""
    return line.model_dump(exclude_none=True)


def _enc(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


@router.post("/api/embed")
async def embed(req: OllamaEmbedRequest, request: Request) -> Any:
    t0 = time.perf_counter_ns()
    texts = req.texts()
    embedder = await get_embedder(request, req.model)
    if req.keep_alive is not None:  # the served model of that id, if any, keeps (or drops) its engine like a chat
        await _svc(request).manager.keep(req.model, req.keep_alive)
    with _svc(request).admitted():  # embeddings share the admission bound with generations: 429 when full
        vecs = await asyncio.to_thread(embed_texts, embedder, texts)
    return OllamaEmbedResponse(model=req.model, embeddings=vecs, total_duration=time.perf_counter_ns() - t0,
                               prompt_eval_count=sum(len(t.split()) for t in texts)).model_dump()


__all__ = ["router", "UnsupportedParameter"]
