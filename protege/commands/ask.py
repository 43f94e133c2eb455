"""`protege ask`: Ask the assistant (RAG with sources and a confidence gate).

A shell over `protege.Assistant.ask` (protege/api.py), which answers through the server's own request path
(serve/service.py: retrieve on the conversation, gate, grounded prompt, RAG sampling, guard) on the same engine and GGUF
(serve/registry.py decides which): a question answers the same way here and over HTTP. Below knowledge.min_score the
configured refusal is printed and the model is never called; `--json` says whether the reply is the model's words or a
quote (`grounding`), and which gate refused a question (`why`)."""

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
    from protege.api import Assistant

    with (Assistant(cfg, knowledge=kb) if cfg is not None else Assistant.from_knowledge(kb)) as assistant:
        if args.retrieve_only:
            _print_retrieval(assistant.retrieve(args.question), kb.cfg.min_score, args.json)
            return 0
        ans = assistant.ask(args.question, **({"max_tokens": args.max_tokens} if args.max_tokens else {}))
    if args.json:
        print(json.dumps(ans.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(ans.text)
    if ans.sources:
        print()
        for n, s in enumerate(ans.sources, 1):
            print(f"[{n}] {_where(s)}  score {s.score:.3f}")
    if ans.refused and ans.confidence is not None and ans.confidence < kb.cfg.min_score:
        print(f"confidence {ans.confidence:.3f} (refused: below min_score {kb.cfg.min_score})")
    elif ans.refused:  # a contact, a code or a general-world question (`--retrieve-only` says which), or the guard
        print(f"confidence {ans.confidence:.3f} (refused: the documents do not answer it)")
    else:
        print(f"confidence {ans.confidence:.3f}")
    return 0


def _print_retrieval(r, min_score: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"question": r.question, "refused": r.refused, "why": r.why, "confidence": r.confidence,
                          "sources": [s.to_dict(with_text=True) for s in r.sources]}, indent=2))
        return
    print(f"{'REFUSED' if r.refused else 'ANSWERABLE'} (confidence {r.confidence:.3f}, min_score {min_score})"
          + (f": {r.why}" if r.why else ""))
    for n, s in enumerate(r.sources, 1):
        print(f"[{n}] {_where(s)}  score {s.score:.3f}\n    {s.text[:200].replace(chr(10), ' ')}")
