"""Ordinary English words, to tell a term a customer types in lower case ("is there a managed kubernetes service?",
"a region in tokyo?") from a word of the language: the retriever's unknown-name check (rag/retrieve.py) reads
capitals, and customers in a chat often type none.

The word lists are Webster's 2nd and GCIDE (PyPI `english-words`, offline): dictionaries of the language, not of
products or places, so "kubernetes", "tokyo" and "mumbai" are in neither, while "flaky" or "hammering" are. A word is
ordinary when it, a stem of it ("cheapest" -> "cheap", "aren" -> "are"), or both halves of it ("headcount",
"walkthrough", "github") are listed, or when it is chat shorthand ("ppl", "atm").

Also the look-ups in the documents' own vocabulary that the unknown-name check makes (a term starting with a word,
a word glued to a number)."""

from __future__ import annotations

import bisect
import functools
import re

# chat shorthand: not names, whatever the dictionaries say
SHORTHAND = frozenset(
    "atm asap btw fyi idk imo imho lol ppl pls plz thx tbh rn ur u ya yeah yep nope gonna wanna gotta kinda sorta "
    "dunno lemme gimme hey hi hello ok okay thanks cheers pic pics info convo approx".split())
# inflections: (suffix, what replaces it)
_STEMS = (("ies", "y"), ("iest", "y"), ("ier", "y"), ("ied", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"),
          ("d", ""), ("ing", ""), ("ing", "e"), ("est", ""), ("est", "e"), ("er", ""), ("er", "e"), ("ly", ""),
          ("n", ""))  # "aren" (aren't) -> "are", "doesn" -> "does"
MIN_PART = 3  # letters in each half of a compound ("head" + "count"; not "to" + "kyo")
_PARTICLES = ("up", "in", "on", "out", "off")  # a compound's short second half: "signup", "addon", "checkout"


@functools.lru_cache(maxsize=2)
def _words(common: bool = False) -> frozenset[str]:
    """Both lists' words; `common`: the words both list (the halves of a compound: web2 alone lists "bai", so
    "mumbai" would be "mum" + "bai")."""
    from protege.errors import require

    ew = require("english_words", "rag")
    web2, gcide = (ew.get_english_words_set([name], lower=True, alpha=True) for name in ("web2", "gcide"))
    return frozenset(web2 & gcide if common else web2 | gcide)


def _listed(word: str, common: bool = False) -> bool:
    words = _words(common)
    if word in words:
        return True
    for suffix, repl in _STEMS:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_PART:
            stem = word[: -len(suffix)] + repl
            if stem in words or (stem[-1:] == stem[-2:-1] and stem[:-1] in words):  # "bigger" -> "bigg" -> "big"
                return True
    return False


def ordinary(word: str) -> bool:
    """Whether a lower-case word is a word of the language (see the module doc)."""
    word = word.lower()
    if word in SHORTHAND or not re.fullmatch(r"[a-z]+", word) or _listed(word):
        return True
    if word.endswith("n") and word[:-1] in _words():  # "isn" (isn't) -> "is"
        return True
    if any(word.endswith(p) and _listed(word[: -len(p)], True) for p in _PARTICLES if len(word) - len(p) >= MIN_PART):
        return True
    return any(_listed(word[:i], True) and _listed(word[i:], True) for i in range(MIN_PART, len(word) - MIN_PART + 1))


def one_edit(word: str) -> set[str]:
    """The words one deletion, transposition, substitution or insertion away ("pasword" -> "password"): a typo of a
    word the documents use is that word."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return ({a + b[1:] for a, b in splits if b} | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
            | {a + c + b[1:] for a, b in splits if b for c in letters} | {a + c + b for a, b in splits for c in letters})


# --- the documents' vocabulary (a sorted list of BM25 terms, rag/bm25_index.py) -----------------------------------

def in_sorted(vocab: list[str], token: str) -> bool:
    i = bisect.bisect_left(vocab, token)
    return i < len(vocab) and vocab[i] == token


def has_prefix(vocab: list[str], token: str, whole: bool = False) -> bool:
    """Whether a term starts with `token`; `whole`: one that is the token, its plural or the token and a number
    ("apis", "tls1")."""
    i = bisect.bisect_left(vocab, token)
    if not whole:
        return i < len(vocab) and vocab[i].startswith(token)
    while i < len(vocab) and vocab[i].startswith(token):
        rest = vocab[i][len(token):]
        if rest in ("", "s") or rest.isdigit():
            return True
        i += 1
    return False


def known_pieces(token: str, vocab: list[str]) -> bool:
    """A token of letters and digits written together that the documents write apart: each run of letters is a known
    word ("soc2": "SOC 2", "iso27001": "ISO/IEC 27001"), or a number's plural ("429s"). A single letter is no word
    ("t3" stays unknown)."""
    if re.fullmatch(r"\d+s", token):
        return True
    letters = re.findall(r"[a-z]+", token)
    return (bool(letters) and token != "".join(letters)
            and all(len(x) >= 2 and has_prefix(vocab, x, whole=True) for x in letters))


def unknown_terms(question: str, vocab: list[str], prefixed: set[str]) -> list[str]:
    """Words typed in lower case that the documents never use (no term starts with them; `prefixed`: their terms less
    the first letter, "cpu" of "vcpu") and that are no English word: a name typed without its capital ("is there a
    managed kubernetes service?", "a region in tokyo?"). A typo of a word of the documents ("pasword") is that word."""
    from rag.bm25_index import bm25_tokens

    terms = set(vocab)
    out = []
    for w in dict.fromkeys(re.findall(r"(?<![\w'’-])[a-z]{3,}(?![\w'’-])", question)):
        t = (bm25_tokens(w) or [""])[0]
        if not t or has_prefix(vocab, t) or t in prefixed or ordinary(w):
            continue
        if len(w) >= 5 and one_edit(w) & terms:
            continue
        out.append(w)
    return out
