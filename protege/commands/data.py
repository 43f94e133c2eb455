"""`protege data`: Check and clean training data (protege data check|clean CONFIG)."""

from __future__ import annotations

import argparse
import json

from protege.commands._common import add_config_args

HELP = "Check and clean training data (protege data check|clean CONFIG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check", "clean"],
                   help="check: validate + report, write nothing; clean: also write data/train.jsonl and val.jsonl")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")


def summary(report: dict) -> str:
    """A short human summary of the data report."""
    clean = ", ".join(f"{k} {v}" for k, v in report["cleaning"].items() if v) or "nothing removed"
    lengths = report.get("token_lengths") or {}
    lines = [
        f"files: {len(report['files'])}   records: {report['loaded']}   valid: {report['valid']}   "
        f"skipped: {report['skipped']}",
        f"cleaning: {clean}",
        f"kept: {report['kept']}   train: {report['train']}   val: {report['val']}",
    ]
    if lengths:
        hist = "  ".join(f"{k}:{v}" for k, v in lengths["histogram"].items())
        lines.append(f"tokens: min {lengths['min']} median {lengths['median']} max {lengths['max']}   [{hist}]")
        lines.append(f"over max_seq_len {report['max_seq_len']}: {report['overlong']} "
                     f"({report['truncation_rate']:.1%}, {report['overlong_action']})")
    for ex in report.get("skipped_examples", [])[:5]:
        lines.append(f"skipped: {ex}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from protege.api import Assistant
    from protege.commands._common import load

    cfg, paths = load(args, lock=args.action == "clean")  # check only reads: fine while a build runs
    report = Assistant(cfg, paths).prepare_data(write=args.action == "clean").raw
    print(json.dumps(report, indent=2) if args.json else summary(report))
    if args.action == "clean":
        print(f"wrote {paths.data / 'train.jsonl'}, {paths.data / 'val.jsonl'}, {paths.data / 'data_report.json'}")
    return 0
