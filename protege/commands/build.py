"""`protege build`: index -> data -> train -> eval -> export -> answers -> register, skipping unchanged stages.

A shell over `protege.build()` (protege/api.py): this module only parses the flags and prints the summary."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

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


def _dig(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


# Headline numbers per stage: label -> dotted path into what the stage returned.
SCORES = {
    "data": {"train": "train", "val": "val", "kept": "kept", "grounded": "grounded.train"},
    "train": {"best_val_loss": "best_val_loss", "val_loss_initial": "val_loss_initial", "steps": "global_step",
              "tok/s": "tokens_per_second"},
    "eval": {"style base": "base.style_adherence", "style tuned": "tuned.style_adherence",
             "val_loss base": "base.val_loss", "val_loss tuned": "tuned.val_loss"},
    "export": {"merge": "merge.choice", "top1 hf~f16": "verification.parity_hf_vs_f16.top1_agreement"},
    "index": {"added": "added", "updated": "updated", "removed": "removed", "unchanged": "unchanged",
              "skipped": "skipped"},
    "answers": {"accuracy": "answer_accuracy", "source@3": "source_hit@3", "guard": "guard_fired",
                "refused ood": "refusal_recall"},
    "register": {"quants": "quants"},
}


def _scores(name: str, result: dict) -> str:
    parts = []
    for label, path in SCORES.get(name, {}).items():
        v = _dig(result, path)
        if v is None:
            v = result.get(path.split(".")[-1]) if isinstance(result, dict) else None
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, list):
            v = len(v) if name == "index" else ",".join(map(str, v))
        parts.append(f"{label}={v}")
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
