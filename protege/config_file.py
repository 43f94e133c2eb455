"""Reading assistant.yaml (with `--set a.b=c` overrides) and writing the resolved config beside artifacts."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from protege.config import AssistantConfig, resolve_paths
from protege.errors import ConfigError


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `file: key.path: what was expected, got X`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after")) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: {loc}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{source}: {loc}: required key is missing")
        elif "got" in msg:
            lines.append(f"{source}: {loc}: {msg}")
        else:
            lines.append(f"{source}: {loc}: {msg}, got {_describe(e.get('input'))}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=20` -> (["train", "max_steps"], 20); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> AssistantConfig:
    """Load, override, validate and resolve relative paths against the file's folder."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or [])
    return config_from_dict(data, source=str(path), root=path.resolve().parent)


def config_from_dict(data: dict, source: str = "<config>", root: Path | None = None) -> AssistantConfig:
    try:
        cfg = AssistantConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    return resolve_paths(cfg, root or Path.cwd())


def config_to_yaml(cfg: AssistantConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file, and a full disk leaves
    the old file whole. A symlink is written through (the link stays a link, its target is replaced) and an
    existing file keeps its mode; a new one gets mkstemp's 0600 (resolved configs may hold serve.api_keys)."""
    atomic_write_texts({path: text})


def atomic_write_texts(files: dict[Path, str]) -> None:
    """atomic_write_text for files that belong together (train.jsonl + val.jsonl): every temp file is written before
    the first rename, so a full disk changes none of them."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path = Path(os.path.realpath(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                mode: int | None = stat.S_IMODE(path.stat().st_mode)
            except FileNotFoundError:
                mode = None
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                if mode is not None:
                    os.fchmod(f.fileno(), mode)
                f.write(text)
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename and temps:  # name the file a full disk refused
            raise OSError(e.errno, e.strerror, str(temps[-1][1])) from e
        raise


def save_resolved(cfg: AssistantConfig, folder: Path, name: str = "config.yaml") -> Path:
    """Every artifact gets the resolved config (all defaults filled in) written beside it."""
    out = Path(folder) / name
    atomic_write_text(out, config_to_yaml(cfg))
    return out
