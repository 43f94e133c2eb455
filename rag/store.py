"""Chroma, embedded (PersistentClient in the assistant's knowledge/ folder) or a server (HttpClient) when
`knowledge.chroma.host` is set. The collection uses cosine space, so a hit's score is 1 - distance, and embeddings are
always passed explicitly: Chroma's default embedding function would try to download a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from protege.errors import ProtegeError, require


@dataclass
class Hit:
    id: str
    text: str
    metadata: dict
    score: float  # cosine similarity clamped to [0, 1]


def make_client(persist_dir: Path | None = None, host: str | None = None, port: int = 8000):
    chromadb = require("chromadb", "rag")
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host:
        try:
            return chromadb.HttpClient(host=host, port=port, settings=settings)
        except Exception as e:
            raise ProtegeError(f"cannot reach the Chroma server at {host}:{port}: {e}") from None
    if persist_dir is None:
        raise ProtegeError("no Chroma folder and no knowledge.chroma.host given")
    Path(persist_dir).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(persist_dir), settings=settings)


class Store:
    """One Chroma collection of chunks; `writes` counts chunks added or deleted by this object (tests read it)."""

    def __init__(self, client, collection: str, embedder_name: str = "", dim: int = 0):
        if len(collection) < 3:
            raise ProtegeError(f"collection name {collection!r}: Chroma needs at least 3 characters")
        self.client = client
        self.name = collection
        meta = {"hnsw:space": "cosine", "embedder": embedder_name or "unknown", "dim": dim}
        try:
            self.col = client.get_or_create_collection(collection, metadata=meta, embedding_function=None)
        except Exception as e:
            raise ProtegeError(f"Chroma collection {collection!r}: {e}") from None
        self.writes = 0

    @property
    def metadata(self) -> dict:
        return dict(self.col.metadata or {})

    def reset(self, embedder_name: str, dim: int) -> None:
        """Drop everything (used when the embedder changed: old vectors are not comparable)."""
        self.client.delete_collection(self.name)
        meta = {"hnsw:space": "cosine", "embedder": embedder_name, "dim": dim}
        self.col = self.client.get_or_create_collection(self.name, metadata=meta, embedding_function=None)

    def count(self) -> int:
        return self.col.count()

    def iter_all(self, include: tuple[str, ...] = ("metadatas",), page: int = 5000) -> Iterator[tuple[str, dict, str]]:
        """(id, metadata, document) of every chunk, paged so a 100k collection is not one giant response."""
        offset = 0
        while True:
            got = self.col.get(include=list(include), limit=page, offset=offset)
            ids = got["ids"]
            if not ids:
                return
            metas = got.get("metadatas") or [None] * len(ids)
            docs = got.get("documents") or [None] * len(ids)
            for i, m, d in zip(ids, metas, docs):
                yield i, dict(m or {}), d or ""
            if len(ids) < page:
                return
            offset += len(ids)

    def _batch(self) -> int:
        try:
            return max(1, min(int(self.client.get_max_batch_size()), 5000))
        except Exception:
            return 1000

    def add(self, ids: list[str], embeddings: list[list[float]], documents: list[str], metadatas: list[dict]) -> None:
        b = self._batch()
        for s in range(0, len(ids), b):
            self.col.add(ids=ids[s:s + b], embeddings=embeddings[s:s + b], documents=documents[s:s + b],
                         metadatas=metadatas[s:s + b])
        self.writes += len(ids)

    def update_metadata(self, ids: list[str], metadatas: list[dict]) -> None:
        b = self._batch()
        for s in range(0, len(ids), b):
            self.col.update(ids=ids[s:s + b], metadatas=metadatas[s:s + b])
        self.writes += len(ids)

    def delete(self, ids: list[str]) -> None:
        b = self._batch()
        for s in range(0, len(ids), b):
            self.col.delete(ids=ids[s:s + b])
        self.writes += len(ids)

    def query(self, embedding: list[float], k: int) -> list[Hit]:
        # no count() round trip first: Chroma returns fewer results (or none) when the collection is smaller than k
        res = self.col.query(query_embeddings=[embedding], n_results=k,
                             include=["documents", "metadatas", "distances"])
        if not res["ids"] or not res["ids"][0]:
            return []
        out = []
        for i, d, m, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0]):
            out.append(Hit(i, d or "", dict(m or {}), min(1.0, max(0.0, 1.0 - float(dist)))))
        return out

