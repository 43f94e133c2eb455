"""`protege build`: index -> data -> train -> eval -> export -> answers -> register, skipping unchanged stages.

A shell over `protege.build()` (protege/api.py): this module only parses the flags and prints the summary."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from protege.commands._common import add_config_args

if TYPE_CHECKING:
    from rich.console import Console

    from protege.config import AssistantConfig
    from protege.paths import AssistantPaths
    from protege.stage_results import StageResult
    from protege.stages import StageOutcome

HELP = "Build an assistant end to end: data, train, eval, export, index, register"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="rerun a stage even if unchanged: index, data, train, eval, export, answers, register or all")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from protege.api import build

    a = build(args.config, force=args.force, overrides=args.overrides, progress=True)
    print_summary(Console(), a.config, a.paths, a.outcomes)
    return 0


def _scores(result: "StageResult") -> str:
    """The stage's headline numbers (StageResult.headline), floats to 3 significant digits."""
    return " ".join(f"{label}={v:.3g}" if isinstance(v, float) else f"{label}={v}"
                    for label, v in result.headline().items())


def print_summary(console: "Console", cfg: "AssistantConfig", paths: "AssistantPaths",
                  outcomes: "list[StageOutcome]") -> None:
    from rich.table import Table

    table = Table("stage", "status", "seconds", "scores / note", title=f"protege build {cfg.name}")
    for o in outcomes:
        style = {"ran": "green", "skipped": "dim", "not-applicable": "dim"}[o.status]
        table.add_row(o.name, f"[{style}]{o.status}[/]", f"{o.seconds:.0f}" if o.seconds else "-",
                      _scores(o.result) or o.note)
    console.print(table)
    quant = cfg.serve.quant or cfg.export.default_quant
    console.print(f"Artifacts: {paths.root}")
    console.print(f"Serve:  protege serve {paths.config}   (OpenAI API on http://{cfg.serve.host}:{cfg.serve.port}/v1, "
                  f"model '{cfg.name}' = {quant})")
    console.print(f"Chat:   protege run {cfg.name}")
