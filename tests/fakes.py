"""Test-only fakes that the product never uses."""

from __future__ import annotations

import hashlib
import math


class FakeEmbedder:
    """Deterministic unit vectors from a hash (for /v1/embeddings route tests)."""

    dim = 8
    model_name = "fake-embedder"

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for t in texts:
            h = hashlib.sha256(t.encode()).digest()
            v = [b - 127.5 for b in h[: self.dim]]
            n = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / n for x in v])
        return out
