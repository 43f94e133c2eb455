"""The baseline of bench/rag_latency.py: retrieval as it was before issue 13 (Chroma's default HNSW, every add at
Chroma's max batch, BM25Okapi rebuilt in memory from every document whenever the count changes, no exact search of
small collections, no query expansion), over the same rag.retrieve.Retriever fusion, so only the plumbing differs."""

from __future__ import annotations

import re


def legacy_retriever(store, emb, **kw):
    """Retriever with the pre-issue-13 BM25 plumbing: BM25Okapi rebuilt from every document when the count changes,
    scored by a Python pass over all documents."""
    from rank_bm25 import BM25Okapi

    from rag import retrieve

    class Legacy(retrieve.Retriever):
        _key = _corpus_cache = None

        def _corpus(self):
            key = self.store.count()
            if self._corpus_cache is None or self._key != key:
                ids, tok, vocab, text = [], [], set(), []
                for cid, _, doc in self.store.iter_all(include=("documents",)):
                    t = retrieve.bm25_tokens(doc)
                    ids.append(cid)
                    tok.append(t or ["_"])
                    vocab.update(t)
                    text.append((doc or "").lower())
                self._corpus_cache = (BM25Okapi(tok) if ids else None, ids, sorted(vocab), "\n".join(text))
                self._key = key
            return self._corpus_cache

        def unknown_names(self, question):
            _, _, vocab, text = self._corpus()
            missing = []
            for w in retrieve.salient_words(question):
                if re.fullmatch(r"[A-Z]{2,}s", w):
                    w = w[:-1]
                if re.fullmatch(r"[A-Z]{3,6}", w) and retrieve._spelled_out(w, text):
                    continue
                missing += [t for t in retrieve.bm25_tokens(w)
                            if not (t.isdigit() or retrieve._has_prefix(vocab, t))]
            return missing

        def _lexical(self, question, n):  # the fusion itself is the same: only the BM25 plumbing differs
            bm25, ids, _, _ = self._corpus()
            tokens = retrieve.bm25_tokens(question)
            if bm25 is None or not tokens:
                return []
            scores = bm25.get_scores(tokens)
            return [ids[i] for i in sorted(range(len(ids)), key=lambda i: -scores[i])[:n] if scores[i] > 0]

        def expand(self, question):  # no query expansion then (and this tree's BM25 index is never built for it)
            return question

    return Legacy(store, emb, **kw)


def legacy_add(col, ids, vecs, docs, metas) -> None:
    """The old Store.add: Chroma's max batch (capped at 5000), embeddings as lists."""
    for s in range(0, len(ids), 5000):
        col.add(ids=ids[s:s + 5000], embeddings=vecs[s:s + 5000].tolist(), documents=docs[s:s + 5000],
                metadatas=metas[s:s + 5000])



def legacy_store(client, name: str, col):
    """A Store over an existing collection as it is: this tree's BM25 file is never touched, and there is no exact
    search (the baseline predates rag/exact.py)."""
    from rag.store import Store

    class NoExact:
        def search(self, embedding, k):
            return None

    class Old(Store):
        def __init__(self):
            self.client, self.name, self.col, self.writes, self._exact = client, name, col, 0, NoExact()

    return Old()
