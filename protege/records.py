"""How a JSON or JSON Lines file is read, decided once: data files, the split's train/val files, eval prompts and QA
files all come through `iter_json_records`, so every bad line is reported the same way, as `file:line: what`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from protege.errors import DataError


class RecordError(ValueError):
    """A problem with one record; the loader adds file:line."""


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def iter_json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, object) from a JSON array, a single JSON object, or JSON Lines; bad JSON -> DataError."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    stripped = text.lstrip()
    decoder = json.JSONDecoder()
    if stripped.startswith("["):
        i = text.index("[") + 1
        while True:
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if i >= len(text):
                raise DataError(f"{path}:{_line_of(text, i)}: invalid JSON: unterminated array")
            if text[i] == "]":
                return
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            yield _line_of(text, i), obj
            i = end
    lines = text.splitlines()
    if path.suffix.lower() == ".json" and stripped.startswith("{"):
        try:
            yield _line_of(text, text.index("{")), json.loads(text)
            return
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON: {e.msg} (column {e.colno})") from None


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """The `messages` of each record (a train/val split): a record without them is a DataError at its line."""
    out = []
    for n, rec in iter_json_records(Path(path)):
        if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
            raise DataError(f"{path}:{n}: expected a JSON object with a `messages` list")
        out.append(rec["messages"])
    return out
