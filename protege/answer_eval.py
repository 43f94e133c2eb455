"""End-to-end answer eval with the LLM in the loop: every QA row is asked through the one answer path
(`protege.Assistant.ask`: the server's own request code, with retrieval on the conversation, the gate, the grounded
prompt, the assistant's GGUF and the guard), and rag/evaluate.py scores the replies. Used by `protege rag eval
--answers`, bench/answer_accuracy.py and the `answers` stage of `protege build` (knowledge.eval_qa)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from protege.config import AssistantConfig
from protege.paths import AssistantPaths

if TYPE_CHECKING:
    from protege.api import Assistant


def evaluate_answers(assistant: "Assistant", qa: list[dict], progress: bool = False) -> tuple[dict, list[dict]]:
    """(metrics, per-question detail) for the QA rows (see rag/evaluate.load_qa for their fields)."""
    from rag.evaluate import answer_holds, answer_metrics

    answers, detail = [], []
    t0 = time.perf_counter()
    for i, row in enumerate(qa, 1):
        reply = assistant.ask([*row.get("history", []), {"role": "user", "content": row["question"]}])
        answers.append(reply)
        detail.append({"question": row["question"], "source": row["source"], "answer": reply.text,
                       "grounding": reply.grounding, "sources": [s.path for s in reply.sources[:3]],
                       "confidence": reply.confidence,
                       "holds": answer_holds(reply.text, row["answer_contains"]) if row.get("answer_contains")
                       else None})
        if progress:
            print(f"  [{i}/{len(qa)}] {reply.grounding:10s} {reply.text[:90]!r}", flush=True)
    m = answer_metrics(qa, answers)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    m["guard"] = assistant.knowledge.cfg.guard
    return m, detail


def run(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """The `answers` stage: evaluate knowledge.eval_qa and write eval/answers.json."""
    from protege.api import Assistant
    from protege.config_file import atomic_write_text
    from protege.errors import ConfigError
    from rag.evaluate import load_qa

    if cfg.knowledge is None or cfg.knowledge.eval_qa is None:
        raise ConfigError(f"{cfg.name}: the answers stage needs knowledge.eval_qa")
    with Assistant(cfg, paths) as assistant:
        m, detail = evaluate_answers(assistant, load_qa(cfg.knowledge.eval_qa))
    out = Path(paths.eval) / "answers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"metrics": m, "questions": detail}, indent=2, ensure_ascii=False) + "\n")
    return {**m, "report": str(out)}
