"""Split documents into chunks sized in tokens of the embedder (so no chunk is silently truncated by the model).

Markdown (and HTML/DOCX, converted to markdown by the loaders) is first split on headers with langchain's
MarkdownHeaderTextSplitter and the header path is kept as `section` ("Pricing > Refunds"); every piece is then cut by
the recursive splitter with overlap. Each chunk's text starts with its section path (or the file's title for plain
text): a chunk deep in a section still says what it is about, which helps both the embedding and BM25."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable

HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
CHUNKER_VERSION = "1"  # bump when the chunk text recipe changes: stored files are then re-chunked


@dataclass
class Chunk:
    text: str               # what is embedded, searched and shown to the LLM (starts with the section path)
    path: str
    section: str | None
    page: int | None
    ordinal: int            # position within its file


def chunker_signature(chunk_size: int, chunk_overlap: int, embedder_name: str) -> str:
    return f"v{CHUNKER_VERSION}/{embedder_name}/{chunk_size}/{chunk_overlap}"


class Chunker:
    def __init__(self, count_tokens: Callable[[str], int], chunk_size: int = 200, chunk_overlap: int = 30):
        from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

        self.count_tokens = count_tokens
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        self.md = MarkdownHeaderTextSplitter(HEADERS, strip_headers=True)
        self.splitter = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size, chunk_overlap=chunk_overlap, length_function=count_tokens,
            separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""], keep_separator="end",
        )

    def split(self, docs: list) -> list[Chunk]:
        """Chunks of the Documents of one file, in order."""
        chunks: list[Chunk] = []
        for doc in docs:
            for section, body in self._sections(doc):
                prefix = section or _title(doc.path)
                budget = max(self.chunk_size - self.count_tokens(prefix) - 2, self.chunk_size // 2, self.chunk_overlap + 1)
                for piece in self._cut(body, budget):
                    text = f"{prefix}\n{piece}" if prefix else piece
                    chunks.append(Chunk(text, doc.path, section, doc.page, len(chunks)))
        return chunks

    def _sections(self, doc) -> list[tuple[str | None, str]]:
        if doc.kind != "markdown":
            return [(None, doc.text)]
        out = []
        for part in self.md.split_text(doc.text):
            path = " > ".join(part.metadata[k] for _, k in HEADERS if part.metadata.get(k))
            if part.page_content.strip():
                out.append((path or None, part.page_content))
        return out

    def _cut(self, text: str, budget: int) -> list[str]:
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        if not text:
            return []
        if self.count_tokens(text) <= budget:
            return [text]
        old = self.splitter._chunk_size
        self.splitter._chunk_size = budget
        try:
            return [p.strip() for p in self.splitter.split_text(text) if p.strip()]
        finally:
            self.splitter._chunk_size = old


def _title(path: str) -> str:
    """'guides/refund_policy.txt' -> 'refund policy' (a weak but free topic hint for plain text chunks)."""
    stem = PurePosixPath(path).stem
    return re.sub(r"[_\-]+", " ", stem).strip()
