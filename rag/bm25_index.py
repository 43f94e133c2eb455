"""Persistent BM25 over a collection's chunks, kept beside the Chroma files and updated incrementally.

Why: the retriever used to rebuild `rank_bm25.BM25Okapi` from every stored document whenever the collection's count
changed and scored a query with a Python loop over all documents: at 100k chunks about 20 s for the rebuild and 0.3 s
a query (bench/rag_latency.py). This index keeps the term counts as a scipy sparse matrix (documents x terms), scores
a query with one vectorised pass over the postings of its terms, and is saved as one .npz file per collection, written
temp-then-rename so a crash leaves the old file or the new one, never half of one.

Scores equal BM25Okapi's (k1=1.5, b=0.75, epsilon=0.25: the same formula, evaluated in the same order, on the same
`bm25_tokens` of each document, a document without tokens counting as the one token "_"), and ties keep the order the
documents were added in, which is the order Chroma lists them: the fused ranking is the same as before."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import sparse

from protege.errors import ProtegeError

K1, B, EPSILON = 1.5, 0.75, 0.25  # BM25Okapi's defaults, which the retriever always used
FORMAT = 1
log = logging.getLogger(__name__)
EMPTY = "_"  # the token of a document without any (the retriever's old `tokens or ["_"]`)
_STOP = set(
    "a an and are as at be by can do does for from how i if in is it its my of on or our so that the their then there "
    "these this to was we what when where which who why will with you your".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def _normalise(word: str) -> str | None:
    """A lower-cased word as a BM25 token: None for a stop word, a crude plural strip (refunds ~ refund)."""
    if word in _STOP:
        return None
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased word tokens without stop words, with a crude plural strip (refunds ~ refund)."""
    return [t for t in map(_normalise, _WORD.findall(text.lower())) if t is not None]


@dataclass(frozen=True)
class _Scorer:
    """What a query needs, derived once per change of the corpus (queries never see a half-updated index)."""

    ids: list[str]
    col: dict[str, int]
    csc: sparse.csc_matrix  # documents x terms, term frequencies
    df: np.ndarray  # documents holding each term
    denom: np.ndarray  # k1 * (1 - b + b * doc_len / avgdl), per document
    eps: float  # the idf floor for terms in more than half the documents
    terms_sorted: list[str]


class Bm25Index:
    """Term counts of every chunk; `version` changes whenever the corpus does (callers key caches on it)."""

    def __init__(self, path: Path | None = None, owner: str = ""):
        self.path = Path(path) if path else None
        self.owner = owner  # the Chroma collection id: a file written for another collection is not ours
        self.version = 0
        self._lock = threading.RLock()
        self._clear()
        self._stat: tuple[int, int] | None = None

    def _clear(self) -> None:
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._terms: list[str] = []
        self._col: dict[str, int] = {}
        self._rows = sparse.csr_matrix((0, 0), dtype=np.int32)
        self._scorer: _Scorer | None = None
        self.version += 1

    @property
    def count(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __contains__(self, cid: str) -> bool:
        return cid in self._row

    # --- changes ------------------------------------------------------------------------------------------------
    def add(self, ids: list[str], documents: list[str]) -> None:
        """Append chunks; an id already indexed is skipped, as Chroma's add skips it."""
        if len(ids) != len(documents):
            raise ProtegeError(f"BM25 index: {len(ids)} ids but {len(documents)} documents")
        with self._lock:
            seen, new_ids, docs = set(self._row), [], []
            for cid, doc in zip(ids, documents):
                if cid not in seen:
                    seen.add(cid)
                    new_ids.append(cid)
                    docs.append(doc or "")
            if not new_ids:
                return
            blocks = [self._block(docs[s:s + 20_000]) for s in range(0, len(docs), 20_000)]  # bounded memory
            width = len(self._terms)
            blocks = [sparse.csr_matrix((b.data, b.indices, b.indptr), shape=(b.shape[0], width)) for b in blocks]
            old = self._rows
            old = sparse.csr_matrix((old.data, old.indices, old.indptr), shape=(old.shape[0], width))
            self._rows = sparse.vstack([old, *blocks], format="csr", dtype=np.int32)
            for cid in new_ids:
                self._row[cid] = len(self._ids)
                self._ids.append(cid)
            self._changed()

    def _block(self, docs: list[str]) -> sparse.csr_matrix:
        """Term counts of `docs` (new terms join the vocabulary). Tokenising word by word in Python is most of the
        cost of indexing, so each distinct word is normalised once and the rest is done by C loops and numpy."""
        raw = [_WORD.findall(d.lower()) for d in docs]
        flat = list(chain.from_iterable(raw))
        col = self._col
        to_col = {}
        for w in dict.fromkeys(flat):  # distinct words, first occurrence first
            t = _normalise(w)
            to_col[w] = -1 if t is None else col.setdefault(t, len(col))
        cols = np.fromiter(map(to_col.__getitem__, flat), np.int64, len(flat))
        rows = np.repeat(np.arange(len(docs)), np.fromiter(map(len, raw), np.int64, len(raw)))
        rows, cols = rows[cols >= 0], cols[cols >= 0]
        empty = np.flatnonzero(np.bincount(rows, minlength=len(docs)) == 0)
        if len(empty):  # a document without tokens counts as the one token "_"
            rows = np.concatenate([rows, empty])
            cols = np.concatenate([cols, np.full(len(empty), col.setdefault(EMPTY, len(col)))])
        self._terms.extend(list(col)[len(self._terms):])  # dicts keep insertion order: the new terms, in order
        ones = np.ones(len(rows), np.int32)
        return sparse.coo_matrix((ones, (rows, cols)), shape=(len(docs), len(self._terms))).tocsr()  # sums repeats

    def remove(self, ids: Iterable[str]) -> None:
        """Drop chunks (unknown ids are ignored, as Chroma's delete ignores them); terms left in no chunk go too."""
        with self._lock:
            gone = {self._row[c] for c in ids if c in self._row}
            if not gone:
                return
            keep = np.setdiff1d(np.arange(len(self._ids)), np.fromiter(gone, np.int64))
            rows = self._rows[keep]
            df = np.bincount(rows.indices, minlength=len(self._terms))
            live = df > 0
            if not live.all():
                remap = np.cumsum(live) - 1
                rows = sparse.csr_matrix((rows.data, remap[rows.indices].astype(np.int32), rows.indptr),
                                         shape=(rows.shape[0], int(live.sum())))
                self._terms = [t for t, ok in zip(self._terms, live) if ok]
                self._col = {t: j for j, t in enumerate(self._terms)}
            self._rows = rows
            self._ids = [self._ids[i] for i in keep]
            self._row = {c: i for i, c in enumerate(self._ids)}
            self._changed()

    def rebuild(self, docs: Iterable[tuple[str, str]]) -> None:
        """Start over from (id, document) pairs, in the order the store lists them."""
        with self._lock:
            self._clear()
            ids, texts = [], []
            for cid, doc in docs:
                ids.append(cid)
                texts.append(doc)
            self.add(ids, texts)

    def _changed(self) -> None:
        self._scorer = None
        self.version += 1

    # --- scoring ------------------------------------------------------------------------------------------------
    def _prepare(self) -> _Scorer:
        with self._lock:
            if self._scorer is None:
                rows = self._rows
                doc_len = np.asarray(rows.sum(axis=1)).ravel().astype(np.int64)
                n = len(self._ids)
                avgdl = int(doc_len.sum()) / n if n else 1.0
                csc = rows.tocsc()
                df = np.diff(csc.indptr)
                live = df > 0  # every term is in some chunk, unless an add failed half-way: BM25Okapi never sees those
                idf = np.log(n - df[live] + 0.5) - np.log(df[live] + 0.5)
                # fsum: exactly rounded whatever the terms' order, so an updated index equals a rebuilt one
                eps = EPSILON * (math.fsum(idf.tolist()) / len(idf)) if len(idf) else 0.0
                denom = K1 * (1 - B + B * doc_len / avgdl)  # the exact expression (and order) of BM25Okapi
                terms = sorted(t for t, ok in zip(self._terms, live) if ok and t != EMPTY)
                self._scorer = _Scorer(list(self._ids), dict(self._col), csc, df, denom, eps, terms)
            return self._scorer

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25Okapi.get_scores(tokens), aligned with `ids` (a repeated token counts twice, as there)."""
        return _score(self._prepare(), tokens)

    def top(self, tokens: list[str], n: int) -> list[str]:
        """Ids of the n best-scoring chunks with a positive score, best first, ties in insertion order: what
        `sorted(range(N), key=-score)[:n]` filtered to score > 0 gave over BM25Okapi."""
        if n <= 0 or not tokens:
            return []
        s = self._prepare()
        scores = _score(s, tokens)
        pos = np.flatnonzero(scores > 0)
        if len(pos) > n:
            cut = np.partition(scores[pos], len(pos) - n)[len(pos) - n]  # the n-th best score
            pos = pos[scores[pos] >= cut]
        order = pos[np.lexsort((pos, -scores[pos]))][:n]
        return [s.ids[i] for i in order]

    def terms(self) -> list[str]:
        """The sorted vocabulary (without the empty-document token), for prefix look-ups."""
        return self._prepare().terms_sorted

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the whole index to `path` through a temporary file in the same folder and an atomic rename."""
        if self.path is None:
            return
        with self._lock:
            rows = self._rows
            arrays = {
                "format": np.asarray([FORMAT], np.int64),
                "owner": _text_array(self.owner),
                "ids": _text_array(json.dumps(self._ids)),
                "terms": _text_array(json.dumps(self._terms)),
                "indptr": rows.indptr.astype(np.int64), "indices": rows.indices.astype(np.int32),
                "data": rows.data.astype(np.int32), "shape": np.asarray(rows.shape, np.int64),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._stat = _stat(self.path)

    def load(self) -> bool:
        """Read `path` if it is there, of this format and this collection; False (index left empty) otherwise.
        A damaged file is not an error: the caller rebuilds from Chroma, which holds the documents."""
        with self._lock:
            self._clear()
            if self.path is None or not self.path.is_file():
                self._stat = None
                return False
            self._stat = _stat(self.path)  # seen, usable or not: not re-read until it changes
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    if int(z["format"][0]) != FORMAT or _array_text(z["owner"]) != self.owner:
                        return False
                    ids, terms = json.loads(_array_text(z["ids"])), json.loads(_array_text(z["terms"]))
                    shape = tuple(int(x) for x in z["shape"])
                    rows = sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated, not ours
                log.warning("BM25 index %s unreadable (%s): rebuilding it", self.path, e)
                return False
            if shape != (len(ids), len(terms)):
                return False
            self._ids, self._terms, self._rows = ids, terms, rows
            self._row = {c: i for i, c in enumerate(ids)}
            self._col = {t: j for j, t in enumerate(terms)}
            self.version += 1
            return True

    def stale_on_disk(self) -> bool:
        """Whether another process rewrote (or removed) the file since this one read or wrote it."""
        if self.path is None:
            return False
        cur = _stat(self.path) if self.path.exists() else None
        return cur != self._stat

    def delete_file(self) -> None:
        with self._lock:
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            self._stat = None
            self._clear()


def _score(s: _Scorer, tokens: list[str]) -> np.ndarray:
    """BM25Okapi's sum over the query tokens, term by term, touching only the documents that hold each term: the
    others add exactly 0 there, so the totals are the same floats."""
    out = np.zeros(len(s.ids))
    n = len(s.ids)
    for t in tokens:
        j = s.col.get(t)
        if j is None:
            continue
        lo, hi = s.csc.indptr[j], s.csc.indptr[j + 1]
        rows, tf = s.csc.indices[lo:hi], s.csc.data[lo:hi].astype(np.float64)
        df = int(s.df[j])
        idf = math.log(n - df + 0.5) - math.log(df + 0.5)  # math.log, as BM25Okapi: the same float
        if idf < 0:
            idf = s.eps
        out[rows] += idf * (tf * (K1 + 1) / (tf + s.denom[rows]))
    return out


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _array_text(a: np.ndarray) -> str:
    return a.tobytes().decode("utf-8")
