"""Small, dependency-free text metrics for `protege eval`: ROUGE-L F1, BLEU-4 and style-marker adherence.

ROUGE-L follows Lin (2004) with beta=1 on lower-cased word tokens; BLEU-4 is corpus BLEU (Papineni et al. 2002)
with a brevity penalty, as sacrebleu/nltk compute it without smoothing on one reference per hypothesis.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from protege.config import StyleMarkers

TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokens(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 between two texts (0..1)."""
    h, r = tokens(hypothesis), tokens(reference)
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def bleu4(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (0..1), uniform weights, one reference each; 0 when any n-gram order has no match."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokens(hyp), tokens(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(0, len(h) - n + 1)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


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
