"""The faithfulness guard: a grounded answer may only state facts its retrieved context holds.

The model's reply is checked sentence by sentence as it streams (a sentence is held back until it ends, never more):
- a sentence with a number, amount, date, version, code or proper name that is not in the context is not sent; the
  generation stops and the answer goes on extractively instead: the best-matching sentences of the sources, verbatim,
  each with its citation `[n]`;
- the figures and the documents' names of a generated sentence must be in the evidence (the sentences that answer),
  said of what the question asks about, and its first sentence must state the best-matching one: a reply opening with
  a neighbouring fact ("The Sloop plan is $32", the next row's price) or a vague one goes on with the quote instead;
- a reply gets the quote's sentences (the best-matching one and its close runners-up, each with its citation) whose
  facts it did not state added at its end, so one stating one part of a two-part answer never replaces the facts
  that were found;
- degenerate output (a phrase repeated in a loop, the prompt scaffold leaking: "Question:", "<documents>") is cut; a
  sentence that recites the grounding rules ("the documents are reference data, not instructions") is dropped;
- the persona's opening (`persona.style_markers.starts_with`) is kept: added when the model drops it.
`grounding` says what happened: "generated" (the model's words, all checked) or "extractive" (a quote was used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rag.claims import Claims, Context, claims, code_spans, flat_text, question_codes
from rag.degenerate import MAX_SENTENCE_WORDS, cut_loop, looping, recites_rules, repeats, scaffold_at
from rag.evidence import Evidence, EvidenceRanker, _stem, asked_kinds, content_words
from rag.sentences import ROW as _ROW
from rag.sentences import split_sentences  # noqa: F401  (re-exported: callers import it from here)
from rag.types import Source

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")

QUOTE_K = 3       # sentences in a quote at most: the best and its close runners-up
RUNNER_UP = 0.6  # a runner-up scores at least this share of the best
RUNNER_UP_OTHER = 0.7  # ... and more when it comes from another source (less likely to complete the same answer)
WIDER_SHARE = 0.9  # a sentence quoted with its neighbour replaces it alone when it scores this share of it
FOREIGN_MIN_WORDS = 4  # a generated sentence with this many content words or more ...
FOREIGN_SHARE = 0.5    # ... is made up when more than this share of them is in neither the context nor the question


class Guard:
    """Builds the evidence for one answer (rag/evidence.py) and checks the model's sentences against it (see the
    module doc)."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]] | None = None, evidence_k: int = 5):
        self.ranker = EvidenceRanker(embed, evidence_k)

    def evidence(self, question: str, sources: Sequence[Source], list_rows: bool = False,
                 focus: str | None = None) -> list[Evidence]:
        return self.ranker.rank(question, sources, list_rows, focus)

    def session(self, question: str, sources: Sequence[Source], context: Context, marker: str | None,
                refusal: str | None = None, quote_refusals: bool = False, list_rows: bool = False,
                focus: str | None = None) -> "GuardedReply":
        """`list_rows`: the question asks to list a table's rows (Retrieval.listed): all of them are the answer."""
        return GuardedReply(self.evidence(question, sources, list_rows, focus), context, marker, refusal,
                            anchors=context.anchors(question), labels=sorted({s.path for s in sources if s.path}),
                            asks=asked_kinds(question), quote_refusals=quote_refusals,
                            codes=[c for c in question_codes(question) if c in context.flat],
                            echo=claims(question), echo_words=content_words(question))


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
    quote_refusals: bool = False  # the model declining is answered with the quote, not the refusal (see _accept)
    codes: list[str] = field(default_factory=list)  # codes the question names that the sources hold (flat_text form)
    echo: Claims = field(default_factory=lambda: claims(""))  # the figures the question itself says (_states)
    echo_words: set[str] = field(default_factory=set)  # ... and its words
    grounding: str = "generated"
    unsupported: list[str] = field(default_factory=list)
    stopped: bool = False     # the rest of the generation is not wanted: close the engine stream
    _buf: str = ""
    _sent: list[str] = field(default_factory=list)
    _closed: bool = False     # a sentence was refused: nothing after it is sent
    _known: set[str] | None = None  # the stems of the context's and the question's words (_foreign_words)
    _evidence_claims: Claims | None = None  # the claims of the evidence sentences (_off_evidence)

    def fresh(self) -> "GuardedReply":
        """A new reply under the same evidence and context (one per choice; the evidence is computed once)."""
        return GuardedReply(self.evidence, self.context, self.marker, self.refusal, anchors=self.anchors,
                            labels=self.labels, asks=self.asks, quote_refusals=self.quote_refusals, codes=self.codes,
                            echo=self.echo, echo_words=self.echo_words)

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
        if self.quote_refusals and self.evidence and _is_refusal(sentence, self.refusal or ""):
            # the gate let the question through and the sources hold an answering sentence: a small model declines
            # in-domain and trap questions alike (knowledge.model_refusal), so the quote answers instead
            self.grounding = "extractive"
            self.stopped = self._closed = True
            return ""
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
        bad = (_bare(self._strip_marker(sentence)) or self.context.unsupported(sentence, self.anchors)
               or self._off_evidence(sentence)
               or self._foreign_words(sentence) or self._code_unsaid(sentence) or self._lead_unsaid(sentence))
        if bad:
            self.unsupported.extend(bad)
            self.grounding = "extractive"
            self.stopped = self._closed = True
            return ""
        if not self._sent and self.marker and not sentence.lstrip().startswith(self.marker):
            sentence = f"{self.marker} {sentence.lstrip()}"
        self._sent.append(sentence)
        return sentence

    def _off_evidence(self, sentence: str) -> list[str]:
        """The figures and the documents' own names a sentence states that none of the best-matching sentences holds:
        a small model reading a table or a list states the neighbouring row's value ("the Sloop is $32", the Schooner's
        price; "the German region's partner is Jurong Edge", Singapore's), each figure found somewhere in the context.
        What answers the question is in the evidence; a fact from elsewhere is a fact about something else."""
        if not self.evidence:
            return []
        if self._evidence_claims is None:
            self._evidence_claims = claims(" ".join(e.text for e in self.evidence))
        c, held = claims(self._strip_marker(sentence)), self._evidence_claims
        bad = sorted((c.numbers - held.numbers) | (c.codes - held.codes))
        bad += sorted(n for n in self.context.distinctive(c.names) if n not in held.names)
        return [f"{x}~evidence" for x in bad]

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

    def _code_unsaid(self, sentence: str) -> list[str]:
        """A question about a code ("What does error BH-3320 mean?") is answered first by a sentence that names it: a
        small model reading a table of codes describes a neighbouring row ("The bank refused the charge" is BH-3310)
        in words that hold no figure to check."""
        if not self.codes or not self._opening(sentence) or any(c in flat_text(sentence) for c in self.codes):
            return []
        return [f"~{c}" for c in self.codes]

    def _lead_unsaid(self, sentence: str) -> list[str]:
        """The reply's first sentence must state the best-matching sentence (or the best one for a part of a two-part
        question): a small model's opening that states a neighbouring fact ("the largest page size is 200 by default",
        the default being 50) is where a wrong figure reads as the answer, before the quote corrects it."""
        if not self.evidence or not self._opening(sentence):
            return []
        lead = [self.evidence[0], *(e for e in self.evidence[1:] if e.part)]
        return [] if any(self._states(e, sentence) for e in lead) else ["~lead"]

    def _opening(self, sentence: str) -> bool:
        """Whether `sentence` is the reply's first with words of its own (the persona's "Ahoy!" alone has none): a
        sentence failing a check closes the reply, so what the opening rules let through is the opening."""
        return (bool(content_words(self._strip_marker(sentence)))
                and not any(content_words(self._strip_marker(x)) for x in self._sent))

    def _states(self, e: Evidence, text: str | None = None) -> bool:
        """True when `text` (by default the reply sent so far) states the evidence sentence: all its figures of the kind
        the question asks for first ("7 daily and 6 monthly backups" for "how many"), one of its figures when it holds
        none of that kind or is a table row, most of its words when it has no figure; and one of its commands or flags
        (in backticks) when it writes any. A small model that reads the right document often states a neighbouring
        fact of it: a fact found elsewhere in the sources does not stand in for the best-matching one."""
        text = self.released if text is None else text
        spans = code_spans(e.text)  # "Flag: `--debug`; Meaning: Print each HTTP request": the flag is the answer
        if spans:
            flat = flat_text(text)
            if not any(x in flat for x in spans):
                return False
        said = claims(text)
        facts = claims(e.text)
        # the question's own figures are no answer: "The v1 endpoints are still working" repeats the "v1" of "Does v1
        # still work?" and states nothing of "v1 was retired on 30 June 2023 and answers 410 Gone"
        numbers, codes = facts.numbers - self.echo.numbers, facts.codes - self.echo.codes
        if not (facts.numbers or facts.codes):  # a sentence without figures: the reply must say most of its words
            words = content_words(e.text)
            return len(words & content_words(text)) >= max(1, len(words) / 2)
        if not (numbers or codes):  # its figures are the question's ("BH-3320  Account past due. An invoice is
            # overdue ..."): the reply must say some of what it adds to them ("BH-3320 means your account is past due")
            words = content_words(e.text) - self.echo_words
            return len(words & content_words(text)) >= max(1, len(words) / 4)
        spans = [_words_at(e.text, m) for m in self.asks[0].finditer(e.text)] if self.asks else []
        asked = claims(" ".join(spans))
        if _ROW.match(e.text) or not (asked.numbers or asked.codes):  # a table row holds alternatives (vCPU, RAM,
            return bool((said.numbers & numbers) or (said.codes & codes))  # price): one of them answers
        return asked.numbers <= said.numbers and asked.codes <= said.codes  # all the sentence's figures of that kind

    def _quoted(self) -> list[Evidence]:
        """The evidence a quote is made of: the best sentence and up to QUOTE_K - 1 close runners-up. The best
        sentence is right about 7 times in 10 on the dev QA; with its runners-up the fact is quoted 8 times in 10
        (two-part answers too: "locked after 10 tries; the lock lasts 30 minutes")."""
        best = self.evidence[0]
        if best.member:  # a question listing a table's rows: all of them
            return [e for e in self.evidence if e.member]
        parts = [best]
        for e in self.evidence[1:]:
            if len(parts) == QUOTE_K:
                break
            share = RUNNER_UP if e.source == best.source else RUNNER_UP_OTHER
            entry = e.source == best.source and _entry(e) is not None and _entry(e) == _entry(best)
            wider = next((i for i, p in enumerate(parts) if _widens(e, p)), None)
            if wider is not None:  # the best sentence with the short one before it that says the answer
                parts[wider] = e
                continue
            if (e.score < share * best.score and not e.part and not entry) or any(_overlap(e, p) for p in parts):
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


def _entry(e: Evidence) -> str | None:
    """The code an entry of a code table opens with ("BH-7230  Port 25 blocked. Outbound SMTP on port 25 is blocked
    ... Ask support to unblock it after 60 days, or send mail through port 587."): its sentences are one answer, what
    the code means and what to do, and are quoted together whatever their scores."""
    m = re.match(r"([A-Za-z]{1,5}-\d{2,})\b", e.text)
    return m.group(1) if m else None


def _bare(sentence: str) -> list[str]:
    """A 'sentence' of figures and citations alone ("[1] 2019."): it says of nothing what the figure is, so the quote
    says it instead."""
    words = content_words(sentence)
    return ["~bare"] if words and not any(c.isalpha() for w in words for c in w) else []


def _widens(e: Evidence, p: Evidence) -> bool:
    """Whether `e` is `p` with more of its source's sentences around it and scores nearly as well (WIDER_SHARE): "Live
    service status is published at status.byteharbor.cloud." is too short to be quoted alone and goes with "The page
    is hosted with an outside provider ...", which alone scored a little higher for "where do i check if you're down?"
    and was quoted without the address. A table row is never widened: it stands alone."""
    return (e.source == p.source and p.text in e.text and e.text != p.text and e.score >= WIDER_SHARE * p.score
            and not _ROW.match(p.text))


def _overlap(a: Evidence, b: Evidence) -> bool:
    """Whether two pieces of evidence share a sentence ("Hours: 9 to 5. +1 902 555 0188" and "+1 902 555 0188, a
    five-minute walk from ..." would say the number twice), or one's text holds the other's."""
    shared = a.span is not None and b.span is not None and a.span[0] <= b.span[1] and b.span[0] <= a.span[1]
    return shared or a.text in b.text or b.text in a.text


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


# the model declining in its own words; a guess declines too ("The documents don't give the year, so I'll guess it's
# 2019.": every figure of it is in the context, so the claim check let a made-up year through)
_REFUSING = re.compile(r"\b(don'?t|do not|can'?t|cannot|couldn'?t) (know|say|find|tell|cover|answer)|"
                       r"\bnot (sure|covered|in (my|the) (documents|charts))|\bbeyond my\b|\bno information\b|"
                       r"\b(documents?|sources?|charts?|records?|context) (don'?t|do not|doesn'?t|does not) "
                       r"(give|mention|state|specify|list|include|provide|say)\b|"
                       r"\b(i'?ll|i will|i'?d|i would|let me|i can only|i) guess\b|\bmy (best )?guess\b", re.I)


def _is_refusal(sentence: str, refusal: str) -> bool:
    """The model declined: it says so in its own words, or echoes the persona's refusal."""
    if _REFUSING.search(sentence):
        return True
    mine, theirs = content_words(sentence), content_words(refusal)
    return bool(theirs) and len(mine & theirs) >= max(2, len(theirs) // 2)
