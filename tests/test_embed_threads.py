"""rag/embed.py: a question is embedded on one torch thread, and the process's setting is put back after."""

from __future__ import annotations

import pytest
import torch


def test_a_query_runs_on_one_thread_and_the_setting_comes_back():
    from rag.embed import Embedder

    e = Embedder.__new__(Embedder)  # no model: embed() is replaced below
    seen: list[int] = []
    e.embed = lambda texts, **kw: (seen.append(torch.get_num_threads()), [[float(len(texts[0]))]])[1]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert e.embed_query("abc") == [3.0]
        assert seen == [1] and torch.get_num_threads() == 2
        e.embed = lambda texts, **kw: 1 / 0
        with pytest.raises(ZeroDivisionError):
            e.embed_query("abc")
        assert torch.get_num_threads() == 2  # put back on an error too
    finally:
        torch.set_num_threads(before)


QUESTIONS = ["", "How much does the Sloop cost?", "Ünïcode ☃ 東京: CPUs vs vCPU on t3.micro?", "word " * 600]


def test_one_question_skips_encode_and_gives_encodes_floats():
    """embed_query runs the model's modules directly (encode's per-call set-up is a few ms of a query): the vectors
    must be exactly what encode gives on the same thread count, long (truncated) and non-ASCII texts included."""
    from rag.embed import _torch_threads, default_embedder

    e = default_embedder()
    with _torch_threads(1):
        expected = [e.embed([q])[0] for q in QUESTIONS]
    encode = e.model.encode
    e.model.encode = lambda *a, **kw: 1 / 0  # the one-text path must not go through encode
    try:
        got = [e.embed_query(q) for q in QUESTIONS]
    finally:
        e.model.encode = encode
    assert got == expected
    assert len(got[0]) == e.dim and abs(sum(x * x for x in got[1]) - 1.0) < 1e-5
