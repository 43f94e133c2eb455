"""`protege eval`: Compare base vs tuned on the held-out split."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Compare base vs tuned on the held-out split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from builder.eval_report import ROWS
    from protege.api import Assistant
    from protege.commands._common import load

    cfg, paths = load(args)
    res = Assistant(cfg, paths).eval().raw
    for key, label in ROWS:
        b, t = res["base"][key], res["tuned"][key]
        if b is not None or t is not None:
            print(f"{label:32s} base {b if b is not None else 'n/a':>10}   tuned {t if t is not None else 'n/a':>10}")
    print(f"report: {paths.eval / 'report.md'}")
    return 0
