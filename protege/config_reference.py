"""The assistant.yaml reference, generated from the config model so the README can never drift from the code.

`python -m protege.config_reference --write README.md` refreshes the block between the markers; a test fails when the
README's block differs from what this renders.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from protege.config import AssistantConfig

BEGIN = "<!-- config-reference:begin -->"
END = "<!-- config-reference:end -->"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation)).replace("PosixPath", "path")


def _section_model(annotation) -> type[BaseModel] | None:
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section_model(field.annotation)
        if sub is not None:
            rows.append((key, "section" + (" (optional)" if field.default is None else ""), "", field.description or ""))
            rows.extend(_rows(sub, key + "."))
            continue
        if field.default_factory is not None:
            default = field.default_factory()
        elif field.default is PydanticUndefined:
            default = "(required)"
        else:
            default = field.default
        default_text = default if isinstance(default, str) and default == "(required)" else json.dumps(
            default, default=str)
        rows.append((key, _type_name(field.annotation), default_text, field.description or ""))
    return rows


def render() -> str:
    lines = ["| key | type | default | notes |", "|---|---|---|---|"]
    for key, typ, default, desc in _rows(AssistantConfig):
        default = default.replace("|", "\\|")
        lines.append(f"| `{key}` | {typ} | `{default}` | {desc} |" if default else f"| `{key}` | {typ} | | {desc} |")
    return "\n".join(lines)


def replace_block(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{render()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(replace_block(path.read_text()))
        return 0
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
