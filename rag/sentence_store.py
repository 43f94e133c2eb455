"""Sentence vectors: every chunk's sentences embedded one by one, in a second Chroma collection beside the chunks'.

Why: a 200-token chunk holds many facts, and its one vector is the average of them; a question about one of them
("what number do I dial to talk to a human?") is far from that average but close to the one sentence that answers it
("Phone: +1 902 555 0142"). A chunk's dense score is the better of its own cosine and its best sentence's
(small-to-big retrieval: sentences are searched, their chunk is what is returned). On the dev questions, dense only:
right source in the top 3 on qa_dev2 0.979 -> 1.0, on train_qa 0.945 -> 0.986; at the threshold that refuses as many
trap questions, 0.947 -> 0.979 of the in-domain ones pass the gate.

Each record is one sentence, id "<chunk id>:<n>", metadata {"parent": chunk id}. The chunks' collection stays the
source of truth: a sentence whose chunk is gone is ignored at query time, and a chunk without sentences (an index
written before sentence vectors, or a run killed between the two writes) is still found by its own vector; the next
`index` fills its sentences in (rag/index.py _fill_sentences, from parents())."""

from __future__ import annotations

from typing import Iterable

from rag.exact import ExactIndex
from rag.sentences import embedded_sentences

SUFFIX = "-sentences"


def name_for(collection: str) -> str:
    """The sentence collection beside the chunks' collection `collection`."""
    return f"{collection}{SUFFIX}"[:512]


class SentenceStore:
    def __init__(self, client, collection: str, metadata: dict, signature=lambda: None):
        """`signature`: the embedded database files' signature (Store._db_signature; None for a server), which
        tells the exact search of a small collection (rag/exact.py) when to read the vectors again."""
        self.client, self.name, self.signature = client, name_for(collection), signature
        self._open(metadata)

    def _open(self, metadata: dict) -> None:
        """The collection, and its exact search, which holds the collection it reads. It is made with this tree's
        HNSW parameters, and an older one searches with this tree's search_ef, whatever its chunk collection (made
        before HNSW_PARAMS, or by an older tree) says: above the exact search's limit, Chroma's default search_ef
        loses most of the nearest sentences."""
        from rag.store import HNSW_PARAMS, _raise_search_ef

        self.col = self.client.get_or_create_collection(self.name, metadata={**metadata, **HNSW_PARAMS},
                                                        embedding_function=None)
        _raise_search_ef(self.col)
        self._exact = ExactIndex(self.col, self.signature, key="parent")

    def count(self) -> int:
        return self.col.count()

    def reset(self, metadata: dict) -> None:
        self.client.delete_collection(self.name)
        self._open(metadata)

    def add(self, chunk_ids: list[str], chunk_texts: list[str], embed, batch: int = 1000) -> int:
        """Embed and store the sentences of these chunks, which have none stored (rag/index.py passes new chunks and
        those missing from parents()); returns how many were written. A write call never splits one chunk's
        sentences, so a run cut between two calls leaves each chunk with all of its sentences or none, and the next
        `index` fills in the ones with none."""
        groups = [[(f"{cid}:{n}", s) for n, s in enumerate(embedded_sentences(text))]
                  for cid, text in zip(chunk_ids, chunk_texts)]
        texts = [s for g in groups for _, s in g]
        if not texts:
            return 0
        vectors, at = embed(texts), 0
        ids: list[str] = []
        metas: list[dict] = []
        for n, (cid, g) in enumerate(zip(chunk_ids, groups), start=1):
            ids += [i for i, _ in g]
            metas += [{"parent": cid}] * len(g)
            if ids and (len(ids) >= batch or n == len(groups)):
                self.col.add(ids=ids, embeddings=vectors[at:at + len(ids)], metadatas=metas)
                at, ids, metas = at + len(ids), [], []
        return len(texts)

    def delete(self, chunk_ids: Iterable[str], batch: int = 500) -> None:
        chunk_ids = list(chunk_ids)
        for s in range(0, len(chunk_ids), batch):
            self.col.delete(where={"parent": {"$in": chunk_ids[s:s + batch]}})

    def parents(self) -> set[str]:
        """The chunks that have sentences stored."""
        from rag.store import iter_collection

        return {str(m.get("parent", "")) for _, m, _ in iter_collection(self.col)} - {""}

    def best(self, embedding: list[float], k: int) -> dict[str, float]:
        """The k nearest sentences' cosines, as the best per chunk id (ordered best first)."""
        if k <= 0:
            return {}
        exact = self._exact.search(embedding, k)
        if exact is not None:
            nearest = [(parent, cos) for _, parent, cos in exact]
        else:
            res = self.col.query(query_embeddings=[embedding], n_results=k, include=["metadatas", "distances"])
            nearest = [(str((m or {}).get("parent", "")), 1.0 - float(dist))
                       for m, dist in zip((res["metadatas"] or [[]])[0], (res["distances"] or [[]])[0])]
        out: dict[str, float] = {}
        for parent, cos in nearest:  # nearest first: a chunk's first sentence is its best
            if parent and parent not in out:
                out[parent] = min(1.0, max(0.0, cos))
        return out
