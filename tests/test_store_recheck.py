"""rag/store.py: bm25() skips Chroma's count (~9 ms at 100k chunks, paid by one query in ten before) while the
embedded database file is untouched since a count that agreed, and still notices another writer."""

from __future__ import annotations

import time

import numpy as np

from rag.store import Store, make_client

DIM = 8


def _add(col, lo: int, hi: int) -> None:
    v = np.random.default_rng(lo).standard_normal((hi - lo, DIM)).astype(np.float32)
    col.add(ids=[f"c{i}" for i in range(lo, hi)], embeddings=v / np.linalg.norm(v, axis=1, keepdims=True),
            documents=[f"pump valve chunk{i}" for i in range(lo, hi)], metadatas=[{"path": "x.md"}] * (hi - lo))


def _counting(store: Store) -> list[int]:
    calls: list[int] = []
    count = store.count
    store.count = lambda: (calls.append(1), count())[1]
    return calls


def test_an_untouched_database_is_not_counted_and_another_writer_is_seen(tmp_path):
    store = Store(make_client(tmp_path), "kb-quiet", "emb", DIM)
    store.add([f"c{i}" for i in range(20)], np.eye(20, DIM, dtype=np.float32) + 0.1,
              [f"pump chunk{i}" for i in range(20)], [{"path": "x.md"}] * 20)
    store.bm25_recheck_s, store.db_settle_s = 0, 0  # every call may recheck; any signature counts as settled
    calls = _counting(store)
    assert store.bm25().count == 20 and calls == [1]  # first check after our own write: counted
    for _ in range(5):
        assert store.bm25().count == 20
    assert calls == [1]  # the file did not change: no more counts

    time.sleep(0.05)  # past a coarse file clock's tick (the default db_settle_s covers that in use)
    other = Store(make_client(tmp_path), "kb-quiet", "emb", DIM)  # another writer, behind this Store's back
    _add(other.col, 20, 23)
    idx = store.bm25()
    assert calls == [1, 1] and idx.count == 23 and idx.top(["chunk21"], 4) == ["c21"]


def test_a_recently_written_database_is_still_counted_every_recheck(tmp_path):
    store = Store(make_client(tmp_path), "kb-busy", "emb", DIM)
    _add(store.col, 0, 5)
    store.bm25_recheck_s = 0
    store.db_settle_s = 3600  # the file's mtime is never old enough to trust
    calls = _counting(store)
    for _ in range(3):
        assert store.bm25().count == 5
    assert len(calls) == 3


def test_a_server_client_has_no_signature():
    from rag.store import _db_files

    class Server:
        def get_settings(self):
            raise RuntimeError("no settings over HTTP")

    assert _db_files(Server()) == []
