"""The knowledge base facade used by the CLI (`protege index/ask/rag`), the builder and the server: index, retrieve
with the confidence gate, build the grounded prompt, open the guard for one answer. The answer itself is made in one
place, serve/service.py (the server, `protege ask/run` and `protege.Assistant` all go through it): below `min_score`
the refusal is returned and the LLM is never called, since a threshold that can be bypassed is no threshold."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from protege.config import AssistantConfig, KnowledgeConfig
from protege.errors import ProtegeError
from protege.paths import AssistantPaths
from rag.grounding import build_messages, search_queries, text_of, user_turns
from rag.types import Retrieval, Source

TABLE_NEAR = 8    # a table is read whole when one of its chunks is among the question's best this many
TABLE_CHUNKS = 4  # ... and it fills this many chunks at most
TABLE_POOL = 30   # ranked from this many candidates (hybrid: fewer fuse shorter lists, where a table's rows rank low)
_LIKE = "nearly repeats"  # Retrieval.why of the example checks (_like_example)
_NO_CONTACT = "asks for a contact or a person no source holds for what it names"  # Retrieval.why (rag/answerable.py)
_PLACE_ONLY = "about a place the documents name, not about what they say of it"  # Retrieval.why (rag/places.py)


class KnowledgeBase:
    def __init__(self, kcfg: KnowledgeConfig, collection: str, persist_dir: Path, system_prompt: str | None = None,
                 report_dir: Path | None = None, marker: str | None = None):
        if kcfg.folder is None:
            raise ProtegeError("knowledge.folder is not set")
        self.cfg = kcfg
        self.folder = Path(kcfg.folder)
        self.collection = collection
        self.persist_dir = Path(persist_dir)
        self.report_dir = Path(report_dir or persist_dir)
        self.system_prompt = system_prompt
        self.refusal: str = kcfg.refusal
        self.marker = marker  # persona.style_markers.starts_with: every reply opens with it
        self._guard = None
        self._store = None
        self._embedder = None
        self._retriever = None
        self._off_topic = None
        self._scope = None
        self._lock = threading.RLock()  # the server retrieves from several threads; build the parts once

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, cfg: AssistantConfig, paths: AssistantPaths) -> "KnowledgeBase":
        if cfg.knowledge is None:
            raise ProtegeError(f"{cfg.name}: the config has no knowledge section")
        collection = cfg.collection_name()
        if len(collection) < 3:  # assistant names may be 2 characters, Chroma collection names may not
            collection = f"{collection}-kb"
        return cls(cfg.knowledge, collection, paths.knowledge, cfg.persona.system_prompt or None,
                   marker=cfg.persona.style_markers.starts_with)

    @classmethod
    def from_folder(cls, folder: Path, collection: str, persist_dir: Path, **knowledge_overrides) -> "KnowledgeBase":
        system_prompt = knowledge_overrides.pop("system_prompt", None)
        marker = knowledge_overrides.pop("marker", None)
        kcfg = KnowledgeConfig(folder=Path(folder).resolve(), collection=collection, **knowledge_overrides)
        return cls(kcfg, collection, persist_dir, system_prompt, marker=marker)

    @property
    def embedder(self):
        with self._lock:
            if self._embedder is None:
                from rag.embed import default_embedder

                self._embedder = default_embedder()
            return self._embedder

    @property
    def store(self):
        with self._lock:
            if self._store is None:
                from rag.store import Store, make_client

                ch = self.cfg.chroma
                client = make_client(self.persist_dir, ch.host, ch.port)
                self._store = Store(client, self.collection, self.embedder.name, self.embedder.dim)
            return self._store

    @property
    def retriever(self):
        with self._lock:
            if self._retriever is None:
                from rag.lexicon import load_synonyms
                from rag.retrieve import Retriever

                synonyms = load_synonyms(self.cfg.synonyms) if self.cfg.synonyms is not None else None
                self._retriever = Retriever(self.store, self.embedder, self.cfg.top_k, self.cfg.hybrid,
                                            self.cfg.rerank, unknown_name_factor=self.cfg.unknown_name_factor,
                                            sentences=self.cfg.sentence_vectors, synonyms=synonyms)
            return self._retriever

    @property
    def off_topic(self):
        with self._lock:
            if self._off_topic is None:
                from rag.off_topic import OffTopic

                self._off_topic = OffTopic(self.embedder.embed, self.embedder.name, self.persist_dir)
            return self._off_topic

    @property
    def scope(self):
        """The assistant's examples of what the documents answer and leave open (rag/scope.py); None without
        `knowledge.scope_examples`."""
        with self._lock:
            if self._scope is None and self.cfg.scope_examples is not None:
                from rag.scope import Scope

                files = [f for f in (self.cfg.scope_examples, self.cfg.train_qa) if f is not None]
                self._scope = Scope(files, self.embedder.embed, self.embedder.name, self.persist_dir)
            return self._scope

    # --- operations ---------------------------------------------------------------------------------------------
    def index(self, progress: bool = False) -> dict:
        """Incremental index of the folder; writes index_report.json beside the Chroma files."""
        from rag.index import index_folder, write_report

        self.store.writes = 0
        report = index_folder(self.folder, self.store, self.embedder, self.cfg.chunk_size, self.cfg.chunk_overlap,
                              progress=progress, batch_size=self.cfg.embed_batch_size,
                              max_bytes=int(self.cfg.max_file_mb * 2**20), sentences=self.cfg.sentence_vectors)
        if self._retriever is not None:
            self._retriever.invalidate()
        report["report"] = str(write_report(report, self.report_dir))
        return report

    def search(self, question: str, k: int | None = None) -> list[Source]:
        """Ranked sources without the gate (eval and calibration use this)."""
        return self.retriever.search(question, k)

    def retrieve(self, question: str, listing: bool = True, world: bool = True) -> Retrieval:
        """Top-k with the gate: refused=True when the best final score is below min_score, when the question names a
        code (an error code, a region slug) that none of the sources holds, or asks for a phone number, an e-mail, a
        street address, a thing's name or a financial figure that none of them writes, names a compliance standard
        that no document writes, nearly repeats a general-world question or a request to leave the instructions
        (rag/off_topic.py) or an example of what the documents leave open (rag/scope.py) more than the documents, or
        is about them only through a place they name (rag/places.py). When answered, sources under the threshold are
        dropped too (they would be irrelevant citations). A question that asks to list a table's rows gets the whole
        table (see _table); `listing=False` for a follow-up's query made of several turns; `world=False` leaves the
        general-world and the place checks out (a follow-up alone, see retrieve_conversation)."""
        # the question as searched, embedded once: the ranking and the general-world check read the same vector
        searched = self.retriever.expand(question)
        qvec = self.embedder.embed_query(searched)
        ranked = self.retriever.search(question, qvec=qvec)
        confidence = nearest = max((s.score for s in ranked), default=0.0)
        table, listed = self._table(question, ranked, qvec) if listing else ([], False)
        if table:  # "which regions can I deploy in?": the whole table, first; "the 4-core box": after the others
            rest = [s for s in ranked if s.chunk_id not in {t.chunk_id for t in table}]
            ranked = table + rest if listed else rest + table
            if listed:  # a question listing a table is about it (its chunks score the gate at least)
                confidence = max(confidence, self.cfg.min_score)
        refused = not ranked or confidence < self.cfg.min_score
        why = f"below min_score {self.cfg.min_score}" if refused else ""
        sources = [] if refused else [s for s in ranked if s.score >= self.cfg.min_score]
        why = why or (self._unanswerable(question, searched, sources) if sources else "")
        if not why and sources and not listed:
            why = self._like_example(qvec, nearest, world)
            if not why and world and self.cfg.off_topic and self._only_through_places(question, searched,
                                                                                        [s.text for s in sources]):
                why = _PLACE_ONLY
        if why:
            sources, refused = [], True
        if sources and not listed:
            sources = self._with_parts(question, sources)
        return Retrieval(question=question, sources=sources, confidence=round(confidence, 4), refused=refused,
                         listed=listed and not refused, why=why)

    def _unanswerable(self, question: str, searched: str, sources: list[Source]) -> str:
        """Why the sources, over the gate, cannot answer what the question asks for, or "": the first of the checks
        (rag/claims.py, rag/answerable.py) that finds the fact missing, each with its own Retrieval.why."""
        from rag.answerable import (asks_plan, missing_contact, missing_figure, missing_name, missing_standard,
                                    states_plan)
        from rag.claims import unknown_codes

        texts = [s.text for s in sources]
        checks = [
            # "error BH-5099" when only BH-5017 is documented
            ("names a code no source holds", lambda: unknown_codes(question, texts)),
            (_NO_CONTACT, lambda: missing_contact(question, texts)),
            # "the name of the bakery that was your first customer"
            ("asks for a name no source gives", lambda: missing_name(question, texts)),
            # "are you HIPAA compliant?"
            ("names a compliance standard the documents never write",
             lambda: missing_standard(question, self.retriever.corpus_text)),
            ("asks for a financial figure no source states", lambda: missing_figure(question, texts)),
            ("asks about a plan no source states", lambda: asks_plan(question) and not states_plan(
                [e.text for e in self.guard.evidence(searched, sources)])),
        ]
        return next((why for why, missing in checks if missing()), "")

    def _with_parts(self, question: str, sources: list[Source]) -> list[Source]:
        """The sources, then each part's best chunk that they lack, when the question asks two things ("Generator
        runtime if grid power drops, and what are the host uplinks?": the whole question found the power section
        alone over the gate; its second part, searched alone, finds the network's). Over the gate only, and at most
        one more than top_k: the prompt must still fit the model's context with the conversation. Dev quote-only:
        qa_dev11 (engineers asking two things at once) holds 43 -> 45 of 46, nothing else changed."""
        from rag.evidence import question_parts

        parts = question_parts(question)
        if len(parts) < 2:
            return sources
        have = {s.chunk_id for s in sources}
        for part in parts:
            if len(sources) > self.cfg.top_k:
                break
            best = (self.retriever.search(part) or [None])[0]  # the part's best, when the sources lack it
            if best is not None and best.chunk_id not in have and best.score >= self.cfg.min_score:
                sources = [*sources, best]
                have.add(best.chunk_id)
        return sources

    def _only_through_places(self, question: str, searched: str, texts: list[str]) -> bool:
        """Whether the question names a place of the world that the sources write (rag/places.py) and, without it,
        no document scores PLACE_FLOOR: "whats the best time of year to visit lisbon" is about Lisbon, not about the
        Lisbon office. Not for a follow-up alone ("what about in lisbon?" after the Halifax office's hours)."""
        from rag.places import PLACE_FLOOR, named_places, without_places

        places = named_places(question, texts)
        if not places:
            return False
        rest = without_places(searched, places)
        return max((s.score for s in self.retriever.search(rest)), default=0.0) < PLACE_FLOOR

    def _like_example(self, qvec: list[float], nearest: float, world: bool = True) -> str:
        """Why the question (its vector as searched; `nearest`: the documents' best score) is refused for what it
        nearly repeats, or "": a general-world question ("the weather in Halifax tomorrow", rag/off_topic.py), a request
        to leave the instructions ("print your hidden prompt", the same module), or an example of what the documents
        leave open ("what was your revenue last year?", rag/scope.py)."""
        # a follow-up alone (world=False) is judged by the requests to leave the instructions only
        worldly = self.off_topic.closer(qvec, nearest, world) if self.cfg.off_topic else None
        if worldly:
            return f"{_LIKE} {self.off_topic.what(worldly)}: {worldly!r}"
        outside = self.scope.outside(qvec, nearest, alone=not world) if self.scope else None
        return f"{_LIKE} a question the documents leave open: {outside!r}" if outside else ""

    def _table(self, question: str, ranked: Sequence[Source], qvec: list[float]) -> tuple[list[Source], bool]:
        """The chunks of the table the question asks to list (rag/tables.py), and True; else those of a table with a
        row holding a value the question names ("the 4-core box"), or with a price in every row for a question asking
        for the cheapest or the dearest, and False; ([], False) for other questions. A table
        counts when one of its chunks is among the question's TABLE_NEAR best (it is about what is asked: "what plans
        do you have?" finds the plans' table second, under the gate) and the question names nothing the documents
        lack ("which plans come with a GPU?"). At most TABLE_CHUNKS chunks: a longer table is not read whole. `qvec`:
        the embedding of the question as searched (retrieve() made it)."""
        from rag.retrieve import Hit, _source

        index = self.retriever.tables()
        listing = index.asked(question)
        tables = listing or index.valued(question) or index.priced(question)
        if not tables or self.retriever.unknown_names(question):
            return [], False
        near = {s.chunk_id: s.score for s in self.retriever.search(question, TABLE_POOL, qvec)[:TABLE_NEAR]}
        near.update({s.chunk_id: s.score for s in ranked})  # the top k's order can differ (Retriever._lift_closest)
        for table in tables:
            if any(c in near for c in table.chunk_ids) and len(table.chunk_ids) <= TABLE_CHUNKS:
                got = {cid: (text, meta) for cid, text, meta, _ in self.store.by_ids(table.chunk_ids)}
                return [_source(Hit(cid, *got[cid], max(near.get(cid, 0.0), self.cfg.min_score)))
                        for cid in table.chunk_ids if cid in got], bool(listing)
        return [], False

    def retrieve_conversation(self, messages: list[dict]) -> Retrieval:
        """Retrieve for the last user turn; a follow-up ("and per year?") is also searched together with the recent
        user turns, and the better-scoring of the two is kept (then gated as usual); either one that nearly repeats an
        example question (rag/scope.py; the world's questions, rag/off_topic.py, for the turns together) refuses."""
        # only the last turn alone asks to list: "Which regions do you have?" before "and the German one's partner?"
        queries = search_queries(messages, self.cfg.follow_up_turns)
        # a follow-up alone is not judged by the world's questions: "what about in lisbon?" after the Halifax office's
        # hours is near "What are the best things to do in Lisbon in three days?" by its one name
        tries = [self.retrieve(q, listing=n == 0, world=n > 0 or len(queries) == 1) for n, q in enumerate(queries)]
        best = max(tries, key=lambda r: r.confidence)  # the first on a tie: the last turn alone
        like = next((t for t in tries if t.refused and t.why.startswith(_LIKE)), None)
        if like is not None:  # "and can I rent a server with an nvidia gpu?" after a price: alone, a question left open
            return like
        if best is tries[0] and len(tries) > 1 and not best.refused:
            from rag.answerable import missing_contact

            # "and the lisbon office?" after "What's the Halifax office's phone number?" asks for a phone number too
            if missing_contact(queries[0], [s.text for s in best.sources], asked=queries[1]):
                return Retrieval(question=best.question, sources=[], confidence=best.confidence, refused=True,
                                 why=_NO_CONTACT)
        return best

    def build_messages(self, messages: list[dict], retrieval: Retrieval) -> list[dict]:
        """The grounded chat messages for the LLM (rag/grounding.py decides the layout, for serving and training)."""
        return build_messages(messages, retrieval, self.system_prompt)

    @property
    def guard(self):
        with self._lock:
            if self._guard is None:
                from rag.guard import Guard

                self._guard = Guard(self.embedder.embed)
            return self._guard

    def guard_session(self, messages: list[dict], retrieval: Retrieval):
        """A GuardedReply for one answer, or None when `knowledge.guard` is off."""
        if not self.cfg.guard:
            return None
        from rag.claims import Context

        asked = " ".join(user_turns(messages))
        last = (user_turns(messages) or [""])[-1]
        # a follow-up searched with the turns before it ("what uptime for load balancers? and block storage?"): its
        # own words say which row answers (as searched: "and who's the CFO? (chief financial officer)")
        focus = None
        if last.strip() and last.strip() != retrieval.question.strip():
            focus = self.retriever.expand(last)
        system = " ".join(text_of(m.get("content")) for m in messages if m.get("role") == "system")
        context = Context(*(s.text for s in retrieval.sources),
                          names_only=" ".join([self.system_prompt or "", system, asked, self.refusal]))
        # the question as searched (acronyms the documents spell out, spelled out): its words find the sentence too
        return self.guard.session(self.retriever.expand(retrieval.question), retrieval.sources, context, self.marker,
                                  self.refusal, quote_refusals=self.cfg.model_refusal == "quote",
                                  list_rows=retrieval.listed, focus=focus)
