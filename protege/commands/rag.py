"""`protege rag`: Evaluate or calibrate retrieval (protege rag eval|calibrate QA.jsonl)."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Evaluate or calibrate retrieval (protege rag eval|calibrate QA.jsonl)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from protege.errors import ProtegeError

    raise ProtegeError("not implemented yet")
