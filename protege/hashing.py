"""File hashing, in one place: SHA-256 of a file's bytes, read in 1 MiB blocks.

`update_file` feeds a running hash (the build's stage keys hash many files into one), `file_sha256` is one file's hex
digest (the knowledge index's per-file hash), `cached_file_sha256` the same remembered by (path, size, mtime) for
files read again and again that change only when rewritten (the served GGUF's digest, like Ollama's).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def update_file(h: Any, path: Path) -> None:
    """Feed the bytes of `path` to the hash object `h` (hashlib's interface)."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    h = hashlib.sha256()
    update_file(h, path)
    return h.hexdigest()


def cached_file_sha256(path: Path) -> str:
    """`file_sha256`, computed once per (resolved path, size, mtime_ns): a rewritten file is hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(key)
    if hit is None:
        hit = file_sha256(path)
        with _lock:
            for old in [k for k in _cache if k[0] == key[0]]:  # keep one entry per path
                del _cache[old]
            _cache[key] = hit
    return hit
