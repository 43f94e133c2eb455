"""What the OpenAI and Ollama wire types share (serve/protocol.py, serve/protocol_ollama.py): the base models, the RAG
extras every answer carries (`Grounded`, `SourceOut`) and the validation. Both APIs import it; neither imports the
other, so a type lives once.

Request bodies are checked whole before any field is read, so a bad value is a 400 before a response header exists
(a stream that starts 200 and breaks mid-way is never the answer to bad input):

- text must be valid Unicode: JSON may escape a lone UTF-16 surrogate (`"\\ud800"`), which Python decodes into a
  str that cannot be encoded back to UTF-8 (tokenizers, embedders and the JSON response itself would fail later);
- numbers are numbers: `true` is not `1` (pydantic's lax mode would coerce it), `"0.5"` is not 0.5, floats are finite.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AllowInfNan, BaseModel, BeforeValidator, ConfigDict, SerializerFunctionWrapHandler, Strict,
                      field_validator, model_serializer, model_validator)
from pydantic_core import PydanticCustomError


def printable(text: str) -> str:
    """`text` with any lone surrogate escaped (`\\ud800`), safe to encode as UTF-8 in an error message or a log."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if not text.isascii() else text


def _valid_unicode(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def find_bad_text(data: Any) -> str | None:
    """Path (`messages.0.content`) of the first string or key in `data` that is not valid Unicode, else None.
    Iterative: a deeply nested body cannot exhaust the stack."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if not _valid_unicode(node):
                return path or "body"
        elif isinstance(node, dict):
            for k, v in node.items():
                key = k if isinstance(k, str) else str(k)
                sub = f"{path}.{printable(key)}" if path else printable(key)
                if not _valid_unicode(key):
                    return sub
                stack.append((v, sub))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node))
    return None


class Lenient(BaseModel):
    """Objects inside a request (a message, options): unknown fields are kept (and ignored) so new client versions
    keep working."""

    model_config = ConfigDict(extra="allow")


class Out(BaseModel):
    """Responses: extra fields pass through, so a router may add one an API grew before this model names it."""

    model_config = ConfigDict(extra="allow")


class Request(Lenient):
    """Base of every request body: lenient like its parts, and the whole body must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        where = find_bad_text(data)
        if where is not None:
            raise PydanticCustomError(  # app.py names `where` as the error's param
                "invalid_unicode", "text is not valid Unicode (a lone UTF-16 surrogate such as \\ud800); send "
                "well-formed UTF-8", {"where": where})
        return data


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PydanticCustomError("number_type", "Input should be a number, got {kind}",
                                  {"kind": "a boolean" if isinstance(v, bool) else type(v).__name__})
    return v


# `int` accepts 3 and 3.0 (not 3.5, true or "3"); `float` accepts 1 and 0.5 (not true, "0.5", NaN or Infinity).
Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]


def check_stops(v: list[str] | None, max_count: int | None = None) -> list[str] | None:
    """Stop sequences: an empty one would end every answer at once, so it is an error, never silently dropped."""
    if v is None:
        return None
    if max_count is not None and len(v) > max_count:
        raise ValueError(f"at most {max_count} stop sequences")
    if any(s == "" for s in v):
        raise ValueError("stop sequences must not be empty strings")
    return v


MAX_EMBED_INPUTS = 2048  # OpenAI's own cap per request


def check_inputs(v: str | list[str]) -> str | list[str]:
    """Embedding input: a string or a non-empty list of at most MAX_EMBED_INPUTS strings."""
    if isinstance(v, list) and not v:
        raise ValueError("input must be a string or a non-empty list of strings")
    if isinstance(v, list) and len(v) > MAX_EMBED_INPUTS:
        raise ValueError(f"at most {MAX_EMBED_INPUTS} inputs per request, got {len(v)}")
    return v


class EmbedRequest(Request):
    """/v1/embeddings and /api/embed: `input` is a string or a bounded non-empty list (each subclass declares its
    fields, `input` included, in its API's order)."""

    @field_validator("input", check_fields=False)
    @classmethod
    def _input(cls, v: str | list[str]) -> str | list[str]:
        return check_inputs(v)

    def texts(self) -> list[str]:
        text: str | list[str] = getattr(self, "input")
        return [text] if isinstance(text, str) else list(text)


class SourceOut(Out):
    """A RAG source (rag.types.Source without its text), the same on both APIs. Its nulls are data (`page: null`:
    not a PDF), so it keeps them when the answer around it is dumped with `exclude_none`."""

    path: str
    section: str | None = None
    page: int | None = None
    chunk_id: str
    score: float

    @model_serializer(mode="plain")
    def _with_nulls(self) -> dict[str, Any]:
        return dict(self)


class Grounded(Out):
    """Base of every answer (OpenAI's response and chunk, Ollama's chat and generate lines): Protégé's RAG extras,
    set only when the answer went through retrieval. `grounding` says what the guard did: generated (the model's
    checked words), extractive (it quoted a source), refused (below the confidence gate); `why`, on a refusal only,
    which gate refused ("below min_score 0.2946", "asks for a financial figure no source states"), as `protege ask
    --json` says it. The `trailing` fields are dumped last, so a client reads the API's own fields first, as in
    OpenAI's and Ollama's answers."""

    trailing: ClassVar[tuple[str, ...]] = ("sources", "confidence", "grounding", "why")

    sources: list[SourceOut] | None = None
    confidence: float | None = None
    grounding: Literal["generated", "extractive", "refused"] | None = None
    why: str | None = None

    @model_serializer(mode="wrap")
    def _trailing_last(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        d = handler(self)
        for key in self.trailing:
            if key in d:
                d[key] = d.pop(key)
        return d
