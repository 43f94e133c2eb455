"""Split documents into chunks sized in tokens of the embedder (so no chunk is silently truncated by the model).

Markdown (and HTML/DOCX, converted to markdown by the loaders) is first split on headers with langchain's
MarkdownHeaderTextSplitter and the header path is kept as `section` ("Pricing > Refunds"); every piece is then cut by
the recursive splitter with overlap. Each chunk's text starts with its section path (or the file's title for plain
text): a chunk deep in a section still says what it is about, which helps both the embedding and BM25.

Text that reads well to the embedder, BM25 and the LLM alike:
- markdown tables (HTML tables arrive as markdown from the loader) are linearised one row per line, each cell named
  by its column: "Plan: Sloop; vCPU: 2; RAM: 4 GB; Price per month: $14". A row cut away from its header row by the
  splitter still says what its numbers are, and a question that describes a row by its values finds it;
- plain text (and PDF pages) gets its title from a short first line ("Brightpath Limited Warranty for the HB-10"),
  carried by every chunk of the file, and its sections from stand-alone ALL-CAPS heading lines ("3. SEVERITY LEVELS")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable

HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
CHUNKER_VERSION = "2"  # bump when the chunk text recipe changes: stored files are then re-chunked


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
        """Chunks of the Documents of one file, in order (several Documents: the pages of one PDF)."""
        chunks: list[Chunk] = []
        title = None  # plain text: the file's first line when it reads like a title, kept for all its pages
        for n, doc in enumerate(docs):
            if doc.kind == "markdown":
                sections = self._sections(doc)
            else:
                text = doc.text
                if n == 0:
                    title, text = _text_title(text)
                sections = _text_sections(text)
            for section, body in sections:
                body = linearize_tables(body)
                if doc.kind == "markdown":
                    prefix = section or _title(doc.path)
                else:
                    head = title or _title(doc.path)
                    prefix = f"{head} > {section}" if section and head else (section or head)
                budget = max(self.chunk_size - self.count_tokens(prefix) - 2, self.chunk_size // 2, self.chunk_overlap + 1)
                for piece in self._cut(body, budget):
                    chunk_text = f"{prefix}\n{piece}" if prefix else piece
                    chunks.append(Chunk(chunk_text, doc.path, section, doc.page, len(chunks)))
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
        text = re.sub(r"[ \t]+\n", "\n", text)  # the header splitter ends lines with "  " (markdown line breaks)
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


_SEP_CELL = re.compile(r"^\s*:?-+:?\s*$")
_PIPE = re.compile(r"(?<!\\)\|")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip().replace("\\|", "|") for c in _PIPE.split(s)]


def _is_separator(line: str) -> bool:
    return "-" in line and ("|" in line) and all(_SEP_CELL.match(c) for c in _cells(line))


def linearize_tables(text: str) -> str:
    """Markdown tables -> one line per body row, "Header: value; Header: value" (empty cells left out); the header
    and separator rows go. Text outside tables, and tables inside code fences, are kept as they are."""
    lines = text.split("\n")
    out: list[str] = []
    i, fenced = 0, False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
        if (not fenced and "|" in line and i + 1 < len(lines) and _is_separator(lines[i + 1])
                and len(_cells(line)) == len(_cells(lines[i + 1]))):
            header = _cells(line)
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                cells = _cells(lines[i])
                parts = []
                for j, v in enumerate(cells):
                    h = header[j] if j < len(header) else ""
                    if v:
                        parts.append(f"{h}: {v}" if h else v)
                if parts:
                    out.append("; ".join(parts))
                i += 1
            continue
        out.append(line.rstrip() if "|" in line else line)
        i += 1
    return "\n".join(out)


def _is_caps_heading(line: str) -> bool:
    """A stand-alone heading line of plain text: short, mostly capital letters, no sentence end."""
    s = line.strip()
    letters = [c for c in re.sub(r"\([^)]*\)", "", s) if c.isalpha()]  # "BILLING (3xxx)": codes aside
    if not (3 <= len(s) <= 90) or len(letters) < 3 or s[0] in "-*•" or s.endswith((".", ",", ";")):
        return False
    return sum(c.isupper() for c in letters) >= 0.8 * len(letters)


def _text_title(text: str) -> tuple[str | None, str]:
    """(title, rest): the first non-empty line when it reads like a title (short, no sentence end, not a list item)."""
    stripped = text.lstrip()
    first, _, rest = stripped.partition("\n")
    first = first.strip()
    if (3 <= len(first) <= 100 and not first.endswith((".", ",", ";", ":")) and first[0] not in "-*•"
            and sum(c.isalpha() for c in first) >= 3 and rest.strip()):
        return first, rest
    return None, text


def _text_sections(text: str) -> list[tuple[str | None, str]]:
    """Plain text cut at ALL-CAPS heading lines that stand alone (after a blank line or at the start)."""
    lines = text.split("\n")
    out: list[tuple[str | None, str]] = []
    section, body = None, []
    for i, line in enumerate(lines):
        if _is_caps_heading(line) and (i == 0 or not lines[i - 1].strip()):
            if "\n".join(body).strip():
                out.append((section, "\n".join(body)))
            section, body = line.strip(), []
            continue
        body.append(line)
    if "\n".join(body).strip() or not out:
        out.append((section, "\n".join(body)))
    return out


def _title(path: str) -> str:
    """'guides/refund_policy.txt' -> 'refund policy' (a weak but free topic hint for plain text chunks)."""
    stem = PurePosixPath(path).stem
    return re.sub(r"[_\-]+", " ", stem).strip()
