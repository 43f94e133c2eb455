"""rag/evaluate.py answer_metrics: what the answer eval (`protege rag eval --answers`, the build's answers stage,
bench/answer_accuracy.py) reports, on hand-made replies."""

from __future__ import annotations

from protege.reply import Reply
from rag.evaluate import answer_metrics, first_sentence
from rag.types import Source

SLOOP = {"question": "How much is the Sloop?", "source": "pricing.md", "answer_contains": ["$14"]}
TRAP = {"question": "How much is object storage?", "source": None, "answer_contains": []}


def reply(text: str, grounding: str = "extractive", path: str = "pricing.md") -> Reply:
    return Reply(text, [Source(path, None, None, "c1", 0.6)], 0.6, grounding)


def test_first_sentence_accuracy_reads_the_opening_not_the_whole_reply():
    """A reply opening with another plan's price and quoting the right one after it holds the fact, but a reader takes
    the opening for the answer: answer_accuracy counts it, first_sentence_accuracy does not."""
    wrong_first = reply("Ahoy! The Sloop plan is $32 per month. Plan: Sloop; Price per month: $14 [1].")
    right_first = reply("Ahoy! Plan: Sloop; Price per month: $14 [1]. Backups cost 20% more.")
    m = answer_metrics([SLOOP, SLOOP], [wrong_first, right_first])
    assert m["answer_accuracy"] == 1.0 and m["first_sentence_accuracy"] == 0.5
    assert first_sentence("Ahoy! BH-3320 Account past due. Pay the invoice.") == "BH-3320 Account past due."
    assert first_sentence("Ahoy!") == "Ahoy!"


def test_refusals_and_sources_are_counted():
    refusal = Reply("Ahoy! Arr, that be beyond my charts.", [], 0.2, "refused")
    m = answer_metrics([SLOOP, TRAP, TRAP], [reply("Ahoy! It costs $14 [1]."), refusal, reply("Ahoy! $0.09 per GB.")])
    assert m["source_hit@3"] == 1.0 and m["refusal_recall"] == 0.5 and m["refusal_precision"] == 1.0
    assert m["first_sentence_accuracy"] == 1.0 and m["guard_fired"] == 1.0
