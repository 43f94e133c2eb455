"""Sentence vectors (rag/sentence_store.py): every chunk's sentences embedded one by one; a chunk scores as the better of
its own cosine and its best sentence's. Real parts: the packaged embedder and an embedded Chroma in tmp_path."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "captain-byte"

# one chunk of many facts: a question about one of them is far from the chunk's average
FACTS = """# Harbor Office Guide

## Practical matters
The office opens at 08:00 and closes at 18:00 on weekdays. Visitors sign in at the front desk on the ground floor.
The kitchen has free coffee and tea for everyone. Bicycles go in the basement rack, never in the corridors.
The fire assembly point is the car park across the road. Parcels for staff are kept at the front desk for a week.
The emergency phone line for the building manager is +1 902 555 0199.
"""


@pytest.fixture(scope="module")
def embedder():
    from rag.embed import default_embedder

    return default_embedder()


def _kb(folder: Path, persist: Path, name: str | None = None, **overrides):
    from rag.knowledge import KnowledgeBase

    return KnowledgeBase.from_folder(folder, name or "sv-" + uuid.uuid4().hex[:8], persist, **overrides)


def _two_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "office.md").write_text(FACTS)
    (docs / "pets.txt").write_text("Pet policy\n\nDogs are welcome in the office on Fridays. Cats stay at home.\n")
    return docs


def _sentence_rows(kb) -> dict[str, str]:
    got = kb.store.sentences.col.get(include=["metadatas"])
    return {i: m["parent"] for i, m in zip(got["ids"], got["metadatas"])}


def test_a_chunk_scores_as_its_best_sentence(tmp_path, embedder):
    from rag.sentences import embedded_sentences

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "office.md").write_text(FACTS)
    kb = _kb(tmp_path / "docs", tmp_path / "chroma", hybrid=False, min_score=0.0)
    report = kb.index()
    assert report["chunks_total"] == 1
    (cid, _, text), = kb.store.iter_all(include=("metadatas", "documents"))
    sentences = embedded_sentences(text)
    assert len(sentences) == 7 and sentences[0].startswith("Harbor Office Guide > Practical matters: The office opens")
    assert report["sentences_added"] == 7 and set(_sentence_rows(kb).values()) == {cid}

    q = "What number do I ring to reach the building manager in an emergency?"
    qv = embedder.embed_query(q)
    chunk_cos = kb.store.query(qv, 1)[0].score
    best_sentence = max(float(sum(a * b for a, b in zip(qv, v))) for v in embedder.embed(sentences))
    assert best_sentence > chunk_cos + 0.1  # the one fact is much closer than the chunk's average
    kb.retriever.sentences = True
    assert kb.search(q)[0].score == pytest.approx(best_sentence, abs=1e-4)
    kb.retriever.sentences = False
    assert kb.search(q)[0].score == pytest.approx(chunk_cos, abs=1e-4)


def test_sentences_follow_their_chunks_and_are_filled_in_for_an_older_index(tmp_path, embedder):
    docs = _two_docs(tmp_path)
    old = _kb(docs, tmp_path / "chroma", "sv-older", sentence_vectors=False)
    first = old.index()
    assert "sentences_added" not in first and old.store.sentences.count() == 0
    # an index from before sentence vectors: served from its chunk vectors alone, its sentences written by the next
    # index run without touching a chunk
    kb = _kb(docs, tmp_path / "chroma", "sv-older")
    assert kb.search("Can I bring my dog?")[0].path == "pets.txt"
    filled = kb.index()
    assert filled["sentences_added"] == 9 and filled["writes"] == 0 and filled["chunks_added"] == 0
    assert kb.index()["sentences_added"] == 0

    pets = {cid for cid, m, _ in kb.store.iter_all() if m["path"] == "pets.txt"}
    assert pets <= set(_sentence_rows(kb).values())
    (docs / "pets.txt").unlink()
    kb.index()
    assert not pets & set(_sentence_rows(kb).values())  # a removed file's sentences go with its chunks
    assert set(_sentence_rows(kb).values()) == {cid for cid, _, _ in kb.store.iter_all()}


def test_a_sentence_whose_chunk_is_gone_adds_nothing(tmp_path, embedder):
    docs = _two_docs(tmp_path)
    kb = _kb(docs, tmp_path / "chroma", hybrid=False)
    kb.index()
    pets = [cid for cid, m, _ in kb.store.iter_all() if m["path"] == "pets.txt"]
    kb.store.col.delete(ids=pets)  # as if a run died between the chunks' delete and the sentences'
    hits = kb.search("Can I bring my dog to the office?")
    assert [h.path for h in hits] == ["office.md"]


@pytest.mark.slow
def test_demo_fact_in_a_many_fact_chunk_passes_the_gate(tmp_path, embedder):
    """On the demo knowledge, at the demo's calibrated threshold: questions in other words about one line of a long
    chunk are answered from it (their chunks alone score 0.36 and 0.20, under the gate), and a trap is still
    refused."""
    from protege.config_file import load_config

    min_score = load_config(DEMO.parent.parent / "configs" / "captain-byte.yaml").knowledge.min_score
    kb = _kb(DEMO / "knowledge", tmp_path / "chroma", min_score=min_score, top_k=3, unknown_name_factor=0.5)
    kb.index()
    for q, path in [("Since when have you been ISO 27001 certified?", "security-and-compliance.pdf"),
                    ("Is there an interactive walkthrough inside the console for beginners?", "onboarding-guide.md")]:
        r = kb.retrieve(q)
        assert not r.refused and r.sources[0].path == path, (q, r)
    assert kb.retrieve("Can you give me a good recipe for oatcakes?").refused
    # the demo's own question: the plans table first, not the backup example "for a Sloop server ($14 per month)
    # backups cost $2.80" that BM25 at full weight ranked first once sentences lifted it in the dense list
    assert kb.retriever.lexical_weight == 0.5
    assert kb.retrieve("How much does the Sloop server cost each month?").sources[0].path == "pricing-plans.md"


def test_an_index_without_sentence_vectors_gets_no_sentence_collection(tmp_path, embedder):
    docs = _two_docs(tmp_path)
    kb = _kb(docs, tmp_path / "chroma", "sv-chunks-only", sentence_vectors=False)
    kb.index()
    (docs / "pets.txt").unlink()
    assert kb.index()["chunks_removed"] >= 1  # chunks deleted: their sentences are looked for, not made
    kb.store.reset("other-embedder", 384)
    assert [c.name for c in kb.store.client.list_collections()] == ["sv-chunks-only"]


def test_a_cut_sentence_write_leaves_each_chunk_whole_and_the_next_index_fills_the_rest(tmp_path, embedder):
    docs = _two_docs(tmp_path)
    kb = _kb(docs, tmp_path / "chroma", "sv-cut", sentence_vectors=False)
    kb.index()
    chunks = {cid: doc for cid, _, doc in kb.store.iter_all(include=("documents",))}
    sentences = kb.store.sentences
    real_add, calls = sentences.col.add, []

    def add_then_die(**kw):
        calls.append(kw["ids"])
        if len(calls) == 2:
            raise OSError("disk full")
        real_add(**kw)

    sentences.col.add = add_then_die
    with pytest.raises(OSError):
        sentences.add(list(chunks), list(chunks.values()), embedder.embed, batch=2)  # 2 sentences a call at least
    sentences.col.add = real_add
    (first, *_), = calls[:1]
    written = _sentence_rows(kb)
    assert set(written.values()) == {first.rsplit(":", 1)[0]} and len(written) == len(calls[0])  # whole, or none
    filled = _kb(docs, tmp_path / "chroma", "sv-cut").index()
    assert filled["sentences_added"] == 9 - len(calls[0]) and set(_sentence_rows(kb).values()) == set(chunks)
