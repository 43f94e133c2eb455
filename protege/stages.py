"""The stages of `protege build` (and `protege.build()`, protege/api.py): index -> data -> train -> eval -> export ->
answers -> register, each skipped when its inputs are unchanged. (Not named build.py: `protege.build` is the API call.)

The manifest (build.json) records, per stage, a key hashed from the config sections and input files the stage reads;
a stage reruns only when that key changed, its outputs are gone, or `--force STAGE` asks. Stage code is imported only
when a stage really runs, so a build with nothing to do never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from protege.config import AssistantConfig
from protege.config_file import atomic_write_text, save_resolved
from protege.hashing import update_file
from protege.paths import AssistantPaths, read_manifest

STAGES = ("index", "data", "train", "eval", "export", "answers", "register")
# A stage also reruns when a stage it reads from ran in this build (e.g. `--force train` re-exports). The index comes
# first: grounded training examples (knowledge.train_qa) are rendered with what the real retriever finds.
DEPENDS_ON = {"data": {"index"}, "train": {"data"}, "eval": {"train"}, "export": {"train"},
              "answers": {"export", "index"}, "register": {"export", "index"}}
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


def _dump(model) -> Any:
    return model.model_dump(mode="json") if model is not None else None


# Knobs added after assistants were built: left at their default they stay out of the keys, so upgrading protege does
# not retrain every assistant; set, they count (max_file_mb changes what is indexed, hence the index key).
_NEW_KNOWLEDGE_KNOBS = ("max_file_mb",)


def _dump_knowledge(knowledge) -> Any:
    if knowledge is None:
        return None
    return knowledge.model_dump(mode="json", exclude={k for k in _NEW_KNOWLEDGE_KNOBS
                                                      if k not in knowledge.model_fields_set})


def _new_knobs(knowledge) -> list:
    return [[k, getattr(knowledge, k)] for k in _NEW_KNOWLEDGE_KNOBS if k in knowledge.model_fields_set]


@dataclass
class StagePlan:
    name: str
    applies: bool
    key: str = ""
    outputs: list[Path] = field(default_factory=list)
    why_skipped: str = ""


def plan_stages(cfg: AssistantConfig, paths: AssistantPaths) -> list[StagePlan]:
    """Compute each stage's key from what it reads. Keys chain: a stage's key includes its inputs' outputs."""
    has_data = bool(cfg.data.files)
    knowledge = cfg.knowledge
    index_key = ""
    if knowledge is not None and knowledge.folder is not None:
        index_key = _hash_obj("index", hash_paths([knowledge.folder]), knowledge.chunk_size, knowledge.chunk_overlap,
                              _dump(knowledge.chroma), cfg.collection_name(), _chunker_version(),
                              *_new_knobs(knowledge))
    grounded = ""
    if knowledge is not None and knowledge.train_qa is not None:  # rendered with the index and the gate
        grounded = _hash_obj(index_key, hash_paths([knowledge.train_qa]), _dump_knowledge(knowledge))
    data_key = _hash_obj("data", _dump(cfg.data), _dump(cfg.persona), cfg.base.model, hash_paths(cfg.data.files),
                         *([grounded] if grounded else [])) if has_data else ""
    train_key = _hash_obj("train", data_key, _dump(cfg.train), cfg.base.model) if has_data else ""
    eval_inputs = [cfg.eval.prompts_file] if cfg.eval.prompts_file else []
    eval_key = _hash_obj("eval", train_key, _dump(cfg.eval), _dump(cfg.persona.style_markers), hash_paths(eval_inputs))
    export_key = _hash_obj("export", train_key, _dump(cfg.export), cfg.base.model, cfg.persona.system_prompt)
    answers_key = ""
    if index_key and knowledge.eval_qa is not None:
        answers_key = _hash_obj("answers", export_key, index_key, _dump_knowledge(knowledge), _dump(cfg.persona),
                                hash_paths([knowledge.eval_qa]))
    register_key = _hash_obj("register", _dump(cfg), export_key, index_key)
    gguf_default = paths.gguf_file(cfg.export.default_quant)
    return [
        StagePlan("index", bool(index_key), index_key, [paths.knowledge], "no knowledge.folder"),
        StagePlan("data", has_data, data_key, [paths.data / "train.jsonl"], "no data.files"),
        StagePlan("train", has_data, train_key, [paths.adapter / "adapter_config.json"], "no data.files"),
        StagePlan("eval", has_data, eval_key, [paths.eval / "eval.json"], "no data.files"),
        StagePlan("export", True, export_key, [gguf_default]),
        StagePlan("answers", bool(answers_key), answers_key, [paths.eval / "answers.json"], "no knowledge.eval_qa"),
        StagePlan("register", True, register_key, [paths.config]),
    ]


def depends_on(cfg: AssistantConfig, stage: str) -> set[str]:
    """The stages whose run makes `stage` run again; data reads the index only for grounded examples."""
    deps = set(DEPENDS_ON.get(stage, ()))
    if stage == "data" and (cfg.knowledge is None or cfg.knowledge.train_qa is None):
        deps.discard("index")
    return deps


def _chunker_version() -> str:
    from rag.chunking import CHUNKER_VERSION  # a light module (no langchain until a Chunker is made)

    return CHUNKER_VERSION


def _runner(stage: str) -> Callable[[AssistantConfig, AssistantPaths], dict]:
    """Import a stage's code only when it runs."""
    if stage == "data":
        from builder.data import prepare
        return prepare
    if stage == "train":
        from builder.train import run
        return run
    if stage == "eval":
        from builder.evaluate import run
        return run
    if stage == "export":
        from export.pipeline import run
        return run
    if stage == "index":
        from rag.stage import run
        return run
    if stage == "answers":
        from protege.answer_eval import run
        return run
    return register


def register(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """Writing the resolved config at the root makes the assistant visible to `protege list` and the server."""
    save_resolved(cfg, paths.root)
    return {"config": str(paths.config), "quants": paths.quants()}


@dataclass
class StageOutcome:
    name: str
    status: str  # ran | skipped | not-applicable
    seconds: float = 0.0
    result: dict = field(default_factory=dict)
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
        if not plan.applies:
            outcomes.append(StageOutcome(plan.name, "not-applicable", note=plan.why_skipped))
            continue
        prev = recorded.get(plan.name, {})
        fresh = prev.get("key") == plan.key and all(Path(o).exists() for o in plan.outputs)
        upstream_ran = any(o.status == "ran" for o in outcomes if o.name in depends_on(cfg, plan.name))
        if fresh and plan.name not in force and not upstream_ran:
            outcomes.append(StageOutcome(plan.name, "skipped", result=prev.get("result", {}), note="unchanged"))
            continue
        if on_stage:
            on_stage(plan.name, "start")
        t0 = time.perf_counter()
        result = _runner(plan.name)(cfg, paths) or {}
        seconds = time.perf_counter() - t0
        recorded[plan.name] = {"key": plan.key, "finished_at": _now(), "seconds": round(seconds, 1),
                               "result": _jsonable(result)}
        _write_manifest(paths, recorded)  # after every stage: a crash later keeps what finished
        outcomes.append(StageOutcome(plan.name, "ran", seconds, recorded[plan.name]["result"]))
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
