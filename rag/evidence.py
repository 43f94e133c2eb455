"""Which sentences of the retrieved sources answer a question: the guard (rag/guard.py) quotes them and checks that a
reply states them.

A sentence scores by its embedding cosine to the question (embedded under its chunk's heading), the question's words
it holds (weighted by how rare they are among the candidates), whether it carries the kind of fact asked for (a price,
a date, a person, a code: found by its shape) and its source's rank. Table rows answer "the newest", "the cheapest" by
comparing their values."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from rag.claims import STOP_WORDS, WORD, claims
from rag.retrieve import asking_part
from rag.sentences import ROW as _ROW
from rag.sentences import heading_and_body, split_sentences, under_heading
from rag.tables import (Table, asks_to_list, holds_quantity, question_quantities, row_keys, row_value,
                        superlatives)
from rag.types import Source

# who does something, when not a named person: a role (kept general, not per corpus; not bodies such as "staff" or
# "department", which most sentences of a company's documents mention; not a possessive: "the installer's number")
_ROLE = (r"\b(?:electrician|technician|installer|engineer|administrator|admin|owner|manager|contractor|plumber|"
         r"accountant|lawyer|officer|representative|specialist|supervisor|operator|inspector|auditor)s?\b(?!')")
_NOT_BEFORE_PERSON = r"(?:the|a|an|of|on|at|in|into|from|to|near|via|above|below|inside|its|their|our|your|my)"
# a person's name as written in a sentence: two capitalised words after a lower-case word or a "Key:" (see _ASKS); not
# after an article, a preposition of place or a possessive ("its Clear Waters pledge" names a thing)
_PERSON = re.compile(rf"(?:\b(?!{_NOT_BEFORE_PERSON}\b)[a-z]+,?|[:;])\s+[A-Z][a-z]+\s[A-Z][a-z]+\b(?!\s[A-Z])")
# the shapes of a way to reach someone: "88 Cable Wharf Road"; the number after the street ("Rua da Ribeira Nova 42",
# "Hauptstraße 5"); "PO Box 3142" / "+1 902 555 0188", "(902) 555-0188", "555-0142" / "visits@byteharbor.cloud"
# a place one can walk to: a "street address" is no PO box (the mailing address was quoted for the head office's)
_PLACE = re.compile(r"\b\d+\s+(?:[A-Z][a-z]+\s+)+"
                    r"(?:Road|Street|Avenue|Lane|Way|Quay|Wharf|Square|Boulevard|Drive|Place|Rd|St)\b|"
                    r"\b(?:Rua|Rue|Via|Calle|Avenida|Strasse|Straße)\s+(?:(?:[A-Z]\w*|d[aeio]s?|de[ls]?|la|le)\s+){1,4}"
                    r"\d+\b|\b[A-Z][a-z]+(?:straße|strasse|gasse|weg|platz)\s+\d+\b")
_STREET = re.compile(_PLACE.pattern + r"|\bP\.?\s?O\.? Box \d+")  # any postal address
_PHONE = re.compile(r"\+\d[\d ().-]{6,}\d|\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b|\b\d{3}[ .-]\d{4}\b")  # not "1200-371"
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.\w+")
# a web address: "status.byteharbor.cloud", "https://..." (not an e-mail's domain, not "e.g." or "v1.2"); asked for by
# "url", "website" ("status page url?" was quoted the page's hosting; a "web page" is not asked for by its address)
_WEB = re.compile(r"\bhttps?://\S+|"
                  r"(?<![@\w.-])(?:[a-z0-9-]+\.)+(?:com|cloud|io|net|org|dev|app|co|ca|pt|de|eu|uk|au)\b", re.I)
_ASKS_EMAIL = re.compile(r"\be-?mail address", re.I)  # what asks for one (a "verification email" does not)
# what a question asks for -> the kind of claim an answering sentence carries
_ASKS = [
    # a share: "how much do I save", "how much do backups cost compared to the server?"
    (re.compile(r"\b(save|saving|savings|discount|percent|percentage|compared (?:to|with)|relative to|share of|"
                r"proportion)\b", re.I), re.compile(r"\d\s?%")),
    # money: not "in charge of", not "payment methods", not "how much notice" (a time) or "how much memory" (a size)
    (re.compile(r"\b(how much(?! (?:notice|time|warning|longer|memory|ram|disk|space|storage|data|traffic))|costs?|"
                r"pric(?:e|es|ed|ing)|pay|paid|fees?|(?<!in )charge[sd]?|cheap\w*|expensive|raised?)\b|\$", re.I),
     re.compile(r"[$€£]\s?\d|\b(?:usd|eur|cad|gbp|aud)\s?\d|\d\s?(usd|eur|cad|gbp|aud)\b|\bfree\b", re.I)),
    (_ASKS_EMAIL, _EMAIL),
    (re.compile(r"\b(who|whom|whose|founders?|founded by|ceo|cto|head of|in charge)\b", re.I),
     # a person's name: two capitalised words after a lower-case word or a "Key:" (not a sentence's first words,
     # not part of a longer name such as a company's "Byte Harbor Cloud"; not after an article or a preposition of
     # place: "the Harbor Link", "on Hollis Street", "of Byte Harbor" name things and places)
     # or a role ("a certified electrician may install it")
     re.compile(_PERSON.pattern + "|" + _ROLE)),
    (re.compile(r"\b(street|visit\w*|walk)\b", re.I), _PLACE),
    (re.compile(r"\b((?<!e-mail )(?<!email )(?<!ip )(?<!public )(?<!floating )(?<!static )(?<!reserved )(?<!mac )"
                r"address|street|headquarter|headquarters|hq)\b", re.I),
     _STREET),
    (re.compile(r"\b(phone|telephone|dial|call us|ring)\b", re.I), _PHONE),
    (re.compile(r"\b(url|website|web ?site|web ?address|homepage|link to the)\b", re.I), _WEB),
    (re.compile(r"\b(when|what year|what date|since|founded|deadline|how long|what time|hours|how often|how soon|"
                r"how fast|time limit|timeout|how much (?:notice|time|warning|longer))\b", re.I),
     re.compile(r"\b(19|20)\d\d\b|\b\d{1,2}:\d\d\b|\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve)"
                r"[\s-]?(?:(?:business|working|calendar|full)\s)?(seconds?|days?|hours?|minutes?|months?|years?|weeks?)\b|\b(daily|weekly|monthly|yearly)\b",
                re.I)),
    (re.compile(r"\b(how many|how much|limit|maximum|minimum|percent|%|rate|size|number)\b", re.I), re.compile(r"\d")),
    (re.compile(r"\b(code|region|slug|command|flag|id|header|variable|endpoint|parameter)\b", re.I),
     re.compile(r"\b[a-z]+-?\d|\b[a-z]+-[a-z]+|`", re.I)),  # fra1, BH-4207, per-page, `bhc login`
]


OVERLAP_WEIGHT = 0.5  # word overlap against embedding cosine
KIND_WEIGHT = 0.2  # a sentence carrying the kind of fact asked for (half for the other kinds asked)
RANK_WEIGHT = 0.15  # the chunk ranking (hybrid, gated) is steadier than one sentence's cosine
PRIMARY_SHARE = 0.8  # a sentence carrying the kind asked for goes first only when it scores this share of the best
# (dev quote-only: qa.jsonl 40 -> 41 of 44, dev2 44 -> 43 of 55; with sentence vectors more sources pass the gate, and
# a spurious kind match in a weak one, "the European Union" for a "who", outranked the answer)
FOCUS_SHARE = 1.0  # a follow-up's own words count again, as much as all the searched turns' words (see _rank's focus)
SHORT = 12        # words: a shorter best sentence is quoted with its successor
_LEANS_BACK = re.compile(r"(it|its|they|their|this|these|that|those|he|she|his|her|for (?:example|instance)|e\.g\.|"
                         r"(?:if |when |once )?the same)(?!\w)",
                         re.I)  # "For example, ..." illustrates the sentence before; "If the same key is sent again
# within 24 hours, ..." names its key only in the sentence before ("send an Idempotency-Key header"): dev quote-only
# holds +2 (dev6, dev8), nothing lost; held-out unchanged


@dataclass
class Evidence:
    text: str        # the sentence as written (markdown emphasis removed)
    source: int      # 1-based position in the answer's sources: the citation number
    score: float
    primary: bool = False  # carries the kind of fact the question asks for
    span: tuple[int, int] | None = None  # the first and last of the sources' sentences it is made of (counted across all
    # the sources): two pieces of evidence that share one are not quoted together
    part: bool = False  # the best sentence for one part of a two-part question: quoted whatever its score
    member: bool = False  # a row of the table a question asks to list ("Which regions do you have?"): quoted with
    # all its sibling rows


def _same(a: Evidence, b: Evidence) -> bool:
    return a.text == b.text and a.source == b.source


# where a question's second part begins: ", and how long ...", "... ask? Is there a deadline?"
_PART = re.compile(r",?\s+and\s+(?=(?:what|which|how|who|whom|when|where|why|is|are|does|do|can|will)\b)|"
                   r"(?<=\?)\s+(?=[^\s(])", re.I)  # not before "(chief financial officer)" (Retriever.expand)
PART_MIN_WORDS = 2  # content words a part needs to be searched alone ("when?", "ok" are not parts)
PART_ANSWERED_SHARE = 0.9  # a part is answered by a chosen sentence scoring this share of the part's best for it


def question_parts(question: str) -> list[str]:
    """The parts of a question that asks two things, each with enough words to be searched alone; one part (the
    whole question) otherwise."""
    parts = [p.strip() for p in _PART.split(question) if len(content_words(p) - _QUESTION_WORDS) >= PART_MIN_WORDS]
    return parts if len(parts) > 1 else [question]


_WHICH = re.compile(r"\b(?:which|what)(?:'s| is| are)?(?: the| a| an)? ([a-z]+(?: [a-z]+)?)\b", re.I)


def asked_kinds(question: str) -> list[re.Pattern]:
    """What an answering sentence carries for each kind of fact the question asks for (_ASKS), the kind the question
    asks first first ("Which header tells me how many calls I have left?" asks for a header, not a number)."""
    named = _WHICH.search(question)  # "which header", "what command": the thing named is what is asked
    first = [has for ask, has in _ASKS if named and ask.search(named.group(1))]
    return first + [has for ask, has in _ASKS if ask.search(question) and has not in first]


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_BELOW = re.compile(r"\b(?:below|under|less than|lower than)\s+(\d+(?:\.\d+)?)\s?%", re.I)
_ABOVE = re.compile(r"\b(?:at least|above|over|more than)\s+(\d+(?:\.\d+)?)\s?%", re.I)


def _in_band(text: str, value: float) -> bool:
    """Whether a sentence of the text states a band of percentages that holds the value ("Uptime below 99.0% but at
    least 95.0%: 25% credit" for "my monitoring says 97% uptime, what do I get back?"); a bound of one side alone counts
    too. Each sentence alone: a short line is quoted with the next, which states the next band."""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        below = [float(x) for x in _BELOW.findall(sentence)]
        above = [float(x) for x in _ABOVE.findall(sentence)]
        if (below or above) and all(value < b for b in below) and all(value >= a for a in above):
            return True
    return False


def _extreme_row(question: str, evidence: list[Evidence]) -> Evidence | None:
    """Questions about the extreme of a table ("Which region opened last?") are answered by comparing its rows: the
    row whose year (or price) is the largest or smallest, among rows of the same table (the same keys)."""
    for kind, largest in superlatives(question):
        rows: dict[tuple[str, ...], list[tuple[float, Evidence]]] = {}
        for e in evidence:
            value = row_value(e.text, kind) if _ROW.match(e.text) else None
            if value is not None:
                rows.setdefault(row_keys(e.text), []).append((value, e))
        tables = [r for r in rows.values() if len(r) >= 2]
        if tables:
            table = max(tables, key=len)
            return (max if largest else min)(table, key=lambda r: r[0])[1]
    return None


def _valued_row(question: str, evidence: list[Evidence]) -> Evidence | None:
    """When the best sentence is a table row without the value the question names ("the 4-core box", and the row
    ranked first is the Sloop's, with 4 GB of RAM), the best-ranked row of its table that holds it in that unit
    ("vCPU: 4"): the question picked that row. None otherwise (the best sentence is no row, or holds the value)."""
    asked = question_quantities(question)
    if not asked or not evidence or not _ROW.match(evidence[0].text) or holds_quantity(evidence[0].text, asked):
        return None
    keys = row_keys(evidence[0].text)
    return next((e for e in evidence[1:] if _ROW.match(e.text) and row_keys(e.text) == keys
                 and holds_quantity(e.text, asked)), None)


def _listed_rows(question: str, evidence: list[Evidence]) -> list[Evidence]:
    """The rows of the table a question asks to list (rag/tables.py: "which regions can I deploy in?" and rows
    "Region code: hfx1; City: ..."): every row answers, so all are quoted, in the documents' order."""
    tables: dict[tuple[str, ...], list[Evidence]] = {}
    for e in sorted(evidence, key=lambda e: (e.source, e.span or (0, 0))):
        rows = tables.setdefault(row_keys(e.text), []) if _ROW.match(e.text) else []
        if _ROW.match(e.text) and not any(r.text == e.text for r in rows):  # overlapping chunks hold a row twice
            rows.append(e)
    for keys, rows in tables.items():
        noun = Table("", keys).noun
        if len(rows) >= 2 and asks_to_list(question, noun):
            return [] if _names_a_subset(question, noun, rows, evidence) else rows
    return []


def _names_a_subset(question: str, noun: str, rows: list[Evidence], evidence: list[Evidence]) -> bool:
    """Whether a sentence outside the table names two or more of its rows (their first values) together with what the
    question asks about besides them: "which regions have load balancers?" is answered by "Load balancers are available
    in hfx1, fra1 and sin1", not by every region."""
    values = {r.text.split("; ")[0].partition(": ")[2].strip().lower() for r in rows}
    asked = content_words(question) - content_words(f"{noun} those these them") - _QUESTION_WORDS
    for e in evidence:
        if _ROW.match(e.text):
            continue
        said = sum(1 for v in values if v and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", e.text.lower()))
        if said >= 2 and asked & content_words(e.text):
            return True
    return False


def _idf(qwords: set[str], sentences: list[set[str]]) -> dict[str, float]:
    """How much each question word tells the candidate sentences (given as their content words) apart: a word that
    every sentence holds ("backup" in the backup document) counts little, a rare one ("minute", "germany") much."""
    n = len(sentences)
    df = dict.fromkeys(qwords, 0)
    for words in sentences:
        for w in qwords & words:
            df[w] += 1
    return {w: math.log(1 + n / (1 + d)) for w, d in df.items()}


def content_words(text: str) -> set[str]:
    """Lower-cased words without stop words, crudely stemmed (opened ~ open, plans ~ plan)."""
    return {_stem(w) for w in WORD.findall(text.lower()) if w not in STOP_WORDS}


def _stem(w: str) -> str:
    """Suffix strip, then truncation to 5 characters (warranty ~ warrants, install ~ installation)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix) and not w.endswith("ss"):
            w = w[: -len(suffix)]
            break
    return w[:5]


_QUESTION_WORDS = {_stem(w) for w in "ok okay thanks thank nice right great cool whats tell please hi hello".split()}


class EvidenceRanker:
    """Ranks the sentences of a question's sources; sentence embeddings are cached across questions."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]] | None = None, evidence_k: int = 5):
        self.embed = embed
        self.evidence_k = evidence_k
        self._cache: dict[str, list[float]] = {}

    def rank(self, question: str, sources: Sequence[Source], list_rows: bool = False,
             focus: str | None = None) -> list[Evidence]:
        """Sentences of the sources ranked by how well they answer the question (embedding cosine + word overlap +
        whether they carry what the question asks for + the source's own rank). A question of two parts ("How often
        are the keys rotated, and what cipher protects data at rest?") also gets each part's best sentence, marked
        `part`, after the best one (see _with_parts). With `list_rows` (the question asks to list a table: "which
        regions can I deploy in?") the table's rows come first, all of them, marked `member`."""
        ranked = self._rank(question, sources, list_rows, focus)
        parts = question_parts(question)
        return self._with_parts(ranked, parts, sources) if len(parts) > 1 and ranked else ranked

    def _with_parts(self, ranked: list[Evidence], parts: list[str], sources: Sequence[Source]) -> list[Evidence]:
        """The best sentence for the whole question, then each part's best sentence unless one already chosen scores
        nearly as well for that part (the whole question's ranking serves the part it leans to; the other part's answer
        sat below the runner-up share), then the rest."""
        chosen = ranked[:1]
        for part in parts:
            for_part = self._rank(part, sources)
            if not for_part:
                continue
            best = for_part[0]
            answered = max((e.score for e in for_part if any(_same(e, c) for c in chosen)), default=0.0)
            if answered < PART_ANSWERED_SHARE * best.score:
                best.part = True
                chosen.append(best)
        return chosen + [e for e in ranked[1:] if not any(_same(e, c) for c in chosen)]

    def _rank(self, question: str, sources: Sequence[Source], list_rows: bool = False,
              focus: str | None = None) -> list[Evidence]:
        cands: list[tuple[str, int]] = []
        starts: list[int] = []  # where each candidate's text begins (a sentence leaning back begins before itself)
        heads: dict[int, str] = {}
        for n, s in enumerate(sources, start=1):
            heads[n], body = heading_and_body(s.text)
            prev = None
            for sent in split_sentences(body):
                # "It opened in 2019." says nothing alone: it is scored and quoted with the sentence before it
                # a list's item goes with its lead-in and the items before it ("new accounts start with these limits:"
                # "at most 10 servers at a time;" "at most 5 floating IPs." was quoted from its last item alone). Only
                # an item that is no sentence (lower-case): joining each line after a ":" or ";" lost dev holds (-6)
                leans = prev is not None and (_LEANS_BACK.match(sent) or (sent[:1].islower()
                                                                           and prev.rstrip().endswith((":", ";"))))
                if leans:
                    sent = f"{prev} {sent}"
                starts.append(starts[-1] if leans else len(cands))
                cands.append((sent, n))
                prev = sent
            starts.append(len(cands))
            cands.append(("", n))  # a chunk boundary: no quote runs across it
        if not cands:
            return []
        qwords = content_words(question)
        cand_words = [content_words(f"{heads[n]} {c}") for c, n in cands if c]  # the heading's words count too
        weight = _idf(qwords, cand_words)
        # a follow-up searched together with the turns before it ("what uptime do you commit to for load balancers?
        # and block storage?"): the earlier turn's words found the right table, its own words say which row answers
        # (the load balancers' row was quoted first). Dev quote-only: first sentence +3, holds +1 and -1.
        fwords = content_words(focus) - _QUESTION_WORDS if focus else set()
        fweight = _idf(fwords, cand_words)
        asks = asked_kinds(asking_part(question))  # what the asking sentences ask for, not the context ("Since Monday")
        # a figure or a code the question names ("my script keeps getting 429 errors", "getting BH-4501 when i try to
        # move my vm down"): a sentence holding it is about what is asked, as one carrying the kind asked for is ("how
        # long": "suspended for one hour")
        asked = claims(question)
        named = {n for n in asked.numbers if len(n) >= 3} | asked.codes
        shares = [float(x) for x in _PERCENT.findall(question)]  # "97% uptime": the band of a table that holds it
        # a sentence is embedded (and its words counted) under its chunk's heading ("Security > Encryption: Keys are
        # rotated every 90 days."): what it is about is often only in the heading (ev1 on dev 0.77 -> 0.82, dev2
        # 0.62 -> 0.67)
        sims = self._cosines(question, [under_heading(heads[n], c) for c, n in cands if c])
        scored, k = [], 0
        for i, (sent, n) in enumerate(cands):
            if not sent:
                continue
            sim, words, k = sims[k], cand_words[k], k + 1
            overlap = sum(weight[w] for w in qwords & words) / max(1e-9, sum(weight.values()))
            if fwords:
                overlap += FOCUS_SHARE * sum(fweight[w] for w in fwords & words) / max(1e-9, sum(fweight.values()))
            kind = sum((KIND_WEIGHT if j == 0 else KIND_WEIGHT / 2) for j, has in enumerate(asks) if has.search(sent))
            rank = RANK_WEIGHT * (len(sources) - n) / max(1, len(sources))  # the retriever's order counts too
            nxt = cands[i + 1][0] if i + 1 < len(cands) else ""
            last = i
            if nxt and len(WORD.findall(sent)) < SHORT and not _ROW.match(sent):  # a short sentence (not a table
                # row: rows stand alone) is quoted with the one after it
                sent, last = (nxt if nxt.startswith(sent) else f"{sent} {nxt}"), i + 1
            held = claims(sent) if named else None
            primary = (bool(asks) and bool(asks[0].search(sent))) or bool(held and named & (held.numbers | held.codes))
            scored.append(Evidence(sent, n, sim + OVERLAP_WEIGHT * overlap + kind + rank, primary, (starts[i], last)))
        # what the question asks for (a price, a date, a code) comes first when a sentence carries it and is about as
        # relevant as the best (a kind is found by its shape: "the European Union" looks like a person's name)
        top_score = max((e.score for e in scored), default=0.0)
        for e in scored:
            # a band holding the value the question names is no look-alike: it goes first whatever its score
            e.primary = (e.primary and e.score >= PRIMARY_SHARE * top_score) or any(_in_band(e.text, v) for v in shares)
        scored.sort(key=lambda e: (-e.primary, -e.score))
        # a follow-up's own extreme decides ("and the biggest one, what does that run per month?" after the cheapest
        # plan was quoted the cheapest's row again); without one, the conversation's ("and how much RAM does it have?")
        top = _extreme_row(focus if focus and superlatives(focus) else question, scored)
        if top is not None:  # "the newest region", "the cheapest plan": the table row that holds the extreme value
            scored.remove(top)
            scored.insert(0, Evidence(top.text, top.source, scored[0].score + 1.0 if scored else top.score, True,
                                      top.span))
            return scored[: self.evidence_k]
        top = _valued_row(question, scored)
        if top is not None:  # "the 4-core box": the row with vCPU 4, not the one with 4 GB of RAM ranked first
            scored.remove(top)
            scored.insert(0, Evidence(top.text, top.source, scored[0].score, True, top.span))
            return scored[: self.evidence_k]
        rows = _listed_rows(question, scored) if list_rows else []
        if rows:  # "which regions do you have?": every row of the table, first, in the documents' order
            best = scored[0].score + 1.0
            listed = [Evidence(e.text, e.source, best, True, e.span, member=True) for e in rows]
            return listed + [e for e in scored if not any(_same(e, r) for r in rows)][: self.evidence_k]
        return scored[: self.evidence_k]

    def _cosines(self, question: str, sentences: list[str]) -> list[float]:
        if self.embed is None:
            return [0.0] * len(sentences)
        todo = [s for s in dict.fromkeys([question, *sentences]) if s not in self._cache]
        if todo:
            for s, v in zip(todo, self.embed(todo)):
                self._cache[s] = v
            if len(self._cache) > 20000:
                self._cache.clear()
        q = self._cache.get(question) or self.embed([question])[0]
        return [sum(a * b for a, b in zip(q, self._cache[s])) for s in sentences]
