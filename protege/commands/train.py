"""`protege train`: Fine-tune a style adapter (QLoRA by default)."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Fine-tune a style adapter (QLoRA by default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint after a crash")


def run(args: argparse.Namespace) -> int:
    from protege.api import Assistant
    from protege.commands._common import load

    cfg, paths = load(args)
    m = Assistant(cfg, paths).train(resume=args.resume).raw
    start = f"{m['val_loss_initial']:.4f} -> " if m["val_loss_initial"] is not None else ""
    val = f"val loss {start}best {m['best_val_loss']:.4f}" if m["best_val_loss"] is not None else "no val split"
    print(f"trained {m['global_step']}/{m['max_steps']} steps in {m['train_seconds']:.0f}s "
          f"({m['tokens_per_second']:.0f} tok/s, peak {m['peak_memory_mb']:.0f} MiB); {val}")
    print(f"adapter: {m['adapter']}")
    return 0
