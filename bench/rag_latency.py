"""RAG retrieval benchmark (issue 13): at 10k and 100k synthetic chunks, in one run, the configuration of this tree
(tuned HNSW, batched adds, persistent BM25 in rag/bm25_index.py) against the old one (Chroma's default HNSW and
rank_bm25 rebuilt in memory from every document, which is what rag/retrieve.py did before), measured side by side:

- index chunks/s: Store.add of precomputed vectors into an empty collection (Chroma's add with documents and
  metadata, the BM25 update and its file write; the old add for the baseline). The real all-MiniLM-L6-v2 embedder's
  own chunks/s on a sample (torch's default threads, as the indexer runs it) is reported apart, with the end-to-end
  rate the two give together (`with_embedding_est`): embedding is by far the larger cost on a CPU;
- hybrid query p50/p95: the real `Retriever.search` (hybrid=True, the knowledge config's defaults), the real query
  embedding included; the first query (file load or rank_bm25 build) is reported apart as `cold_ms`; `parts`: each
  step of the new one timed alone (embedding, Chroma query, BM25 top-n, the BM25-only candidates' vectors);
- dense-only p95 (hybrid=False, embedding included) and recall@4 of the dense top-4 against an exact numpy search;
- with sentence vectors (`--sentences`, 4 a chunk by default: the default configuration's path), the sentence
  collection's fill rate, the hybrid p50/p95 of queries that also search it, and its recall@20 against exact search.

Data. Chunk texts are 60-160 real English words (the embedder's vocabulary) drawn Zipf-like plus 40% from one of 300
topics, so BM25 sees realistic document frequencies. Embedding 100k chunks would take hours here, so vectors are drawn
from a model fitted to real embeddings of a sample of those texts (see vector_model): by default ("topic") a chunk's
vector is its topic's real embedding plus a residual with the real residuals' spread, so chunks cluster by topic as
real ones do; --vectors gaussian drops the clusters (one Gaussian: the worst case for HNSW recall). Questions are
built from a chunk's words and embedded for real.

The baseline's Chroma store depends only on the data and Chroma's defaults, so it is cached (with the chunks/s and
load average it was built with, both reported) under ~/.cache/protege-bench; --fresh-baseline rebuilds it. The new
store is always built in the run. Appends one JSON line (with os.getloadavg()) to bench/results/rag_latency.jsonl.

    .venv/bin/python bench/rag_latency.py                     # 10k and 100k
    .venv/bin/python bench/rag_latency.py --sizes 10000        # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag_legacy import legacy_add, legacy_retriever, legacy_store  # noqa: E402  (bench/, beside this script)

K = 4
DATA_VERSION = 2  # bump when the synthetic data changes: cached baseline stores are keyed on it
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "protege-bench" / "rag_latency"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(xs: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(xs) * 1e3, 2), "p95_ms": round(pct(xs, 95) * 1e3, 2)}


# --- synthetic data ---------------------------------------------------------------------------------------------
def vocabulary() -> list[str]:
    """Real English words, roughly most frequent first (BERT's vocabulary past its special and single-char part)."""
    from rag.embed import model_dir

    lines = (model_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")[1996:]
    return [w for w in lines if re.fullmatch(r"[a-z]{3,}", w)]


TOPICS = 300


def topics(n_words: int) -> np.ndarray:
    """TOPICS sets of 150 word ids: a chunk is about one of them (fixed, shared by every size and the sample)."""
    return np.random.default_rng(12345).choice(n_words, (TOPICS, 150))


def texts(n: int, words: list[str], seed: int) -> tuple[list[str], np.ndarray]:
    """n chunk texts and the topic of each: 60-160 words, 60% Zipf-distributed over the vocabulary, 40% the topic's."""
    rng = np.random.default_rng(seed)
    v, tw = len(words), topics(len(words))
    p = 1.0 / np.arange(1, v + 1) ** 1.07
    p /= p.sum()
    lens = rng.integers(60, 160, n)
    topic = rng.integers(0, TOPICS, n)
    common = rng.choice(v, int(lens.sum()), p=p)
    out, at = [], 0
    for i in range(n):
        k = int(lens[i] * 0.4)
        ws = np.concatenate([common[at:at + lens[i] - k], rng.choice(tw[topic[i]], k)])
        at += lens[i] - k
        rng.shuffle(ws)
        out.append(" ".join(words[j] for j in ws))
    return out, topic


def vector_model(emb, words: list[str], sample: int, kind: str) -> tuple[dict, float]:
    """Fit the synthetic vectors to real all-MiniLM-L6-v2 embeddings of `sample` synthetic chunks; also returns the
    embedder's chunks/s on them. kind "topic": each chunk = a * (real embedding of its topic's words) + a residual drawn
    from a Gaussian fitted (mean, Ledoit-Wolf covariance) to the real chunks' residuals, a fitted too: chunks cluster by
    topic as much as real embeddings of these texts do. kind "gaussian": one Gaussian fitted to the real embeddings,
    no clusters at all (the worst case for HNSW)."""
    from sklearn.covariance import LedoitWolf

    docs, topic = texts(sample, words, seed=7)
    t = time.perf_counter()
    real = np.asarray(emb.embed(docs), np.float32)
    rate = sample / (time.perf_counter() - t)
    if kind == "gaussian":
        chol = np.linalg.cholesky(LedoitWolf().fit(real).covariance_)
        return {"kind": kind, "mu": real.mean(0), "chol": chol.astype(np.float32)}, rate
    rng = np.random.default_rng(8)
    tw = topics(len(words))
    centres = np.asarray(emb.embed([" ".join(words[j] for j in rng.choice(tw[k], 80)) for k in range(TOPICS)]),
                         np.float32)
    a = float(np.mean(np.sum(real * centres[topic], axis=1)))  # the chunks' mean projection on their topic
    resid = real - a * centres[topic]
    chol = np.linalg.cholesky(LedoitWolf().fit(resid).covariance_)
    return {"kind": kind, "a": a, "centres": centres, "mu": resid.mean(0), "chol": chol.astype(np.float32)}, rate


def vectors(topic: np.ndarray, model: dict, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, dim = len(topic), len(model["mu"])
    v = np.empty((n, dim), np.float32)
    for s in range(0, n, 20_000):
        z = rng.standard_normal((min(20_000, n - s), dim), dtype=np.float32)
        v[s:s + len(z)] = model["mu"] + z @ model["chol"].T
        if model["kind"] == "topic":
            v[s:s + len(z)] += model["a"] * model["centres"][topic[s:s + len(z)]]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def questions(chunks: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.integers(0, len(chunks), n):
        w = [x for x in chunks[i].split() if len(x) > 4] or chunks[i].split()
        a, b, c = (w[j] for j in rng.integers(0, len(w), 3))
        out.append(f"How does the {a} {b} affect the {c}?" if len(out) % 2 else f"What about {a} and {b} in {c}?")
    return out


# --- one size -----------------------------------------------------------------------------------------------------
def build(kind: str, root: Path, name: str, data, args) -> tuple[object, dict]:
    """The store of `kind` ("baseline" or "new") holding `data`, and how fast it was filled."""
    from rag.store import Store, make_client

    ids, vecs, docs, metas = data
    if kind == "new":
        client = make_client(root / name)
        store = Store(client, name, "synthetic", vecs.shape[1])
        t = time.perf_counter()
        store.add(ids, vecs, docs, metas)
        return Store(client, name, "synthetic", vecs.shape[1]), {  # a second Store: the BM25 file is read back
            "index_chunks_per_s": round(len(ids) / (time.perf_counter() - t), 1), "cached": False}
    chroma = __import__("chromadb").__version__
    folder = CACHE / f"baseline-n{len(ids)}-{args.vectors}-s{args.embed_sample}-data{DATA_VERSION}-chroma{chroma}"
    info = folder / "built.json"
    if args.fresh_baseline or not info.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        client = make_client(folder)
        col = client.get_or_create_collection(name, metadata={"hnsw:space": "cosine", "embedder": "synthetic",
                                                               "dim": vecs.shape[1]}, embedding_function=None)
        t = time.perf_counter()
        legacy_add(col, ids, vecs, docs, metas)
        built = {"index_chunks_per_s": round(len(ids) / (time.perf_counter() - t), 1),
                 "built": datetime.now(timezone.utc).isoformat(timespec="seconds"), "loadavg": os.getloadavg()}
        info.write_text(json.dumps(built))
        fresh_build = True
    else:
        client, built, fresh_build = make_client(folder), json.loads(info.read_text()), False
    col = client.get_collection(name)
    if col.count() != len(ids):
        raise SystemExit(f"{folder}: cached baseline holds {col.count()} chunks, not {len(ids)}; use --fresh-baseline")

    return legacy_store(client, name, col), {**built, "cached": not fresh_build}


def measure(kind: str, store, emb, vecs: np.ndarray, qs: list[str]) -> dict:
    from protege.config import KnowledgeConfig
    from rag.retrieve import Retriever

    kc = KnowledgeConfig(folder=Path("."))
    kw = dict(top_k=kc.top_k, hybrid=True, unknown_name_factor=kc.unknown_name_factor)
    make = legacy_retriever if kind == "baseline" else Retriever
    hybrid, dense = make(store, emb, **kw), make(store, emb, **{**kw, "hybrid": False})
    t = time.perf_counter()
    hybrid.search(qs[0])  # cold: the baseline builds rank_bm25 from every document, the new one reads its file
    cold = time.perf_counter() - t
    # The exact search runs before the timed queries, not between them: numpy's BLAS threads keep spinning for a
    # while after a matmul, and the next timed query paid for it (at 100k, p50 69 ms after it against 33 ms without).
    qvs = np.asarray([emb.embed_query(q) for q in qs], np.float32)
    exact = [np.argpartition(-(vecs @ qv), K)[:K] for qv in qvs]
    time.sleep(0.5)  # BLAS threads idle again
    h_lat, d_lat = [], []
    for q in qs:
        t = time.perf_counter()
        hybrid.search(q)
        h_lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        dense.search(q)
        d_lat.append(time.perf_counter() - t)
    recall = [len({h.id for h in store.query(qv.tolist(), K)} & {f"c{i}" for i in ex}) / K
              for qv, ex in zip(qvs, exact)]
    out = {"cold_ms": round(cold * 1e3, 1), "hybrid": ms(h_lat), "dense": ms(d_lat),
           "recall_at_4_vs_exact": round(float(np.mean(recall)), 4)}
    if kind == "new":
        out["parts"] = parts(hybrid, qs[1:])
    return out


def sentence_vectors(vecs: np.ndarray, topic: np.ndarray, model: dict, per_chunk: int, seed: int) -> np.ndarray:
    """`per_chunk` vectors a chunk, row i*per_chunk + j for sentence j of chunk i: the chunk's vector plus a fresh
    vector of the chunk's topic, normalised (a sentence is close to its chunk and its topic, not equal to it)."""
    out = np.empty((len(vecs) * per_chunk, vecs.shape[1]), np.float32)
    for j in range(per_chunk):
        v = vecs + vectors(topic, model, seed + j)
        out[j::per_chunk] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def measure_sentences(store, emb, svecs: np.ndarray, per_chunk: int, qs: list[str]) -> dict:
    """The default configuration's path (knowledge.sentence_vectors): the sentence collection filled in batches as
    rag/sentence_store.py writes it (sentences/s), then hybrid queries that also search the sentences (p50/p95, the
    real query embedding included) and the sentence search's recall@20 against an exact numpy search."""
    from protege.config import KnowledgeConfig
    from rag.retrieve import Retriever

    col, n = store.sentences.col, len(svecs)
    ids = [f"c{i // per_chunk}:{i % per_chunk}" for i in range(n)]  # row i of svecs (SentenceStore's "chunk:n")
    t = time.perf_counter()
    for s in range(0, n, 1000):  # SentenceStore.add's batch
        col.add(ids=ids[s:s + 1000], embeddings=svecs[s:s + 1000],
                metadatas=[{"parent": i.partition(":")[0]} for i in ids[s:s + 1000]])
    rate = n / (time.perf_counter() - t)
    kc = KnowledgeConfig(folder=Path("."))
    r = Retriever(store, emb, top_k=kc.top_k, hybrid=True, unknown_name_factor=kc.unknown_name_factor, sentences=True)
    r.search(qs[0])
    qvs = np.asarray([emb.embed_query(q) for q in qs], np.float32)
    exact = [{ids[i] for i in np.argpartition(-(svecs @ qv), 20)[:20]} for qv in qvs]
    time.sleep(0.5)  # BLAS threads idle again (see measure)
    lat = []
    for q in qs:
        t = time.perf_counter()
        r.search(q)
        lat.append(time.perf_counter() - t)
    recall = [len(set(col.query(query_embeddings=[qv.tolist()], n_results=20, include=[])["ids"][0]) & ex) / 20
              for qv, ex in zip(qvs, exact)]
    return {"sentences": n, "index_sentences_per_s": round(rate, 1), "hybrid": ms(lat),
            "sentence_recall_at_20_vs_exact": round(float(np.mean(recall)), 4)}


def parts(r, qs: list[str]) -> dict:
    """Where a hybrid query's time goes, each step timed alone over the same questions: the embedding, Chroma's
    HNSW query for the candidates (documents and metadata included), BM25's top-n, and fetching the BM25-only
    candidates' vectors for their cosine."""
    from rag.retrieve import bm25_tokens

    steps: dict[str, list[float]] = {"embed": [], "chroma_query": [], "bm25_top": [], "cosine_fetch": []}
    for q in qs:
        t0 = time.perf_counter()
        qv = r.embedder.embed_query(q)
        t1 = time.perf_counter()
        dense = r.store.query(qv, r.candidates)
        t2 = time.perf_counter()
        lexical = r.store.bm25().top(bm25_tokens(q), r.candidates)
        t3 = time.perf_counter()
        r._with_cosine([c for c in lexical if c not in {h.id for h in dense}], qv)
        t4 = time.perf_counter()
        for k, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[k].append(dt)
    return {k: ms(v) for k, v in steps.items()}


def bench_size(n: int, args, emb, words: list[str], model, root: Path) -> dict:
    docs, topic = texts(n, words, seed=n)
    vecs = vectors(topic, model, seed=n + 1)
    ids = [f"c{i}" for i in range(n)]
    metas = [{"path": f"doc{i // 20}.md", "ordinal": i % 20} for i in range(n)]
    qs = questions(docs, args.queries + 1, seed=n + 2)
    out: dict = {"chunks": n}
    for kind in ("baseline", "new"):
        store, built = build(kind, root, f"bench-{kind}-{n}", (ids, vecs, docs, metas), args)
        out[kind] = {**built, **measure(kind, store, emb, vecs, qs)}
        r = out[kind]
        print(f"{n:>7} {kind:>8}: index {r['index_chunks_per_s']:>6.1f} chunks/s{' (cached)' if r['cached'] else ''}"
              f" | hybrid p50 {r['hybrid']['p50_ms']:.1f} p95 {r['hybrid']['p95_ms']:.1f} ms (cold {r['cold_ms']:.0f})"
              f" | dense p95 {r['dense']['p95_ms']:.1f} ms | recall@4 {r['recall_at_4_vs_exact']:.3f}"
              f" | load {os.getloadavg()[0]:.2f}", flush=True)
        if "parts" in r:
            print("         parts p50/p95 ms: " + ", ".join(f"{k} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}"
                                                     for k, v in r["parts"].items()), flush=True)
    if args.sentences:
        r = out["new"]["with_sentences"] = measure_sentences(
            store, emb, sentence_vectors(vecs, topic, model, args.sentences, seed=n + 3), args.sentences, qs)
        print(f"{n:>7} +sentences: {r['sentences']} sentence vectors at {r['index_sentences_per_s']:.1f}/s | hybrid "
              f"p50 {r['hybrid']['p50_ms']:.1f} p95 {r['hybrid']['p95_ms']:.1f} ms | sentence recall@20 "
              f"{r['sentence_recall_at_20_vs_exact']:.3f} | load {os.getloadavg()[0]:.2f}", flush=True)
    b, w = out["baseline"], out["new"]
    out["ratio_new_vs_baseline"] = {
        "index_chunks_per_s": round(w["index_chunks_per_s"] / b["index_chunks_per_s"], 2),
        "hybrid_p95": round(w["hybrid"]["p95_ms"] / b["hybrid"]["p95_ms"], 3),
        "dense_p95": round(w["dense"]["p95_ms"] / b["dense"]["p95_ms"], 3),
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--embed-sample", type=int, default=384, help="real embeddings the vector model is fitted to")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads for batch embedding (0: torch's default; a query always uses one, "
                         "rag/embed.py); recorded")
    ap.add_argument("--vectors", choices=("topic", "gaussian"), default="topic",
                    help="topic: clustered like real embeddings of the texts; gaussian: unclustered, HNSW's worst case")
    ap.add_argument("--fresh-baseline", action="store_true", help="rebuild the cached baseline stores")
    ap.add_argument("--sentences", type=int, default=4,
                    help="sentence vectors a chunk for the default configuration's path (knowledge.sentence_vectors: "
                         "queries also search them); 0 skips it")
    args = ap.parse_args()
    import chromadb
    import torch

    from rag.embed import default_embedder
    from rag.store import HNSW_PARAMS

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    load0 = os.getloadavg()
    emb = default_embedder()
    words = vocabulary()
    model, embed_rate = vector_model(emb, words, args.embed_sample, args.vectors)
    print(f"real embedder: {embed_rate:.1f} chunks/s ({args.embed_sample} chunks, torch threads "
          f"{torch.get_num_threads()}); vectors: {args.vectors}", flush=True)
    result: dict = {"bench": "rag_latency", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "cpus": os.cpu_count(), "loadavg_start": load0},
                    "versions": {"chromadb": chromadb.__version__, "numpy": np.__version__, "torch": torch.__version__},
                    "k": K, "torch_threads": torch.get_num_threads(), "new_hnsw": HNSW_PARAMS,
                    "vectors": args.vectors, "real_embedder_chunks_per_s": round(embed_rate, 1), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        for n in args.sizes:
            size = bench_size(n, args, emb, words, model, Path(tmp))
            rate = size["new"]["index_chunks_per_s"]
            size["new"]["with_embedding_est"] = round(1 / (1 / rate + 1 / embed_rate), 1)
            size["loadavg"] = os.getloadavg()
            result["sizes"].append(size)
            print(f"{n:>7}      new: index with the real embedding ~{size['new']['with_embedding_est']} chunks/s "
                  f"(store {rate} + embedder {embed_rate:.1f})", flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(__file__).parent / "results" / "rag_latency.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"load average {load0} -> {result['machine']['loadavg_end']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
