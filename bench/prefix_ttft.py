"""Time to first token for RAG requests, with and without prefix reuse in the llama.cpp engine, in the same run.

Every request is what the server sends for a knowledge question: the persona + grounding rules as the system turn,
then the retrieved documents and the question (rag/grounding.py, the real retriever on the built assistant's index).
Consecutive requests share the system turn, so with `serve.prefix_cache` on a slot prefills only the documents and the
question. Both sides run the assistant's served GGUF with the served slot count; each side warms up on one request
first. TTFT is the engine's own prompt time (request queued -> first token sampled), one client at a time, then with
`--clients` concurrent ones. Prints p50/p95 per side and the ratio; appends a JSON line to
bench/results/prefix_ttft.jsonl. No absolute time is asserted.

    .venv/bin/python bench/prefix_ttft.py configs/captain-byte.yaml examples/captain-byte/qa.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rag_requests(config: str, qa_file: str) -> tuple[list, Path, int]:
    """(GenParams per answerable question, the served GGUF, serve.parallel)."""
    from protege.config_file import load_config
    from protege.paths import AssistantPaths
    from rag.evaluate import load_qa
    from rag.knowledge import KnowledgeBase
    from serve.params import GenParams

    cfg = load_config(config)
    paths = AssistantPaths.for_name(cfg.name)
    kb = KnowledgeBase.open(cfg, paths)
    out = []
    for row in load_qa(Path(qa_file)):
        question = [{"role": "user", "content": row["question"]}]
        retrieval = kb.retrieve_conversation(question)
        if not retrieval.refused:
            out.append(GenParams(cfg.name, kb.build_messages(question, retrieval), max_tokens=1, temperature=0))
    return out, paths.gguf_file(cfg.serve.quant or cfg.export.default_quant), cfg.serve.parallel


async def measure(engine, requests: list, clients: int) -> list[dict]:
    from serve.engines.base import Usage

    async def one(p) -> dict:
        usage = Usage()
        async for _ in engine.stream_chat(p, usage):
            pass
        return {"ttft_ms": usage.prompt_ns / 1e6, "prompt": usage.prompt_tokens, "cached": usage.cached_tokens}

    if clients == 1:
        return [await one(p) for p in requests]
    out: list[dict] = []
    for i in range(0, len(requests), clients):
        out += await asyncio.gather(*(one(p) for p in requests[i:i + clients]))
    return out


def summary(rows: list[dict]) -> dict:
    ttft = sorted(r["ttft_ms"] for r in rows)
    return {"requests": len(rows), "ttft_p50_ms": round(statistics.median(ttft), 1),
            "ttft_p95_ms": round(ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 1),
            "prompt_tokens_mean": round(statistics.mean(r["prompt"] for r in rows), 1),
            "cached_tokens_mean": round(statistics.mean(r["cached"] for r in rows), 1)}


async def side(gguf: Path, parallel: int, prefix_cache: bool, requests: list, clients: int) -> dict:
    from serve.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(gguf, ["bench"], parallel=parallel, prefix_cache=prefix_cache)
    await engine.load()
    try:
        await measure(engine, requests[:1], 1)  # warm-up (and, with reuse on, the system turn's KV)
        return {"one_client": summary(await measure(engine, requests, 1)),
                f"{clients}_clients": summary(await measure(engine, requests, clients))}
    finally:
        await engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("qa_file")
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    requests, gguf, parallel = rag_requests(args.config, args.qa_file)
    load = os.getloadavg()[0]
    results = {}
    for name, on in (("reuse_off", False), ("reuse_on", True)):
        results[name] = asyncio.run(side(gguf, parallel, on, requests, args.clients))
        for mode, r in results[name].items():
            print(f"{name:9s} {mode:10s} TTFT p50 {r['ttft_p50_ms']:7.1f} ms  p95 {r['ttft_p95_ms']:7.1f} ms   "
                  f"prompt {r['prompt_tokens_mean']:.0f} tokens, {r['cached_tokens_mean']:.0f} reused")
    ratios = {mode: round(results["reuse_off"][mode]["ttft_p50_ms"] / results["reuse_on"][mode]["ttft_p50_ms"], 3)
              for mode in results["reuse_on"]}
    print("TTFT p50 ratio off/on: " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))
    record = {"bench": "prefix_ttft", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": round(load, 2)},
              "gguf": gguf.name, "parallel": parallel, "clients": args.clients, "qa_file": args.qa_file,
              **results, "ratio_ttft_p50_off_over_on": ratios}
    out = REPO / "bench" / "results" / "prefix_ttft.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
