"""The stages of `protege build` (and `protege.build()`, protege/api.py): index -> data -> train -> eval -> export ->
answers -> register, each skipped when its inputs are unchanged. (Not named build.py: `protege.build` is the API call.)

The manifest (build.json) records, per stage, a key hashed from the config sections and input files the stage reads;
a stage reruns only when that key changed, its outputs are gone, or `--force STAGE` asks. Each stage is declared once
(STAGE_TABLE): what it reads (so its key, and which stages' runs make it rerun), what it writes, its code and its typed
result. Stage code is imported only when a stage really runs, so a build with nothing to do never imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from protege.config import AssistantConfig
from protege.config_file import atomic_write_text, save_resolved
from protege.hashing import update_file
from protege.paths import AssistantPaths, read_manifest
from protege.stage_results import (AnswersResult, DataResult, EvalResult, ExportResult, IndexResult, RegisterResult,
                                   StageResult, TrainResult)

MANIFEST_VERSION = 1


def hash_paths(paths: list[Path], suffixes: tuple[str, ...] | None = None) -> str:
    """Content hash of files and folders (walked, hidden files skipped), names included so renames count."""
    h = hashlib.sha256()
    for root in sorted(Path(p) for p in paths):
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(root).parts))
        elif root.is_file():
            files = [root]
        else:
            h.update(f"missing:{root}".encode())
            continue
        for f in files:
            if suffixes and f.suffix.lower() not in suffixes:
                continue
            h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
            update_file(h, f)
    return h.hexdigest()


def _hash_obj(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# Knobs added after assistants were built: left at their default they stay out of the keys, so upgrading protege does
# not retrain every assistant; set, they count (max_file_mb changes what is indexed, hence the index key; an index
# from before sentence_vectors is served from its chunk vectors until `protege index` fills the sentences in).
# The keys that dump the knowledge section leave them all out; those that read the whole config (_NEW_KNOBS below) only
# the knobs after the first, which came before such reads.
_NEW_KNOWLEDGE_KNOBS = ("max_file_mb", "sentence_vectors", "train_near_miss_fraction", "model_refusal", "off_topic")


# Knobs naming a file that the stages reading it hash by content (Files, below), not by its path: no key that dumps the
# knowledge section holds them. scope_examples is read only when answering; synonyms also by the data stage (grounded
# examples are rendered with what the retriever finds).
_FILE_KNOWLEDGE_KNOBS = ("scope_examples", "synonyms")


def _dump_knowledge(knowledge) -> Any:
    if knowledge is None:
        return None
    return knowledge.model_dump(mode="json", exclude={k for k in _NEW_KNOWLEDGE_KNOBS
                                                      if k not in knowledge.model_fields_set}
                                .union(_FILE_KNOWLEDGE_KNOBS))


def _new_knobs(knowledge) -> list:
    return [[k, getattr(knowledge, k)] for k in _NEW_KNOWLEDGE_KNOBS if k in knowledge.model_fields_set]


# --- what each stage reads: the inputs of its key, in order (the order is the hash's: keep it) ---------------------

class Read:
    """One input of a stage's key."""

    def parts(self, cfg: AssistantConfig, keys: dict[str, str]) -> list[Any]:
        """The values it adds to the key (usually one); `keys`: the keys of the stages before."""
        raise NotImplementedError

    def stages(self, cfg: AssistantConfig) -> set[str]:
        """The stages whose output it reads: when one of them runs, the reader runs again."""
        return set()


def _at(cfg: AssistantConfig, path: str) -> Any:
    """The config value at a dotted path ("" is the whole config); None under a section that is not set."""
    value: Any = cfg
    for name in filter(None, path.split(".")):
        if value is None:
            return None
        value = getattr(value, name)
    return value


# Knobs that change how fast a stage runs or a model serves, not what is made (the same gradient in more or fewer
# micro-batches; the same KV, reused; the float summation order of a batch): kept out of every key, so tuning them
# never reruns a stage.
_SPEED_KNOBS = {"train": {"micro_batch_tokens"}, "serve": {"prefix_cache", "batch_invariant"}}
# Knobs added after assistants were built, by section: left at their default they stay out of the keys (as
# _NEW_KNOWLEDGE_KNOBS above), so upgrading protege does not rerun a stage; set, they count.
_NEW_KNOBS = {"export": {"lora_pair"}, "knowledge": {*_NEW_KNOWLEDGE_KNOBS[1:], *_FILE_KNOWLEDGE_KNOBS}}


def _excluded(value: BaseModel, path: str) -> Any:
    """What a Cfg read leaves out of its key: the speed knobs, and the new knobs a config leaves at their default."""
    def unset(section: BaseModel | None, knobs: set[str]) -> set[str]:
        return set() if section is None else {k for k in knobs if k not in section.model_fields_set}

    if path == "":
        out = {sec: set(knobs) for sec, knobs in _SPEED_KNOBS.items()}
        for sec, knobs in _NEW_KNOBS.items():
            out.setdefault(sec, set()).update(unset(getattr(value, sec, None), knobs))
        return {sec: knobs for sec, knobs in out.items() if knobs}
    return set(_SPEED_KNOBS.get(path, ())) | unset(value, _NEW_KNOBS.get(path, set())) or None


@dataclass(frozen=True)
class Cfg(Read):
    """A config section or value, as JSON (speed knobs left out)."""

    path: str

    def parts(self, cfg: AssistantConfig, keys: dict[str, str]) -> list[Any]:
        value = _at(cfg, self.path)
        if not isinstance(value, BaseModel):
            return [value]
        return [value.model_dump(mode="json", exclude=_excluded(value, self.path))]


@dataclass(frozen=True)
class Files(Read):
    """The content of the file(s) or folder a config path names (not set: the hash of nothing)."""

    path: str

    def parts(self, cfg: AssistantConfig, keys: dict[str, str]) -> list[Any]:
        value = _at(cfg, self.path)
        return [hash_paths(value if isinstance(value, list) else [] if value is None else [value])]


@dataclass(frozen=True)
class Key(Read):
    """What an earlier stage wrote, by its key ("" when it does not apply)."""

    stage: str

    def parts(self, cfg: AssistantConfig, keys: dict[str, str]) -> list[Any]:
        return [keys[self.stage]]

    def stages(self, cfg: AssistantConfig) -> set[str]:
        return {self.stage}


@dataclass(frozen=True)
class Computed(Read):
    """Values computed from the config (none, one or more)."""

    values: Callable[[AssistantConfig], list[Any]]

    def parts(self, cfg: AssistantConfig, keys: dict[str, str]) -> list[Any]:
        return self.values(cfg)


@dataclass(frozen=True)
class When(Read):
    """Reads hashed together into one input, read only when a config path is set."""

    path: str
    reads: tuple[Read, ...]

    def parts(self, cfg: AssistantConfig, keys: dict[str, str]) -> list[Any]:
        if _at(cfg, self.path) is None:
            return []
        return [_hash_obj(*(p for r in self.reads for p in r.parts(cfg, keys)))]

    def stages(self, cfg: AssistantConfig) -> set[str]:
        return set().union(*(r.stages(cfg) for r in self.reads)) if _at(cfg, self.path) is not None else set()


@dataclass(frozen=True)
class Stage:
    """A stage, declared: the config it `needs` to apply at all, what its key `reads`, the files it `writes` (gone:
    it reruns), the code that `run`s it ("module:function", imported only then) and its `result` type."""

    name: str
    reads: tuple[Read, ...]
    writes: Callable[[AssistantConfig, AssistantPaths], list[Path]]
    run: str
    result: type[StageResult]
    needs: tuple[str, ...] = ()

    def missing(self, cfg: AssistantConfig) -> str:
        """The first config path it needs that is not set ("" when the stage applies)."""
        return next((p for p in self.needs if not _at(cfg, p)), "")

    def key(self, cfg: AssistantConfig, keys: dict[str, str]) -> str:
        return _hash_obj(self.name, *(p for r in self.reads for p in r.parts(cfg, keys)))

    def depends_on(self, cfg: AssistantConfig) -> set[str]:
        return set().union(*(r.stages(cfg) for r in self.reads))


KNOWLEDGE = Computed(lambda cfg: [_dump_knowledge(cfg.knowledge)])
# In build order. The index comes first: grounded training examples (knowledge.train_qa) are rendered with what the real
# retriever finds, so data reads the index, but only then.
STAGE_TABLE: tuple[Stage, ...] = (
    Stage("index", needs=("knowledge.folder",), run="rag.stage:run", result=IndexResult,
          reads=(Files("knowledge.folder"), Cfg("knowledge.chunk_size"), Cfg("knowledge.chunk_overlap"),
                 Cfg("knowledge.chroma"), Computed(lambda cfg: [cfg.collection_name(), _chunker_version()]),
                 Computed(lambda cfg: _new_knobs(cfg.knowledge))),
          writes=lambda cfg, p: [p.knowledge]),
    Stage("data", needs=("data.files",), run="builder.data:prepare", result=DataResult,
          reads=(Cfg("data"), Cfg("persona"), Cfg("base.model"), Files("data.files"),
                 When("knowledge.train_qa", (Key("index"), Files("knowledge.train_qa"), KNOWLEDGE)),
                 # grounded examples are rendered with what the retriever finds, and synonyms change what it searches
                 When("knowledge.synonyms", (Files("knowledge.synonyms"),))),
          writes=lambda cfg, p: [p.data / "train.jsonl"]),
    Stage("train", needs=("data.files",), run="builder.train:run", result=TrainResult,
          reads=(Key("data"), Cfg("train"), Cfg("base.model")),
          writes=lambda cfg, p: [p.adapter / "adapter_config.json"]),
    Stage("eval", needs=("data.files",), run="builder.evaluate:run", result=EvalResult,
          reads=(Key("train"), Cfg("eval"), Cfg("persona.style_markers"), Files("eval.prompts_file")),
          writes=lambda cfg, p: [p.eval / "eval.json"]),
    Stage("export", run="export.pipeline:run", result=ExportResult,
          reads=(Key("train"), Cfg("export"), Cfg("base.model"), Cfg("persona.system_prompt")),
          writes=lambda cfg, p: [p.gguf_file(cfg.export.default_quant)]),
    Stage("answers", needs=("knowledge.folder", "knowledge.eval_qa"), run="protege.answer_eval:run",
          result=AnswersResult, reads=(Key("export"), Key("index"), KNOWLEDGE, Cfg("persona"),
                                       Files("knowledge.eval_qa"),
                                       When("knowledge.scope_examples", (Files("knowledge.scope_examples"),)),
                                       When("knowledge.synonyms", (Files("knowledge.synonyms"),))),
          writes=lambda cfg, p: [p.eval / "answers.json"]),
    Stage("register", run="protege.stages:register", result=RegisterResult,
          reads=(Cfg(""), Key("export"), Key("index")), writes=lambda cfg, p: [p.config]),
)
STAGE = {s.name: s for s in STAGE_TABLE}
STAGES = tuple(STAGE)


@dataclass
class StagePlan:
    name: str
    applies: bool
    key: str = ""
    outputs: list[Path] = field(default_factory=list)
    why_skipped: str = ""


def plan_stages(cfg: AssistantConfig, paths: AssistantPaths) -> list[StagePlan]:
    """Each stage's key from what it reads (keys chain: a stage's key includes the keys of the stages it reads)."""
    keys: dict[str, str] = {}
    plans = []
    for stage in STAGE_TABLE:
        missing = stage.missing(cfg)
        keys[stage.name] = "" if missing else stage.key(cfg, keys)
        plans.append(StagePlan(stage.name, not missing, keys[stage.name], stage.writes(cfg, paths),
                               f"no {missing}" if missing else ""))
    return plans


def depends_on(cfg: AssistantConfig, stage: str) -> set[str]:
    """The stages whose run makes `stage` run again (e.g. `--force train` re-exports): those whose key it reads."""
    return STAGE[stage].depends_on(cfg)


def _chunker_version() -> str:
    from rag.chunking import CHUNKER_VERSION  # a light module (no langchain until a Chunker is made)

    return CHUNKER_VERSION


def _runner(stage: str) -> Callable[[AssistantConfig, AssistantPaths], Any]:
    """Import a stage's code only when it runs."""
    module, _, function = STAGE[stage].run.partition(":")
    return getattr(importlib.import_module(module), function)


def register(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """Writing the resolved config at the root makes the assistant visible to `protege list` and the server."""
    save_resolved(cfg, paths.root)
    return {"config": str(paths.config), "quants": paths.quants()}


@dataclass
class StageOutcome:
    """What became of one stage in a build. `result` is the stage's typed result (protege/stage_results.py, the
    `result` type of its declaration): what it returned when it ran, what build.json recorded when it was skipped,
    empty (no fields set) when it does not apply."""

    name: str
    status: str  # ran | skipped | not-applicable
    seconds: float = 0.0
    result: StageResult = field(default_factory=StageResult)
    note: str = ""


def build(cfg: AssistantConfig, paths: AssistantPaths, force: set[str] | None = None,
          on_stage: Callable[[str, str], None] | None = None) -> list[StageOutcome]:
    """Run the stages in order; rerun a stage (and everything after it) when its key changed. Holds the assistant's
    lock throughout: a second build/train/export of it fails at once instead of interleaving."""
    from protege.lock import assistant_lock

    with assistant_lock(paths):
        return _build(cfg, paths, force, on_stage)


def _build(cfg: AssistantConfig, paths: AssistantPaths, force: set[str] | None,
           on_stage: Callable[[str, str], None] | None) -> list[StageOutcome]:
    force = set(force or ())
    if "all" in force:
        force = set(STAGES)
    manifest = read_manifest(paths)
    recorded = manifest.get("stages", {}) if manifest.get("version") == MANIFEST_VERSION else {}
    outcomes: list[StageOutcome] = []
    for plan in plan_stages(cfg, paths):
        result_type = STAGE[plan.name].result
        if not plan.applies:
            outcomes.append(StageOutcome(plan.name, "not-applicable", result=result_type(), note=plan.why_skipped))
            continue
        prev = recorded.get(plan.name, {})
        fresh = prev.get("key") == plan.key and all(Path(o).exists() for o in plan.outputs)
        upstream_ran = any(o.status == "ran" for o in outcomes if o.name in depends_on(cfg, plan.name))
        if fresh and plan.name not in force and not upstream_ran:
            outcomes.append(StageOutcome(plan.name, "skipped", result=result_type.from_json(prev.get("result")),
                                         note="unchanged"))
            continue
        if on_stage:
            on_stage(plan.name, "start")
        t0 = time.perf_counter()
        report = _runner(plan.name)(cfg, paths) or {}
        seconds = time.perf_counter() - t0
        result = result_type.from_json(_jsonable(report.to_json() if isinstance(report, StageResult) else report))
        recorded[plan.name] = {"key": plan.key, "finished_at": _now(), "seconds": round(seconds, 1),
                               "result": result.to_json()}
        _write_manifest(paths, recorded)  # after every stage: a crash later keeps what finished
        outcomes.append(StageOutcome(plan.name, "ran", seconds, result))
        if on_stage:
            on_stage(plan.name, "done")
    return outcomes


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_manifest(paths: AssistantPaths, stages: dict) -> None:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("protege", "torch", "transformers", "peft", "trl", "llama-cpp-python", "chromadb"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    body = {"version": MANIFEST_VERSION, "name": paths.name, "built_at": _now(), "stages": stages,
            "versions": versions}
    atomic_write_text(paths.manifest, json.dumps(body, indent=2))
