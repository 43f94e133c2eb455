"""Grounded-answer accuracy of a built assistant, guard on against guard off in the same run, on a dev QA file and a
held-out one (the held-out split is never trained or tuned on). Every question goes through the one answer path
(retrieve on the conversation, gate, grounded prompt, the assistant's GGUF at temperature 0, guard). Prints a table
and appends one JSON line to bench/results/answer_accuracy.jsonl.

    .venv/bin/python bench/answer_accuracy.py configs/captain-byte.yaml \\
        examples/captain-byte/qa.jsonl examples/captain-byte/qa_heldout.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEYS = ("answer_accuracy", "first_sentence_accuracy", "source_hit@3", "in_domain_answered", "guard_fired",
        "refusal_recall", "refusal_precision", "seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("qa", type=Path, nargs="+")
    ap.add_argument("--detail", action="store_true", help="print every question's reply (never for a held-out file)")
    ap.add_argument("--guard", choices=["both", "on", "off"], default="both",
                    help="measure with the guard on, off or both")
    args = ap.parse_args()

    from protege.api import Assistant
    from protege.config_file import load_config
    from protege.paths import AssistantPaths
    from rag.evaluate import load_qa
    from rag.knowledge import KnowledgeBase

    rows = []
    for guard in {"both": (True, False), "on": (True,), "off": (False,)}[args.guard]:
        cfg = load_config(args.config)
        cfg.knowledge.guard = guard
        paths = AssistantPaths.for_name(cfg.name)
        with Assistant(cfg, paths, knowledge=KnowledgeBase.open(cfg, paths)) as assistant:
            results = [(qa_path, *assistant.eval_answers(load_qa(qa_path))) for qa_path in args.qa]
        for qa_path, m, detail in results:
            rows.append({"qa": qa_path.name, "guard": guard, **{k: m.get(k) for k in KEYS}})
            if args.detail and "heldout" not in qa_path.name:
                for d in detail:
                    print(f"  {'ok ' if d['holds'] else '-- ' if d['holds'] is False else '   '}{d['grounding']:10s} "
                          f"{d['question'][:60]!r} -> {d['answer'][:120]!r}")
    print(f"{'qa':22s} {'guard':6s} " + " ".join(f"{k:>18s}" for k in KEYS))
    for r in rows:
        print(f"{r['qa']:22s} {str(r['guard']):6s} " + " ".join(f"{str(r[k]):>18s}" for k in KEYS))
    out = Path(__file__).resolve().parent / "results" / "answer_accuracy.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": str(args.config),
                            "machine": platform.machine(), "cpus": os.cpu_count(), "load": os.getloadavg()[0],
                            "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
