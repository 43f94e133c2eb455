"""Store-level parts of the retrieval speed-up (issue 13): HNSW parameters on new collections, old collections
opening with the tuned search_ef, the BM25 file kept in step by add/delete (and rebuilt when it is not), and the
hybrid ranking exactly what the old in-memory rank_bm25 rebuild gave, on the test corpus and the demo's questions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rag.bm25_index import Bm25Index, bm25_tokens
from rag.store import HNSW_PARAMS, Store, make_client

ASSETS = Path(__file__).parent / "assets"
DEMO = Path(__file__).resolve().parents[1] / "examples" / "captain-byte"
DIM = 8


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def docs(n: int, start: int = 0) -> list[str]:
    words = "pump valve relay fan sensor firmware battery inverter warranty refund".split()
    return [f"{words[i % 10]} {words[(i * 7) % 10]} chunk{i} " + "panel " * (i % 4) for i in range(start, start + n)]


def add(store: Store, lo: int, hi: int) -> None:
    n = hi - lo
    store.add([f"c{i}" for i in range(lo, hi)], vectors(hi, 1)[lo:hi], docs(n, lo), [{"path": "x.md"}] * n)


def test_an_old_sentence_collection_opens_with_the_tuned_search_ef(tmp_path):
    from rag.sentence_store import name_for

    client = make_client(tmp_path)
    client.get_or_create_collection(name_for("legacy"), metadata={"hnsw:space": "cosine"}, embedding_function=None)
    store = Store(client, "legacy", "emb", DIM)
    assert store.sentences.col.configuration_json["hnsw"]["ef_search"] == HNSW_PARAMS["hnsw:search_ef"]


def test_new_collection_gets_the_tuned_hnsw_params(tmp_path):
    store = Store(make_client(tmp_path), "tuned", "emb", DIM)
    hnsw = store.col.configuration_json["hnsw"]
    assert hnsw["space"] == "cosine"
    assert (hnsw["max_neighbors"], hnsw["ef_construction"], hnsw["ef_search"]) == (
        HNSW_PARAMS["hnsw:M"], HNSW_PARAMS["hnsw:construction_ef"], HNSW_PARAMS["hnsw:search_ef"])
    assert hnsw["sync_threshold"] == 1000  # Chroma's: the HNSW file keeps being written (see rag/store.py)
    assert store.metadata["embedder"] == "emb" and store.metadata["dim"] == DIM


def test_a_collection_made_with_the_old_metadata_opens_with_the_tuned_search_ef(tmp_path):
    client = make_client(tmp_path)
    old = client.get_or_create_collection("legacy", metadata={"hnsw:space": "cosine", "embedder": "emb", "dim": DIM},
                                          embedding_function=None)
    old.add(ids=["a", "b", "c"], embeddings=vectors(3), documents=["pump valve", "relay fan", "solar panel"])
    store = Store(client, "legacy", "emb", DIM)
    hnsw = store.col.configuration_json["hnsw"]
    # M is fixed at creation (Chroma's 16); the search-time ef is raised to this tree's, and stays so on reopening
    assert (hnsw["max_neighbors"], hnsw["ef_search"]) == (16, HNSW_PARAMS["hnsw:search_ef"])
    assert make_client(tmp_path).get_collection("legacy").configuration_json["hnsw"]["ef_search"] == \
        HNSW_PARAMS["hnsw:search_ef"]
    assert store.count() == 3 and store.query(vectors(3)[0].tolist(), 1)[0].id == "a"
    # its sentence collection is made with this tree's parameters, not a copy of the old chunk collection's
    sentences = store.sentences.col.configuration_json["hnsw"]
    assert (sentences["max_neighbors"], sentences["ef_search"]) == (
        HNSW_PARAMS["hnsw:M"], HNSW_PARAMS["hnsw:search_ef"])
    assert store.bm25().top(["relay"], 4) == ["b"]  # no BM25 file yet: built from the stored documents
    assert (tmp_path / "bm25-legacy.npz").is_file()


def test_chunk_text_lives_in_the_metadata_and_rows_written_before_still_read(tmp_path):
    """Chroma's documents get a trigram full-text index we never query: the text goes in the metadata (TEXT). Rows
    written before, with the text as the document, read the same; TEXT never shows in a hit's metadata."""
    from rag.store import TEXT

    store = Store(make_client(tmp_path), "kb-text", "emb", DIM)
    add(store, 0, 3)
    raw = store.col.get(ids=["c1"], include=["documents", "metadatas"])
    assert raw["documents"] == [None] and raw["metadatas"][0][TEXT] == docs(3)[1]
    store.col.add(ids=["old"], embeddings=vectors(4, 9)[3:], documents=["relay firmware legacy"],
                  metadatas=[{"path": "old.md"}])  # as an index written before TEXT
    store.bm25()  # rebuilt from both kinds of row (the count changed under it)
    assert store.bm25().top(["legacy"], 5) == ["old"] and store.bm25().top(["chunk1"], 5) == ["c1"]
    texts = {cid: (meta, text) for cid, meta, text in store.iter_all(include=("documents",))}
    assert texts["c1"] == ({"path": "x.md"}, docs(3)[1])
    assert texts["old"] == ({"path": "old.md"}, "relay firmware legacy")
    got = {cid: (text, meta) for cid, text, meta, _ in store.by_ids(["c2", "old", "gone"])}
    assert got == {"c2": (docs(3)[2], {"path": "x.md"}), "old": ("relay firmware legacy", {"path": "old.md"})}
    hits = store.query(vectors(4, 9)[3].tolist(), 4)
    assert hits[0].id == "old" and hits[0].text == "relay firmware legacy"
    assert all(TEXT not in h.metadata for h in hits) and {h.text for h in hits} >= set(docs(3))


def test_bm25_file_follows_add_and_delete_and_equals_a_rebuild(tmp_path):
    store = Store(make_client(tmp_path), "kb-demo", "emb", DIM)
    add(store, 0, 50)
    path = tmp_path / "bm25-kb-demo.npz"
    assert path.is_file() and store.bm25().count == 50
    store.delete([f"c{i}" for i in range(0, 50, 3)])
    add(store, 50, 80)
    idx = store.bm25()
    assert idx.count == store.count() == 80 - 17

    chroma_order = [(cid, doc) for cid, _, doc in store.iter_all(include=("documents",))]
    fresh = Bm25Index()
    fresh.rebuild(chroma_order)
    assert idx.ids == fresh.ids  # the index lists chunks in Chroma's order: ties break the same way
    for q in (["pump"], ["refund", "panel"], ["chunk7"], ["nothing"]):
        np.testing.assert_array_equal(idx.scores(q), fresh.scores(q))
        assert idx.top(q, 10) == fresh.top(q, 10)

    reopened = Store(make_client(tmp_path), "kb-demo", "emb", DIM)  # loaded from the file, not rebuilt
    reopened.iter_all = lambda *a, **k: pytest.fail("the BM25 file was in step: no rebuild expected")
    assert reopened.bm25().top(["refund", "panel"], 10) == fresh.top(["refund", "panel"], 10)


def test_a_bm25_file_out_of_step_is_rebuilt(tmp_path):
    store = Store(make_client(tmp_path), "kb-stale", "emb", DIM)
    add(store, 0, 20)
    assert store.bm25().count == 20
    store.bm25_recheck_s = 0  # another writer is noticed at the next count check (at most a second later by default)
    store.col.add(ids=["x1"], embeddings=vectors(1, 9), documents=["zebra"], metadatas=[{"path": "y.md"}])  # behind
    assert store.bm25().count == 21 and store.bm25().top(["zebra"], 4) == ["x1"]  # its back: a crash between writes
    (tmp_path / "bm25-kb-stale.npz").write_bytes(b"not an npz")
    again = Store(make_client(tmp_path), "kb-stale", "emb", DIM)
    assert again.bm25().top(["zebra"], 4) == ["x1"]


def test_reset_drops_the_bm25_file_with_the_collection(tmp_path):
    store = Store(make_client(tmp_path), "kb-reset", "emb", DIM)
    add(store, 0, 10)
    store.reset("other", DIM)
    assert store.count() == 0 and store.bm25().count == 0
    add(store, 10, 12)
    assert store.bm25().ids == ["c10", "c11"]
    again = Store(make_client(tmp_path), "kb-reset", "other", DIM)
    again.iter_all = lambda *a, **k: pytest.fail("the file written after the reset belongs to the new collection")
    assert again.bm25().ids == ["c10", "c11"]


# --- the hybrid ranking is the old one --------------------------------------------------------------------------

class OldRetriever:
    """The retriever's BM25 plumbing before issue 13 (rank_bm25 rebuilt in memory), kept here as the reference."""

    @staticmethod
    def patch(r):
        from rank_bm25 import BM25Okapi

        from rag import retrieve

        def corpus():
            ids, tok, vocab, texts = [], [], set(), []
            for cid, _, doc in r.store.iter_all(include=("documents",)):
                t = bm25_tokens(doc)
                ids.append(cid)
                tok.append(t or ["_"])
                vocab.update(t)
                texts.append(doc or "")
            return BM25Okapi(tok) if ids else None, ids, sorted(vocab), "\n".join(texts)

        def lexical(question, n):
            bm25, ids, _, _ = corpus()
            tokens = bm25_tokens(question)
            if bm25 is None or not tokens:
                return []
            scores = bm25.get_scores(tokens)
            order = sorted(range(len(ids)), key=lambda i: -scores[i])[:n]
            return [ids[i] for i in order if scores[i] > 0]

        def unknown_names(question):
            _, _, vocab, text = corpus()
            missing = []
            for w in retrieve.salient_words(question):
                if re.fullmatch(r"[A-Z]{2,}s", w):
                    w = w[:-1]
                if re.fullmatch(r"[A-Z]{3,6}", w) and retrieve._spelled_out(w, text, capitals=True):
                    continue
                whole = len(w) >= 3 and w.isupper()
                missing += [t for t in bm25_tokens(w) if not (t.isdigit() or retrieve._has_prefix(vocab, t, whole))]
            return missing

        r._lexical, r.unknown_names = lexical, unknown_names
        return r


def _questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("folder,qa", [(ASSETS / "rag_corpus", ASSETS / "rag_qa.jsonl"),
                                       (DEMO / "knowledge", DEMO / "qa.jsonl")], ids=["test-corpus", "demo"])
def test_hybrid_ranking_is_unchanged(tmp_path, folder, qa):
    from rag.knowledge import KnowledgeBase
    from rag.retrieve import Retriever

    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    kb = KnowledgeBase.from_folder(folder, "kb-same", tmp_path / "chroma")
    kb.index()
    questions = _questions(qa) + ["What does the CFO approve?", "Is the SLA for AWS regions?", "E07 and IP55?"]
    vecs = kb.embedder.embed(questions)
    for top_k, factor in ((4, 0.5), (8, 1.0)):
        new = Retriever(kb.store, kb.embedder, top_k=top_k, hybrid=True, unknown_name_factor=factor)
        old = OldRetriever.patch(Retriever(kb.store, kb.embedder, top_k=top_k, hybrid=True,
                                           unknown_name_factor=factor))
        for q, v in zip(questions, vecs):
            assert new.search(q, qvec=v) == old.search(q, qvec=v), q


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_of_bm25_only_candidates_is_the_same_float(dtype):
    from rag.retrieve import _dots

    rng = np.random.default_rng(3)
    q = rng.standard_normal(384).astype(np.float32).tolist()
    embs = rng.standard_normal((20, 384)).astype(dtype)
    assert _dots(q, embs) == [float(sum(a * b for a, b in zip(q, e))) for e in embs]
    assert _dots(q, np.empty((0, 384))) == []
