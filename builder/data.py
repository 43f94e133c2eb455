"""Training data: load alpaca / ShareGPT / OpenAI-chat JSON(L) and CSV into one form (a list of OpenAI-style
`messages`), validate with file:line errors, clean, split, and write train/val JSONL for the trainer.

Every record becomes a `Conversation` that remembers where it came from, so a bad record is reported as
`path:line: problem` (a DataError, exit code 2) or, with `data.on_error: skip`, counted in the report.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from protege.config import AssistantConfig
from protege.errors import DataError
from protege.paths import AssistantPaths
from protege.records import RecordError, iter_json_records, read_conversations

DATA_SUFFIXES = (".json", ".jsonl", ".csv")
ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "chatgpt": "assistant"}


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    source: str  # "path:line"


@dataclass
class LoadResult:
    conversations: list[Conversation] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def expand_files(entries: list[Path]) -> list[Path]:
    """`data.files` entries may be files or folders (walked recursively for *.json, *.jsonl, *.csv)."""
    out: list[Path] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
            if not found:
                raise DataError(f"{p}: folder has no .json, .jsonl or .csv files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such data file or folder")
    return out


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"{what} is empty")
    return value


def detect_format(record: Any) -> str:
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return "openai"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise RecordError(f"unknown record format: expected 'messages', 'conversations' or 'instruction'/'output' "
                      f"keys, got {sorted(record)[:6]}")


def from_openai(rec: dict) -> list[dict[str, str]]:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"messages[{i}]: expected an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RecordError(f"messages[{i}]: unknown role {m['role']!r} (expected system, user or assistant)")
        out.append({"role": m["role"], "content": _text(m["content"], f"messages[{i}].content")})
    return out


def from_sharegpt(rec: dict) -> list[dict[str, str]]:
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("'conversations' must be a non-empty list")
    out = []
    if rec.get("system"):
        out.append({"role": "system", "content": _text(rec["system"], "system")})
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RecordError(f"conversations[{i}]: expected an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            raise RecordError(f"conversations[{i}]: unknown role {t['from']!r} (expected human, gpt or system)")
        out.append({"role": role, "content": _text(t["value"], f"conversations[{i}].value")})
    return out


def from_alpaca(rec: dict) -> list[dict[str, str]]:
    for key in ("instruction", "output"):
        if key not in rec:
            raise RecordError(f"missing field {key!r}")
    out = []
    if rec.get("system"):
        out.append({"role": "system", "content": _text(rec["system"], "system")})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RecordError("'history' must be a list of [prompt, response] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecordError(f"history[{i}]: expected a [prompt, response] pair")
        out.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        out.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    prompt = _text(rec["instruction"], "instruction")
    extra = rec.get("input") or ""
    if not isinstance(extra, str):
        raise RecordError("'input' must be a string")
    out.append({"role": "user", "content": f"{prompt}\n\n{extra}" if extra.strip() else prompt})
    out.append({"role": "assistant", "content": _text(rec["output"], "output")})
    return out


CONVERTERS = {"openai": from_openai, "sharegpt": from_sharegpt, "alpaca": from_alpaca}


def check_conversation(msgs: list[dict[str, str]]) -> None:
    """Structure rules the chat template and the label mask rely on."""
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i != 0:
            raise RecordError(f"message {i}: a system message is only allowed first")
    body = msgs[1:] if msgs[0]["role"] == "system" else msgs
    if not body or body[0]["role"] != "user":
        raise RecordError("the conversation must start with a user message (after an optional system message)")
    for a, b in zip(body, body[1:]):
        if a["role"] == b["role"]:
            raise RecordError(f"two {a['role']} messages in a row: roles must alternate user/assistant")
    if body[-1]["role"] != "assistant":
        raise RecordError(f"the conversation must end with an assistant message, it ends with {body[-1]['role']}")


def iter_csv_records(path: Path, cfg: AssistantConfig) -> Iterator[tuple[int, Any]]:
    cols = cfg.data.csv
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for col in (cols.prompt, cols.response):
            if col not in header:
                raise DataError(f"{path}:1: missing CSV column {col!r} (columns: {', '.join(header) or 'none'})")
        try:
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}:{reader.line_num}: invalid CSV: {e}") from None


def from_csv_row(row: dict, cfg: AssistantConfig) -> list[dict[str, str]]:
    cols = cfg.data.csv
    out = []
    if cols.system and (row.get(cols.system) or "").strip():
        out.append({"role": "system", "content": row[cols.system]})
    out.append({"role": "user", "content": _text(row.get(cols.prompt) or "", f"column {cols.prompt!r}")})
    out.append({"role": "assistant", "content": _text(row.get(cols.response) or "", f"column {cols.response!r}")})
    return out


def load_files(files: list[Path], cfg: AssistantConfig) -> LoadResult:
    """Load and validate every record; fail on the first bad one unless `data.on_error: skip`."""
    result = LoadResult()
    skip = cfg.data.on_error == "skip"
    fmt = cfg.data.format
    for path in expand_files(files):
        result.files.append(str(path))
        is_csv = fmt == "csv" or (fmt == "auto" and path.suffix.lower() == ".csv")
        records = iter_csv_records(path, cfg) if is_csv else iter_json_records(path)
        for line, rec in records:
            try:
                if is_csv:
                    msgs = from_csv_row(rec, cfg)
                else:
                    kind = detect_format(rec) if fmt == "auto" else fmt
                    if not isinstance(rec, dict):
                        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
                    msgs = CONVERTERS[kind](rec)
                check_conversation(msgs)
            except RecordError as e:
                where = f"{path}:{line}"
                if not skip:
                    raise DataError(f"{where}: {e}") from None
                result.skipped[str(e).split(":")[0][:60]] += 1
                if len(result.skipped_examples) < 20:
                    result.skipped_examples.append(f"{where}: {e}")
                continue
            result.conversations.append(Conversation(msgs, f"{path}:{line}"))
    return result


def apply_system_prompt(msgs: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if msgs and msgs[0]["role"] == "system" or not system_prompt:
        return msgs
    return [{"role": "system", "content": system_prompt}, *msgs]


def split(convs: list[Conversation], fraction: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic shuffle + split; at least one validation example whenever fraction > 0 and there are ≥ 2."""
    if fraction <= 0 or len(convs) < 2:
        return list(convs), []
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(convs) * fraction))
    val_idx = set(order[:n_val])
    return [c for i, c in enumerate(convs) if i not in val_idx], [c for i, c in enumerate(convs) if i in val_idx]


def jsonl_text(convs: list[Conversation]) -> str:
    return "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in convs)


def read_jsonl(path: Path) -> list[list[dict[str, str]]]:
    """The conversations of a train/val split this stage wrote."""
    return read_conversations(path)


def load_tokenizer(cfg: AssistantConfig):
    from transformers import AutoTokenizer

    from builder.base_model import resolve_base

    return AutoTokenizer.from_pretrained(resolve_base(cfg.base.model))


def prepare(cfg: AssistantConfig, paths: AssistantPaths, write: bool = True, tokenizer=None) -> dict:
    """Load + validate + clean + split; write data/train.jsonl, data/val.jsonl and data/data_report.json."""
    from builder.clean import clean, length_report
    from protege.config_file import atomic_write_texts

    if not cfg.data.files:
        raise DataError(f"{cfg.name}: data.files is empty: list the training files or folders to learn from")
    loaded = load_files(cfg.data.files, cfg)
    tokenizer = tokenizer or load_tokenizer(cfg)
    system = cfg.persona.system_prompt
    for c in loaded.conversations:
        c.messages = apply_system_prompt(c.messages, system)
    kept, clean_counts = clean(loaded.conversations, cfg.data.clean, tokenizer)
    if not kept:
        raise DataError(f"{', '.join(loaded.files)}: no usable training examples "
                        f"(loaded {len(loaded.conversations)}, skipped {sum(loaded.skipped.values())}, "
                        f"removed by cleaning {sum(clean_counts.values())})")
    if cfg.data.val_files:
        val_loaded = load_files(cfg.data.val_files, cfg)
        for c in val_loaded.conversations:
            c.messages = apply_system_prompt(c.messages, system)
        train, val = kept, val_loaded.conversations
    else:
        train, val = split(kept, cfg.data.val_fraction, cfg.data.seed)
    grounded_report = None
    if cfg.knowledge is not None and cfg.knowledge.train_qa is not None:
        from builder.grounded import grounded_conversations

        grounded, g = grounded_conversations(cfg, paths, tokenizer)
        # all to train: val measures the style (early stopping), and long grounded rows would make every eval slow
        train = train + [Conversation(m, f"{cfg.knowledge.train_qa}#{i}") for i, m in enumerate(grounded)]
        grounded_report = {**g.as_dict(), "train": len(grounded)}
    report = {
        "files": loaded.files,
        "loaded": len(loaded.conversations) + sum(loaded.skipped.values()),
        "valid": len(loaded.conversations),
        "skipped": sum(loaded.skipped.values()),
        "skipped_by_reason": dict(loaded.skipped),
        "skipped_examples": loaded.skipped_examples,
        "cleaning": clean_counts,
        "kept": len(kept),
        "train": len(train),
        "val": len(val),
        "grounded": grounded_report,
        **length_report([c.messages for c in train + val], tokenizer, cfg.data.max_seq_len, cfg.data.overlong),
    }
    if write:  # all three or none: a full disk must not leave a new train split beside the old val split
        atomic_write_texts({paths.data / "train.jsonl": jsonl_text(train), paths.data / "val.jsonl": jsonl_text(val),
                            paths.data / "data_report.json": json.dumps(report, indent=2) + "\n"})
    return report
