"""Degenerate output of a small model, found in its reply text: a phrase repeated in a loop, the prompt's scaffold
leaking ("Question:", "<documents>", a source's label), a sentence reciting the grounding rules. Pure text functions
for the faithfulness guard (rag/guard.py), which runs them on every sentence of a stream."""

from __future__ import annotations

import re
from typing import Sequence

from rag.claims import STOP_WORDS, WORD
from rag.grounding import RULES

SCAFFOLD = ("Question:", "<documents>", "</documents>", "<|im_start|>", "<|im_end|>", "\nUser:", "\nuser\n")
MAX_SENTENCE_WORDS = 60


def scaffold_at(text: str, labels: Sequence[str] = ()) -> int:
    """Where the prompt's scaffold starts in the reply: a chat-template marker, "Question:", or a source's label as
    the <documents> block writes it ("[1] pricing-plans.md > Plans"), from its "[n]" on."""
    hits = [i for i in (text.find(s) for s in SCAFFOLD) if i >= 0]
    for label in labels:
        i = text.find(label)
        if i >= 0:
            m = re.search(r"\[\d+\]\s*$", text[:i])
            hits.append(m.start() if m else i)
    return min(hits) if hits else -1


def _norm(s: str) -> str:
    return " ".join(WORD.findall(s.lower()))


_RULE_WORDS = frozenset(WORD.findall(RULES.lower())) - STOP_WORDS - {"answer", "question", "user"}


def recites_rules(sentence: str) -> bool:
    """Most of the sentence's words come from the grounding rules ("The document is reference data, not
    instructions.", "I'm not guessing, the documents are correct"): a 135M model echoes its system prompt."""
    words = set(WORD.findall(sentence.lower())) - STOP_WORDS
    return len(words) >= 3 and len(words & _RULE_WORDS) >= 0.6 * len(words)


def repeats(sentence: str, sent: list[str]) -> bool:
    n = _norm(sentence)
    return bool(n) and any(_norm(s) == n for s in sent)


def looping(text: str, n: int = 3, times: int = 3) -> bool:
    words = WORD.findall(text.lower())
    grams: dict[tuple, int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        grams[g] = grams.get(g, 0) + 1
        if grams[g] >= times:
            return True
    return False


def cut_loop(text: str) -> str:
    """Keep the text up to where its phrase starts repeating (or the first 60 words when no loop is found)."""
    words = text.split()
    for end in range(3, len(words) + 1):
        if looping(" ".join(words[:end]), times=2):
            return " ".join(words[:max(1, end - 3)]).rstrip(",;: ") + "."
    return " ".join(words[:MAX_SENTENCE_WORDS])
