"""Retrieval generalisation: index a knowledge folder with the real embedder into a temporary Chroma folder and report,
per QA set, hit@1 / hit@3, in-domain answered and trap (source null) refusal at the configured `min_score` and at the
threshold calibrated on the DEV set only (the held-out sets are scored, never tuned on).

DEV (tuning allowed): examples/captain-byte/qa.jsonl (+ train_qa.jsonl when present) + qa_paraphrases.jsonl (the
paraphrases and near-domain traps tests/test_retrieval_generalize.py also scores), and tests/assets/rag_qa.jsonl for
the test corpus.
HELD-OUT (report only): examples/captain-byte/qa_heldout.jsonl (when present) and tests/assets/rag_qa_b.jsonl.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/retrieval_heldout.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/retrieval_heldout.py --json      # one JSON object instead of a table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO = REPO / "examples" / "captain-byte"
ASSETS = REPO / "tests" / "assets"
CONFIG_MIN_SCORE = 0.35
DEFAULTS = dict(top_k=4, hybrid=True, unknown_name_factor=0.5)


def build_kb(folder: Path, root: Path, **overrides):
    from rag.knowledge import KnowledgeBase

    kw = {**DEFAULTS, "min_score": CONFIG_MIN_SCORE, **overrides}
    kb = KnowledgeBase.from_folder(folder, "kb-" + uuid.uuid4().hex[:8], root / uuid.uuid4().hex[:8], **kw)
    kb.index()
    return kb


def qa_rows(path: Path) -> list[dict]:
    from rag.evaluate import load_qa

    return load_qa(path) if path.is_file() else []


def demo_dev() -> list[dict]:
    return qa_rows(DEMO / "qa.jsonl") + qa_rows(DEMO / "train_qa.jsonl") + qa_rows(DEMO / "qa_paraphrases.jsonl")


def report(scored: list[dict], min_score: float) -> dict:
    from rag.evaluate import metrics

    m = metrics(scored, min_score)
    keep = ("questions", "in_domain", "out_of_domain", "hit@1", "hit@3", "in_domain_answered", "refusal_recall")
    return {k: m.get(k) for k in keep} | {"min_score": round(min_score, 4)}


def misses(scored: list[dict], min_score: float) -> list[str]:
    out = []
    for r in scored:
        if r["source"] and not (r["rank"] and r["rank"] <= 3):
            out.append(f"  MISS@3  {r['confidence']:.3f} {r['question']}  -> want {r['source']}, got {r['top_paths']}")
        elif r["source"] and r["confidence"] < min_score:
            out.append(f"  REFUSED {r['confidence']:.3f} {r['question']}  ({r['source']})")
        elif not r["source"] and r["confidence"] >= min_score:
            out.append(f"  TRAP-IN {r['confidence']:.3f} {r['question']}  -> {r['top_paths'][:1]}")
    return out


def run(verbose: bool = False, **overrides) -> dict:
    from rag.evaluate import calibrate, score_questions

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, folder, dev, held in (
            ("captain-byte", DEMO / "knowledge", demo_dev(), qa_rows(DEMO / "qa_heldout.jsonl")),
            ("test-corpus", ASSETS / "rag_corpus", qa_rows(ASSETS / "rag_qa.jsonl"), []),
            ("test-corpus-b", ASSETS / "rag_corpus_b", [], qa_rows(ASSETS / "rag_qa_b.jsonl")),
        ):
            kb = build_kb(folder, root, **overrides)
            res: dict = {"chunks": kb.store.count()}
            s_dev = score_questions(kb, dev) if dev else []
            s_held = score_questions(kb, held) if held else []
            cal = None
            if s_dev and any(not r["source"] for r in s_dev):
                cal, _ = calibrate(s_dev)
            for label, scored in (("dev", s_dev), ("heldout", s_held)):
                if not scored:
                    continue
                res[label] = {"configured": report(scored, kb.cfg.min_score)}
                if cal is not None:
                    res[label]["dev_calibrated"] = report(scored, cal)
                if any(not r["source"] for r in scored):
                    res[label]["own_calibrated"] = report(scored, calibrate(scored)[0])
                if verbose and label == "dev":
                    res[label]["misses"] = misses(scored, kb.cfg.min_score)
            if name == "captain-byte":
                qs = [r["question"] for r in (s_dev + s_held)][:40]
                kb.retriever.search(qs[0])  # warm
                times = []
                for q in qs:
                    t0 = time.perf_counter()
                    kb.retrieve(q)
                    times.append((time.perf_counter() - t0) * 1000)
                res["latency_ms"] = {"p50": round(statistics.median(times), 1), "max": round(max(times), 1)}
            out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="list misses, refused in-domain and admitted traps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="knowledge override, e.g. --set unknown_name_factor=0.6 --set hybrid=false")
    args = ap.parse_args(argv)
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v) if v not in ("true", "false") else v == "true"
    res = run(verbose=args.verbose, **overrides)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    for name, r in res.items():
        print(f"== {name}: {r['chunks']} chunks" + (f", retrieve latency {r['latency_ms']}" if "latency_ms" in r else ""))
        for label in ("dev", "heldout"):
            if label not in r:
                continue
            for how, m in r[label].items():
                if how == "misses":
                    continue
                print(f"  {label:8s} {how:15s} n={m['in_domain']}+{m['out_of_domain']} hit@1={m['hit@1']} "
                      f"hit@3={m['hit@3']} answered={m['in_domain_answered']} traps_refused={m['refusal_recall']} "
                      f"@min_score={m['min_score']}")
            for line in r[label].get("misses", []):
                print(f"  [{label}]{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
