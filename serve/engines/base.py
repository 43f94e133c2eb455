"""The one interface every engine (llama.cpp, vLLM, fake) implements, and the engine-neutral request/result types.

Routers translate OpenAI/Ollama wire types into `GenParams`, check them against `supports()` and `context_length`
(`Service.prepare`, serve/service.py) and only then call the engine, so an engine never sees a parameter it would
silently ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, runtime_checkable

# Parameter names routers may ask `supports()` about.
PARAMS = ("temperature", "top_p", "top_k", "seed", "stop", "max_tokens", "n", "logprobs", "json_object",
          "json_schema", "presence_penalty", "frequency_penalty", "repeat_penalty", "logit_bias", "tools", "images")


@dataclass
class GenParams:
    """One generation request, after the router has applied persona, RAG context and defaults."""

    model: str
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str | None = None          # raw text completion (no chat template) when set
    max_tokens: int | None = None      # None: until end of turn or the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0


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
    prompt_ns: int = 0
    eval_ns: int = 0


class EngineError(Exception):
    """An error with an HTTP status and an OpenAI error code; routers turn it into the OpenAI error shape."""

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


@runtime_checkable
class Engine(Protocol):
    """What the server needs from a model runtime. One instance may serve several model ids (quant tags, LoRAs)."""

    name: str
    model_ids: list[str]
    context_length: int
    loaded: bool

    async def load(self) -> None:
        """Load weights (may take seconds); /health answers 503 until the preloaded engine is loaded."""

    async def chat(self, params: GenParams) -> GenResult: ...

    def stream_chat(self, params: GenParams, usage: Usage | None = None) -> AsyncIterator[GenDelta]:
        """Deltas of every choice; closing the iterator early (client gone) stops the generation."""

    def count_tokens(self, params: GenParams) -> int:
        """Prompt tokens after the chat template, for the context-length check."""

    def supports(self, param: str) -> bool: ...

    async def close(self) -> None: ...


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
