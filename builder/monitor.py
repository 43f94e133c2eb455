"""Training monitoring: a progress line with loss and tokens/s, peak memory, metrics.json and loss.png."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident set size of this process (CPU), in MiB."""
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20, 1)


class ProgressCallback(TrainerCallback):
    """One line per log: step, train loss, val loss, tokens/s (rich when available), and timing for metrics."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = 0.0
        self.tokens0 = 0
        self.train_seconds = 0.0
        self.train_tokens = 0
        try:
            from rich.console import Console

            self.console = Console(stderr=True)
        except ImportError:
            self.console = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()
        self.tokens0 = state.num_input_tokens_seen or 0

    def on_train_end(self, args, state, control, **kwargs):
        self.train_seconds = time.perf_counter() - self.t0
        self.train_tokens = (state.num_input_tokens_seen or 0) - self.tokens0

    def tokens_per_second(self, state) -> float:
        elapsed = time.perf_counter() - self.t0
        return ((state.num_input_tokens_seen or 0) - self.tokens0) / elapsed if elapsed > 0 else 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.quiet or not logs:
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        if "loss" in logs:
            parts.append(f"loss {logs['loss']:.4f}")
        if "eval_loss" in logs:
            parts.append(f"val_loss {logs['eval_loss']:.4f}")
        parts.append(f"{self.tokens_per_second(state):.0f} tok/s")
        line = "  ".join(parts)
        if self.console is not None:
            self.console.print(f"[bold cyan]train[/] {line}", highlight=False)
        else:
            print(f"train {line}", file=sys.stderr)


def curves(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    return train, val


def plot_loss(train: list, val: list, out: Path) -> Path | None:
    """loss.png with the train and val curves (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", marker=".")
    if val:
        ax.plot(*zip(*val), label="val", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def save_figure(fig, out: Path) -> Path:
    """Write a matplotlib figure atomically (temp file, then rename) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def write_metrics(path: Path, metrics: dict) -> None:
    from protege.config_file import atomic_write_text

    atomic_write_text(path, json.dumps(metrics, indent=2, default=str) + "\n")
