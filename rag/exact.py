"""Exact cosine search over a small Chroma collection's vectors, held in memory.

Why: an embedded Chroma writes a collection's HNSW graph to disk only past its sync_threshold (1,000 records); below
it the graph is rebuilt at every process start, with fresh random level draws, so the same question could rank
differently from one run to the next: on the demo's 443 sentence vectors, the 20 nearest differed from an exact search
for 1 of 20 dev questions in one process and for none in the next. A knowledge base of a few thousand chunks is
searched exactly as fast (a 20k x 384 float32 product is ~2 ms), and always the same: answers are reproducible.
Past MAX_ROWS the collection is left to HNSW (its recall at 100k is in rag/store.py).

The vectors are read again whenever the database files' signature changes (any write by any process), and only kept
once that signature has settled (the Store's BM25 check uses the same rule). A Chroma server (no files) is always
left to HNSW."""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

MAX_ROWS = 20_000


def settled(signature: tuple | None, settle_s: float) -> bool:
    """A database files' signature ((mtime_ns, size, inode) per file) can be trusted: its newest mtime is settle_s
    old, so a write in the same clock tick would already show (the Store's BM25 check and the exact search)."""
    return signature is not None and time.time_ns() - max(m for m, _, _ in signature) > settle_s * 1e9


class ExactIndex:
    def __init__(self, col, signature: Callable[[], tuple | None], settle_s: float = 2.0,
                 max_rows: int = MAX_ROWS, key: str | None = None):
        self.col, self.signature, self.settle_s, self.max_rows = col, signature, settle_s, max_rows
        self.key = key  # a metadata field kept with each vector (the sentence store's "parent")
        self._lock = threading.Lock()
        self._sig: tuple | None = None
        self._data: tuple[list[str], list[str], np.ndarray] | None = None  # ids, key values, vectors; None: HNSW

    def search(self, qvec, k: int) -> list[tuple[str, str, float]] | None:
        """The k nearest records as (id, key value or "", cosine), best first (ties: the store's order); None when
        the collection is to be searched by HNSW instead (a server, or more than max_rows records)."""
        data = self._load()
        if data is None:
            return None
        ids, keys, mat = data
        sims = mat @ np.asarray(qvec, dtype=np.float32) if ids else np.zeros(0, dtype=np.float32)
        return [(ids[i], keys[i] if keys else "", float(sims[i])) for i in np.argsort(-sims, kind="stable")[:k]]

    def _load(self) -> tuple[list[str], list[str], np.ndarray] | None:
        sig = self.signature()
        if sig is None:
            return None
        with self._lock:
            if sig == self._sig:
                return self._data
            data = None
            if self.col.count() <= self.max_rows:
                got = self.col.get(include=["embeddings", *(["metadatas"] if self.key else [])])
                ids = list(got["ids"])
                keys = [str((m or {}).get(self.key, "")) for m in got["metadatas"]] if self.key else []
                mat = (np.asarray(got["embeddings"], dtype=np.float32).reshape(len(ids), -1) if ids
                       else np.zeros((0, 0), dtype=np.float32))
                data = (ids, keys, mat)
            self._data = data
            self._sig = sig if settled(sig, self.settle_s) else None
            return data
