"""The retrieval, the gate and the guard's quote without the model: what every reply holds when the guard quotes
(on the demo over 9 in 10 replies do), in about a minute for all the QA files instead of ten with the LLM. Each
change to retrieval, the gate or the evidence can be measured on the dev files, then checked on the held-out ones,
whose questions it never prints (only their aggregates).

    .venv/bin/python bench/quote_only.py configs/captain-byte.yaml examples/captain-byte/qa_dev5.jsonl \\
        examples/captain-byte/qa_heldout2.jsonl [--detail]

Per file: traps refused, in-domain answered, the fact in the quote and in its first sentence (of the graded in-domain
questions), the expected source in the top 3. Needs the built index (`protege index` or `protege build`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("qa", type=Path, nargs="+")
    ap.add_argument("--detail", action="store_true",
                    help="print each question that fails (never for a held-out file)")
    args = ap.parse_args()

    from protege.config_file import load_config
    from protege.paths import AssistantPaths
    from rag.evaluate import answer_holds, first_sentence, load_qa, same_source
    from rag.knowledge import KnowledgeBase

    cfg = load_config(args.config)
    kb = KnowledgeBase.open(cfg, AssistantPaths.for_name(cfg.name))
    for path in args.qa:
        detail = args.detail and "heldout" not in path.name
        n = dict.fromkeys(("traps", "refused", "in_domain", "answered", "graded", "holds", "first", "hit3"), 0)
        for row in load_qa(path):
            messages = [*row["history"], {"role": "user", "content": row["question"]}]
            got = kb.retrieve_conversation(messages)
            if row["source"] is None:
                n["traps"] += 1
                n["refused"] += got.refused
                if detail and not got.refused:
                    print(f"  trap answered  {got.confidence:.3f} {row['question'][:90]!r}")
                continue
            n["in_domain"] += 1
            n["hit3"] += any(same_source(s.path, row["source"]) for s in got.sources[:3])
            if got.refused:
                if detail:
                    print(f"  refused        {got.confidence:.3f} {row['question'][:90]!r}")
                continue
            n["answered"] += 1
            if row["answer_contains"]:
                reply = kb.guard_session(messages, got)
                text = reply.feed("") + reply.finish() if reply else ""
                holds = answer_holds(text, row["answer_contains"])
                first = answer_holds(first_sentence(text), row["answer_contains"])
                n["graded"] += 1
                n["holds"] += holds
                n["first"] += first
                if detail and not first:
                    print(f"  {'late ' if holds else 'miss '}          {row['question'][:60]!r} -> {text[:140]!r}")
        print(f"{path.name:26s} traps refused {n['refused']}/{n['traps']}  in-domain answered "
              f"{n['answered']}/{n['in_domain']}  holds {n['holds']}/{n['graded']}  first sentence "
              f"{n['first']}/{n['graded']}  source@3 {n['hit3']}/{n['in_domain']}", flush=True)


if __name__ == "__main__":
    main()
