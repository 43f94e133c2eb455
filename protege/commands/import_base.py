"""`protege import-base`: import a base model into $PROTEGE_HOME/base as an HF directory, once."""

from __future__ import annotations

import argparse

HELP = "Import the embedded base model (SmolLM2-135M-Instruct from its GGUF) into an HF directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--force", action="store_true", help="re-import even if cached")


def run(args: argparse.Namespace) -> int:
    from protege.api import import_base

    path = import_base(args.model, force=args.force)
    print(path)
    return 0
