"""eval/report.md (a base-vs-tuned table and a few example replies) and eval/scores.png (a grouped bar plot)."""

from __future__ import annotations

from pathlib import Path

from protege.config import AssistantConfig
from protege.config_file import atomic_write_text

ROWS = [("val_loss", "val loss (lower is better)"), ("perplexity", "perplexity (lower is better)"),
        ("rouge_l", "ROUGE-L F1"), ("bleu4", "BLEU-4"), ("style_adherence", "style adherence")]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def plot_scores(results: dict, out: Path) -> Path | None:
    """Bars for the 0..1 scores (ROUGE-L, BLEU-4, style) and the val loss, base vs tuned."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [(k, label.split(" (")[0]) for k, label in ROWS if k != "perplexity"
            and results["base"].get(k) is not None]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = range(len(keys))
    w = 0.38
    for off, side, color in ((-w / 2, "base", "#9aa5b1"), (w / 2, "tuned", "#2f7ed8")):
        vals = [results[side][k] or 0 for k, _ in keys]
        bars = ax.bar([i + off for i in x], vals, w, label=side, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(x), [label for _, label in keys])
    ax.set_title("base vs tuned")
    ax.legend()
    from builder.monitor import save_figure

    return save_figure(fig, out)


def write_report(results: dict, cfg: AssistantConfig, folder: Path) -> Path:
    png = plot_scores(results, folder / "scores.png")
    s = results["samples"]
    lines = [f"# Evaluation: {cfg.name}", "",
             f"Held-out conversations: {s['held_out']}; prompts file items: {s['prompts']}; device: "
             f"{results['device']}. Generations are greedy, at most {cfg.eval.max_new_tokens} new tokens.", "",
             "| metric | base | tuned |", "|---|---:|---:|"]
    for key, label in ROWS:
        lines.append(f"| {label} | {_fmt(results['base'][key])} | {_fmt(results['tuned'][key])} |")
    markers = cfg.persona.style_markers
    if results["base"]["style_adherence"] is not None:
        lines += ["", f"Style markers: {markers.model_dump(exclude_defaults=True)}"]
    if png:
        lines += ["", f"![scores]({png.name})"]
    lines += ["", "## Examples", ""]
    for ex in results.get("examples", [])[:5]:
        lines += [f"**{ex['source']}**: {ex['prompt']}", "", f"- base: {ex['base']}", f"- tuned: {ex['tuned']}"]
        if ex["reference"]:
            lines.append(f"- reference: {ex['reference']}")
        lines.append("")
    out = folder / "report.md"
    atomic_write_text(out, "\n".join(lines).replace("\r", "") + "\n")
    return out
