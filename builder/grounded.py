"""Grounded training examples (RAFT-style): teach the style adapter the exact prompt the server sends.

Each row of `knowledge.train_qa` ({question, answer, source}) becomes a conversation rendered by rag/grounding.py,
the same code that builds the served prompt: persona + grounding rules, the `<documents>` block that the real
retriever returns for the question at build time (after the confidence gate), and the question. The answer is the
row's answer with the citation `[n]` of its source. Where the retriever misses the source, its best chunk replaces
the weakest document (the model still learns to read and cite it). A share of the answerable rows
(`knowledge.train_distractor_fraction`) is repeated with distractor documents only, and rows with `source: null`
with their nearest documents: both answer with the persona's refusal, so the model learns to say it doesn't know.
Another share (`knowledge.train_near_miss_fraction`) is repeated with its own documents less the lines that state the
answer's facts, also answered with the refusal: a near-domain question ("the Lisbon office's phone number" when only
Halifax's is written) retrieves the right document, and what is missing there is the fact, not the topic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from protege.config import AssistantConfig
from protege.errors import DataError
from protege.paths import AssistantPaths
from rag.grounding import build_messages, cite
from rag.sentences import heading_and_body
from rag.types import Retrieval, Source


@dataclass
class QARow:
    question: str
    answer: str | None
    source: str | None
    where: str


@dataclass
class GroundedReport:
    rows: int = 0
    answer_examples: int = 0
    refusal_examples: int = 0
    source_injected: int = 0      # the retriever missed the source: its best chunk was put in
    source_missing: list[str] = field(default_factory=list)  # rows whose source file has no chunk at all
    sources_dropped_for_length: int = 0
    near_miss_examples: int = 0   # refusals over the row's own documents less its answer (also in refusal_examples)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def load_train_qa(path: Path) -> list[QARow]:
    """Rows of a train_qa JSONL file; a bad line is an error naming file:line and the field."""
    from protege.records import RecordError, iter_json_records

    rows = []
    for line, rec in iter_json_records(Path(path)):
        where = f"{path}:{line}"
        try:
            if not isinstance(rec, dict):
                raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
            q, a, src = rec.get("question"), rec.get("answer"), rec.get("source")
            if not isinstance(q, str) or not q.strip():
                raise RecordError('"question": expected a non-empty string')
            if src is not None and (not isinstance(src, str) or not src.strip()):
                raise RecordError(f'"source": expected a file path relative to knowledge.folder, or null; got {src!r}')
            if src is not None and (not isinstance(a, str) or not a.strip()):
                raise RecordError('"answer": expected a non-empty string when "source" is set')
        except RecordError as e:
            raise DataError(f"{where}: {e}") from None
        rows.append(QARow(q.strip(), a.strip() if isinstance(a, str) else None,
                          src.replace("\\", "/").lstrip("./") if src else None, where))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def citation(row: QARow, sources: list[Source]) -> int:
    """The number of the document the answer comes from: of the chunks of the row's source file, the one that holds
    most of the answer's facts (numbers, codes, names), then the best ranked."""
    from rag.claims import claims
    from rag.evaluate import same_source

    facts = claims(row.answer or "").all()
    best = max((len(facts & claims(s.text).all()), -i, i) for i, s in enumerate(sources, 1)
               if same_source(s.path, row.source or ""))
    return best[2]


def without_facts(sources: list[Source], question: str, answer: str) -> list[Source] | None:
    """The sources with every line that states the answer's fact left out, as written otherwise: its numbers and
    codes, and the names it gives that the question does not ask about ("Marisol Quint" for "Who founded ...", not
    "Floating IPs" for "do floating IPs cost anything?": the topic stays, the fact goes). A source left empty is
    dropped. None when the answer states no such fact of the documents, or no source is left."""
    from rag.claims import claims
    from rag.guard import content_words

    said, asked = claims(answer), content_words(question)
    facts = said.numbers | said.codes | {n for n in said.names if not content_words(n) & asked}
    facts &= set().union(*(claims(s.text).all() for s in sources))
    if not facts:
        return None
    out = []
    for s in sources:
        heading, body = heading_and_body(s.text)
        kept = [line for line in body.splitlines() if not (claims(line).all() & facts)]
        if any(line.strip() for line in kept):
            out.append(replace(s, text="\n".join([heading, *kept]) if heading else "\n".join(kept)))
    return out or None


def grounded_conversations(cfg: AssistantConfig, paths: AssistantPaths, tokenizer
                           ) -> tuple[list[list[dict]], GroundedReport]:
    """Conversations (system, user, assistant) for every train_qa row (see the module doc)."""
    from rag.evaluate import same_source
    from rag.knowledge import KnowledgeBase

    kcfg = cfg.knowledge
    assert kcfg is not None and kcfg.train_qa is not None
    rows = load_train_qa(kcfg.train_qa)
    kb = KnowledgeBase.open(cfg, paths)
    if kb.store.count() == 0:
        kb.index()
    rng = random.Random(cfg.data.seed)
    report = GroundedReport(rows=len(rows))
    system = [{"role": "system", "content": cfg.persona.system_prompt}] if cfg.persona.system_prompt else []
    deep = kb.retriever.search_many([r.question for r in rows], k=max(20, 5 * kcfg.top_k))
    convs: list[list[dict]] = []

    def render(question: str, sources: list[Source], answer_for, gold: str | None = None) -> list[dict]:
        sources = list(sources)
        while True:
            retrieval = Retrieval(question, sources, max((s.score for s in sources), default=0.0), False)
            msgs = build_messages(system + [{"role": "user", "content": question}], retrieval, kb.system_prompt)
            msgs.append({"role": "assistant", "content": answer_for(sources)})
            n = len(tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"])
            if n <= cfg.data.max_seq_len or len(sources) <= 1:
                return msgs
            drop = next((i for i in range(len(sources) - 1, -1, -1)
                         if not (gold and same_source(sources[i].path, gold))), len(sources) - 1)
            sources.pop(drop)
            report.sources_dropped_for_length += 1

    for row, ranked in zip(rows, deep):
        refusal = lambda _s: kb.refusal  # noqa: E731
        if row.source is None:
            convs.append(render(row.question, ranked[: kcfg.top_k], refusal))
            report.refusal_examples += 1
            continue
        gold = [s for s in ranked if same_source(s.path, row.source)]
        if not gold:
            gold = kb.retriever.search(row.question, k=kb.store.count() or 1)
            gold = [s for s in gold if same_source(s.path, row.source)]
        if not gold:
            report.source_missing.append(f"{row.where}: no chunk of {row.source} in the index")
            continue
        served = kb.retrieve(row.question).sources or ranked[: kcfg.top_k]
        sources = list(served)
        if not any(same_source(s.path, row.source) for s in sources):
            sources = sources[: kcfg.top_k - 1] + [gold[0]]
            report.source_injected += 1

        def answer_for(srcs: list[Source], row: QARow = row) -> str:
            return cite(row.answer, citation(row, srcs))

        convs.append(render(row.question, sources, answer_for, row.source))
        report.answer_examples += 1
        if rng.random() < kcfg.train_distractor_fraction:
            distractors = [s for s in ranked if not same_source(s.path, row.source)][: kcfg.top_k]
            if distractors:
                convs.append(render(row.question, distractors, refusal))
                report.refusal_examples += 1
        if kcfg.train_near_miss_fraction and rng.random() < kcfg.train_near_miss_fraction:
            near = without_facts(sources, row.question, row.answer or "")
            if near:
                convs.append(render(row.question, near, refusal))
                report.near_miss_examples += 1
                report.refusal_examples += 1
    if report.source_missing:
        raise DataError("knowledge.train_qa: " + "; ".join(report.source_missing[:5]))
    return convs, report
