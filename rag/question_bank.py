"""A bank of example questions and their vectors, for telling what a question is like by the questions it nearly
repeats (rag/off_topic.py: the world's questions; rag/scope.py: an assistant's own examples of what its documents do
and do not answer). The vectors are embedded once per embedder and bank text and kept beside the index: embedding
hundreds of questions costs seconds on 2 cores, reading them back milliseconds."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np


class QuestionBank:
    """The questions `read()` returns, their vectors (embedded at first use or read from `cache_dir`/<name>_vectors.npz)
    and the one nearest to a question."""

    def __init__(self, name: str, read: Callable[[], list[str]], embed: Callable[[list[str]], list[list[float]]],
                 embedder_name: str, cache_dir: Path | None = None):
        self._name, self._read, self._embed, self._embedder = name, read, embed, embedder_name
        self._cache = Path(cache_dir) / f"{name}_vectors.npz" if cache_dir else None
        self._lines: list[str] | None = None
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()

    def nearest(self, qvec: list[float]) -> tuple[float, str]:
        """The cosine of the bank question closest to the (normalised) question vector, and that question; (0.0, "")
        for an empty bank."""
        lines, vectors = self._load()
        if not lines:
            return 0.0, ""
        sims = vectors @ np.asarray(qvec, dtype=vectors.dtype)
        best = int(sims.argmax())
        return float(sims[best]), lines[best]

    def lines(self) -> list[str]:
        """The bank's questions, as read (and embedded) once."""
        return self._load()[0]

    def _load(self) -> tuple[list[str], np.ndarray]:
        with self._lock:
            if self._lines is None:
                lines = self._read()
                digest = hashlib.sha256("\n".join([self._embedder, *lines]).encode()).hexdigest()
                vectors = self._read_cache(digest)
                if vectors is None or len(vectors) != len(lines):
                    vectors = np.asarray(self._embed(lines) if lines else [], dtype=np.float32)
                    self._write_cache(digest, vectors)
                self._lines, self._vectors = lines, vectors
            return self._lines, self._vectors  # type: ignore[return-value]

    def _read_cache(self, digest: str) -> np.ndarray | None:
        if self._cache is None or not self._cache.is_file():
            return None
        try:
            with np.load(self._cache) as held:
                return held["vectors"] if str(held["digest"]) == digest else None
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache is embedded again

    def _write_cache(self, digest: str, vectors: np.ndarray) -> None:
        """Temp file, then rename: a reader never sees half a cache (a failed write only costs the next start)."""
        if self._cache is None or not self._cache.parent.is_dir():
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self._name}.", suffix=".npz", dir=self._cache.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, digest=np.asarray(digest), vectors=vectors)
            os.replace(tmp, self._cache)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
