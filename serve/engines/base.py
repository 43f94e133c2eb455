"""The base every engine (llama.cpp, vLLM, fake) derives from, and the engine-neutral result types.

Wire types build `GenParams` (serve/params.py, re-exported here); `Service.prepare` (serve/service.py) checks what it
asks (`requested()`) against the engine's `capabilities` and `context_length`, and only then calls the engine, so an
engine never sees a parameter it would silently ignore.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from serve.params import GenParams

__all__ = ["BaseEngine", "ContextLengthExceeded", "Engine", "EngineError", "EngineUnavailable", "GenDelta",
           "GenParams", "GenResult", "ModelNotFound", "QueueFull", "TokenLogprob", "UnsupportedParameter", "Usage",
           "collect", "stop_holdback"]


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class GenDelta:
    """A piece of one choice's text; the last delta of a choice has `finish_reason` set."""

    text: str
    index: int = 0
    finish_reason: str | None = None   # "stop" | "length"
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenResult:
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    prompt_ns: int = 0                 # time to first token (prefill), nanoseconds
    eval_ns: int = 0                   # decode time, nanoseconds
    logprobs: list[list[TokenLogprob]] | None = None


@dataclass
class Usage:
    """Filled by `stream_chat` as it goes, so routers can report usage and Ollama timings after the last delta."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV an earlier request left (not prefilled again)
    prompt_ns: int = 0
    eval_ns: int = 0


class EngineError(Exception):
    """An error with an HTTP status and an OpenAI error code; the app turns it into the error shape of the API that was
    called (serve/ops.py: OpenAI's on /v1, Ollama's on /api)."""

    status = 400
    code = "invalid_request_error"
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class UnsupportedParameter(EngineError):
    code = "unsupported_parameter"


class ContextLengthExceeded(EngineError):
    code = "context_length_exceeded"


class ModelNotFound(EngineError):
    status = 404
    code = "model_not_found"


class QueueFull(EngineError):
    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class EngineUnavailable(EngineError):
    status = 503
    code = "model_not_loaded"
    type = "server_error"


class BaseEngine(ABC):
    """What the server needs from a model runtime, and what every engine shares. One instance may serve several
    model ids (quant tags, LoRAs). An engine states what it can honour in `capabilities` (names from
    serve.params.CAPABILITIES); Service.prepare rejects a request asking for more with a 400 before the engine runs."""

    name: str = "engine"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, model_ids: list[str] | None = None, context_length: int = 2048):
        self.model_ids = list(model_ids or [])
        self.context_length = context_length
        self.loaded = False

    @abstractmethod
    async def load(self) -> None:
        """Load weights (may take seconds); /health answers 503 until the preloaded engine is loaded."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def stream_chat(self, params: GenParams, usage: Usage | None = None) -> AsyncIterator[GenDelta]:
        """Deltas of every choice; closing the iterator early (client gone) stops the generation."""

    @abstractmethod
    def prompt_tokens(self, params: GenParams) -> list[int]:
        """The prompt's token ids after the chat template, computed afresh (callers want `prompt_ids`)."""

    def register(self, spec: Any) -> None:
        """`spec` (a serve.registry.ModelSpec) now shares this engine (ModelManager.get adds its id to `model_ids`).
        Nothing to do for most engines; vLLM's overrides it to take the spec's LoRA adapter."""

    def supports(self, param: str) -> bool:
        return param in self.capabilities

    def prompt_ids(self, params: GenParams) -> list[int]:
        """The prompt's token ids, tokenized once per request: the context check (`count_tokens`) stores them on
        `params` and the generation reuses them, unless the prompt or the messages changed in between."""
        key = (id(self), params.prompt, [dict(m) for m in params.messages])
        if params.prompt_cache is not None and params.prompt_cache[0] == key:
            return params.prompt_cache[1]
        ids = self.prompt_tokens(params)
        params.prompt_cache = (key, ids)
        return ids

    def count_tokens(self, params: GenParams) -> int:
        """Prompt tokens after the chat template, for the context-length check."""
        return len(self.prompt_ids(params))

    async def chat(self, params: GenParams) -> GenResult:
        usage = Usage()
        return await collect(self.stream_chat(params, usage), params.n, usage)


Engine = BaseEngine  # the name the server's type hints use


async def collect(stream: AsyncIterator[GenDelta], n: int, usage: Usage) -> GenResult:
    """Build a GenResult from a delta stream (engines whose native API is streaming use this for `chat`)."""
    texts, reasons = [""] * n, ["stop"] * n
    lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
    async for d in stream:
        texts[d.index] += d.text
        if d.logprobs:
            lps[d.index].extend(d.logprobs)
        if d.finish_reason:
            reasons[d.index] = d.finish_reason
    return GenResult(texts, reasons, usage.prompt_tokens, usage.completion_tokens, usage.prompt_ns, usage.eval_ns,
                     lps if any(lps) else None)


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing chars might start a stop string (kept back until the next token decides)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                best = max(best, k)
                break
    return best
