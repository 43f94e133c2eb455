"""`protege build`: data -> train -> eval -> export -> index -> register, skipping unchanged stages."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Build an assistant end to end: data, train, eval, export, index, register"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="rerun a stage even if unchanged: data, train, eval, export, index, register or all")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from protege.build import STAGES, build
    from protege.commands._common import load
    from protege.errors import ConfigError

    bad = [s for s in args.force if s not in STAGES and s != "all"]
    if bad:
        raise ConfigError(f"--force {bad[0]}: expected one of {', '.join(STAGES)} or all")
    cfg, paths = load(args)
    console = Console()
    console.print(f"[bold]Building {cfg.name}[/] into {paths.root}")

    def on_stage(name: str, event: str) -> None:
        if event == "start":
            console.rule(f"[bold cyan]{name}")

    outcomes = build(cfg, paths, force=set(args.force), on_stage=on_stage)
    print_summary(console, cfg, paths, outcomes)
    return 0


def _scores(name: str, result: dict) -> str:
    """A few headline numbers per stage, from whatever the stage returned."""
    keys = {
        "data": ("train", "val", "n_train", "n_val", "kept", "dropped"),
        "train": ("best_val_loss", "final_val_loss", "tokens_per_s", "steps", "global_step"),
        "eval": ("style_base", "style_tuned", "val_loss_base", "val_loss_tuned"),
        "export": ("top1_agreement", "quants", "merge_base"),
        "index": ("added", "updated", "removed", "unchanged", "skipped"),
        "register": ("quants",),
    }.get(name, ())
    flat = {}
    for k, v in result.items():
        if isinstance(v, dict):
            flat.update({f"{k2}": v2 for k2, v2 in v.items() if not isinstance(v2, (dict, list))})
        flat.setdefault(k, v)
    parts = []
    for k in keys:
        if k in flat:
            v = flat[k]
            if isinstance(v, float):
                v = f"{v:.3g}"
            elif isinstance(v, list):
                v = len(v) if name == "index" else ",".join(map(str, v))
            parts.append(f"{k}={v}")
    return " ".join(parts)


def print_summary(console, cfg, paths, outcomes) -> None:
    from rich.table import Table

    table = Table("stage", "status", "seconds", "scores / note", title=f"protege build {cfg.name}")
    for o in outcomes:
        style = {"ran": "green", "skipped": "dim", "not-applicable": "dim"}[o.status]
        table.add_row(o.name, f"[{style}]{o.status}[/]", f"{o.seconds:.0f}" if o.seconds else "-",
                      _scores(o.name, o.result) or o.note)
    console.print(table)
    quant = cfg.serve.quant or cfg.export.default_quant
    console.print(f"Artifacts: {paths.root}")
    console.print(f"Serve:  protege serve {paths.config}   (OpenAI API on http://{cfg.serve.host}:{cfg.serve.port}/v1, "
                  f"model '{cfg.name}' = {quant})")
    console.print(f"Chat:   protege run {cfg.name}")
