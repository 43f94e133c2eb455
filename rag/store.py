"""Chroma, embedded (PersistentClient in the assistant's knowledge/ folder) or a server (HttpClient) when
`knowledge.chroma.host` is set. The collection uses cosine space, so a hit's score is 1 - distance, and embeddings are
always passed explicitly: Chroma's default embedding function would try to download a model.

HNSW parameters (HNSW_PARAMS) are set when a collection is created; a collection created before keeps the ones it was
made with (Chroma ignores new creation metadata on an existing collection), so it opens as it always did, with the
old recall, until it is rebuilt (`reset`, or deleting the knowledge folder and indexing again).

Beside the collection lives its BM25 index (rag/bm25_index.py): `bm25-<collection>.npz` in the Chroma folder, kept in
step by add/delete, rebuilt from the stored documents whenever its count disagrees with the collection's. With a
Chroma server it is kept in memory only (rebuilt once per process).

A chunk's text is stored in its metadata (TEXT), not as Chroma's document: embedded Chroma builds a trigram FTS5
index over every document (and ignores a Schema that deletes it, checked on 1.5.9), which we never query (text search
is the BM25 index), and which took about a third of an add (20k chunks: 885 -> 1,267 per second without it). Rows
written before keep their text as the document; reads take either (_unpack)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from protege.errors import ProtegeError, require
from rag.bm25_index import Bm25Index
from rag.exact import ExactIndex, settled

log = logging.getLogger(__name__)

# Set on new collections; Chroma's defaults (the collections made before) are M=16, construction_ef=100,
# search_ef=100 (an old collection's search_ef is raised when it is opened: _raise_search_ef). bench/rag_latency.py
# at 100k synthetic chunks: recall@4 of the dense top-4 against an exact search 0.38 with the defaults; with M=24 it
# is 0.89 / 0.93 / 0.96 / 0.99 at search_ef 600 / 1000 / 1500 / 2500, for a Chroma query of about 11 / 13 / 15 / 19 ms
# (M=16 needs a larger search_ef for the same recall, M only changed the add rate within the noise: Chroma's own
# SQLite writes, not HNSW, bound it). construction_ef 200 gave 0.96 at search_ef 1000 (0.94 with 100) but made the
# HNSW part of an add 1.5x slower at 100k (190 against 278 vectors/s without documents, load 7-9): not worth it.
# batch_size and sync_threshold stay Chroma's: a sync_threshold above the collection's size means the HNSW file is
# never written and every process start replays the whole log (21 s per 30k chunks here), and larger values gave no
# measurable add-rate gain.
HNSW_PARAMS = {"hnsw:M": 24, "hnsw:construction_ef": 100, "hnsw:search_ef": 1500}


TEXT = "chunk_text"  # the metadata key that holds a chunk's text (see the module doc)


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
    """One Chroma collection of chunks; `writes` counts chunks added or deleted by this object (tests read it).

    `bm25_recheck_s`: how often bm25() asks Chroma for the count to notice writers other than this object; this
    object's own writes are seen at once. A count costs ~9 ms at 100k chunks (a query's budget is tens, and one query
    in ten paid it: the p95), so with an embedded Chroma it is skipped while the database file is untouched since a
    count that agreed (reads never write it; see _db_signature)."""

    bm25_recheck_s = 1.0
    db_settle_s = 2.0  # a file signature is trusted only once its mtime is this old (coarse clocks, a write under way)

    def __init__(self, client, collection: str, embedder_name: str = "", dim: int = 0):
        if len(collection) < 3:
            raise ProtegeError(f"collection name {collection!r}: Chroma needs at least 3 characters")
        self.client = client
        self.name = collection
        self.writes = 0
        self._bm25: Bm25Index | None = None
        self._bm25_lock = threading.RLock()
        self._bm25_checked = -1e18  # time.monotonic() of the last count comparison
        self._db_files = _db_files(client)
        self._db_seen: tuple | None = None  # the database's signature when the count last agreed, if settled
        self._sentences = None
        try:
            self._open(_meta(embedder_name or "unknown", dim))
        except Exception as e:
            raise ProtegeError(f"Chroma collection {collection!r}: {e}") from None
        _raise_search_ef(self.col)

    def _open(self, metadata: dict) -> None:
        """The collection, and its exact search, which holds the collection it reads."""
        self.col = self.client.get_or_create_collection(self.name, metadata=metadata, embedding_function=None)
        self._exact = ExactIndex(self.col, self._db_signature, self.db_settle_s)

    @property
    def sentences(self):
        """The chunks' sentence vectors (rag/sentence_store.py), in their own collection; opened on first use."""
        if self._sentences is None:
            from rag.sentence_store import SentenceStore

            self._sentences = SentenceStore(self.client, self.name, self.col.metadata or {}, self._db_signature)
        return self._sentences

    def _stored_sentences(self):
        """The sentence collection if there is one: deleting chunks or resetting an index without sentence vectors
        must not create an empty one."""
        if self._sentences is None:
            from chromadb.errors import NotFoundError

            from rag.sentence_store import name_for

            try:
                self.client.get_collection(name_for(self.name), embedding_function=None)
            except (NotFoundError, ValueError):  # ValueError: older Chroma clients
                return None
        return self.sentences

    @property
    def metadata(self) -> dict:
        return dict(self.col.metadata or {})

    def reset(self, embedder_name: str, dim: int) -> None:
        """Drop everything (used when the embedder changed: old vectors are not comparable)."""
        self.client.delete_collection(self.name)
        self._open(_meta(embedder_name, dim))
        if (sentences := self._stored_sentences()) is not None:
            sentences.reset(_meta(embedder_name, dim))
        with self._bm25_lock:
            self._bm25_index().delete_file()
            # the next index is the new collection's (its file names it)
            self._bm25, self._bm25_checked, self._db_seen = None, -1e18, None

    def count(self) -> int:
        return self.col.count()

    def iter_all(self, include: tuple[str, ...] = ("metadatas",), page: int = 5000) -> Iterator[tuple[str, dict, str]]:
        """(id, metadata, document) of every chunk, paged so a 100k collection is not one giant response."""
        return iter_collection(self.col, include, page)

    def _batch(self) -> int:
        try:
            return max(1, min(int(self.client.get_max_batch_size()), 5000))
        except Exception:
            return 1000

    def add(self, ids: list[str], embeddings, documents: list[str], metadatas: list[dict]) -> None:
        """`embeddings`: a list of vectors or a 2-D numpy array (no conversion to lists needed)."""
        with self._bm25_lock:
            bm25 = self._bm25_in_step()
            # the next bm25() compares counts (and rebuilds if a write below failed)
            self._bm25_checked, self._db_seen = -1e18, None
            b = self._batch()
            for s in range(0, len(ids), b):
                self.col.add(ids=ids[s:s + b], embeddings=embeddings[s:s + b],
                             metadatas=[{**m, TEXT: d} for m, d in zip(metadatas[s:s + b], documents[s:s + b])])
            self.writes += len(ids)
            if bm25 is not None:
                bm25.add(ids, documents)
                bm25.save()

    def update_metadata(self, ids: list[str], metadatas: list[dict]) -> None:
        b = self._batch()
        for s in range(0, len(ids), b):
            self.col.update(ids=ids[s:s + b], metadatas=metadatas[s:s + b])
        self.writes += len(ids)

    def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        with self._bm25_lock:
            bm25 = self._bm25_in_step()
            self._bm25_checked, self._db_seen = -1e18, None
            b = self._batch()
            for s in range(0, len(ids), b):
                self.col.delete(ids=ids[s:s + b])
            self.writes += len(ids)
            if (sentences := self._stored_sentences()) is not None:  # after the chunks: a sentence left behind is
                sentences.delete(ids)  # ignored, a chunk is not
            if bm25 is not None:
                bm25.remove(ids)
                bm25.save()

    # --- BM25 -----------------------------------------------------------------------------------------------------
    def bm25(self) -> Bm25Index:
        """The collection's BM25 index, in step with Chroma: read from its file on first use (or when another process
        rewrote it), rebuilt from the stored documents when its count is not the collection's (first use after an
        upgrade, a crash between the Chroma write and the index write, a writer that is not this Store)."""
        with self._bm25_lock:
            now = time.monotonic()
            idx = self._bm25
            if idx is not None and not idx.stale_on_disk() and (
                    now - self._bm25_checked < self.bm25_recheck_s
                    or (self._db_seen is not None and self._db_seen == self._db_signature())):
                return idx
            sig = self._db_signature()  # read before the count: a write after it changes the signature
            idx = self._bm25_in_step()
            if idx is None:
                idx = self._bm25_index()
                idx.rebuild((cid, doc) for cid, _, doc in self.iter_all(include=("documents",)))
                idx.save()
            self._bm25_checked = now
            self._db_seen = sig if settled(sig, self.db_settle_s) else None
            return idx

    def _db_signature(self) -> tuple | None:
        """(mtime, size, inode) of the embedded Chroma's database files (None for a server): any write by any
        process changes it, Chroma's reads leave it alone (checked on chromadb 1.5)."""
        if not self._db_files:
            return None
        out = []
        for f in self._db_files:
            try:
                st = f.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append((0, -1, 0))
        return tuple(out)

    def _bm25_index(self) -> Bm25Index:
        if self._bm25 is None:
            self._bm25 = Bm25Index(_bm25_path(self.client, self.name), owner=str(self.col.id))
            self._bm25.load()
        return self._bm25

    def _bm25_in_step(self) -> Bm25Index | None:
        """The index if it holds exactly as many chunks as the collection (else None: rebuild before trusting it)."""
        idx = self._bm25_index()
        if idx.stale_on_disk():
            idx.load()
        return idx if idx.count == self.count() else None

    def query(self, embedding: list[float], k: int) -> list[Hit]:
        """The k nearest chunks: exactly for a small embedded collection (rag/exact.py), else by HNSW."""
        exact = self._exact.search(embedding, k)
        if exact is not None:
            found = self.by_ids([cid for cid, _, _ in exact]) if exact else []
            rows = {cid: (text, meta) for cid, text, meta, _ in found}
            return [Hit(cid, *rows[cid], min(1.0, max(0.0, cos))) for cid, _, cos in exact if cid in rows]
        # no count() round trip first: Chroma returns fewer results (or none) when the collection is smaller than k
        res = self.col.query(query_embeddings=[embedding], n_results=k,
                             include=["documents", "metadatas", "distances"])
        if not res["ids"] or not res["ids"][0]:
            return []
        out = []
        for i, d, m, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0]):
            out.append(Hit(i, *_unpack(d, m), min(1.0, max(0.0, 1.0 - float(dist)))))
        return out

    def by_ids(self, ids: list[str], vectors: bool = False) -> list[tuple[str, str, dict, list[float] | None]]:
        """(id, text, metadata, stored vector or None) of these chunks, those that exist, in one call."""
        res = self.col.get(ids=ids, include=["documents", "metadatas", *(["embeddings"] if vectors else [])])
        embs = res.get("embeddings") if vectors else None
        return [(cid, *_unpack(d, m), embs[n] if embs is not None else None)
                for n, (cid, d, m) in enumerate(zip(res["ids"], res["documents"], res["metadatas"]))]


def iter_collection(col, include: tuple[str, ...] = ("metadatas",),
                    page: int = 5000) -> Iterator[tuple[str, dict, str]]:
    """(id, metadata, document) of every record of a Chroma collection, read a page at a time."""
    offset = 0
    if "documents" in include and "metadatas" not in include:  # a text may be in the metadata (TEXT)
        include = (*include, "metadatas")
    while True:
        got = col.get(include=list(include), limit=page, offset=offset)
        ids = got["ids"]
        if not ids:
            return
        metas = got.get("metadatas") or [None] * len(ids)
        docs = got.get("documents") or [None] * len(ids)
        for i, m, d in zip(ids, metas, docs):
            text, meta = _unpack(d, m)
            yield i, meta, text
        if len(ids) < page:
            return
        offset += len(ids)


def _unpack(document: str | None, metadata: dict | None) -> tuple[str, dict]:
    """(text, metadata without TEXT) of a stored row: the text is the document for rows written before TEXT."""
    meta = dict(metadata or {})
    text = meta.pop(TEXT, None)
    return (document if document is not None else text) or "", meta


def _raise_search_ef(col) -> None:
    """A collection made before HNSW_PARAMS (Chroma's search_ef 100: recall@4 0.38 at 100k chunks) gets this tree's
    search_ef: of the HNSW settings only the search-time ones can change after creation (M and construction_ef stay
    until the knowledge is re-indexed from scratch). Chroma versions without `configuration` are left as they are."""
    want = HNSW_PARAMS["hnsw:search_ef"]
    try:
        hnsw = (getattr(col, "configuration", None) or {}).get("hnsw") or {}
        if isinstance(hnsw.get("ef_search"), int) and hnsw["ef_search"] < want:
            col.modify(configuration={"hnsw": {"ef_search": want}})
    except Exception as e:  # a read-only or older server: the collection still works, only slower to recall
        log.warning("could not raise search_ef of Chroma collection %r to %d: %s", col.name, want, e)


def _meta(embedder_name: str, dim: int) -> dict:
    return {"hnsw:space": "cosine", **HNSW_PARAMS, "embedder": embedder_name, "dim": dim}


def _persist_dir(client) -> Path | None:
    """The folder of an embedded Chroma; None for a Chroma server."""
    try:
        settings = client.get_settings()
    except Exception:
        return None
    if not getattr(settings, "is_persistent", False) or not getattr(settings, "persist_directory", None):
        return None
    return Path(settings.persist_directory)


def _bm25_path(client, collection: str) -> Path | None:
    """bm25-<collection>.npz in the folder of an embedded Chroma; None (memory only) for a Chroma server."""
    folder = _persist_dir(client)
    return folder / f"bm25-{collection}.npz" if folder else None


def _db_files(client) -> list[Path]:
    """The SQLite files an embedded Chroma writes (its journal mode may be WAL: then the -wal file changes first)."""
    folder = _persist_dir(client)
    return [folder / "chroma.sqlite3", folder / "chroma.sqlite3-wal"] if folder else []
