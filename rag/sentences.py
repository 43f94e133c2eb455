"""Sentences of a chunk, as the guard quotes them and the index embeds them one by one.

Markdown markup is dropped; table rows ("Plan: Sloop; RAM: 4 GB; Price: $14"), bullets and headings stay one line
each; the other lines of a paragraph are joined first (plain text and PDFs wrap sentences across lines); a line's
code or short "Key:" lead is carried onto its later sentences, which say nothing alone without it."""

from __future__ import annotations

import re

from rag.claims import ROW, WORD  # noqa: F401  (ROW re-exported: a table row is decided in rag/claims.py)

# what a line is about, carried onto its later sentences: a code ("BH-1002  Token expired. The token ...") or a
# short "Key:" lead ("Floating IPs: free while attached. ...")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")  # a list item's marker
_LABEL = re.compile(r"^((?:[A-Z][A-Za-z]*-?\d+[A-Za-z0-9.-]*)\s|[^.:;!?]{2,40}:\s)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a chunk, markdown markup dropped. Table rows, bullets and headings stay one line each; other lines
    of a paragraph are joined first (plain text and PDFs wrap sentences across lines)."""
    out = []
    for line in _logical_lines(text):
        line = _BULLET.sub("", line)
        line = line.replace("**", "").replace("__", "").strip()
        if not line or set(line) <= set("|-: "):
            continue
        label = _LABEL.match(line)
        for i, s in enumerate(re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[$])", line)):
            s = s.strip()
            if i and label and not s.startswith(label.group(1)):
                s = f"{label.group(1).strip()} {s}"  # "BH-1002 The token passed its expiry date."
            if len(WORD.findall(s.lower())) >= 3:
                out.append(s)
    return out


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    glue = False  # the previous line is prose that may go on
    indent = None  # the previous line's indentation; None after a blank line
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            glue, indent = False, None
            continue
        depth = len(raw) - len(raw.lstrip())
        deeper, indent = indent is not None and depth > indent, depth
        if deeper and lines and not lines[-1].endswith(":") and "|" not in line and not ROW.match(line):
            # a line indented under the one before is part of it ("S1 - Critical: production is down." over
            # "    First response: 2 hours."), unless that one introduces a list ("Limits:")
            lines[-1] = f"{lines[-1]} {_BULLET.sub('', line)}"
            glue = not re.search(r"[.!?:]$", line)
            continue
        structured = (bool(re.match(r"(?:[-*+|#]|\d+[.)])\s*", line)) or line.endswith(":") or "|" in line
                      or bool(ROW.match(line)))
        heading = glue and len(lines[-1].split()) <= 7 and line[:1].isupper()  # "Overview" + "This document ..."
        if glue and not structured and not heading and lines:
            lines[-1] = f"{lines[-1]} {line}"
        else:
            lines.append(line)
        glue = not structured and not re.search(r"[.!?]$", line)
    return lines


def heading_and_body(chunk_text: str) -> tuple[str, str]:
    """A chunk's first line is its heading (rag/chunking.py prefixes the title/section path): not a statement. A
    one-line chunk is all body."""
    first, _, rest = chunk_text.partition("\n")
    return (first.strip(), rest) if rest.strip() else ("", chunk_text)


def under_heading(heading: str, sentence: str) -> str:
    """A sentence as it is embedded: under its chunk's heading ("Security > Encryption: Keys are rotated every 90
    days."), since what it is about is often only in the heading."""
    return f"{heading}: {sentence}" if heading else sentence


def embedded_sentences(chunk_text: str) -> list[str]:
    """The texts a chunk's sentence vectors embed (rag/sentence_store.py): each sentence under the heading."""
    heading, body = heading_and_body(chunk_text)
    return [under_heading(heading, s) for s in split_sentences(body)]
