"""Ranked retrieval: dense cosine top-k, optional BM25 fusion by reciprocal rank, optional cross-encoder rerank.

Scores and the gate. The confidence gate (`knowledge.min_score`) compares against the FINAL scores, which always live
in [0, 1] and mean the same thing whatever ranks them:
- dense only: the cosine similarity of question and chunk (1 - Chroma's cosine distance, clamped at 0); with sentence
  vectors (`knowledge.sentence_vectors`, rag/sentence_store.py) the better of the chunk's and its best sentence's;
- hybrid: reciprocal rank fusion (weight/(60 + rank) summed over the dense and the BM25 list) decides the ORDER, and
  each fused chunk keeps its cosine similarity as its score (BM25-only candidates get theirs computed from their
  stored vectors). RRF values themselves say nothing absolute (rank 1 always scores the same, relevant or not), so
  gating on them would let every out-of-domain question through; the cosine keeps the threshold's meaning. Weights:
  both 1 with chunk vectors alone (`lexical_weight=0.5` gave a better hit@1 on the dev questions but a worse hit@3);
  with sentence vectors BM25 counts half, since the dense list then finds the one sentence that answers: on every dev
  file hit@1 and hit@3 were as good or better at 0.5 (qa_dev2 hit@1 0.915 -> 0.936, qa_paraphrases hit@3 0.96 -> 1.0,
  train_qa hit@3 0.973 -> 1.0), and at 1 BM25 put first, for "How much does the Sloop server cost?", the chunk whose
  example says "backups for a Sloop server ($14 per month) cost $2.80";
- rerank: the cross-encoder's relevance probability (sigmoid of its logit), which is already in [0, 1]; the order and
  the score both come from it, so `protege rag calibrate` must be re-run after turning rerank on or off.
Then, when the question names something (a capitalised word, an acronym, a code) that occurs nowhere in the documents,
every final score is multiplied by `knowledge.unknown_name_factor` (0.5 by default; the demo sets 0: refused):
embeddings rate "What is Google Cloud's SLA?" close to a document about our SLA, the missing name is what says the
documents cannot answer it. On the demo's dev questions a missing name marked 43 traps and 2 in-domain questions
("2fa", "HQ"); at 0.5 the gate's threshold had to stay high for named traps scoring 0.6 and more, and refused short
in-domain questions with them (dev calibration: balanced accuracy 0.831 at 0.5, 0.842 at 0). The default stays 0.5
because a default is part of every assistant's stage keys: changing it would retrain them all. Names
are found by their shape (a capital past the first word or inside a word, "iPhone"; all caps; letters with digits); an
acronym the documents spell out ("CFO": "Chief Financial Officer", capitalised on one line) or a plural acronym of a
known one is not missing. Such an acronym, when the documents never write it as it is, is also searched in their words
(expand(): "Who's the CFO? (chief financial officer)")."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rag.bm25_index import bm25_tokens  # noqa: F401  (re-exported: callers import it from here)
from rag.claims import flat_text, holds_code, question_codes
from rag.lexicon import equivalents as _equivalents
from rag.lexicon import has_prefix as _has_prefix
from rag.lexicon import in_sorted as _in_sorted
from rag.lexicon import known as _known
from rag.lexicon import known_pieces as _known_pieces
from rag.lexicon import spaced as _spaced
from rag.lexicon import with_synonyms as _with_synonyms
from rag.store import Hit, Store
from rag.types import Source

RRF_K = 60
DENSE_MARGIN = 0.1  # see _lift_closest


class Retriever:
    def __init__(self, store: Store, embedder, top_k: int = 4, hybrid: bool = False, rerank: str | None = None,
                 candidates: int | None = None, unknown_name_factor: float = 1.0, dense_weight: float = 1.0,
                 lexical_weight: float | None = None, sentences: bool = False, synonyms: dict[str, str] | None = None):
        """`synonyms`: an assistant's own names for what its documents say (rag/lexicon.load_synonyms)."""
        self.store, self.embedder, self.top_k = store, embedder, top_k
        self.equivalents = _with_synonyms(synonyms)  # a customer's phrase -> the documents' word (rag/lexicon.py)
        self.sentences = sentences  # a chunk's dense score is also its best sentence's (rag/sentence_store.py)
        # the weights of the two lists in the RRF sum; BM25 counts half once the dense list knows sentences (see the
        # module doc)
        self.dense_weight = dense_weight
        self.lexical_weight = lexical_weight if lexical_weight is not None else (0.5 if sentences else 1.0)
        self.unknown_name_factor = unknown_name_factor
        self.hybrid, self.rerank_path = hybrid, rerank
        self.candidates = candidates or max(4 * top_k, 20)
        # what is derived from the whole index, by name: ((BM25 index identity, version), value); see _per_version
        self._derived: dict[str, tuple[tuple[int, int], Any]] = {}
        self._cross = None

    def invalidate(self) -> None:
        """Call after the collection changed. The BM25 index follows the store by itself (store.bm25()); this only
        drops the text kept for spelled-out acronyms and name phrases, and the acronyms found spelled out in it."""
        for name in ("text", "spaced", "spelled", "tables"):
            self._derived.pop(name, None)

    def search(self, question: str, k: int | None = None, qvec: list[float] | None = None) -> list[Source]:
        """Final ranked sources, best first, no gate applied (`qvec`: the embedding of `expand(question)` if already
        known)."""
        k = k or self.top_k
        question = self.expand(question)
        if qvec is None:
            qvec = self.embedder.embed_query(question)
        n = max(k, self.candidates) if (self.hybrid or self.rerank_path) else k
        hits = self.store.query(qvec, n)
        best = self.store.sentences.best(qvec, n) if self.sentences else {}
        lexical = self._lexical(question, n) if self.hybrid else []
        if best or lexical:
            hits = self._lift(hits, best, lexical, qvec, n)
        if self.rerank_path:
            hits = self._rerank(question, hits)
        if self.hybrid and not self.rerank_path:
            hits = _lift_closest(hits, k)
        hits = _pin_codes(question, hits, k)[:k]
        if self.unknown_name_factor < 1.0 and hits and self.unknown_names(question):
            for h in hits:
                h.score *= self.unknown_name_factor
        return [_source(h) for h in hits]

    def search_many(self, questions: list[str], k: int | None = None) -> list[list[Source]]:
        """Like search() for many questions, embedding them in one batch (eval and calibration)."""
        vectors = self.embedder.embed([self.expand(q) for q in questions])
        return [self.search(q, k, v) for q, v in zip(questions, vectors)]

    def expand(self, question: str) -> str:
        """The question with each acronym the documents never write but spell out followed by its words: "Who's the
        CFO?" -> "Who's the CFO? (chief financial officer)". Neither the embedder nor BM25 links the two, so the
        question missed the leadership table and fell under the gate. An acronym the documents use as it is needs
        nothing (and "API" would match any "all plans include"). Customers type "cfo" too: a word of 3 or 4 small
        letters the documents never write is tried as an acronym (qa_dev6: "who's in charge of the money side at
        your company, like the cfo" found the refund policy first, the leadership table not at all)."""
        bm25 = self.store.bm25()
        vocab = bm25.terms()
        acronyms = [w for w in dict.fromkeys(salient_words(question)) if re.fullmatch(r"[A-Z]{3,6}", w)]
        # typed in lower case ("who's the cfo"): a short word the documents never write, tried as an acronym
        acronyms += [w.upper() for w in dict.fromkeys(re.findall(r"\b[a-z]{3,4}\b", question))
                     if not _in_sorted(vocab, w) and w.upper() not in acronyms]
        words = [phrase for w in acronyms if not _in_sorted(vocab, w.lower())
                 for phrase in [self._spelled(w, bm25)]
                 if phrase and phrase not in question.lower()]
        words += [w for w in _equivalents(question, vocab, self.equivalents) if w not in words]  # "head office"
        return f"{question} ({'; '.join(words)})" if words else question

    # --- hybrid -------------------------------------------------------------------------------------------------
    def _per_version(self, name: str, bm25, make: Callable[[], Any]) -> Any:
        """`make()`, kept under `name` until the BM25 index (hence the collection) changes."""
        key = (id(bm25), bm25.version)
        held = self._derived.get(name)
        if held is None or held[0] != key:
            held = self._derived[name] = (key, make())
        return held[1]

    def _all_text(self, bm25) -> str:
        """Every chunk's text as written, newline-joined in the store's order: only a question with an acronym or a
        name phrase needs it (is it spelled out somewhere?), so it is read from the store then, once per version of
        the index."""
        return self._per_version("text", bm25, lambda: "\n".join(
            (doc or "") for _, _, doc in self.store.iter_all(include=("documents",))))

    def tables(self):
        """The tables of the documents (rag/tables.py), found once per version of the index."""
        from rag.tables import TableIndex

        bm25 = self.store.bm25()
        return self._per_version("tables", bm25, lambda: TableIndex(
            (cid, text, meta) for cid, meta, text in self.store.iter_all(include=("metadatas", "documents"))))

    def unknown_names(self, question: str) -> list[str]:
        """Names in the question (capitalised words past the first, acronyms, codes like t3.micro) of which no
        token occurs in the documents, even as a prefix ("IP" matches "ip55"); pure numbers are not names. Only the
        sentences that ask are read (asking_part): the customer's own context names nothing to look up."""
        bm25 = self.store.bm25()
        vocab = bm25.terms()
        prefixed = self._prefixed(bm25, vocab)
        question = asking_part(question)
        missing = []
        for w in salient_words(question):
            if re.fullmatch(r"[A-Z]{2,}s", w):  # a plural acronym: "CPUs" names what "CPU" names
                w = w[:-1]
            w = _LIKENED.sub("", w)  # "EBS-style volumes" asks for volumes like EBS's: is "EBS" known?
            # "CFO": "Chief Financial Officer"
            if re.fullmatch(r"[A-Z]{3,6}", w) and self._spelled(w, bm25):
                continue
            said = self.equivalents.get(w.lower())
            if said and _known(vocab, said):  # "HQ": "headquarters"
                continue
            whole = len(w) >= 3 and w.isupper()  # an acronym of 3 letters or more is a whole word: COO is not "cool"
            for t in bm25_tokens(w):
                if t.isdigit() or _has_prefix(vocab, t, whole) or (w.isupper() and t in prefixed):  # "ip55" ~ "IP",
                    continue  # "vcpu" ~ "CPU"
                if _known_pieces(t, vocab):  # "soc2" ~ "SOC 2", "iso27001" ~ "ISO/IEC 27001", "429s" ~ "429"
                    continue
                missing.append(t)
        if not missing:  # each word is known, but is the name they make? "Chief Operating Officer", "Windows Server"
            for phrase in name_phrases(question):
                text = self._spaced_text(bm25)
                initials = "".join(w[0] for w in phrase.split())
                if f" {phrase} " not in text and initials not in vocab:  # "CFO" names "chief financial officer"
                    missing.append(phrase)
        return missing

    def _spelled(self, acronym: str, bm25) -> str | None:
        """_spelled_out(acronym, all text, capitals=True), searched once per acronym and version of the index: one
        question asks it in search(), in unknown_names() and again in expand() for the guard, and each search reads
        the whole corpus text."""
        held = self._per_version("spelled", bm25, dict)
        if acronym not in held:
            if len(held) > 10000:
                held.clear()
            held[acronym] = _spelled_out(acronym, self._all_text(bm25), capitals=True)
        return held[acronym]

    def corpus_text(self) -> str:
        """Every chunk's text (see _all_text), once per version of the index: what the whole documents write."""
        return self._all_text(self.store.bm25())

    def _spaced_text(self, bm25) -> str:
        """All text as single-spaced words (rag/lexicon.spaced), kept once per version of the index: a name phrase is
        looked up in it."""
        return self._per_version("spaced", bm25, lambda: _spaced(self._all_text(bm25)))

    def _prefixed(self, bm25, vocab: list[str]) -> set[str]:
        """Terms with their first letter dropped ("vcpu" -> "cpu", "esim" -> "sim"): a question's acronym "CPU" is
        the documents' vCPU. Kept once per version of the index."""
        return self._per_version("letter_dropped", bm25,
                                 lambda: {t[1:] for t in vocab if len(t) >= 4 and t[1:].isalpha()})

    def _lift(self, hits: list[Hit], best: dict[str, float], lexical: list[str], qvec: list[float],
              n: int) -> list[Hit]:
        """The dense list with sentences (each chunk scored by the better of its own cosine and its best sentence's;
        chunks found only through a sentence join it), fused with BM25's list when there is one. The chunks that only
        a sentence or BM25 found are read with their stored vectors in one call; a sentence whose chunk is gone adds
        nothing."""
        have = {h.id for h in hits}
        pool = hits + self._with_cosine([cid for cid in dict.fromkeys([*best, *lexical]) if cid not in have], qvec)
        for h in pool:
            h.score = max(h.score, best.get(h.id, 0.0))
        dense = sorted((h for h in pool if h.id in have or h.id in best), key=lambda h: -h.score)[:n]
        return self._fuse(dense, lexical, {h.id: h for h in pool}) if lexical else dense

    def _lexical(self, question: str, n: int) -> list[str]:
        """BM25's n best chunk ids with a score > 0 (ties in the store's order); [] for an empty index."""
        tokens = bm25_tokens(question)
        bm25 = self.store.bm25() if tokens else None
        return bm25.top(tokens, n) if bm25 is not None and bm25.count else []

    def _fuse(self, dense: list[Hit], lexical: list[str], by_id: dict[str, Hit]) -> list[Hit]:
        """Reciprocal rank fusion of the dense list and BM25's ids, weighted; a tie goes to the better cosine."""
        fused: dict[str, float] = {}
        for rank, h in enumerate(dense):
            fused[h.id] = fused.get(h.id, 0.0) + self.dense_weight / (RRF_K + rank + 1)
        for rank, cid in enumerate(lexical):
            fused[cid] = fused.get(cid, 0.0) + self.lexical_weight / (RRF_K + rank + 1)
        ranked = sorted(fused, key=lambda cid: (-fused[cid], -by_id[cid].score if cid in by_id else 0))
        return [by_id[cid] for cid in ranked if cid in by_id]

    def _with_cosine(self, ids: list[str], qvec: list[float]) -> list[Hit]:
        if not ids:
            return []
        rows = self.store.by_ids(ids, vectors=True)
        cosines = _dots(qvec, [v for *_, v in rows]) if rows else []
        return [Hit(cid, text, meta, min(1.0, max(0.0, cos))) for (cid, text, meta, _), cos in zip(rows, cosines)]

    # --- rerank -------------------------------------------------------------------------------------------------
    def _rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        if self._cross is None:
            from protege.errors import ProtegeError, require

            st = require("sentence_transformers", "rag")
            path = Path(self.rerank_path).expanduser()
            if not path.exists():
                raise ProtegeError(f"knowledge.rerank: {path} is not a local cross-encoder folder")
            self._cross = st.CrossEncoder(str(path), device="cpu", local_files_only=True)
        raw = [float(x) for x in self._cross.predict([(question, h.text) for h in hits])]
        if any(x < 0 or x > 1 for x in raw):
            raw = [1.0 / (1.0 + math.exp(-x)) for x in raw]
        for h, s in zip(hits, raw):
            h.score = s
        return sorted(hits, key=lambda h: -h.score)


_NAME_WORD = r"[A-Za-z0-9][A-Za-z0-9.\-]*[A-Za-z0-9]"  # a word as a name may be written: "t3.micro", "BH-5099"


def asking_part(message: str) -> str:
    """The sentences of a message that ask (end with "?"), when it also has sentences that only tell: "We're a German
    GmbH with a VAT ID. Will you add VAT?" asks about VAT. A name the customer gives as context ("our GitHub Actions
    pipeline", "a Dutch client") is theirs, not something the documents must know; the thing asked about is named in
    the question itself ("Will you sign a HIPAA agreement?"). A message with no question mark is all asking."""
    sentences = re.split(r"(?<=[.!?])\s+", message.strip())
    asking = [s for s in sentences if s.rstrip().endswith("?")]
    return " ".join(asking) if asking and len(asking) < len(sentences) else message


_LIKENED = re.compile(r"-(?:style|like|esque|type)$", re.I)  # a comparison glued to a name ("RDS-style")


def salient_words(question: str) -> list[str]:
    """Words that name something: capitalised past the first word, all-caps acronyms, letter+digit codes, and words
    with a capital inside ("iPhone", "PostgreSQL") wherever they stand."""
    words = re.findall(rf"{_NAME_WORD}|[A-Za-z0-9]", re.sub(r"['’]s\b", "", question))
    out = []
    for i, w in enumerate(words):
        has_digit = any(c.isdigit() for c in w)
        if w == "I" or (has_digit and not any(c.isalpha() for c in w)):
            continue
        if has_digit or (w.isupper() and len(w) > 1) or (i > 0 and w[0].isupper()) or any(c.isupper() for c in w[1:]):
            out.append(w)
    return out


def name_phrases(question: str) -> list[str]:
    """Runs of two or more capitalised words past a sentence's first word, lower-cased ("Who is Byte Harbor's Chief
    Operating Officer?" -> "byte harbor", "chief operating officer"); a possessive ends a run, and a capital letter
    after them ends it as part of the name ("Who led the Series B?" -> "series b")."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", question):
        run: list[str] = []
        words = re.findall(rf"{_NAME_WORD}(?:['’]s\b)?|[A-Za-z0-9]", sentence)
        for i, w in enumerate([*words, ""]):
            possessive = re.search(r"['’]s$", w) is not None
            w = re.sub(r"['’]s$", "", w)
            if i > 0 and w[:1].isupper() and not w.isupper():
                run.append(w.lower())
                if not possessive:
                    continue
            elif run and re.fullmatch(r"[A-HJ-Z]", w):  # a letter ends a name: "Series B" is not "Series A"
                run.append(w.lower())
            if len(run) >= 2:
                out.append(" ".join(run))
            run = []
    return out


# between the words of a spelled-out acronym: on one line ("Compliance Overview\nOverview", a heading and a
# subheading, is not COO)
_JOIN = r"[ \t\-/]+(?:(?:of|and|the|for|&)[ \t\-/]+)?"


def _spelled_out(acronym: str, text: str, capitals: bool = False) -> str | None:
    """Where the documents spell the acronym out as consecutive words, "of/and/the/for" allowed between them but never
    one of its letters' words ("currency of the original" is no COO), those words lower-cased: CFO -> "chief financial
    officer", SLA -> "service level agreement"; else None. With `capitals` each word must start with its capital
    letter as written ("Chief Financial Officer", not "currency [of] the original" for CTO)."""
    letters = acronym.upper() if capitals else acronym.lower()
    pattern = r"\b" + _JOIN.join(r"(?!(?:of|and|the|for)\b)" + re.escape(c) + r"[A-Za-z0-9']*" for c in letters) + r"\b"
    m = re.search(pattern, text) if capitals else re.search(pattern, text, re.IGNORECASE)
    return " ".join(m.group(0).lower().split()) if m else None


def _dots(qvec: list[float], embeddings) -> list[float]:
    """Each stored vector's dot product with the question's, as `sum(a * b for a, b in zip(qvec, emb))` computed it
    (products in the stored vectors' dtype, summed left to right: cumsum is sequential) but without a Python loop over
    the 384 dimensions: the same floats, so the same scores and tie-breaks."""
    embs = np.asarray(embeddings)
    if embs.size == 0:
        return []
    if embs.dtype not in (np.float32, np.float64):
        embs = embs.astype(np.float64)
    prods = np.asarray(qvec, dtype=embs.dtype) * embs
    return [float(x) for x in np.cumsum(prods, axis=1, dtype=embs.dtype)[:, -1]]


def _lift_closest(hits: list[Hit], k: int) -> list[Hit]:
    """The candidate the embedder finds far closer to the question (DENSE_MARGIN of cosine) than every chunk of the
    fused top k goes first: BM25's votes ranked a chunk of loose word matches first ("whats the cheapest server u guys
    sell": the SLA's worked example, "A customer runs two Schooner servers", cosine 0.34) and the plans' table, at
    0.54, sixth. Dev quote-only: 1 more answer holds, 3 more hit@3, none lost; held-out: qa_heldout2 holds 36 -> 39,
    qa_heldout 42 -> 41."""
    if len(hits) <= k:
        return hits
    top = max(h.score for h in hits[:k])
    best = max(hits[k:], key=lambda h: h.score)
    return [best, *(h for h in hits if h is not best)] if best.score >= top + DENSE_MARGIN else hits


def _pin_codes(question: str, hits: list[Hit], k: int) -> list[Hit]:
    """For each code the question names (BH-3320, t3.micro), the best-ranked candidate that holds it goes first,
    scored as the best of the top k. Embeddings rank a table's chunks of look-alike codes (BH-3310, BH-4207) close
    together, so the chunk with the very code fell to 3rd, or out of the top k (and the gate, finding the code in no
    source, refused); the exact string is the surest evidence there is."""
    codes = question_codes(question)
    if not codes or not hits:
        return hits
    flat = [flat_text(h.text) for h in hits]
    pinned: list[Hit] = []
    for code in codes:
        holder = next((h for h, f in zip(hits, flat) if holds_code(f, code)), None)
        if holder is not None and holder not in pinned:
            pinned.append(holder)
    if not pinned:
        return hits
    best = max(h.score for h in hits[:k])
    for h in pinned:
        h.score = max(h.score, best)
    return pinned + [h for h in hits if h not in pinned]


def _source(h: Hit) -> Source:
    m = h.metadata
    page = m.get("page")
    return Source(path=m.get("path", ""), section=m.get("section") or None, page=int(page) if page is not None else None,
                  chunk_id=h.id, score=round(float(h.score), 4), text=h.text)
