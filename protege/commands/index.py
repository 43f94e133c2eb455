"""`protege index`: Index the knowledge folder into Chroma (incremental: unchanged files cost nothing).

`protege index CONFIG` or, for quick use, `protege index --folder DIR --collection NAME`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Index the knowledge folder into Chroma"


def add_kb_args(p: argparse.ArgumentParser) -> None:
    """CONFIG, or --folder/--collection; shared by index, ask and rag."""
    p.add_argument("config", nargs="?", type=Path, help="assistant.yaml (or use --folder and --collection)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value, e.g. --set knowledge.top_k=6 (repeatable)")
    p.add_argument("--folder", type=Path, help="knowledge folder to use without an assistant.yaml")
    p.add_argument("--collection", help="Chroma collection name with --folder (at least 3 characters)")
    p.add_argument("--persist", type=Path, help="Chroma folder with --folder (default $PROTEGE_HOME/knowledge/NAME)")


def open_kb(args: argparse.Namespace, lock: bool = True):
    """(KnowledgeBase, cfg or None): from CONFIG, or from --folder/--collection with --set knowledge.* applied;
    `lock`: hold the assistant's lock (commands that index); `protege ask` only reads."""
    from protege.errors import ConfigError
    from rag.knowledge import KnowledgeBase

    if args.config is not None and args.folder is not None:
        raise ConfigError("give either CONFIG or --folder/--collection, not both")
    if args.config is not None:
        from protege.commands._common import load

        cfg, paths = load(args, lock=lock)
        return KnowledgeBase.open(cfg, paths), cfg
    if args.folder is None or not args.collection:
        raise ConfigError("give an assistant.yaml, or --folder DIR and --collection NAME")
    from protege.config_file import apply_overrides, config_from_dict
    from protege.paths import protege_home

    data = apply_overrides({"name": "knowledge", "knowledge": {"folder": str(args.folder),
                                                               "collection": args.collection}}, args.overrides)
    cfg = config_from_dict(data, source="--folder", root=Path.cwd())
    persist = args.persist or protege_home() / "knowledge" / args.collection
    return KnowledgeBase(cfg.knowledge, args.collection, persist, None), None


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_kb_args(p)
    p.add_argument("--json", action="store_true", help="print the index report as JSON")


def run(args: argparse.Namespace) -> int:
    kb, _ = open_kb(args)
    report = kb.index(progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"indexed {kb.folder} -> collection {kb.collection!r}: "
          f"{len(report['added'])} added, {len(report['updated'])} updated, {len(report['removed'])} removed, "
          f"{len(report['unchanged'])} unchanged files; {report['chunks_total']} chunks, {report['writes']} writes "
          f"in {report['seconds']} s")
    for s in report["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    print(f"report: {report['report']}")
    return 0
