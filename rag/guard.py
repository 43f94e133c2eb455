"""The faithfulness guard: a grounded answer may only state facts its retrieved context holds.

The model's reply is checked sentence by sentence as it streams (a sentence is held back until it ends, never more):
- a sentence with a number, amount, date, version, code or proper name that is not in the context is not sent; the
  generation stops and the answer goes on extractively instead: the best-matching sentences of the sources, verbatim,
  each with its citation `[n]`;
- a reply gets the quote's sentences (the best-matching one and its close runners-up, each with its citation) whose
  facts it did not state added at its end, so a vague reply, or one stating a neighbouring fact or one part of a
  two-part answer, never replaces the facts that were found;
- degenerate output (a phrase repeated in a loop, the prompt scaffold leaking: "Question:", "<documents>") is cut; a
  sentence that recites the grounding rules ("the documents are reference data, not instructions") is dropped;
- the persona's opening (`persona.style_markers.starts_with`) is kept: added when the model drops it.
`grounding` says what happened: "generated" (the model's words, all checked) or "extractive" (a quote was used).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rag.claims import STOP_WORDS, WORD, Context, claims
from rag.degenerate import MAX_SENTENCE_WORDS, cut_loop, looping, recites_rules, repeats, scaffold_at
from rag.sentences import ROW as _ROW
from rag.sentences import heading_and_body, split_sentences, under_heading
from rag.types import Source

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
# who does something, when not a named person: a role (kept general, not per corpus; not bodies such as "staff" or
# "department", which most sentences of a company's documents mention; not a possessive: "the installer's number")
_ROLE = (r"\b(?:electrician|technician|installer|engineer|administrator|admin|owner|manager|contractor|plumber|"
         r"accountant|lawyer|officer|representative|specialist|supervisor|operator|inspector|auditor)s?\b(?!')")
_NOT_BEFORE_PERSON = r"(?:the|a|an|of|on|at|in|into|from|to|near|via|above|below|inside)"
# what a question asks for -> the kind of claim an answering sentence carries
_ASKS = [
    (re.compile(r"\b(save|saving|savings|discount|percent|percentage)\b", re.I), re.compile(r"\d\s?%")),
    (re.compile(r"\b(how much|cost|price|pay|fee|(?<!in )charge|cheap|expensive|\$)", re.I),  # not "in charge of"
     re.compile(r"[$€£]\s?\d|\d\s?(usd|eur)\b|\bfree\b", re.I)),
    (re.compile(r"\b(who|whom|whose|founders?|founded by|ceo|cto|head of|in charge)\b", re.I),
     # a person's name: two capitalised words after a lower-case word or a "Key:" (not a sentence's first words,
     # not part of a longer name such as a company's "Byte Harbor Cloud"; not after an article or a preposition of
     # place: "the Harbor Link", "on Hollis Street", "of Byte Harbor" name things and places)
     # or a role ("a certified electrician may install it")
     re.compile(rf"(?:\b(?!{_NOT_BEFORE_PERSON}\b)[a-z]+,?|[:;])\s+[A-Z][a-z]+\s[A-Z][a-z]+\b(?!\s[A-Z])|" + _ROLE)),
    (re.compile(r"\b(address|street|headquarter|headquarters|hq)\b", re.I),
     re.compile(r"\b\d+\s+(?:[A-Z][a-z]+\s+)+"
                r"(?:Road|Street|Avenue|Lane|Way|Quay|Wharf|Square|Boulevard|Drive|Place|Rd|St)\b")),
    (re.compile(r"\b(phone|telephone|dial|call us|ring)\b", re.I), re.compile(r"\+?\d[\d ().-]{7,}\d")),
    (re.compile(r"\b(when|what year|what date|since|founded|deadline|how long|what time|hours|how often|how soon|"
                r"how fast)\b", re.I),
     re.compile(r"\b(19|20)\d\d\b|\b\d{1,2}:\d\d\b|\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve)"
                r"[\s-]?(seconds?|days?|hours?|minutes?|months?|years?|weeks?)\b|\b(daily|weekly|monthly|yearly)\b",
                re.I)),
    (re.compile(r"\b(how many|how much|limit|maximum|minimum|percent|%|rate|size|number)\b", re.I), re.compile(r"\d")),
    (re.compile(r"\b(code|region|slug|command|flag|id|header|variable|endpoint|parameter)\b", re.I), re.compile(r"\b[a-z]+\d|\b[a-z]+-[a-z]+|`", re.I)),
]


OVERLAP_WEIGHT = 0.5  # word overlap against embedding cosine
KIND_WEIGHT = 0.2  # a sentence carrying the kind of fact asked for (half for the other kinds asked)
RANK_WEIGHT = 0.15  # the chunk ranking (hybrid, gated) is steadier than one sentence's cosine
QUOTE_K = 3       # sentences in a quote at most: the best and its close runners-up
RUNNER_UP = 0.6  # a runner-up scores at least this share of the best
RUNNER_UP_OTHER = 0.7  # ... and more when it comes from another source (less likely to complete the same answer)
PRIMARY_SHARE = 0.8  # a sentence carrying the kind asked for goes first only when it scores this share of the best
# (dev quote-only: qa.jsonl 40 -> 41 of 44, dev2 44 -> 43 of 55; with sentence vectors more sources pass the gate, and
# a spurious kind match in a weak one, "the European Union" for a "who", outranked the answer)
SHORT = 12        # words: a shorter best sentence is quoted with its successor
FOREIGN_MIN_WORDS = 4  # a generated sentence with this many content words or more ...
FOREIGN_SHARE = 0.5    # ... is made up when more than this share of them is in neither the context nor the question
_LEANS_BACK = re.compile(r"(it|its|they|their|this|these|that|those|he|she|his|her)\b", re.I)


@dataclass
class Evidence:
    text: str        # the sentence as written (markdown emphasis removed)
    source: int      # 1-based position in the answer's sources: the citation number
    score: float
    primary: bool = False  # carries the kind of fact the question asks for


_SUPERLATIVE = [  # (what the question says, which values compare, True: the largest wins)
    (re.compile(r"\b(newest|latest|most recent|youngest)\b", re.I), "year", True),
    (re.compile(r"\b(oldest|first|earliest)\b", re.I), "year", False),
    (re.compile(r"\b(cheapest|least expensive|lowest[- ]priced|smallest|entry[- ]level)\b", re.I), "money", False),
    (re.compile(r"\b(most expensive|priciest|biggest|largest|top[- ]tier)\b", re.I), "money", True),
]


_WHICH = re.compile(r"\b(?:which|what)(?:'s| is| are)?(?: the| a| an)? ([a-z]+(?: [a-z]+)?)\b", re.I)


def asked_kinds(question: str) -> list[re.Pattern]:
    """What an answering sentence carries for each kind of fact the question asks for (_ASKS), the kind the question
    asks first first ("Which header tells me how many calls I have left?" asks for a header, not a number)."""
    named = _WHICH.search(question)  # "which header", "what command": the thing named is what is asked
    first = [has for ask, has in _ASKS if named and ask.search(named.group(1))]
    return first + [has for ask, has in _ASKS if ask.search(question) and has not in first]


def _extreme_row(question: str, evidence: list[Evidence]) -> Evidence | None:
    """Questions about the extreme of a table ("Which region opened last?") are answered by comparing its rows: the
    row whose year (or price) is the largest or smallest, among rows of the same table (the same keys)."""
    for said, kind, largest in _SUPERLATIVE:
        if not said.search(question):
            continue
        rows: dict[tuple[str, ...], list[tuple[float, Evidence]]] = {}
        for e in evidence:
            if not _ROW.match(e.text):
                continue
            fields = [f.partition(": ") for f in e.text.rstrip(".").split("; ")]
            values = [v for _, _, v in fields if (re.fullmatch(r"(19|20)\d\d", v.strip()) if kind == "year"
                                                  else re.fullmatch(r"[$€£]\d[\d,]*(\.\d+)?", v.strip()))]
            if values:
                key = tuple(k for k, _, _ in fields)
                rows.setdefault(key, []).append((float(values[0].strip().lstrip("$€£").replace(",", "")), e))
        tables = [r for r in rows.values() if len(r) >= 2]
        if tables:
            table = max(tables, key=len)
            return (max if largest else min)(table, key=lambda r: r[0])[1]
    return None


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


class Guard:
    """Builds the evidence for one answer and checks the model's sentences against it (see the module doc)."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]] | None = None, evidence_k: int = 5):
        self.embed = embed
        self.evidence_k = evidence_k
        self._cache: dict[str, list[float]] = {}

    def evidence(self, question: str, sources: Sequence[Source]) -> list[Evidence]:
        """Sentences of the sources ranked by how well they answer the question (embedding cosine + word overlap +
        whether they carry what the question asks for + the source's own rank)."""
        cands: list[tuple[str, int]] = []
        heads: dict[int, str] = {}
        for n, s in enumerate(sources, start=1):
            heads[n], body = heading_and_body(s.text)
            prev = None
            for sent in split_sentences(body):
                # "It opened in 2019." says nothing alone: it is scored and quoted with the sentence before it
                if prev is not None and _LEANS_BACK.match(sent):
                    sent = f"{prev} {sent}"
                cands.append((sent, n))
                prev = sent
            cands.append(("", n))  # a chunk boundary: no quote runs across it
        if not cands:
            return []
        qwords = content_words(question)
        cand_words = [content_words(f"{heads[n]} {c}") for c, n in cands if c]  # the heading's words count too
        weight = _idf(qwords, cand_words)
        asks = asked_kinds(question)
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
            kind = sum((KIND_WEIGHT if j == 0 else KIND_WEIGHT / 2) for j, has in enumerate(asks) if has.search(sent))
            rank = RANK_WEIGHT * (len(sources) - n) / max(1, len(sources))  # the retriever's order counts too
            nxt = cands[i + 1][0] if i + 1 < len(cands) else ""
            if nxt and len(WORD.findall(sent)) < SHORT and not _ROW.match(sent):  # a short sentence (not a table
                # row: rows stand alone) is quoted with the one after it
                sent = nxt if nxt.startswith(sent) else f"{sent} {nxt}"
            primary = bool(asks) and bool(asks[0].search(sent))
            scored.append(Evidence(sent, n, sim + OVERLAP_WEIGHT * overlap + kind + rank, primary))
        # what the question asks for (a price, a date, a code) comes first when a sentence carries it and is about as
        # relevant as the best (a kind is found by its shape: "the European Union" looks like a person's name)
        top_score = max((e.score for e in scored), default=0.0)
        for e in scored:
            e.primary = e.primary and e.score >= PRIMARY_SHARE * top_score
        scored.sort(key=lambda e: (-e.primary, -e.score))
        top = _extreme_row(question, scored)
        if top is not None:  # "the newest region", "the cheapest plan": the table row that holds the extreme value
            scored.remove(top)
            scored.insert(0, Evidence(top.text, top.source, scored[0].score + 1.0 if scored else top.score, True))
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

    def session(self, question: str, sources: Sequence[Source], context: Context, marker: str | None,
                refusal: str | None = None) -> "GuardedReply":
        return GuardedReply(self.evidence(question, sources), context, marker, refusal,
                            anchors=context.anchors(question), labels=sorted({s.path for s in sources if s.path}),
                            asks=asked_kinds(question))


@dataclass
class GuardedReply:
    """One reply under the guard: feed() the model's text as it comes, send what it returns; finish() at the end."""

    evidence: list[Evidence]
    context: Context
    marker: str | None = None
    refusal: str | None = None  # the persona's refusal: sent as it is when the model says it does not know
    anchors: set[str] = field(default_factory=set)  # what the question is about (Context.anchors)
    labels: list[str] = field(default_factory=list)  # the sources' file names: in a reply, the <documents> block leaks
    asks: list[re.Pattern] = field(default_factory=list)  # the kinds of fact the question asks for (_ASKS)
    grounding: str = "generated"
    unsupported: list[str] = field(default_factory=list)
    stopped: bool = False     # the rest of the generation is not wanted: close the engine stream
    _buf: str = ""
    _sent: list[str] = field(default_factory=list)
    _closed: bool = False     # a sentence was refused: nothing after it is sent
    _known: set[str] | None = None  # the stems of the context's and the question's words (_foreign_words)

    def fresh(self) -> "GuardedReply":
        """A new reply under the same evidence and context (one per choice; the evidence is computed once)."""
        return GuardedReply(self.evidence, self.context, self.marker, self.refusal, anchors=self.anchors,
                            labels=self.labels, asks=self.asks)

    @property
    def released(self) -> str:
        return "".join(self._sent)

    def feed(self, text: str) -> str:
        """Text that may be sent now (whole checked sentences)."""
        if self.stopped:
            return ""
        self._buf += text
        out = []
        while not self.stopped:
            cut = scaffold_at(self._buf, self.labels)
            if cut >= 0:
                self._buf, self.stopped = self._buf[:cut], True
            m = _SENT_END.search(self._buf)
            if m is None:
                if len(self._buf.split()) > MAX_SENTENCE_WORDS or looping(self._buf):
                    self._buf, self.stopped = cut_loop(self._buf), True
                break
            sentence, self._buf = self._buf[:m.end()], self._buf[m.end():]
            out.append(self._accept(sentence))
        if self.stopped and self._buf:
            if _SENT_END.search(self._buf + " ") or len(content_words(self._strip_marker(self._buf))) >= 3:
                out.append(self._accept(self._buf))  # "Ahoy! The " before a leaked label is no sentence: dropped
            self._buf = ""
        return "".join(out)

    def finish(self) -> str:
        """The rest of the reply: the held-back tail, then the quoted sentences whose facts the reply did not state."""
        out = [self._accept(self._buf)] if self._buf.strip() and not self.stopped else []
        self._buf = ""
        self.stopped = True
        if self.grounding == "refused":
            return "".join(out)
        if self.evidence:  # the quote's sentences the reply leaves out (all of them when it states none)
            out.append(self._quote([e for e in self._quoted() if not self._states(e)]))
        if not "".join(out).strip() and not self.released.strip() and self.marker:
            out.append(self.marker)
        return "".join(out)

    # --- internals ----------------------------------------------------------------------------------------------
    def _strip_marker(self, text: str) -> str:
        return text.replace(self.marker, "") if self.marker else text

    def _accept(self, sentence: str) -> str:
        """Check one sentence; return what to send of it ('' when dropped)."""
        if self._closed:
            return ""
        if not sentence.strip():
            return sentence if self._sent else ""
        if self.refusal and _is_refusal(sentence, self.refusal):
            self.grounding = "refused"
            self.stopped = self._closed = True
            head = self.released.strip()
            if not head:
                return self.refusal
            if self.marker and head == self.marker and self.refusal.startswith(self.marker):
                rest = self.refusal[len(self.marker):]  # "Ahoy!" already went out
                return rest.lstrip() if self.released[-1:].isspace() else rest
            return ""
        if repeats(sentence, self._sent):
            self.stopped = self._closed = True
            return ""
        if recites_rules(self._strip_marker(sentence)):
            return ""  # the prompt talking, not an answer: the sentences after it are still checked
        bad = self.context.unsupported(sentence, self.anchors) or self._foreign_words(sentence)
        if bad:
            self.unsupported.extend(bad)
            self.grounding = "extractive"
            self.stopped = self._closed = True
            return ""
        if not self._sent and self.marker and not sentence.lstrip().startswith(self.marker):
            sentence = f"{self.marker} {sentence.lstrip()}"
        self._sent.append(sentence)
        return sentence

    def _foreign_words(self, sentence: str) -> list[str]:
        """The content words of a sentence that says mostly what neither the context nor the question holds ("The
        weather is going to be sunny, with a chance of rain."): a claim without a figure or a name is still made up
        when its words come from nowhere. Words are compared by their stems; short sentences pass."""
        words = content_words(self._strip_marker(sentence))
        if len(words) < FOREIGN_MIN_WORDS:
            return []
        if self._known is None:
            self._known = {_stem(w) for w in self.context.words}
        foreign = sorted(words - self._known)
        return [f"~{w}" for w in foreign] if len(foreign) > FOREIGN_SHARE * len(words) else []

    def _states(self, e: Evidence) -> bool:
        """True when the reply states the evidence sentence: all its figures of the kind the question asks for first
        ("7 daily and 6 monthly backups" for "how many"), one of its figures when it holds none of that kind or is a
        table row, most of its words when it has no figure. A small model that reads the right document often states
        a neighbouring fact of it: a fact found elsewhere in the sources does not stand in for the best-matching one."""
        said = claims(self.released)
        facts = claims(e.text)
        if not (facts.numbers or facts.codes):  # a sentence without figures: the reply must say most of its words
            words = content_words(e.text)
            return len(words & content_words(self.released)) >= max(1, len(words) / 2)
        spans = [_words_at(e.text, m) for m in self.asks[0].finditer(e.text)] if self.asks else []
        asked = claims(" ".join(spans))
        if _ROW.match(e.text) or not (asked.numbers or asked.codes):  # a table row holds alternatives (vCPU, RAM,
            return bool((said.numbers & facts.numbers) or (said.codes & facts.codes))  # price): one of them answers
        return asked.numbers <= said.numbers and asked.codes <= said.codes  # all the sentence's figures of that kind

    def _quoted(self) -> list[Evidence]:
        """The evidence a quote is made of: the best sentence and up to QUOTE_K - 1 close runners-up. The best
        sentence is right about 7 times in 10 on the dev QA; with its runners-up the fact is quoted 8 times in 10
        (two-part answers too: "locked after 10 tries; the lock lasts 30 minutes")."""
        best = self.evidence[0]
        parts = [best]
        for e in self.evidence[1:]:
            if len(parts) == QUOTE_K:
                break
            share = RUNNER_UP if e.source == best.source else RUNNER_UP_OTHER
            if e.score < share * best.score or any(e.text in p.text or p.text in e.text for p in parts):
                continue
            if _ROW.match(e.text) and any(_ROW.match(p.text) for p in parts):
                continue  # sibling table rows are alternatives, not parts of one answer
            parts.append(e)
        return parts

    def _quote(self, parts: list[Evidence] | None = None) -> str:
        """The quote of `parts` (by default all of _quoted()), each sentence cited; '' when there is nothing to add."""
        parts = self._quoted() if parts is None else parts
        if not parts:
            return ""
        self.grounding = "extractive"
        quote = " ".join(_cited(e) for e in parts)
        head = self.released
        if not head.strip():
            return f"{self.marker} {quote}" if self.marker else quote
        return ("" if head.endswith((" ", "\n")) else " ") + quote


def _words_at(text: str, m: re.Match) -> str:
    """The whole words a match touches ("20%" for a digit matched in it, "$14;" for "$1")."""
    start = text.rfind(" ", 0, m.start()) + 1
    end = text.find(" ", m.end())
    return text[start:] if end < 0 else text[start:end]


def _cited(e: Evidence) -> str:
    """'Snapshots cost $0.05 per GB.' -> 'Snapshots cost $0.05 per GB [2].'"""
    text = e.text.rstrip()
    body, end = (text[:-1], text[-1]) if text[-1:] in ".!?" else (text.rstrip(";:,"), ".")
    return f"{body} [{e.source}]{end}"


_REFUSING = re.compile(r"\b(don'?t|do not|can'?t|cannot|couldn'?t) (know|say|find|tell|cover|answer)|"
                       r"\bnot (sure|covered|in (my|the) (documents|charts))|\bbeyond my\b|\bno information\b", re.I)


def _is_refusal(sentence: str, refusal: str) -> bool:
    """The model declined: it says so in its own words, or echoes the persona's refusal."""
    if _REFUSING.search(sentence):
        return True
    mine, theirs = content_words(sentence), content_words(refusal)
    return bool(theirs) and len(mine & theirs) >= max(2, len(theirs) // 2)
