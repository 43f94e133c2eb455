"""`protege rag`: Evaluate or calibrate retrieval (protege rag eval|calibrate CONFIG QA.jsonl).

eval reports hit@1/3/5, MRR and refusal precision/recall on out-of-domain questions ("source": null); calibrate picks
knowledge.min_score maximising balanced accuracy and writes it back into the YAML (comments kept, atomic write)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protege.commands.index import add_kb_args, open_kb

HELP = "Evaluate or calibrate retrieval (protege rag eval|calibrate QA.jsonl)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="rag_command", metavar="ACTION", required=True)
    for name, text in (("eval", "hit@k, MRR and refusal precision/recall on a QA file"),
                       ("calibrate", "pick knowledge.min_score from a QA file and write it into the config")):
        sp = sub.add_parser(name, help=text, description=text)
        add_kb_args(sp)
        sp.add_argument("qa", type=Path, help="JSONL of {question, source} (source null: out-of-domain)")
        sp.add_argument("--json", action="store_true", help="print the result as JSON")
        sp.add_argument("--no-index", action="store_true", help="do not (incrementally) index the folder first")
        if name == "eval":
            sp.add_argument("--answers", action="store_true",
                            help="with the LLM in the loop: answer accuracy (answer_contains), guard rate, refusals")
        if name == "calibrate":
            sp.add_argument("--dry-run", action="store_true", help="print the threshold, do not write the config")


def _fmt(m: dict) -> str:
    keys = ["hit@1", "hit@3", "hit@5", "mrr", "in_domain_answered", "refusal_recall", "refusal_precision"]
    return "  ".join(f"{k} {m[k]}" for k in keys if k in m)


def run(args: argparse.Namespace) -> int:
    from rag.evaluate import calibrate, load_qa, metrics, score_questions, write_min_score

    qa = load_qa(args.qa)
    kb, cfg = open_kb(args, lock=not args.no_index)  # indexing writes the assistant's folder
    if not args.no_index:
        kb.index()
    if args.rag_command == "eval" and args.answers:
        return _answers(args, kb, cfg, qa)
    scored = score_questions(kb, qa)
    if args.rag_command == "eval":
        m = metrics(scored, kb.cfg.min_score)
        if args.json:
            print(json.dumps({**m, "questions_detail": scored}, indent=2))
        else:
            print(f"{m['questions']} questions ({m['in_domain']} in-domain, {m['out_of_domain']} out-of-domain), "
                  f"min_score {m['min_score']}\n{_fmt(m)}")
        return 0
    threshold, balanced = calibrate(scored)
    m = metrics(scored, threshold)
    result = {"min_score": threshold, "balanced_accuracy": balanced, "previous": kb.cfg.min_score, **m}
    wrote = None
    if args.config is not None and not args.dry_run:
        write_min_score(args.config, threshold)
        wrote = str(args.config)
    result["written_to"] = wrote
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"min_score {threshold} (was {kb.cfg.min_score}), balanced accuracy {balanced}\n{_fmt(m)}")
        print(f"written to {wrote}" if wrote else
              f"not written (no config); use --set knowledge.min_score={threshold}")
    return 0


def _answers(args: argparse.Namespace, kb, cfg, qa: list[dict]) -> int:
    from protege.api import Assistant

    assistant = Assistant(cfg, knowledge=kb) if cfg is not None else Assistant.from_knowledge(kb)
    with assistant:
        m, detail = assistant.eval_answers(qa, progress=not args.json)
    if args.json:
        print(json.dumps({**m, "questions_detail": detail}, indent=2, ensure_ascii=False))
    else:
        keys = ["answer_accuracy", "source_hit@3", "in_domain_answered", "guard_fired", "refusal_recall",
                "refusal_precision"]
        print(f"{m['questions']} questions ({m['graded']} graded), guard {'on' if m['guard'] else 'off'}, "
              f"{m['seconds']} s\n" + "  ".join(f"{k} {m[k]}" for k in keys if k in m))
    return 0
