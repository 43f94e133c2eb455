"""The demo's dev QA splits are data the bench and the tests measure with: each must read as a QA file, name a
knowledge file that exists, and ask for facts its document states (an `answer_contains` string the document never
writes would count a right reply as wrong). The held-out split is left to the bench, which prints only aggregates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.evaluate import load_qa
from rag.loaders import load_file

DEMO = Path(__file__).resolve().parent.parent / "examples" / "captain-byte"
DEV_SPLITS = ["qa.jsonl", "qa_dev2.jsonl", "qa_dev3_followups.jsonl", "qa_dev4.jsonl", "qa_dev5.jsonl",
              "qa_dev6.jsonl", "qa_dev7.jsonl", "qa_dev8.jsonl", "qa_dev9.jsonl", "qa_dev10.jsonl", "qa_dev11.jsonl",
              "qa_dev12.jsonl", "qa_dev13.jsonl", "qa_paraphrases.jsonl", "train_qa.jsonl", "scope_examples.jsonl"]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower()


@pytest.mark.parametrize("split", DEV_SPLITS)
def test_dev_split_asks_for_what_its_document_states(split):
    rows = load_qa(DEMO / split)
    texts: dict[str, str] = {}
    assert any(r["source"] for r in rows) and any(not r["source"] for r in rows), "in-domain questions and traps"
    for r in rows:
        if not r["source"]:
            assert not r["answer_contains"], r["question"]
            continue
        path = DEMO / "knowledge" / r["source"]
        assert path.is_file(), f"{split}: {r['question']!r} names {r['source']}, which is not in the knowledge folder"
        if r["source"] not in texts:
            texts[r["source"]] = _flat(" ".join(d.text for d in load_file(path, r["source"])))
        for want in r["answer_contains"]:
            assert _flat(want) in texts[r["source"]], f"{split}: {want!r} is not written in {r['source']}"


def test_scope_examples_ask_no_question_of_a_qa_file_measured_with():
    """knowledge.scope_examples decides refusals at answer time: a question it shares with a measured QA file (dev or
    held-out) would be measured on itself. Only the count is reported (the held-out questions are never printed)."""
    def norm(q: str) -> str:
        return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()

    scope = {norm(r["question"]) for r in load_qa(DEMO / "scope_examples.jsonl")}
    measured = [p for p in DEMO.glob("qa*.jsonl")]
    assert len(measured) >= 7
    shared = sum(norm(r["question"]) in scope for p in measured for r in load_qa(p))
    assert shared == 0, f"{shared} questions of the measured QA files are in scope_examples.jsonl"
