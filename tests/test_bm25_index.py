"""The persistent BM25 index (rag/bm25_index.py) against rank_bm25's BM25Okapi, which the retriever used before:
same scores, same top-k order (ties included), incremental add/remove equal to a rebuild, and a file that survives a
reload and is never left half-written."""

from __future__ import annotations

import random

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from rag.bm25_index import Bm25Index, bm25_tokens

WORDS = ("refund invoice battery charger firmware sensor valve pump relay warranty shipping customs voltage cable "
         "adapter screen panel solar inverter meter account password login error code region backup storage").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS[: 5 + i % len(WORDS)]) for _ in range(rng.randint(0, 25))]
        docs.append(" ".join(words + (["the", "and", "Refunds"] if i % 3 == 0 else [])))
    if n > 7:
        docs[3] = docs[5]  # identical documents: exact ties
        docs[7] = "the and of"  # only stop words: the "_" token
    return docs


def okapi_top(docs: list[str], tokens: list[str], n: int) -> list[int]:
    """What Retriever._fuse did: stable sort by -score over BM25Okapi, first n, keep score > 0."""
    bm = BM25Okapi([bm25_tokens(d) or ["_"] for d in docs])
    scores = bm.get_scores(tokens)
    return [i for i in sorted(range(len(docs)), key=lambda i: -scores[i])[:n] if scores[i] > 0]


QUERIES = [["refund"], ["battery", "charger"], ["pump", "pump", "valve"], ["unknownword"], ["the"],
           bm25_tokens("Which firmware does the sensor need? Refunds and invoices"), ["account", "cable", "zzz"]]


@pytest.mark.parametrize("n", [1, 2, 40, 300])
def test_scores_and_top_k_match_bm25okapi(n):
    docs = corpus(n)
    ids = [f"d{i}" for i in range(n)]
    idx = Bm25Index()
    idx.add(ids, docs)
    bm = BM25Okapi([bm25_tokens(d) or ["_"] for d in docs])
    for q in QUERIES:
        np.testing.assert_allclose(idx.scores(q), bm.get_scores(q), rtol=1e-12, atol=1e-12)
        for k in (1, 4, 20):
            assert idx.top(q, k) == [ids[i] for i in okapi_top(docs, q, k)], (q, k)


def test_incremental_add_and_remove_equal_a_rebuild():
    docs = corpus(200, seed=1)
    ids = [f"d{i}" for i in range(200)]
    rng = random.Random(2)
    inc = Bm25Index()
    inc.add(ids[:120], docs[:120])
    removed = set(rng.sample(ids[:120], 50))
    inc.remove(sorted(removed) + ["not-there"])
    inc.add(ids[120:], docs[120:])
    inc.add(ids[:3], ["something else entirely"] * 3)  # already there (unless removed): skipped, like Chroma's add
    again = [i for i in ids[:3] if i in removed]
    inc.remove(rng.sample(ids[120:], 30))
    kept = [i for i in inc.ids]
    text = dict(zip(ids, docs))
    text.update({i: "something else entirely" for i in again})

    full = Bm25Index()
    full.rebuild((i, text[i]) for i in kept)
    assert full.ids == kept
    assert full.terms() == inc.terms()  # terms no chunk holds any more are gone
    for q in QUERIES + [["something", "else"]]:
        np.testing.assert_array_equal(inc.scores(q), full.scores(q))
        assert inc.top(q, 10) == full.top(q, 10)
        expected = [kept[i] for i in okapi_top([text[i] for i in kept], q, 10)]
        assert inc.top(q, 10) == expected


def test_file_round_trip_and_atomic_write(tmp_path):
    docs = corpus(60)
    ids = [f"d{i}" for i in range(60)]
    path = tmp_path / "bm25-demo.npz"
    idx = Bm25Index(path, owner="col-1")
    idx.add(ids, docs)
    idx.save()
    assert [p.name for p in tmp_path.iterdir()] == ["bm25-demo.npz"]  # no temporary file left behind

    back = Bm25Index(path, owner="col-1")
    assert back.load() and back.ids == ids
    for q in QUERIES:
        assert back.top(q, 8) == idx.top(q, 8)
    assert not Bm25Index(path, owner="another-collection").load()  # a file of another collection is not trusted

    path.write_bytes(path.read_bytes()[:100])  # truncated (by hand: save() never leaves this)
    broken = Bm25Index(path, owner="col-1")
    assert not broken.load() and broken.count == 0


def test_another_writer_is_noticed(tmp_path):
    path = tmp_path / "bm25-demo.npz"
    a, b = Bm25Index(path, owner="x"), Bm25Index(path, owner="x")
    a.add(["d1", "d2", "d3"], ["pump valve", "relay", "fan"])
    a.save()
    assert b.stale_on_disk()
    b.load()
    assert not b.stale_on_disk() and b.top(["pump"], 4) == ["d1"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "bm25-demo.npz"
    idx = Bm25Index(path, owner="x")
    idx.add(["d1"], ["pump valve"])
    idx.save()
    before = path.read_bytes()
    idx.add(["d2"], ["relay"])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        idx.save()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bm25-demo.npz"]


def test_tokens_are_the_retrievers():
    from rag import retrieve

    assert retrieve.bm25_tokens is bm25_tokens
    assert bm25_tokens("The Refunds, passes & IP55 class") == ["refund", "passe", "ip55", "class"]
