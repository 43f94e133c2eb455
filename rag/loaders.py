"""Turn a folder of documents into text: .md .markdown .txt .html .htm .pdf .docx.

Why this shape: one file that fails to parse (a broken PDF, a binary file, bad encoding) must never stop an index run,
so `load_file` raises `LoadError` with a short reason and `walk` lists what to skip and why. HTML and DOCX headings
are turned into markdown headings so the chunker keeps their section path like it does for .md files, and HTML tables become markdown tables (which the
chunker turns into one "Header: value; ..." line per row)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TEXT_TYPES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".rst": "text"}
HTML_TYPES = {".html", ".htm"}
SUPPORTED = set(TEXT_TYPES) | HTML_TYPES | {".pdf", ".docx"}


class LoadError(Exception):
    """A file could not be turned into text; the message is the reason shown in the index report."""


@dataclass
class Document:
    path: str              # relative to the knowledge folder, posix separators
    text: str
    kind: str = "text"     # "markdown" (split by headers) or "text"
    page: int | None = None  # 1-based PDF page


def walk(folder: Path, max_bytes: int | None = None) -> tuple[list[Path], list[dict]]:
    """Files to index (sorted) and skipped ones ({path, reason}); hidden entries and symlinks leaving the folder are
    ignored silently, symlinked folders are not followed (no cycles), files over `max_bytes` (knowledge.max_file_mb)
    are skipped with their size: one stray dump must not take the index run's memory and hours."""
    root = folder.resolve()
    files: list[Path] = []
    skipped: list[dict] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_symlink():
                try:
                    target = p.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                if not target.is_relative_to(root) or not target.is_file():
                    continue
            if not p.is_file():
                continue
            if p.suffix.lower() not in SUPPORTED:
                skipped.append({"path": relpath(p, folder), "reason": f"unsupported file type {p.suffix or '(none)'}"})
                continue
            size = p.stat().st_size
            if max_bytes is not None and size > max_bytes:
                skipped.append({"path": relpath(p, folder), "reason": f"too large: {_size(size)} > "
                                                                      f"knowledge.max_file_mb {max_bytes / 2**20:.3g}"})
                continue
            files.append(p)
    return files, skipped


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def relpath(p: Path, folder: Path) -> str:
    return p.relative_to(folder).as_posix()


def load_file(p: Path, rel: str) -> list[Document]:
    """One Document per file (per page for PDFs); raises LoadError when nothing readable comes out."""
    ext = p.suffix.lower()
    try:
        if ext in TEXT_TYPES:
            docs = [Document(rel, _read_text(p), TEXT_TYPES[ext])]
        elif ext in HTML_TYPES:
            docs = [Document(rel, _html_to_markdown(_read_text(p)), "markdown")]
        elif ext == ".pdf":
            docs = _load_pdf(p, rel)
        elif ext == ".docx":
            docs = [Document(rel, _docx_to_markdown(p), "markdown")]
        else:
            raise LoadError(f"unsupported file type {ext}")
    except LoadError:
        raise
    except Exception as e:  # parsers raise many types on corrupt input; one bad file must not stop the run
        raise LoadError(f"cannot parse {ext[1:]}: {type(e).__name__}: {str(e)[:120]}") from None
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise LoadError("no extractable text")
    return docs


# Byte-order marks, longest first (the UTF-32-LE mark starts with the UTF-16-LE one). Notepad and PowerShell write
# UTF-16 with a BOM; its NUL bytes must not read as binary content.
BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def _read_text(p: Path) -> str:
    data = p.read_bytes()
    for bom, enc in BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(enc)
            except UnicodeDecodeError:
                raise LoadError(f"not valid {enc.upper()} text (after its byte-order mark)") from None
    if b"\x00" in data[:8192]:
        raise LoadError("binary content (NUL bytes) in a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise LoadError("not UTF-8 text") from None
    if sum(not (c.isprintable() or c.isspace()) for c in text) > len(text) * 0.05:
        raise LoadError("binary content in a text file")
    return text


def _html_to_markdown(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = " ".join(soup.title.get_text(" ").split()) if soup.title else ""
    if title and soup.body is not None and not soup.find(["h1", "h2", "h3", "h4", "h5", "h6"]):
        soup.body.insert(0, f"\n\n# {title}\n\n")  # a page without headings still gets a section name
    for tag in soup(["script", "style", "noscript", "template", "nav", "footer", "head"]):
        tag.decompose()
    for table in reversed(soup.find_all("table")):  # innermost first; the chunker linearises markdown tables
        table.replace_with(_table_to_markdown(table))
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            title = " ".join(h.get_text(" ").split())
            h.replace_with(f"\n\n{'#' * level} {title}\n\n" if title else "")
    for li in soup.find_all("li"):
        li.insert_before("\n- ")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    text = soup.get_text("\n")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:  # collapse runs of blank lines
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def _table_to_markdown(table) -> str:
    """An HTML table as a markdown table (first row = header), cells on one line each, pipes escaped."""
    rows = []
    for tr in table.find_all("tr"):
        cells = [" ".join(c.get_text(" ").split()).replace("|", "\\|") for c in tr.find_all(["th", "td"])]
        if any(cells):
            rows.append(cells)
    if not rows:
        return "\n"
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width] + ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n\n" + "\n".join(lines) + "\n\n"


def _load_pdf(p: Path, rel: str) -> list[Document]:
    from pypdf import PdfReader

    reader = PdfReader(str(p), strict=False)
    if reader.is_encrypted:
        try:
            if not reader.decrypt(""):
                raise LoadError("encrypted PDF")
        except LoadError:
            raise
        except Exception:
            raise LoadError("encrypted PDF") from None
    docs = []
    for i, page in enumerate(reader.pages, start=1):
        text = page.extract_text() or ""
        docs.append(Document(rel, text, "text", page=i))
    return docs


def _docx_to_markdown(p: Path) -> str:
    import docx

    document = docx.Document(str(p))
    out = []
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        if style.startswith("Heading ") and style[8:].isdigit():
            out.append(f"\n{'#' * min(int(style[8:]), 6)} {text}\n")
        elif style == "Title":
            out.append(f"\n# {text}\n")
        else:
            out.append(text)
    for table in document.tables:
        for row in table.rows:
            out.append(" | ".join(c.text.strip() for c in row.cells))
    return "\n".join(out)
