"""`protege list`: the built assistants of the registry ($PROTEGE_HOME/assistants), from `protege.list_assistants()`."""

from __future__ import annotations

import argparse
import json

HELP = "List built assistants and their quant tags"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from protege.api import list_assistants

    rows = [{"name": a.name, "quants": a.quants, "knowledge": a.has_knowledge, "built_at": a.built_at,
             "path": str(a.path)} for a in list_assistants()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No assistants built yet: protege build configs/captain-byte.yaml")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "quants", "knowledge", "built", "path")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["quants"]) or "-", "yes" if r["knowledge"] else "-",
                      r["built_at"] or "-", r["path"])
    Console().print(table)
    return 0
