"""`protege train`: Fine-tune a style adapter (QLoRA by default)."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Fine-tune a style adapter (QLoRA by default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from protege.errors import ProtegeError

    raise ProtegeError("not implemented yet")
