"""End-to-end answer eval with the LLM in the loop: every QA row goes through the one answer path (retrieve on the
conversation, gate, grounded prompt, the assistant's GGUF, guard), and rag/evaluate.py scores the replies. Used by
`protege rag eval --answers` and by the `answers` stage of `protege build` (knowledge.eval_qa)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from protege.config import AssistantConfig
from protege.paths import AssistantPaths


def evaluate_answers(kb, cfg: AssistantConfig | None, qa: list[dict], progress: bool = False) -> tuple[dict, list[dict]]:
    """(metrics, per-question detail) for the QA rows (see rag/evaluate.load_qa for their fields)."""
    from protege.llm import LocalLLM
    from rag.evaluate import answer_holds, answer_metrics

    llm = LocalLLM(cfg)
    answers, detail = [], []
    t0 = time.perf_counter()
    try:
        for i, row in enumerate(qa, 1):
            messages = [*row.get("history", []), {"role": "user", "content": row["question"]}]
            ans = kb.answer(messages, llm)
            answers.append(ans)
            detail.append({"question": row["question"], "source": row["source"], "answer": ans.text,
                           "grounding": ans.grounding, "unsupported": ans.unsupported,
                           "sources": [s.path for s in ans.sources[:3]], "confidence": ans.confidence,
                           "holds": answer_holds(ans.text, row["answer_contains"]) if row.get("answer_contains")
                           else None})
            if progress:
                print(f"  [{i}/{len(qa)}] {ans.grounding:10s} {ans.text[:90]!r}", flush=True)
    finally:
        llm.close()
    m = answer_metrics(qa, answers)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    m["guard"] = kb.cfg.guard
    return m, detail


def run(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """The `answers` stage: evaluate knowledge.eval_qa and write eval/answers.json."""
    from protege.config_file import atomic_write_text
    from rag.evaluate import load_qa
    from rag.knowledge import KnowledgeBase

    assert cfg.knowledge is not None and cfg.knowledge.eval_qa is not None
    kb = KnowledgeBase.open(cfg, paths)
    m, detail = evaluate_answers(kb, cfg, load_qa(cfg.knowledge.eval_qa))
    out = Path(paths.eval) / "answers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"metrics": m, "questions": detail}, indent=2, ensure_ascii=False) + "\n")
    return {**m, "report": str(out)}
