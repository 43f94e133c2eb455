"""Arguments and loading shared by the subcommands that take an assistant.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from protege.config import AssistantConfig
from protege.paths import AssistantPaths


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", type=Path, help="assistant.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. --set train.max_steps=20 (repeatable)",
    )


def load(args: argparse.Namespace, lock: bool = True) -> tuple[AssistantConfig, AssistantPaths]:
    """The config and the assistant's folder; `lock` takes the per-assistant lock for the rest of the command (every
    command that writes the folder comes through here, so two runs of one assistant never interleave)."""
    from protege.config_file import load_config
    from protege.lock import hold

    cfg = load_config(args.config, args.overrides)
    paths = AssistantPaths.for_name(cfg.name).ensure()
    if lock:
        hold(paths)
    return cfg, paths
