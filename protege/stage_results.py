"""The typed results of the `protege build` stages (protege/stages.py declares which stage returns which).

A stage's code returns its report as a plain dict: what `protege train` prints, what build.json records. The build wraps
that report in the stage's result type, so the build summary and API callers read typed fields instead of digging
dotted keys out of JSON. `raw` keeps the whole report, so nothing recorded is lost, and `to_json()` is exactly what
build.json holds: manifests written before these types existed read back with `from_json`.

Plain data with no product imports, so every layer (stages, API, shells) may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

Headline = dict[str, "str | float | int"]
R = TypeVar("R", bound="StageResult")


def _num(v: Any) -> float | None:
    """A number of the report (an int stays an int); anything else (missing, null, text) is None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _names(v: Any) -> list[str]:
    """The names of a report list: plain strings, or {"path", "reason"} (the index's skipped files)."""
    if not isinstance(v, list):
        return []
    return [str(x.get("path")) if isinstance(x, dict) else str(x) for x in v]


def _pick(raw: dict[str, Any], read: Callable[[Any], Any], *keys: str) -> dict[str, Any]:
    """Fields named like the report's keys, each read with `read` (_num, _int, _str)."""
    return {k: read(raw.get(k)) for k in keys}


def _present(pairs: dict[str, Any]) -> Headline:
    """The headline without what the report did not have."""
    return {k: v for k, v in pairs.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What one stage returned. Subclasses add the typed fields the summary and the API read; build them with
    `from_json` (the fields are read from `raw`, which stays the source of what is recorded)."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls: type[R], raw: dict[str, Any] | None) -> R:
        """The result of a stage report (as returned, or as build.json recorded it); lenient: a missing or oddly
        typed entry reads as None, so old manifests and stand-in stages read too."""
        raw = raw if isinstance(raw, dict) else {}
        return cls(raw=raw, **cls._fields(raw))

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        """What build.json records for the stage: the report as the stage returned it."""
        return self.raw

    def headline(self) -> Headline:
        """The few numbers `protege build` prints for the stage, label -> value."""
        return {}


@dataclass(frozen=True, kw_only=True)
class DataResult(StageResult):
    """builder/data.py `prepare`: examples kept after cleaning, the split, and the grounded examples added to train."""

    kept: int | None = None
    train: int | None = None
    val: int | None = None
    grounded: int | None = None  # None: no knowledge.train_qa
    files: list[str] = field(default_factory=list)

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {**_pick(raw, _int, "kept", "train", "val"), "grounded": _int(_dict(raw.get("grounded")).get("train")),
                "files": _names(raw.get("files"))}

    def headline(self) -> Headline:
        return _present({"train": self.train, "val": self.val, "kept": self.kept, "grounded": self.grounded})


@dataclass(frozen=True, kw_only=True)
class TrainResult(StageResult):
    """builder/train.py `run`: the validation losses, steps and speed of the fine-tune, and where the adapter is."""

    best_val_loss: float | None = None
    val_loss_initial: float | None = None
    val_loss_final: float | None = None
    steps: int | None = None
    tokens_per_second: float | None = None
    device: str | None = None
    adapter: str | None = None

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {**_pick(raw, _num, "best_val_loss", "val_loss_initial", "val_loss_final", "tokens_per_second"),
                **_pick(raw, _str, "device", "adapter"), "steps": _int(raw.get("global_step"))}

    def headline(self) -> Headline:
        return _present({"best_val_loss": self.best_val_loss, "val_loss_initial": self.val_loss_initial,
                         "steps": self.steps, "tok/s": self.tokens_per_second})


@dataclass(frozen=True, kw_only=True)
class EvalScores:
    """One side (base or tuned) of builder/evaluate.py's comparison; None where it could not be measured."""

    val_loss: float | None = None
    perplexity: float | None = None
    rouge_l: float | None = None
    bleu4: float | None = None
    style_adherence: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> "EvalScores":
        return cls(**_pick(_dict(raw), _num, "val_loss", "perplexity", "rouge_l", "bleu4", "style_adherence"))


@dataclass(frozen=True, kw_only=True)
class EvalResult(StageResult):
    """builder/evaluate.py `run`: base vs tuned on the held-out split and eval.prompts_file."""

    base: EvalScores = field(default_factory=EvalScores)
    tuned: EvalScores = field(default_factory=EvalScores)

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {"base": EvalScores.from_json(raw.get("base")), "tuned": EvalScores.from_json(raw.get("tuned"))}

    def headline(self) -> Headline:
        return _present({"style base": self.base.style_adherence, "style tuned": self.tuned.style_adherence,
                         "val_loss base": self.base.val_loss, "val_loss tuned": self.tuned.val_loss})


@dataclass(frozen=True, kw_only=True)
class ExportResult(StageResult):
    """export/pipeline.py `run`: the merge chosen, whether the GGUFs verified, their files by quant."""

    merge: str | None = None  # which base weights the adapter was merged onto
    top1_hf_vs_f16: float | None = None  # next-token agreement of the f16 GGUF with the merged HF model
    verified: bool | None = None
    default_quant: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # quant -> GGUF file name

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        verification = _dict(raw.get("verification"))
        ok = verification.get("ok")
        return {"merge": _str(_dict(raw.get("merge")).get("choice")),
                "top1_hf_vs_f16": _num(_dict(verification.get("parity_hf_vs_f16")).get("top1_agreement")),
                "verified": ok if isinstance(ok, bool) else None, "default_quant": _str(raw.get("default_quant")),
                "files": {q: str(_dict(f).get("file")) for q, f in _dict(raw.get("files")).items()}}

    def headline(self) -> Headline:
        return _present({"merge": self.merge, "top1 hf~f16": self.top1_hf_vs_f16})


@dataclass(frozen=True, kw_only=True)
class IndexResult(StageResult):
    """rag/stage.py `run` (the index report): files added, updated, removed, unchanged and skipped (with the reason
    in raw["skipped"]), and the chunks now in the collection."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks_total: int | None = None

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        lists = {k: _names(raw.get(k)) for k in ("added", "updated", "removed", "unchanged", "skipped")}
        return {**lists, "chunks_total": _int(raw.get("chunks_total"))}

    def headline(self) -> Headline:
        return {"added": len(self.added), "updated": len(self.updated), "removed": len(self.removed),
                "unchanged": len(self.unchanged), "skipped": len(self.skipped)}


@dataclass(frozen=True, kw_only=True)
class AnswersResult(StageResult):
    """protege/answer_eval.py `run`: knowledge.eval_qa asked through the real answer path, scored."""

    questions: int | None = None
    answer_accuracy: float | None = None
    first_sentence_accuracy: float | None = None  # the fact is in the reply's opening sentence
    source_hit_at_3: float | None = None
    guard_fired: float | None = None  # share of answers the faithfulness guard replaced
    refusal_recall: float | None = None  # out-of-domain questions refused
    refusal_precision: float | None = None
    report: str | None = None

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {**_pick(raw, _num, "answer_accuracy", "first_sentence_accuracy", "guard_fired", "refusal_recall",
                        "refusal_precision"),
                "source_hit_at_3": _num(raw.get("source_hit@3")), "questions": _int(raw.get("questions")),
                "report": _str(raw.get("report"))}

    def headline(self) -> Headline:
        return _present({"accuracy": self.answer_accuracy, "first sentence": self.first_sentence_accuracy,
                         "source@3": self.source_hit_at_3,
                         "guard": self.guard_fired, "refused ood": self.refusal_recall})


@dataclass(frozen=True, kw_only=True)
class RegisterResult(StageResult):
    """The `register` stage: the resolved config written at the assistant's root, and the quants it serves."""

    config: str | None = None
    quants: list[str] = field(default_factory=list)

    @classmethod
    def _fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {"config": _str(raw.get("config")), "quants": _names(raw.get("quants"))}

    def headline(self) -> Headline:
        return {"quants": ",".join(self.quants)} if self.quants else {}
