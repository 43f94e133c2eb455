"""`protege index`: Index the knowledge folder into Chroma."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Index the knowledge folder into Chroma"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from protege.errors import ProtegeError

    raise ProtegeError("not implemented yet")
