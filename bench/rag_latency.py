"""RAG latency benchmark: Chroma (embedded, cosine HNSW) query p50/p95 at 10k and 100k synthetic chunks, indexing
chunks/s, and the real all-MiniLM-L6-v2 embed+query path, each compared with a brute-force numpy baseline measured
in the same run (exact top-k by one matrix-vector product). Prints a table and appends one JSON line to
bench/results/rag_latency.jsonl. No absolute time is asserted anywhere.

    .venv/bin/python bench/rag_latency.py                 # 10k and 100k
    .venv/bin/python bench/rag_latency.py --sizes 10000   # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 384
K = 4


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_size(n: int, queries: int, rng: np.random.Generator, root: Path) -> dict:
    from rag.store import Store, make_client

    vecs = unit(rng, n)
    ids = [f"c{i}" for i in range(n)]
    docs = [f"synthetic chunk {i}" for i in range(n)]
    metas = [{"path": f"doc{i // 20}.md", "ordinal": i % 20} for i in range(n)]
    store = Store(make_client(root / f"s{n}"), f"bench{n}", "random", DIM)
    t0 = time.perf_counter()
    store.add(ids, vecs.tolist(), docs, metas)
    add_s = time.perf_counter() - t0

    # queries near stored vectors (like a question near its chunk), so top-k is meaningful
    planted = rng.integers(0, n, queries)
    qs = vecs[planted] + 0.2 * unit(rng, queries)  # a question near its chunk (cosine ~0.98)
    qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    ours, base, recall, found = [], [], [], []
    for q, src in zip(qs, planted):
        t = time.perf_counter()
        hits = store.query(q.tolist(), K)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        sims = vecs @ q
        top = np.argpartition(-sims, K)[:K]
        top = top[np.argsort(-sims[top])]
        base.append(time.perf_counter() - t)
        recall.append(len({h.id for h in hits} & {ids[i] for i in top}) / K)
        found.append(ids[src] in {h.id for h in hits})
    return {
        "chunks": n, "index_chunks_per_s": round(n / add_s, 1),
        "query_p50_ms": round(statistics.median(ours) * 1e3, 3), "query_p95_ms": round(pct(ours, 95) * 1e3, 3),
        "numpy_p50_ms": round(statistics.median(base) * 1e3, 3), "numpy_p95_ms": round(pct(base, 95) * 1e3, 3),
        "ratio_p50_vs_numpy": round(statistics.median(ours) / statistics.median(base), 3),
        "recall_at_4_vs_exact": round(float(np.mean(recall)), 4),  # ranks 2-4 are noise-level on random data
        "planted_found_at_4": round(float(np.mean(found)), 4),
    }


def bench_real(queries: int, root: Path, n_chunks: int = 500) -> dict:
    """End to end with the real embedder: index real-ish text (chunks/s incl. embedding) and embed+query latency."""
    from rag.embed import default_embedder
    from rag.store import Store, make_client

    emb = default_embedder()
    texts = [f"Section {i}: the device model X{i % 50} supports mode {i % 7} and needs firmware {i % 11}.{i % 5} "
             f"before the {['pump', 'valve', 'sensor', 'fan', 'relay'][i % 5]} can be calibrated." for i in range(n_chunks)]
    store = Store(make_client(root / "real"), "benchreal", emb.name, emb.dim)
    t0 = time.perf_counter()
    vectors = emb.embed(texts)
    store.add([f"r{i}" for i in range(len(texts))], vectors, texts, [{"path": "x.md"}] * len(texts))
    index_s = time.perf_counter() - t0
    mat = np.asarray(vectors, dtype=np.float32)
    questions = [f"Which firmware does the X{i} need to calibrate the sensor?" for i in range(queries)]
    ours, base = [], []
    for q in questions:
        t = time.perf_counter()
        store.query(emb.embed_query(q), K)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        v = np.asarray(emb.embed_query(q), dtype=np.float32)
        np.argpartition(-(mat @ v), K)[:K]
        base.append(time.perf_counter() - t)
    return {
        "chunks": len(texts), "index_chunks_per_s_with_embedding": round(len(texts) / index_s, 1),
        "embed_query_p50_ms": round(statistics.median(ours) * 1e3, 2), "embed_query_p95_ms": round(pct(ours, 95) * 1e3, 2),
        "numpy_embed_query_p50_ms": round(statistics.median(base) * 1e3, 2),
        "ratio_p50_vs_numpy": round(statistics.median(ours) / statistics.median(base), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--real-queries", type=int, default=50)
    ap.add_argument("--no-real", action="store_true", help="skip the real-embedder part")
    args = ap.parse_args()
    import chromadb

    rng = np.random.default_rng(0)
    result: dict = {"bench": "rag_latency", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "cpus": __import__("os").cpu_count()},
                    "versions": {"chromadb": chromadb.__version__, "numpy": np.__version__}, "k": K, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        for n in args.sizes:
            r = bench_size(n, args.queries, rng, Path(tmp))
            result["sizes"].append(r)
            print(f"{n:>7} chunks: index {r['index_chunks_per_s']:>9.1f} chunks/s | query p50 {r['query_p50_ms']:.2f} ms "
                  f"p95 {r['query_p95_ms']:.2f} ms | numpy p50 {r['numpy_p50_ms']:.2f} ms | ratio "
                  f"{r['ratio_p50_vs_numpy']:.2f}x | planted@4 {r['planted_found_at_4']:.3f} "
                  f"recall@4 vs exact {r['recall_at_4_vs_exact']:.3f}", flush=True)
        if not args.no_real:
            r = bench_real(args.real_queries, Path(tmp))
            result["real_embedder"] = r
            print(f"real embedder ({r['chunks']} chunks): index {r['index_chunks_per_s_with_embedding']:.1f} chunks/s "
                  f"with embedding | embed+query p50 {r['embed_query_p50_ms']:.1f} ms p95 {r['embed_query_p95_ms']:.1f} "
                  f"ms | embed+numpy p50 {r['numpy_embed_query_p50_ms']:.1f} ms | ratio {r['ratio_p50_vs_numpy']:.2f}x")
    out = Path(__file__).parent / "results" / "rag_latency.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
