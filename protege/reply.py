"""What an answer comes back as: `Reply` (text, sources, confidence, grounding, usage) and `ReplyStream` (text pieces as
they are generated, the Reply once read to the end). Wire-neutral: the CLI prints them, the server and the web UI
serialise them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator

from protege.errors import ProtegeError
from rag.types import Source

if TYPE_CHECKING:
    from protege.api import Assistant


@dataclass
class Reply:
    """One answer. `grounding` is None without retrieval, else generated | extractive (the guard quoted a source) |
    refused (below knowledge.min_score, or the guard found nothing supported); `sources` are as served (no chunk text:
    `retrieve()` has it); `why` says which gate refused a question the model never saw."""

    text: str
    sources: list[Source] = field(default_factory=list)
    confidence: float | None = None
    grounding: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    finish_reason: str | None = None
    why: str | None = None  # a refusal's reason: which gate refused ("below min_score 0.2946", "asks about a plan ...")

    @property
    def refused(self) -> bool:
        return self.grounding == "refused"

    def to_dict(self) -> dict[str, Any]:
        """The `protege ask --json` object."""
        return {"answer": self.text, "sources": [s.to_dict() for s in self.sources], "confidence": self.confidence,
                "refused": self.refused, "grounding": self.grounding, "why": self.why}


class ReplyStream:
    """Iterate for the text pieces as they are generated; `.reply` is the whole Reply once the iteration ended.
    Leaving the loop early (or `close()`) stops the generation and frees the engine."""

    def __init__(self, owner: "Assistant", start: Callable[["ReplyStream"], AsyncIterator[str]]):
        self._owner = owner
        self._reply: Reply | None = None
        self._pieces = start(self)  # nothing runs until the first piece is asked for

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                try:
                    piece = self._owner._call(self._pieces.__anext__())
                except StopAsyncIteration:
                    return
                if piece:
                    yield piece
        finally:
            self.close()

    @property
    def reply(self) -> Reply:
        if self._reply is None:
            raise ProtegeError("the reply is complete only after the stream has been read to its end")
        return self._reply

    def close(self) -> None:
        if self._owner._loop is not None:
            self._owner._call(self._pieces.aclose())  # type: ignore[attr-defined]
