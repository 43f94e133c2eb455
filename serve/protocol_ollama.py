"""Ollama API wire types (pure pydantic); the OpenAI API's are in serve/protocol.py, what both share in serve/wire.py.

The /api/chat and /api/generate requests translate themselves into `GenParams` (`to_gen_params()`), like OpenAI's:
what they ask that the engine cannot do (`think`, `images`, `tools`, ...) is flagged there, so it is a 400, never
silently ignored; `logprobs` (and `top_logprobs`) are honoured. Their answers are `OllamaLine`s: every line of a
stream has the text (and its `logprobs`), the last one also `done_reason`, the timings (nanoseconds, like Ollama) and
Protégé's RAG extras. tests/test_serve_ollama_client.py checks these shapes against the official `ollama` client's
own response models.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from serve.params import GenParams, flags
from serve.wire import Bool, EmbedRequest, Float, Grounded, Int, Lenient, Out, Request, check_stops


def iso_time(ts: float | None = None) -> str:
    """Ollama's timestamps (`created_at`, `modified_at`, `expires_at`): UTC, RFC 3339 with a Z; None: now."""
    t = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


class OllamaOptions(Lenient):
    """The subset of Ollama's runtime options we honour; others are accepted and ignored like Ollama does,
    except those that change the answer's shape, which the router checks."""

    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=0)
    seed: Int | None = None
    num_predict: Int | None = Field(None, ge=-2, description="-1: no limit, -2: fill the context (Ollama)")
    num_ctx: Int | None = Field(None, gt=0)
    stop: list[str] | None = None
    repeat_penalty: Float | None = Field(None, ge=0, le=10)
    # Protégé extra: turn retrieval off
    rag: Bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        return [v] if isinstance(v, str) else v  # Ollama's own server accepts one string too

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str] | None) -> list[str] | None:
        return check_stops(v)

    def to_gen_params(self, model: str, fmt: str | dict[str, Any] | None) -> GenParams:
        """Ollama's defaults (temperature 0.8, repeat_penalty 1: off; num_predict <= 0: no limit); `fmt` is the
        request's `format`: "json" or a JSON schema."""
        limit = self.num_predict if self.num_predict and self.num_predict > 0 else None
        return GenParams(model=model, max_tokens=limit,
                         temperature=0.8 if self.temperature is None else self.temperature, top_p=self.top_p or 1.0,
                         top_k=self.top_k or 0, seed=self.seed, stop=self.stop or [], json_object=fmt == "json",
                         json_schema=fmt if isinstance(fmt, dict) else None, repeat_penalty=self.repeat_penalty or 1.0,
                         features=flags(temperature=self.temperature is not None))


class OllamaMessage(Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class _Generation(Request):
    """What /api/chat and /api/generate share (each declares its own fields, in Ollama's order)."""

    @field_validator("format", check_fields=False)
    @classmethod
    def _format(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, str) and v not in ("", "json"):
            raise ValueError(f"must be 'json' or a JSON schema object, got {v!r}")
        return v

    @field_validator("top_logprobs", check_fields=False)
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):  # else it would be ignored (the rule: refuse, never ignore)
            raise ValueError("needs logprobs: true")
        return v

    def gen_params(self) -> GenParams:
        """What chat and generate share: the options, `format`, `logprobs`, and `think` (only flagged: the engines here
        do not reason aloud, so asking them to is refused)."""
        p = self.options_or_default().to_gen_params(getattr(self, "model"), getattr(self, "format", None))
        p.logprobs, p.top_logprobs = bool(getattr(self, "logprobs", None)), getattr(self, "top_logprobs", None) or 0
        p.features |= flags(think=getattr(self, "think", None))
        return p

    def options_or_default(self) -> OllamaOptions:
        return getattr(self, "options", None) or OllamaOptions()

    def rag_choice(self) -> bool | None:
        """`options.rag` (Protégé's extra): False turns retrieval off, None leaves it to the assistant."""
        return self.options_or_default().rag

    def ctx_limit(self) -> int | None:
        return self.options_or_default().num_ctx


class OllamaChatRequest(_Generation):
    model: str = Field(min_length=1)
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: Bool = True
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    keep_alive: str | int | None = None
    think: bool | str | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(None, ge=0, le=20)

    def to_gen_params(self) -> GenParams:
        """`images` and `tools` are only flagged: the engines here are text-only and call no tools."""
        p = self.gen_params()
        p.messages = [{"role": m.role, "content": m.content} for m in self.messages]
        p.features |= flags(images=any(m.images for m in self.messages), tools=self.tools)
        return p


class OllamaGenerateRequest(_Generation):
    model: str = Field(min_length=1)
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: Bool = False
    stream: Bool = True
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    images: list[str] | None = None
    keep_alive: str | int | None = None
    think: bool | str | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(None, ge=0, le=20)

    def to_gen_params(self) -> GenParams:
        """`raw`: the prompt as is (no template, no persona); else a user turn under `system`. `images`, `suffix` and
        the old token `context` (an extra field: not kept server-side) are only flagged, so they are refused."""
        p = self.gen_params()
        if self.raw:
            p.prompt = self.prompt
        else:
            p.messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": self.prompt}]
        p.features |= flags(images=self.images, suffix=self.suffix, context=getattr(self, "context", None))
        return p

    def rag_choice(self) -> bool | None:
        """A raw prompt has no retrieval (Service.check_rag_policy decides whether that is allowed)."""
        return False if self.raw else super().rag_choice()


class OllamaTokenLogprob(Out):
    token: str
    logprob: float


class OllamaLogprob(OllamaTokenLogprob):
    """A generated token, and with `top_logprobs` > 0 the most likely tokens at its place (Ollama leaves them out
    otherwise)."""

    top_logprobs: list[OllamaTokenLogprob] | None = None


class OllamaLine(Grounded):
    """A line of /api/chat or /api/generate. Only the final line (or the one non-streaming answer) sets `done_reason`
    and the timings; routers dump with `exclude_none`, so the other lines carry just the text, as Ollama's do. The
    `trailing` fields are dumped after the subclass's text (`message` or `response`), in Ollama's order."""

    trailing = ("done", "done_reason", "total_duration", "load_duration", "prompt_eval_count",
                "prompt_eval_duration", "eval_count", "eval_duration", "logprobs", *Grounded.trailing)

    model: str
    created_at: str = Field(default_factory=iso_time)
    done: bool = False
    done_reason: Literal["stop", "length", "load", "unload"] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[OllamaLogprob] | None = None  # asked for with `logprobs`: the tokens of this line's text


class OllamaChatResponse(OllamaLine):
    message: OllamaMessage = Field(default_factory=lambda: OllamaMessage(role="assistant"))


class OllamaGenerateResponse(OllamaLine):
    response: str = ""


class OllamaShowRequest(Request):
    model: str | None = None
    name: str | None = None  # older clients
    verbose: Bool = False

    def model_name(self) -> str:
        return self.model or self.name or ""


class OllamaDetails(Out):
    parent_model: str = ""
    format: str = "gguf"
    family: str = "llama"
    families: list[str] = Field(default_factory=lambda: ["llama"])
    parameter_size: str = ""
    quantization_level: str = ""


class OllamaModel(Out):
    name: str
    model: str
    modified_at: str
    size: int = 0
    digest: str = ""
    details: OllamaDetails = Field(default_factory=OllamaDetails)


class OllamaTags(Out):
    models: list[OllamaModel]


class OllamaRunning(OllamaModel):
    modified_at: str = Field("", exclude=True)  # Ollama's /api/ps has no modified_at
    expires_at: str = ""
    size_vram: int = 0
    context_length: int = 0


class OllamaPs(Out):
    models: list[OllamaRunning]


class OllamaShowResponse(Out):
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    details: OllamaDetails = Field(default_factory=OllamaDetails)
    model_info: dict[str, Any] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=lambda: ["completion"])
    modified_at: str = ""


class OllamaEmbedRequest(EmbedRequest):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: Bool = True
    options: OllamaOptions | None = None
    keep_alive: str | int | None = None


class OllamaEmbedResponse(Out):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class OllamaVersion(Out):
    version: str
