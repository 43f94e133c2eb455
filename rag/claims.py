"""Checkable claims in a text: numbers, amounts, dates, versions, codes and proper names, normalised so that "$14",
"14 USD" and "14.00" are one claim. The faithfulness guard (rag/guard.py) asks: is every claim of the generated answer
somewhere in the retrieved context? A small model copies the right citation and then invents the number; this is what
catches it. Pure text functions, no model: fast enough to run on every sentence of a stream."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_CODE_SPAN = re.compile(r"`([^`\n]{2,})`")
_LIST_NUMBER = re.compile(r"(?m)^\s*\d+[.)]\s+")
_TOKEN = re.compile(r"[$€£]?[A-Za-z0-9][A-Za-z0-9.,:/_%+\-]*")
_NUMBER = re.compile(r"^[$€£]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$|^[$€£]?\d+(?:\.\d+)?%?$")
_MONEY_AFTER = re.compile(r"\s?(usd|eur|gbp|dollars?|euros?)\b", re.I)
ROW = re.compile(r"^[^:;]{1,40}: [^;]+(?:; [^:;]{1,40}: [^;]+)+$")  # a table row as "Key: value; Key: value"
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*|[\"'(*\-]\s*)$")
# Capitalised words that name nothing (sentence openers after a comma, interjections, the pronoun I, weekdays and
# months are still checked since they carry dates).
_NOT_NAMES = {"i", "ok", "okay", "yes", "no", "hi", "hello", "thanks", "please", "note", "tip", "step", "q", "a",
              "usd", "eur", "gbp"}


def normalise_number(token: str) -> str | None:
    """'$1,400.00' -> '1400', '99.95%' -> '99.95', '0.009' -> '0.009'; None when it is not a plain number."""
    t = token.rstrip(".,:;")
    if not _NUMBER.match(t):
        return None
    t = t.lstrip("$€£").rstrip("%").replace(",", "")
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    t = t.lstrip("0") or "0"
    return "0" + t if t.startswith(".") else t


def strip_scaffold(text: str) -> str:
    """Citation markers and list numbering are not claims."""
    return _LIST_NUMBER.sub("", _CITATION.sub(" ", text))


WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = set("a an and are as at be by can do does for from how i if in is it its my of on or our so that the their "
            "then there these this to was we what when where which who why will with you your me much many did has "
            "have get each per any all some use using used need make much many more most also just only".split())


def content_words_raw(text: str) -> set[str]:
    """Lower-cased words without stop words, unstemmed (for look-ups in the documents' own words)."""
    return {w for w in WORD.findall(text.lower()) if w not in STOP_WORDS and len(w) > 2}


@dataclass
class Claims:
    numbers: set[str] = field(default_factory=set)   # normalised numeric values
    codes: set[str] = field(default_factory=set)     # tokens mixing letters and digits (fra1, t3.micro, E1042, 2FA)
    names: set[str] = field(default_factory=set)     # capitalised words past a sentence start, and acronyms
    amounts: set[str] = field(default_factory=set)   # numbers said as money ("$3", "3 USD"): "$3" is not "3 TB"

    def all(self) -> set[str]:
        return self.numbers | self.codes | self.names

    def __bool__(self) -> bool:
        return bool(self.numbers or self.codes or self.names)


def claims(text: str) -> Claims:
    """The checkable claims of a text (lower-cased codes and names, normalised numbers)."""
    out = Claims()
    text = strip_scaffold(text)
    for m in _TOKEN.finditer(text):
        tok = m.group(0).rstrip(".,:;/-")
        if not tok:
            continue
        num = normalise_number(tok)
        if num is not None:
            out.numbers.add(num)
            if tok[0] in "$€£" or _MONEY_AFTER.match(text, m.end()):
                out.amounts.add(num)
            continue
        has_digit = any(c.isdigit() for c in tok)
        if has_digit:
            code = tok.lstrip("$€£").lower()
            if any(c.isalpha() for c in code):
                out.codes.add(code)
            else:  # 9:00, 2025-02-01, 1/64: compare the pieces as numbers
                out.numbers.update(n for n in (normalise_number(p) for p in re.split(r"[:/\-]", code) if p) if n)
            continue
        word = tok.strip("'’").lower()
        if len(word) < 2 or word in _NOT_NAMES:
            continue
        acronym = tok.isupper() and len(tok) > 1
        if acronym or (tok[0].isupper() and not _SENTENCE_START.search(text[:m.start()])):
            out.names.add(word)
    return out


def unknown_codes(question: str, texts: list[str]) -> list[str]:
    """Codes the question names (a letter-led token with a digit: BH-5099, fra9, t3.micro; not "8-core") that none of
    the texts holds. Retrieval ranks BH-5099 next to the documented BH-5017, so the score gate cannot tell them apart;
    the exact string can."""
    flat = flat_text("\n".join(texts))
    return [c for c in question_codes(question) if not holds_code(flat, c)]


def holds_code(flat: str, code: str) -> bool:
    """Whether a flat_text() holds a code as written or in pieces (_held_apart)."""
    return code in flat or _held_apart(code, flat)


def _held_apart(code: str, flat: str) -> bool:
    """A code the sources write in pieces: a path whose parts they hold ("api.byteharbor.cloud/v1": the host and "v1"),
    or a word glued to its number with a short gap between them in the sources ("iso27001": "ISO/IEC 27001")."""
    if "/" in code:
        return all(p in flat for p in code.split("/") if p)
    m = re.fullmatch(r"([a-z]{2,})(\d{2,})", code)
    return m is not None and re.search(rf"{m.group(1)}\D{{1,5}}{m.group(2)}(?!\d)", flat) is not None


def question_codes(question: str) -> list[str]:
    """The codes a question names, lower-cased and sorted: letter-led tokens with a digit (BH-5099, fra9, t3.micro)."""
    return [c for c in sorted(claims(question).codes) if c[0].isalpha()]


def code_spans(text: str) -> list[str]:
    """The commands and flags a text writes in backticks, as flat_text() writes them ("`bhc  login`" -> "bhclogin")."""
    return [flat_text(x) for x in _CODE_SPAN.findall(text)]


def flat_text(text: str) -> str:
    """Lower-cased without whitespace: how a code is looked up in a text ("BH-3320  Account" holds "bh-3320")."""
    return re.sub(r"\s+", "", text.lower())


class Context:
    """The text an answer may draw on (retrieved chunks + persona + question), indexed for claim look-ups."""

    def __init__(self, *texts: str, names_only: str = ""):
        body = "\n".join(texts)
        c = claims(body)
        self.numbers = c.numbers
        self.amounts = c.amounts
        # (facts, words) per statement: a fact said of something must be said of it somewhere. A statement's words
        # include its chunk's heading and the statement before it ("Frankfurt ... It opened in 2019."), unless both
        # are table rows: sibling rows are alternatives, and the Schooner's "$32" is not said of the Sloop above it.
        self.statements: list[tuple[set[str], set[str]]] = []
        self.word_statements: dict[str, int] = {}
        self.named: list[set[str]] = []  # the words of each statement that names something (same rule)
        self.named_counts: Counter[str] = Counter()  # in how many of those each word is (distinctive())
        for chunk in texts:
            heading, prev, prev_row = None, set(), False
            for part in re.split(r"\n|(?<=[.!?])\s+", chunk):
                words = set(re.findall(r"[a-z0-9]+", part.lower()))
                if heading is None:
                    heading = words
                row = bool(ROW.match(part.strip()))
                pc = claims(part)
                facts = pc.numbers | pc.codes | {"$" + a for a in pc.amounts}
                about = words | (set() if row and prev_row else prev) | heading
                if facts:
                    self.statements.append((facts, about))
                    for w in words:
                        self.word_statements[w] = self.word_statements.get(w, 0) + 1
                if pc.names:
                    self.named.append(about)
                    self.named_counts.update(about)
                prev, prev_row = words, row
        self.body_words = set(re.findall(r"[a-z0-9]+", body.lower()))
        self.flat = flat_text(body)
        # names may also come from the persona and the question (the user's own words introduce no fact)
        self.free = set(re.findall(r"[a-z0-9]+", names_only.lower()))
        self.words = self.body_words | self.free

    def supports_number(self, n: str) -> bool:
        return n in self.numbers

    def supports_code(self, code: str) -> bool:
        if code in self.flat:
            return True
        parts = [p for p in re.split(r"[^a-z0-9]+", code) if p]
        return bool(parts) and all(p in self.words or normalise_number(p) in self.numbers for p in parts)

    def supports_name(self, name: str) -> bool:
        parts = re.findall(r"[a-z0-9]+", name)
        return all(p in self.words or (p.endswith("s") and p[:-1] in self.words) for p in parts)

    def anchors(self, question: str) -> set[str]:
        """The question's most distinctive words that the documents hold: those in the fewest fact statements, when
        that is at most a third of them ("sloop", "frankfurt"; not "server" or "month")."""
        counts = {w: self.word_statements[w] for w in content_words_raw(question) if self.word_statements.get(w)}
        if not counts or min(counts.values()) > max(1, len(self.statements) // 3):
            return set()
        least = min(counts.values())
        return {w for w, n in counts.items() if n == least}

    def unsupported(self, text: str, anchors: set[str] | None = None) -> list[str]:
        """Claims of `text` found nowhere in the context, in a stable order (empty: faithful). With `anchors` (see
        anchors()), each fact must also be stated in the documents about one of them (call it on one sentence)."""
        c = claims(text)
        bad = [n for n in sorted(c.numbers) if not self.supports_number(n)]
        bad += [f"${a}" for a in sorted(c.amounts) if a not in self.amounts]
        bad += [x for x in sorted(c.codes) if not self.supports_code(x)]
        bad += [x for x in sorted(c.names) if not self.supports_name(x)]
        # a command or flag in backticks is used as written: it must be in the documents as one piece
        bad += [f"`{x}`" for x in _CODE_SPAN.findall(text) if flat_text(x) not in self.flat]
        if not bad:
            bad = self.misattributed(c, anchors or set())
        return bad

    def misattributed(self, c: Claims, anchors: set[str]) -> list[str]:
        """Numbers, amounts and codes stated together with names of the documents ("the Sloop costs $6"), or in
        answer to a question about something distinctive (`anchors`), must occur in one statement of the context
        together with one of those names or anchors ($6 is the Dinghy's price, not the Sloop's)."""
        about = anchors or {n for n in c.names if n in self.body_words}
        if not about:
            return []
        bad = []
        for fact in sorted(c.numbers | c.codes | {"$" + a for a in c.amounts}):
            if not any(fact in facts and about & words for facts, words in self.statements):
                bad.append(f"{fact}@{'+'.join(sorted(about))}")
        if anchors:  # names too: "Toronto's partner is Bedford Basin Data Park" (Halifax's partner, in the next row)
            bad += [f"{n}@{'+'.join(sorted(anchors))}" for n in sorted(self.distinctive(c.names))
                    if not any(n in words and anchors & words for words in self.named)]
        return bad

    def distinctive(self, names: set[str]) -> set[str]:
        """The names of the documents that say which thing a sentence is about: not the persona's or the user's own
        words, not those in a third or more of the naming statements ("Byte Harbor")."""
        most = max(1, len(self.named) // 3)
        return {n for n in names - self.free if n in self.body_words and self.named_counts[n] <= most}
