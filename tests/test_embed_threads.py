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
