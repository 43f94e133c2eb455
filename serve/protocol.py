"""Wire types of the OpenAI API (pure pydantic: no torch, no engine imports); Ollama's are in serve/protocol_ollama.py,
what both share (base models, the RAG extras, validation) in serve/wire.py.

Each generation request translates itself into the engine-neutral `GenParams` (`to_gen_params()`, like vLLM's
`to_sampling_params()`): defaults, field mapping, and the request-level features no GenParams field carries
(images, tools, ...) all live here, so routers stay thin and what an engine is asked is derived, never listed.

Ordered like OpenAI's API reference: chat completions (request, response, chunk), completions, models, embeddings,
errors. Requests accept unknown fields (clients send vendor extras) but every field we *do* know is validated and,
where an engine cannot honour it, rejected by the router instead of ignored. Answers carry the RAG extras of
`wire.Grounded` (`sources`, `confidence`, `grounding`); requests carry the extra field `rag`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from serve.params import GenParams, flags
from serve.wire import Bool, EmbedRequest, Float, Grounded, Int, Lenient, Out, Request, check_stops


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _norm_stop(v: str | list[str] | None) -> list[str] | None:
    """A string or up to 4 strings, none of them empty (an empty stop would end every answer at once)."""
    return check_stops([v] if isinstance(v, str) else v, 4)


# --------------------------------------------------------------------------------------------------------- chat
class ContentPart(Lenient):
    type: str = "text"
    text: str | None = None


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """Flatten content parts; only text parts are supported (images are rejected by the router)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def has_non_text(self) -> bool:
        return isinstance(self.content, list) and any(p.type != "text" for p in self.content)


class StreamOptions(Lenient):
    include_usage: Bool = False


class JsonSchemaSpec(Lenient):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: Bool | None = None


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format.type 'json_schema' needs response_format.json_schema.schema")
        return self


class ChatCompletionRequest(Request):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    frequency_penalty: Float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Float] | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(None, ge=0, le=20)
    max_tokens: Int | None = Field(None, gt=0)
    max_completion_tokens: Int | None = Field(None, gt=0)
    n: Int = Field(1, ge=1, le=16)
    presence_penalty: Float | None = Field(None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    seed: Int | None = None
    stop: str | list[str] | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    user: str | None = None
    # Protégé extra: turn retrieval off for this request (assistants with a knowledge section).
    rag: Bool | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        return _norm_stop(v)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:  # as OpenAI: a 400, not top_logprobs silently ignored
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_gen_params(self) -> GenParams:
        """OpenAI's defaults (temperature 1, top_p 1); `developer` is a system turn; non-text parts only flag
        `images` (the text-only engines refuse them)."""
        fmt = self.response_format
        schema = fmt.json_schema.schema_ if fmt and fmt.type == "json_schema" and fmt.json_schema else None
        return GenParams(
            model=self.model, messages=[{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                                        for m in self.messages],
            max_tokens=self.limit(), temperature=1.0 if self.temperature is None else self.temperature,
            top_p=self.top_p or 1.0, seed=self.seed, stop=self.stop or [], n=self.n, logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs or 0, json_schema=schema,
            json_object=bool(fmt and fmt.type == "json_object"), presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            features=flags(temperature=self.temperature is not None, logit_bias=self.logit_bias, tools=self.tools,
                           images=any(m.has_non_text() for m in self.messages)))


class TopLogprob(Out):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(Out):
    content: list[TokenLogprob] | None = None


class PromptTokensDetails(Out):
    cached_tokens: int = 0


class Usage(Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, usage: Any) -> "Usage":
        """From the engine's Usage (serve/engines/base.py): the prompt tokens served from a kept KV prefix go where
        OpenAI puts its prompt-cache hits, `prompt_tokens_details.cached_tokens`."""
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   total_tokens=usage.prompt_tokens + usage.completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens))


class AssistantMessage(Out):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(Out):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(Grounded):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChunkDelta(Out):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Out):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Grounded):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -------------------------------------------------------------------------------------------------- completions
class CompletionRequest(Request):
    model: str = Field(min_length=1)
    prompt: str | list[str]
    echo: Bool = False
    frequency_penalty: Float | None = Field(None, ge=-2, le=2)
    logprobs: Int | None = Field(None, ge=0, le=5)
    max_tokens: Int | None = Field(16, gt=0)
    n: Int = Field(1, ge=1, le=16)
    presence_penalty: Float | None = Field(None, ge=-2, le=2)
    seed: Int | None = None
    stop: str | list[str] | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        return _norm_stop(v)

    def to_gen_params(self) -> GenParams:
        """A raw prompt (the first: the router refuses more than one). `suffix`, `echo` and `logprobs` are only
        flagged (no GenParams field), so an engine without the capability answers 400 instead of ignoring them."""
        return GenParams(
            model=self.model, prompt=self.prompt if isinstance(self.prompt, str) else self.prompt[0],
            max_tokens=self.max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=self.top_p or 1.0, seed=self.seed, stop=self.stop or [], n=self.n,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            features=flags(temperature=self.temperature is not None, suffix=self.suffix, echo=self.echo,
                           logprobs=self.logprobs))


class CompletionChoice(Out):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: Any = None


class CompletionResponse(Out):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ------------------------------------------------------------------------------------------------------- models
class ModelCard(Out):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "protege"


class ModelList(Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------------------------------- embeddings
class EmbeddingRequest(EmbedRequest):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(...)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, gt=0)
    user: str | None = None


class EmbeddingData(Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(Out):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: dict[str, int]


# ------------------------------------------------------------------------------------------------------- errors
ErrorCode = Literal["model_not_found", "context_length_exceeded", "invalid_request_error", "unsupported_parameter",
                    "invalid_api_key", "rate_limit_exceeded", "request_too_large", "server_error", "model_not_loaded"]


class ErrorDetail(Out):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(Out):
    error: ErrorDetail
