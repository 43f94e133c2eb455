"""`protege ask`: Ask the assistant (RAG with sources and a confidence gate).

Below knowledge.min_score the configured refusal is printed and the LLM is never loaded. The answer takes the same path
as the server's (rag/knowledge.py: retrieve, gate, grounded prompt, guard) on the same engine and GGUF
(protege/llm.py); `--json` says whether the reply is the model's words or a quote (`grounding`)."""

from __future__ import annotations

import argparse
import json

from protege.commands.index import add_kb_args, open_kb

HELP = "Ask the assistant (RAG with sources and a confidence gate)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_kb_args(p)
    p.add_argument("question", help="the question to answer")
    p.add_argument("--json", action="store_true", help="print the answer object as JSON")
    p.add_argument("--retrieve-only", action="store_true", help="retrieve and apply the gate; do not call the LLM")
    p.add_argument("--max-tokens", type=int, default=None, help="answer length limit (default: the server's)")


def _where(s) -> str:
    return s.path + (f" > {s.section}" if s.section else "") + (f" (page {s.page})" if s.page else "")


def run(args: argparse.Namespace) -> int:
    kb, cfg = open_kb(args, lock=False)  # reads only: asking while a build runs is fine
    if kb.store.count() == 0:
        from protege.errors import ProtegeError

        how = f"protege index {args.config}" if args.config else f"protege index --folder {args.folder} --collection {args.collection}"
        raise ProtegeError(f"the knowledge collection {kb.collection!r} is empty: run `{how}` first")
    if args.retrieve_only:
        r = kb.retrieve(args.question)
        if args.json:
            print(json.dumps({"question": r.question, "refused": r.refused, "confidence": r.confidence,
                              "sources": [s.to_dict(with_text=True) for s in r.sources]}, indent=2))
        else:
            print(f"{'REFUSED' if r.refused else 'ANSWERABLE'} (confidence {r.confidence:.3f}, "
                  f"min_score {kb.cfg.min_score})")
            for n, s in enumerate(r.sources, 1):
                print(f"[{n}] {_where(s)}  score {s.score:.3f}\n    {s.text[:200].replace(chr(10), ' ')}")
        return 0
    from protege.llm import LocalLLM

    llm = LocalLLM(cfg, args.max_tokens)  # cfg None (--folder): the embedded base model
    try:
        ans = kb.answer(args.question, llm)
    finally:
        llm.close()
    if args.json:
        print(json.dumps(ans.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(ans.text)
    if ans.sources:
        print()
        for n, s in enumerate(ans.sources, 1):
            print(f"[{n}] {_where(s)}  score {s.score:.3f}")
    print(f"confidence {ans.confidence:.3f}{' (refused: below min_score ' + str(kb.cfg.min_score) + ')' if ans.refused else ''}")
    return 0
