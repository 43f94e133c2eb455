"""Text metrics for `protege eval`: ROUGE-L F1 (rouge-score), BLEU-4 (sacrebleu) and style-marker adherence.

Why libraries: scores a user compares with a paper or another tool must be computed the way those are, and
hand-written metrics drift (tokenisation, smoothing, brevity penalty). Both are imported on first use, so the style
checks below stay cheap to import.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from protege.config import StyleMarkers
from protege.errors import require

# rouge-score's default tokenizer: lower-case, keep runs of [a-z0-9]. Same on ASCII text, but letters and digits of
# every script are kept: the default drops them, so "café" would become "caf" and two identical Japanese replies
# would score 0.
_WORD_RE = re.compile(r"[^\W_]+")


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    rouge_scorer = require("rouge_score.rouge_scorer", "train")
    tokenizers = require("rouge_score.tokenizers", "train")

    class UnicodeWords(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            return _WORD_RE.findall(text.lower())

    # use_stemmer off: Porter stemming is English-only, and the old metric did not stem either.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=UnicodeWords())


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004, beta=1) between two texts, 0..1, on lower-cased words; punctuation is not a token."""
    return _rouge_scorer().score(reference, hypothesis)["rougeL"].fmeasure


def bleu4(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (0..1) with one reference per hypothesis: sacrebleu's score / 100.

    sacrebleu's defaults, so the number is the one papers report (signature nrefs:1|case:mixed|eff:no|tok:13a|
    smooth:exp): mixed case, 13a tokens, exp smoothing (the NIST/mteval method, also sentence_bleu's default), which
    gives an n-gram order with no match 1 / (2^k * total) instead of zeroing the score. Still 0 when no unigram
    matches, or when no hypothesis has 4 tokens (that order has no n-grams to smooth).
    """
    BLEU = require("sacrebleu.metrics", "train").BLEU

    return BLEU(smooth_method="exp").corpus_score(list(hypotheses), [list(references)]).score / 100


def has_markers(markers: StyleMarkers) -> bool:
    return bool(markers.starts_with or markers.ends_with or markers.contains)


def follows_style(text: str, markers: StyleMarkers) -> bool:
    """All declared markers hold (leading/trailing whitespace ignored; `contains` is case-insensitive)."""
    t = text.strip()
    if markers.starts_with and not t.startswith(markers.starts_with):
        return False
    if markers.ends_with and not t.endswith(markers.ends_with):
        return False
    return all(m.lower() in t.lower() for m in markers.contains)
