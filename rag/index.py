"""Incremental indexing of a knowledge folder into a Chroma collection.

Every chunk's metadata carries its file's relative path and content hash plus the chunker signature. A file whose
(path, hash, signature) is already stored is not even parsed: an unchanged folder costs one hash per file and writes
nothing. A changed file gets new chunks and loses the old ones that are not among them; a deleted (or now unreadable)
file loses all of its chunks. Chunk ids are sha256(path, chunk text, occurrence of that text in the file), so two
files with the same content stay two sources and a file with a repeated paragraph still has unique ids."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from protege.errors import ProtegeError
from protege.hashing import file_sha256
from rag.chunking import Chunk, Chunker, chunker_signature
from rag.loaders import LoadError, load_file, relpath, walk
from rag.store import Store

log = logging.getLogger(__name__)


def chunk_ids(path: str, chunks: list[Chunk]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for c in chunks:
        text_hash = hashlib.sha256(c.text.encode("utf-8")).hexdigest()
        n = seen.get(text_hash, 0)
        seen[text_hash] = n + 1
        ids.append(hashlib.sha256(f"{path}\0{text_hash}\0{n}".encode()).hexdigest()[:32])
    return ids


def index_folder(folder: Path, store: Store, embedder, chunk_size: int = 200, chunk_overlap: int = 30,
                 progress: bool = False, batch_size: int | None = None, max_bytes: int | None = None,
                 sentences: bool = False) -> dict:
    """Bring the collection in line with the folder; returns the report (see module doc). Files over `max_bytes` are
    skipped with a warning (and lose their chunks, like a deleted file). `sentences`: also keep every chunk's
    sentence vectors (rag/sentence_store.py), filling in those of chunks that lack them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtegeError(f"{folder}: knowledge folder not found")
    t0 = time.perf_counter()
    signature = chunker_signature(chunk_size, chunk_overlap, embedder.name)
    meta = store.metadata
    if meta.get("embedder") not in (None, "unknown", embedder.name) or (meta.get("dim") and meta["dim"] != embedder.dim):
        store.reset(embedder.name, embedder.dim)

    stored: dict[str, dict] = {}  # path -> {"ids": set, "hash": str, "sig": str}
    for cid, m, _ in store.iter_all():
        entry = stored.setdefault(m.get("path", ""), {"ids": set(), "hashes": set(), "sigs": set(), "counts": set()})
        entry["ids"].add(cid)
        entry["hashes"].add(m.get("file_hash"))
        entry["sigs"].add(m.get("chunker"))
        entry["counts"].add(m.get("file_chunks"))

    files, skipped = walk(folder, max_bytes)
    for s in skipped:
        if s["reason"].startswith("too large"):
            log.warning("knowledge file skipped: %s (%s)", folder / s["path"], s["reason"])
    chunker = Chunker(embedder.count_tokens, chunk_size, chunk_overlap)
    report: dict = {"folder": str(folder), "collection": store.name, "added": [], "updated": [], "removed": [],
                    "unchanged": [], "skipped": list(skipped)}
    to_add: list[tuple[str, Chunk, str, str, int]] = []  # (id, chunk, file_hash, path, chunks in the file)
    to_delete: list[str] = []
    to_touch: list[tuple[str, Chunk, str, str, int]] = []  # chunks kept as they were: only their file hash changes
    seen_paths: set[str] = set()
    for p in files:
        rel = relpath(p, folder)
        seen_paths.add(rel)
        old = stored.get(rel)
        try:
            digest = file_sha256(p)
        except OSError as e:
            report["skipped"].append({"path": rel, "reason": f"cannot read: {e.strerror or e}"})
            if old:
                to_delete.extend(old["ids"])
            continue
        if old and old["hashes"] == {digest} and old["sigs"] == {signature} and _whole(old):
            report["unchanged"].append(rel)
            continue
        try:
            chunks = chunker.split(load_file(p, rel))
        except LoadError as e:
            report["skipped"].append({"path": rel, "reason": str(e)})
            if old:
                to_delete.extend(old["ids"])
            continue
        if not chunks:
            report["skipped"].append({"path": rel, "reason": "no text"})
            if old:
                to_delete.extend(old["ids"])
            continue
        ids = chunk_ids(rel, chunks)
        old_ids = old["ids"] if old else set()
        to_delete.extend(old_ids - set(ids))
        for i, c in zip(ids, chunks):
            (to_touch if i in old_ids else to_add).append((i, c, digest, rel, len(chunks)))
        report["updated" if old else "added"].append(rel)
    for rel, old in stored.items():
        if rel not in seen_paths:
            to_delete.extend(old["ids"])
            report["removed"].append(rel)

    store.delete(sorted(set(to_delete)))
    if to_add:
        texts = [c.text for _, c, *_ in to_add]
        vectors = embedder.embed(texts, progress=progress, batch_size=batch_size)
        metas = [_meta(c, digest, signature, n) for _, c, digest, _, n in to_add]
        store.add([i for i, *_ in to_add], vectors, texts, metas)
    if to_touch:
        store.update_metadata([i for i, *_ in to_touch], [_meta(c, d, signature, n) for _, c, d, _, n in to_touch])
    if sentences:
        kept = set().union(*(e["ids"] for e in stored.values())) - set(to_delete)
        report["sentences_added"] = _fill_sentences(store, kept, {i: c.text for i, c, *_ in to_add},
                                                    lambda t: embedder.embed(t, progress=progress, batch_size=batch_size))
    report.update(
        chunks_added=len(to_add), chunks_kept=len(to_touch), chunks_removed=len(set(to_delete)), chunks_total=store.count(),
        writes=store.writes, seconds=round(time.perf_counter() - t0, 3),
    )
    return report


def _fill_sentences(store: Store, kept: set[str], added: dict[str, str], embed) -> int:
    """Write the sentence vectors of the chunks that have none: the new ones, and kept ones from before sentence
    vectors (or from a run killed between the two writes), whose text is read back from the store."""
    have = store.sentences.parents()
    todo = {cid: text for cid, text in added.items() if cid not in have}
    missing = sorted(kept - have - set(added))
    for s in range(0, len(missing), 1000):
        todo.update({cid: text for cid, text, _, _ in store.by_ids(missing[s:s + 1000])})
    return store.sentences.add(list(todo), list(todo.values()), embed) if todo else 0


def _whole(entry: dict) -> bool:
    """All of a file's chunks are stored: a run killed between two add batches left only some (indexes written
    before file_chunks existed carry None and are trusted)."""
    return entry["counts"] == {None} or entry["counts"] == {len(entry["ids"])}


def _meta(c: Chunk, digest: str, signature: str, file_chunks: int) -> dict:
    m = {"path": c.path, "file_hash": digest, "chunker": signature, "ordinal": c.ordinal, "file_chunks": file_chunks}
    if c.section:
        m["section"] = c.section
    if c.page is not None:
        m["page"] = c.page
    return m


def write_report(report: dict, folder: Path) -> Path:
    from protege.config_file import atomic_write_text

    path = Path(folder) / "index_report.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return path
