"""The house's layering, read from the source (DESIGN.md's spine): shells (the CLI, the HTTP server) call the API; the
API runs the stages; stages use components; components never reach up. And no import circle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("protege", "builder", "export", "rag", "serve")
# each stage's entry point (the function protege/stages.py runs); the rest of builder/ export/ rag/ are components
STAGES = {"builder.data", "builder.train", "builder.evaluate", "export.pipeline", "rag.stage"}
API = {"protege", "protege.api", "protege.reply", "protege.stages", "protege.answer_eval"}


def _layer(module: str) -> str:
    if module in ("protege.cli", "protege.__main__", "serve.app") or module.startswith(
            ("protege.commands.", "serve.routers.")):
        return "shell"
    if module in API:
        return "api"
    return "stage" if module in STAGES else "component"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PRODUCT:
        for p in (REPO / pkg).rglob("*.py"):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path, known: dict[str, Path], top_level_only: bool) -> set[str]:
    """Product modules imported by `path` (lazy imports inside functions too, unless `top_level_only`); what a
    `from x import y` names counts as x.y when that is a module. `if TYPE_CHECKING:` blocks are not imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m in known}


ALLOWED = {("shell", "shell"), ("shell", "api"), ("shell", "component"), ("api", "api"), ("api", "stage"),
           ("api", "component"), ("stage", "stage"), ("stage", "component"), ("component", "component")}


def test_shells_call_the_api_the_api_runs_stages_and_components_never_reach_up():
    known = _modules()
    wrong = sorted(f"{m} ({_layer(m)}) imports {i} ({_layer(i)})" for m, p in known.items()
                   for i in _imports(p, known, top_level_only=False) if (_layer(m), _layer(i)) not in ALLOWED)
    assert not wrong, "\n".join(wrong)


def test_the_layers_are_the_ones_named():
    """The rule above must not pass because a name went stale: every stage and API module exists, and the CLI
    commands are shells."""
    known = _modules()
    assert STAGES | API <= set(known)
    assert _layer("protege.commands.build") == "shell" and _layer("serve.routers.openai") == "shell"


def test_declared_stage_code_is_a_stage_or_the_api():
    """protege/stages.py imports each stage's code by name (STAGE_TABLE `run`), which the import rule above cannot
    see: the names must be stage entry points (or API modules), never a component or a shell."""
    from protege.stages import STAGE_TABLE

    wrong = [s.run for s in STAGE_TABLE if _layer(s.run.partition(":")[0]) not in ("stage", "api")]
    assert not wrong, wrong


def test_no_import_circle_between_modules():
    known = _modules()
    graph = {m: _imports(p, known, top_level_only=True) for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    circles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, circles
