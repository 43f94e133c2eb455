"""Ollama API wire types (pure pydantic), re-exported by serve.protocol.

Timings are nanoseconds like Ollama's; the final line of a stream carries them plus Protégé's RAG extras.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.wire import Bool, Float, Int, Request, check_inputs, check_stops

__all__ = [
    "OllamaOptions", "OllamaMessage", "OllamaChatRequest", "OllamaGenerateRequest", "OllamaFinal",
    "OllamaChatResponse", "OllamaGenerateResponse", "OllamaShowRequest", "OllamaDetails", "OllamaModel",
    "OllamaTags", "OllamaRunning", "OllamaPs", "OllamaShowResponse", "OllamaEmbedRequest", "OllamaEmbedResponse",
    "OllamaVersion"
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class SourceOut(_Out):
    """Same shape as serve.protocol.SourceOut (kept separate to avoid an import cycle)."""

    path: str
    section: str | None = None
    page: int | None = None
    chunk_id: str
    score: float


class OllamaOptions(_Lenient):
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


class OllamaMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class OllamaChatRequest(Request):
    model: str = Field(min_length=1)
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: Bool = True
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    keep_alive: str | int | None = None
    think: bool | str | None = None


class OllamaGenerateRequest(Request):
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


class OllamaFinal(_Out):
    """Timing fields on the final line of /api/chat and /api/generate (nanoseconds, like Ollama)."""

    done_reason: Literal["stop", "length", "load", "unload"] | None = "stop"
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class OllamaChatResponse(OllamaFinal):
    model: str
    created_at: str
    message: OllamaMessage
    done: bool
    sources: list[SourceOut] | None = None
    confidence: float | None = None
    grounding: Literal["generated", "extractive", "refused"] | None = None


class OllamaGenerateResponse(OllamaFinal):
    model: str
    created_at: str
    response: str
    done: bool
    context: list[int] | None = None
    sources: list[SourceOut] | None = None
    confidence: float | None = None
    grounding: Literal["generated", "extractive", "refused"] | None = None


class OllamaShowRequest(Request):
    model: str | None = None
    name: str | None = None  # older clients
    verbose: Bool = False

    def model_name(self) -> str:
        return self.model or self.name or ""


class OllamaDetails(_Out):
    parent_model: str = ""
    format: str = "gguf"
    family: str = "llama"
    families: list[str] = Field(default_factory=lambda: ["llama"])
    parameter_size: str = ""
    quantization_level: str = ""


class OllamaModel(_Out):
    name: str
    model: str
    modified_at: str
    size: int = 0
    digest: str = ""
    details: OllamaDetails = Field(default_factory=OllamaDetails)


class OllamaTags(_Out):
    models: list[OllamaModel]


class OllamaRunning(OllamaModel):
    expires_at: str = ""
    size_vram: int = 0


class OllamaPs(_Out):
    models: list[OllamaRunning]


class OllamaShowResponse(_Out):
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    details: OllamaDetails = Field(default_factory=OllamaDetails)
    model_info: dict[str, Any] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=lambda: ["completion"])
    modified_at: str = ""


class OllamaEmbedRequest(Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: Bool = True
    options: OllamaOptions | None = None
    keep_alive: str | int | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | list[str]) -> str | list[str]:
        return check_inputs(v)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class OllamaEmbedResponse(_Out):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class OllamaVersion(_Out):
    version: str
