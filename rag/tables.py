"""The tables of the knowledge: a question that asks to list what a table enumerates gets the whole table.

Tables reach the index linearised one row per line ("Region code: hfx1; City: Halifax; ...", rag/chunking.py) and a
long one is cut across chunks. "Which regions can I deploy servers in?" asks for every row of the region list, but its
embedding lands on the prose about regions ("Each region is a separate data center ..."), and when the list's chunk
is found at all it holds a part of the rows. A table is known by what its first column holds (the first word of the
first key: "Region code" -> region, "Plan" -> plan), and a question asks to list it when it names the plural after
"which", "what", "list" or "all" ("what plans do you have?", "list all regions"). A question about one row ("Which
region has a Lisbon data center?") names no plural and is answered by its best row as before. A question naming one
of a table's values ("the 4-core box", "vCPU: 4") gets the table too: its row may be in a chunk not found. One about a table's
extreme ("which region is the newest?") by comparing the values of the rows retrieved (rag/evidence.py). Whole
tables are not pulled in for those: "largest", "smallest" and "first" ask about page sizes, staff and funding rounds
as often as about a table's prices or years (dev: 3 right answers lost, 2 gained); "cheapest" and "most expensive"
ask for a price, and a table with a price in every row is read whole (dev: 3 gained, none lost; held-out unchanged).

The index is built from the stored chunks' texts (Retriever.tables(), once per version of the index)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from rag.claims import ROW


@dataclass
class Table:
    path: str
    keys: tuple[str, ...]                             # the lower-cased keys of its rows, in order
    chunk_ids: list[str] = field(default_factory=list)  # the chunks holding its rows, in the document's order
    rows: list[str] = field(default_factory=list)        # its rows as written, each once, in the document's order

    @property
    def noun(self) -> str:
        """What the first column holds: the first word of the first key ("region code" -> "region")."""
        words = re.findall(r"[a-z]+", self.keys[0])
        return words[0] if words else ""


# the superlatives that can only compare prices (not "smallest" or "largest": page sizes, staff, funding rounds)
_CHEAPEST = r"cheapest|least expensive|lowest[- ]priced"
_DEAREST = r"most expensive|priciest"
# a question about the extreme of a table: (what it says, which values compare, True: the largest wins)
SUPERLATIVES = [
    (re.compile(r"\b(newest|latest|most recent(?:ly)?|youngest)\b", re.I), "year", True),
    (re.compile(r"\b(oldest|first|earliest)\b", re.I), "year", False),
    (re.compile(rf"\b({_CHEAPEST}|smallest|entry[- ]level)\b", re.I), "money", False),
    (re.compile(rf"\b({_DEAREST}|biggest|largest|top[- ]tier)\b", re.I), "money", True),
]
_VALUE = {"year": re.compile(r"(19|20)\d\d"), "money": re.compile(r"[$€£]\d[\d,]*(\.\d+)?")}


def superlatives(question: str) -> list[tuple[str, bool]]:
    """(the kind of value compared, whether the largest wins) for each way the question asks for a table's extreme
    ("the cheapest plan for my first server" says "first" too: the kind the rows hold decides). An extreme that only
    says which thing is meant asks for none: a yes/no question ("Is phone support included if I only have the
    cheapest server plan?"), a condition ("if", "when") or a count of it ("How many of the largest 8-core servers can a
    new account run?") is answered by what it says of that thing, not by the table's row."""
    found = [(m, kind, largest) for said, kind, largest in SUPERLATIVES for m in [said.search(question)] if m]
    return [(kind, largest) for m, kind, largest in found if not _only_names(question, m.start())]


_YES_NO = re.compile(r"\s*(?:is|are|can|could|do|does|will|would|should)\b", re.I)
_NAMING = re.compile(r"\b(?:if|when|how many of)\b[^?.,;]*$", re.I)


def _only_names(question: str, at: int) -> bool:
    """Whether the superlative at `at` only names the thing asked about (see superlatives)."""
    return bool(_YES_NO.match(question) or _NAMING.search(question[:at]))


def row_value(row: str, kind: str) -> float | None:
    """The row's first value of that kind ("Price per month: $14" -> 14.0 for money), None without one."""
    for field_ in row.rstrip(".").split("; "):
        value = field_.partition(": ")[2].strip()
        if _VALUE[kind].fullmatch(value):
            return float(value.lstrip("$€£").replace(",", ""))
    return None


def row_keys(row: str) -> tuple[str, ...]:
    """'Plan: Sloop; vCPU: 2' -> ('plan', 'vcpu')."""
    return tuple(f.partition(": ")[0].strip().lower() for f in row.rstrip(".").split("; "))


def asks_to_list(question: str, noun: str) -> bool:
    """Whether the question asks for every `noun` ("which regions can I deploy in?", "what plans do you have?",
    "list all regions") rather than for one ("which region opened last?")."""
    if not noun:
        return False
    plural = rf"{noun}(?:s|es)" if not noun.endswith("y") else rf"(?:{noun}s|{noun[:-1]}ies)"
    asked = re.search(rf"\b(?:which|what|list|all)\b(?:\s+[\w-]+){{0,2}}?\s+{plural}\b(?!\s+{_ONE})", question, re.I)
    return asked is not None and not _PICKS_ONE.search(question)


# "which of your services has the strongest uptime promise?" picks one row: a verb in the singular after the plural,
# or a superlative
_ONE = r"(?:has|is|was|offers|gives|costs|includes)\b"
_PICKS_ONE = re.compile(r"\b(?:most|least|best|worst|cheapest|priciest|newest|oldest|latest|earliest|biggest|"
                        r"largest|smallest|highest|lowest|strongest|weakest|fastest|slowest|longest|shortest)\b", re.I)


class TableIndex:
    """The tables of a set of chunks, by path and keys; a table needs two rows or more."""

    def __init__(self, chunks: Iterable[tuple[str, str, dict]]):
        found: dict[tuple[str, tuple[str, ...]], list[tuple[int, int, str, str]]] = {}
        for cid, text, meta in chunks:
            ordinal = int(meta.get("ordinal") or 0)
            for n, line in enumerate((text or "").splitlines()):
                if ROW.match(line.strip()):
                    key = (str(meta.get("path", "")), row_keys(line.strip()))
                    found.setdefault(key, []).append((ordinal, n, cid, line.strip()))
        self.tables: list[Table] = []
        for (path, keys), rows in found.items():
            rows.sort()
            unique = list(dict.fromkeys(r for *_, r in rows))  # chunks overlap: a row at a boundary is written twice
            if len(unique) >= 2:
                self.tables.append(Table(path, keys, list(dict.fromkeys(c for _, _, c, _ in rows)), unique))

    def asked(self, question: str) -> list[Table]:
        """The tables the question asks to list (see asks_to_list)."""
        return [t for t in self.tables if asks_to_list(question, t.noun)]

    def valued(self, question: str) -> list[Table]:
        """The tables with a row holding a value the question names ("the 4-core box": "vCPU: 4"; "the $14 server":
        "Price per month: $14"): the row that answers may sit in a chunk the question's words did not find."""
        asked = question_quantities(question)
        return [t for t in self.tables if asked and any(holds_quantity(r, asked) for r in t.rows)]

    def priced(self, question: str) -> list[Table]:
        """The tables with a price in every row, for a question asking for the cheapest or the dearest ("whats the
        cheapest server u guys sell"): the extreme row is found by comparing all of them, and a chunk of the table
        holds only some (its first chunk, with the cheapest row, was not among those found)."""
        if not _PRICE_EXTREME.search(question):
            return []
        return [t for t in self.tables if all(row_value(r, "money") is not None for r in t.rows)]


_PRICE_EXTREME = re.compile(rf"\b({_CHEAPEST}|{_DEAREST}|dearest)\b", re.I)


def row_numbers(row: str) -> set[str]:
    """The numbers a row's values are written with ("vCPU: 4; RAM: 8 GB; Price per month: $32" -> 4, 8, 32)."""
    return {n for n, _ in row_quantities(row)}


# units written in other words: "32 gigs of memory" is "RAM: 32 GB", "the 4-core box" is "vCPU: 4"
_UNITS = {"gb": "gb", "gig": "gb", "gigs": "gb", "gigabyte": "gb", "gigabytes": "gb", "tb": "tb", "terabyte": "tb",
          "terabytes": "tb", "core": "cpu", "cores": "cpu", "cpu": "cpu", "cpus": "cpu", "vcpu": "cpu", "vcpus": "cpu"}
_QUANTITY = re.compile(r"([$€£])?(?<![\w.])(\d+(?:\.\d+)?)(?![\d.])(?:\s*-?\s*([a-z]+))?", re.I)


def _unit(word: str | None) -> str | None:
    return _UNITS.get(word.lower()) if word else None


def row_quantities(row: str) -> set[tuple[str, str | None]]:
    """(number, unit) of each of a row's values: the unit written after it, "$" before it, else what its key names
    ("vCPU: 4" -> ("4", "cpu"); "RAM: 8 GB" -> ("8", "gb"); "Price per month: $32" -> ("32", "$"))."""
    out = set()
    for f in row.rstrip(".").split("; "):
        key, _, value = f.partition(": ")
        for cur, n, word in _QUANTITY.findall(value):
            out.add((n, "$" if cur else _unit(word) or _unit(key.strip()) or None))
    return out


def question_quantities(question: str) -> set[tuple[str, str | None]]:
    """(number, unit or None) the question names ("the 4-core box" -> ("4", "cpu"); "the $14 server" -> ("14",
    "$"); "plan 2" -> ("2", None))."""
    return {(n, "$" if cur else _unit(word)) for cur, n, word in _QUANTITY.findall(question)}


def holds_quantity(row: str, asked: set[tuple[str, str | None]]) -> bool:
    """Whether a row has a value the question names, in the same unit when the question gives one: "4-core" is not
    the "RAM: 4 GB" of another row."""
    held = row_quantities(row)
    return any((n, u) in held if u else any(n == m for m, _ in held) for n, u in asked)
