"""Exact search of small collections (rag/exact.py) against the real embedded Chroma: the same nearest chunks as a
numpy search over the stored vectors, writes by another Store (another process) seen, large collections left to
HNSW."""

from __future__ import annotations

import numpy as np
import pytest

from rag import exact
from rag.store import Store, make_client

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _add(store: Store, lo: int, hi: int, seed: int = 1) -> np.ndarray:
    v = _vectors(hi, seed)[lo:hi]
    store.add([f"c{i}" for i in range(lo, hi)], v, [f"chunk {i} text" for i in range(lo, hi)],
              [{"path": f"f{i % 3}.md"} for i in range(lo, hi)])
    return v


def _exact_top(vecs: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> list[str]:
    return [ids[i] for i in np.argsort(-(vecs @ q), kind="stable")[:k]]


def test_a_small_collection_is_searched_exactly_and_sees_another_writers_chunks(tmp_path):
    store = Store(make_client(tmp_path), "kb-exact", "emb", DIM)
    store.db_settle_s = 0.0  # trust the files' signature at once (the test writes and reads within a second)
    store._exact.settle_s = 0.0
    vecs = _add(store, 0, 300)
    ids = [f"c{i}" for i in range(300)]
    for q in _vectors(25, 7):
        assert [cid for cid, _, _ in store._exact.search(q, 8)] == _exact_top(vecs, ids, q, 8)  # not HNSW's
        hits = store.query(q.tolist(), 8)
        assert [h.id for h in hits] == _exact_top(vecs, ids, q, 8)
        best = float(vecs[int(hits[0].id[1:])] @ q)
        assert hits[0].text == f"chunk {hits[0].id[1:]} text" and hits[0].score == pytest.approx(best, abs=1e-6)
    # another process adds chunks: the next query reads the vectors again (the database files changed)
    other = Store(make_client(tmp_path), "kb-exact", "emb", DIM)
    more = _add(other, 300, 340, seed=2)
    q = more[5]  # the new chunk c305 is its own nearest
    assert store.query(q.tolist(), 1)[0].id == "c305"
    other.delete(["c305"])
    assert store.query(q.tolist(), 1)[0].id != "c305"


def test_past_max_rows_the_collection_is_left_to_hnsw(tmp_path):
    store = Store(make_client(tmp_path), "kb-hnsw", "emb", DIM)
    store._exact.max_rows, store._exact.settle_s = 50, 0.0
    _add(store, 0, 60)
    assert store._exact.search(_vectors(1, 3)[0], 4) is None
    assert len(store.query(_vectors(1, 3)[0].tolist(), 4)) == 4  # Chroma's own HNSW answers


def test_a_server_is_left_to_hnsw():
    idx = exact.ExactIndex(col=None, signature=lambda: None)
    assert idx.search(np.ones(DIM, dtype=np.float32), 3) is None
