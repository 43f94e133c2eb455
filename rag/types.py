"""The answer objects shared by the CLI (`protege ask --json`) and the server (extra fields `sources`, `confidence`).

Kept free of heavy imports so serve/protocol.py and the CLI can use them without chromadb or torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Source:
    path: str            # relative to the knowledge folder
    section: str | None  # markdown header path, e.g. "Pricing > Refunds"
    page: int | None     # 1-based PDF page
    chunk_id: str
    score: float         # final ranked score in [0, 1] (the gate applies to this)
    text: str = ""       # the chunk text (not sent on the wire by default)

    def to_dict(self, with_text: bool = False) -> dict:
        d = asdict(self)
        if not with_text:
            d.pop("text")
        return d


@dataclass
class Retrieval:
    """What the retriever found for one question; `refused` means: do not call the LLM."""

    question: str
    sources: list[Source] = field(default_factory=list)
    confidence: float = 0.0
    refused: bool = True
    listed: bool = False  # the question asks to list a table's rows and got the table (rag/tables.py)
    why: str = ""  # why it was refused, for people ("below min_score 0.29", "names a code no source holds", ...)
