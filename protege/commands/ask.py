"""`protege ask`: Ask the assistant (RAG with sources and a confidence gate).

Below knowledge.min_score the configured refusal is printed and the LLM is never loaded. The LLM is the assistant's
exported GGUF (serve.quant or export.default_quant) if there is one, else the embedded base GGUF, via llama.cpp."""

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
    p.add_argument("--max-tokens", type=int, default=160, help="answer length limit (default 160)")


def pick_gguf(cfg):
    """The assistant's GGUF if exported, else the embedded base model's."""
    from builder.base_model import embedded_gguf
    from protege.paths import AssistantPaths

    if cfg is not None:
        paths = AssistantPaths.for_name(cfg.name)
        quant = cfg.serve.quant or cfg.export.default_quant
        for q in [quant, *paths.quants()]:
            if paths.gguf_file(q).is_file():
                return paths.gguf_file(q)
    return embedded_gguf()


def make_generate(cfg, max_tokens: int):
    """A `generate(messages) -> str` over llama.cpp, loaded on first use (so a refusal never loads it)."""
    state: dict = {}

    def generate(messages: list[dict]) -> str:
        if "llm" not in state:
            from protege.errors import require

            llama_cpp = require("llama_cpp", "llamacpp")
            n_ctx = cfg.serve.n_ctx if cfg is not None else 2048
            state["llm"] = llama_cpp.Llama(model_path=str(pick_gguf(cfg)), n_ctx=n_ctx, n_threads=2, verbose=False)
        out = state["llm"].create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.2,
                                                   repeat_penalty=1.15)
        return out["choices"][0]["message"]["content"] or ""

    return generate


def _where(s) -> str:
    return s.path + (f" > {s.section}" if s.section else "") + (f" (page {s.page})" if s.page else "")


def run(args: argparse.Namespace) -> int:
    kb, cfg = open_kb(args)
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
    ans = kb.answer(args.question, make_generate(cfg, args.max_tokens))
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
