"""`protege rag eval` and `protege rag calibrate`: measure retrieval on labelled questions and pick `min_score`.

QA file: JSON lines {"question": "...", "source": "path/relative/to/the/knowledge/folder.md"} or "source": null for a
question the documents cannot answer (out-of-domain, OOD). The threshold is picked to maximise balanced accuracy
(mean of: in-domain questions answered, OOD questions refused), ties broken toward the middle of the best interval so
that the threshold sits as far as possible from both populations."""

from __future__ import annotations

import io
import re
from pathlib import Path

from protege.errors import DataError

K_VALUES = (1, 3, 5)
MRR_DEPTH = 10


def load_qa(path: Path) -> list[dict]:
    from protege.records import iter_json_records

    if not Path(path).is_file():
        raise DataError(f"{path}: no such QA file")
    rows = []
    for n, obj in iter_json_records(Path(path)):
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise DataError(f"{path}:{n}: expected an object with a non-empty \"question\" string")
        src = obj.get("source")
        if src is not None and not isinstance(src, str):
            raise DataError(f"{path}:{n}: \"source\" must be a relative path string or null, got {src!r}")
        contains = obj.get("answer_contains", [])
        if isinstance(contains, str):
            contains = [contains]
        if not isinstance(contains, list) or not all(isinstance(c, str) and c.strip() for c in contains):
            raise DataError(f"{path}:{n}: \"answer_contains\" must be a list of non-empty strings, got {contains!r}")
        history = obj.get("history", [])
        if not isinstance(history, list) or not all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
                for m in history):
            raise DataError(f"{path}:{n}: \"history\" must be a list of {{role: user|assistant, content}} messages")
        rows.append({"question": obj["question"], "source": src.replace("\\", "/").lstrip("./") if src else None,
                     "answer_contains": contains, "history": history})
    if not rows:
        raise DataError(f"{path}: no questions")
    return rows


def same_source(found: str, expected: str) -> bool:
    """Paths match exactly, or one is the other with leading folders (a QA file written relative to a parent)."""
    a, b = found.strip("/"), expected.strip("/")
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def answer_metrics(rows: list[dict], answers: list) -> dict:
    """End-to-end answer quality with the LLM in the loop: accuracy on in-domain rows that carry `answer_contains`
    (every string present, case-insensitive), and of the reply's first sentence (a reply that opens with a wrong
    figure and quotes the right one later still holds the fact; what a reader takes for the answer is the opening), how
    often the guard quoted a source instead of the model's words,
    refusal precision/recall (a refusal is the gate's, never the model's own words), source hit@3 of the answers."""
    ind = [(r, a) for r, a in zip(rows, answers) if r["source"]]
    ood = [(r, a) for r, a in zip(rows, answers) if not r["source"]]
    graded = [(r, a) for r, a in ind if r.get("answer_contains")]
    answered = [a for a in answers if not a.refused]
    refused = [(r, a) for r, a in zip(rows, answers) if a.refused]
    m: dict = {"questions": len(rows), "in_domain": len(ind), "out_of_domain": len(ood), "graded": len(graded)}
    if graded:
        m["answer_accuracy"] = round(sum(answer_holds(a.text, r["answer_contains"]) for r, a in graded) / len(graded), 4)
        m["first_sentence_accuracy"] = round(sum(answer_holds(first_sentence(a.text), r["answer_contains"])
                                                 for r, a in graded) / len(graded), 4)
    if ind:
        m["source_hit@3"] = round(sum(any(same_source(s.path, r["source"]) for s in a.sources[:3])
                                      for r, a in ind) / len(ind), 4)
        m["in_domain_answered"] = round(sum(not a.refused for _, a in ind) / len(ind), 4)
    if answered:
        m["guard_fired"] = round(sum(a.grounding == "extractive" for a in answered) / len(answered), 4)
    if ood:
        m["refusal_recall"] = round(sum(a.refused for _, a in ood) / len(ood), 4)
    m["refusal_precision"] = round(sum(1 for r, _ in refused if not r["source"]) / len(refused), 4) if refused else None
    return m


def first_sentence(text: str) -> str:
    """The first sentence of a reply with three words or more (the persona's "Ahoy!" alone is not the answer)."""
    return next((s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if len(re.findall(r"\w+", s)) >= 3), text)


def answer_holds(text: str, contains: list[str]) -> bool:
    low = text.lower()
    return all(c.lower() in low for c in contains)


def score_questions(kb, qa: list[dict]) -> list[dict]:
    """Per question: confidence (best final score) and the rank of the first chunk from the expected source."""
    out = []
    all_ranked = kb.retriever.search_many([row["question"] for row in qa], k=max(MRR_DEPTH, kb.cfg.top_k))
    for row, ranked in zip(qa, all_ranked):
        top = ranked[: kb.cfg.top_k]
        rank = None
        if row["source"]:
            rank = next((i + 1 for i, s in enumerate(ranked) if same_source(s.path, row["source"])), None)
        out.append({**row, "confidence": max((s.score for s in top), default=0.0), "rank": rank,
                    "top_paths": [s.path for s in ranked[:3]]})
    return out


def metrics(scored: list[dict], min_score: float) -> dict:
    ind = [r for r in scored if r["source"]]
    ood = [r for r in scored if not r["source"]]
    m: dict = {"questions": len(scored), "in_domain": len(ind), "out_of_domain": len(ood), "min_score": min_score}
    if ind:
        for k in K_VALUES:
            m[f"hit@{k}"] = round(sum(1 for r in ind if r["rank"] and r["rank"] <= k) / len(ind), 4)
        m["mrr"] = round(sum(1.0 / r["rank"] for r in ind if r["rank"]) / len(ind), 4)
        m["in_domain_answered"] = round(sum(r["confidence"] >= min_score for r in ind) / len(ind), 4)
    refused = [r for r in scored if r["confidence"] < min_score]
    refused_ood = [r for r in refused if not r["source"]]
    if ood:
        m["refusal_recall"] = round(len(refused_ood) / len(ood), 4)
    m["refusal_precision"] = round(len(refused_ood) / len(refused), 4) if refused else None
    return m


def calibrate(scored: list[dict]) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising 0.5 * (in-domain answered + OOD refused)."""
    ind = sorted(r["confidence"] for r in scored if r["source"])
    ood = sorted(r["confidence"] for r in scored if not r["source"])
    if not ind or not ood:
        raise DataError("calibration needs both in-domain questions and out-of-domain ones (\"source\": null)")
    values = sorted(set(ind + ood))
    cuts = [values[0] - 1e-4] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-4]

    def balanced(t: float) -> float:
        return 0.5 * (sum(c >= t for c in ind) / len(ind) + sum(c < t for c in ood) / len(ood))

    scores = [balanced(t) for t in cuts]
    best = max(scores)
    best_cuts = [t for t, s in zip(cuts, scores) if s >= best - 1e-12]
    # the best cuts form one or more intervals; take the middle of the widest band between neighbouring values
    t = best_cuts[len(best_cuts) // 2]
    return round(min(1.0, max(0.0, t)), 4), round(best, 4)


def write_min_score(config_path: Path, value: float) -> None:
    """Set knowledge.min_score in the user's YAML with a ruamel.yaml round trip: comments, key order, quoting and
    indentation stay as the user wrote them. Written like every config (atomic_write_text): temp file then rename in
    the real file's folder, a symlink written through and kept a link, the mode kept."""
    import yaml

    from protege.config_file import atomic_write_text
    from protege.errors import require

    require("ruamel.yaml", "rag")
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    rt = YAML()  # round-trip
    rt.preserve_quotes = True
    rt.width = 1 << 30  # never re-wrap a long line (a system prompt) the user kept on one line
    try:
        data, seq_indent, seq_offset = load_yaml_guess_indent(Path(config_path).read_text(encoding="utf-8"), yaml=rt)
    except YAMLError as e:
        raise DataError(f"{config_path}: not valid YAML ({e}); set knowledge.min_score to {value} by hand") from e
    data = CommentedMap() if data is None else data
    if not isinstance(data, CommentedMap):
        raise DataError(f"{config_path}: the top level is not a mapping; set knowledge.min_score to {value} by hand")
    if not isinstance(data.get("knowledge"), CommentedMap):
        data["knowledge"] = CommentedMap()
    data["knowledge"]["min_score"] = value
    # the guess reports the sequence indent; the mapping indent is where a nested block mapping's first key sits
    nested = next((v for v in data.values() if isinstance(v, CommentedMap) and v.lc.line is not None
                   and not v.fa.flow_style()), None)
    map_indent = nested.lc.col if nested is not None and nested.lc.col else 2
    rt.indent(mapping=map_indent, sequence=seq_indent if seq_offset is not None else map_indent,
              offset=seq_offset or 0)
    out = io.StringIO()
    rt.dump(data, out)
    new_text = out.getvalue()
    if ((yaml.safe_load(new_text) or {}).get("knowledge") or {}).get("min_score") != value:  # what protege reads
        raise DataError(f"{config_path}: could not set knowledge.min_score safely; set it to {value} by hand")
    atomic_write_text(Path(config_path), new_text)
