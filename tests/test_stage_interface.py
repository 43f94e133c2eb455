"""The stage interface (protege/stages.py STAGE_TABLE, protege/stage_results.py): keys derived from the declarations
stay the keys assistants were built with; typed results read real reports, round-trip through build.json and feed the
build summary.

assets/build_manifest_v1.json is the captain-byte demo's build.json (trimmed: fewer examples, curve points and
checks; a skipped file added to the index report), written before the typed results existed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import protege.stages as stages
from protege.config import AssistantConfig
from protege.paths import AssistantPaths
from protege.stage_results import (AnswersResult, DataResult, EvalResult, EvalScores, ExportResult, IndexResult,
                                   RegisterResult, StageResult, TrainResult)

MANIFEST = json.loads((Path(__file__).parent / "assets" / "build_manifest_v1.json").read_text())
REPORTS = {name: s["result"] for name, s in MANIFEST["stages"].items()}

# --- the keys ------------------------------------------------------------------------------------------------------

FILES = {
    "conv.jsonl": '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ahoy!"}]}\n',
    "kb/a.md": "# A\nThe Sloop server costs 5 dollars a month.\n",
    "kb/sub/b.txt": "Support answers within 24 hours.\n",
    "train_qa.jsonl": '{"question": "Sloop price?", "answer": "5 dollars", "source": "a.md"}\n',
    "eval_qa.jsonl": '{"question": "Sloop price?", "source": "a.md", "answer_contains": ["5"]}\n',
    "prompts.jsonl": '{"prompt": "hi"}\n',
}
# train.lora.dropout was 0.05 by default when these were pinned; it is set so, as a config of then would now say it
OLD_DEFAULTS = {"train": {"lora": {"dropout": 0.05}}}
CONFIGS = {
    "full": {"name": "keypin", "data": {"files": ["conv.jsonl"]}, "eval": {"prompts_file": "prompts.jsonl"},
             "knowledge": {"folder": "kb", "train_qa": "train_qa.jsonl", "eval_qa": "eval_qa.jsonl"}, **OLD_DEFAULTS},
    "knowledge_new_knob": {"name": "keypin", "knowledge": {"folder": "kb", "max_file_mb": 10}, **OLD_DEFAULTS},
    "plain": {"name": "keypin", **OLD_DEFAULTS},
}
# Computed by plan_stages as it was before the stage table (hand-written hashes per stage). A stage that does not
# apply has no key ("": it is never compared); the old code gave eval one anyway, which nothing read.
PINNED = {
    "full": {
        "index": "05f4059f10cda0fedb965ef7845337e83d5e62f5d19ed2618953134b14e32747",
        "data": "8db407c8bbfde3c447853b64316f9fab210f27b56bc215b10e97fe4cbeb61ef6",
        "train": "3e18cd374f5755ec1bad7ddf6cd242cd173fc188cebf371a50698e7c45302c09",
        "eval": "b37b24e285d976a0f65ef4ec68d0b74071245774b0ca239f5c0a845adc40fd0c",
        "export": "cd3a9333251067a6e469ae0bcd6e236e926bdfd7b97beb8d8c1310ada27a0636",
        "answers": "a089bbcefe39b19f7a9b5daabc4c08fd9adec93e95c1966c4bc3c1165c26c04a",
        "register": "fb7495645ce58fd68da9f19f629e07fdb6abe290c178ba98a958c436154f4bad",
    },
    "knowledge_new_knob": {
        "index": "2df44f0e5111b678a9ecb54bb186ff1431c704136aceb17b8061db0072ec27cf", "data": "", "train": "",
        "eval": "", "export": "39556ab7620b6b93cbe0d2d39a9319af038c2481f32d401f0cde332d9832674c", "answers": "",
        "register": "4fbc99d254329d5904a1956d5251f86e613bb269c55b4e1a058c7d31d6229cbe",
    },
    "plain": {
        "index": "", "data": "", "train": "", "eval": "",
        "export": "39556ab7620b6b93cbe0d2d39a9319af038c2481f32d401f0cde332d9832674c", "answers": "",
        "register": "fb41403932789a849dd663a993cd93e11e5d97a0d9e9f40803c1b10028f7d479",
    },
}


@pytest.fixture
def inputs(tmp_path, monkeypatch) -> Path:
    """The input files, with the configs' relative paths read from here: the keys do not depend on tmp_path."""
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_keys_are_the_ones_assistants_were_built_with(inputs, which):
    cfg = AssistantConfig.model_validate(CONFIGS[which])
    assert {p.name: p.key for p in stages.plan_stages(cfg, AssistantPaths.for_name(cfg.name))} == PINNED[which]


def _keys(config: dict) -> dict[str, str]:
    cfg = AssistantConfig.model_validate(config)
    return {p.name: p.key for p in stages.plan_stages(cfg, AssistantPaths.for_name(cfg.name))}


def test_speed_knobs_never_rerun_a_stage_and_what_is_learned_does(inputs):
    full = CONFIGS["full"]
    faster = {**full, "train": {**full["train"], "micro_batch_tokens": 2048}}
    assert _keys(faster) == PINNED["full"]  # the same gradient in other micro-batches: nothing reruns
    new_default = {**full, "train": {}}  # dropout 0.0 learns something else: train and all after it rerun
    changed = {name for name, key in _keys(new_default).items() if key != PINNED["full"][name]}
    assert changed == {"train", "eval", "export", "answers", "register"}


def test_a_new_knob_left_at_its_default_reruns_nothing_and_set_it_does(inputs):
    full = CONFIGS["full"]
    assert _keys({**full, "export": {"lora_pair": False}}) != PINNED["full"]  # said, it counts
    pair = _keys({**full, "export": {"lora_pair": True}})  # the export writes one more pair of files
    assert {name for name, key in pair.items() if key != PINNED["full"][name]} == {"export", "answers", "register"}
    assert _keys({**full, "knowledge": {**full["knowledge"], "sentence_vectors": True}}) != PINNED["full"]
    chunks_only = _keys({**full, "knowledge": {**full["knowledge"], "sentence_vectors": False}})  # another index
    assert {name for name, key in chunks_only.items() if key != PINNED["full"][name]} == {
        "index", "data", "train", "eval", "export", "answers", "register"}


def test_plans_name_outputs_and_why_a_stage_does_not_apply(inputs):
    cfg = AssistantConfig.model_validate(CONFIGS["knowledge_new_knob"])
    paths = AssistantPaths.for_name(cfg.name)
    plans = {p.name: p for p in stages.plan_stages(cfg, paths)}
    assert [p for p in plans] == list(stages.STAGES) == ["index", "data", "train", "eval", "export", "answers",
                                                         "register"]
    assert {n: [str(o.relative_to(paths.root)) for o in p.outputs] for n, p in plans.items()} == {
        "index": ["knowledge"], "data": ["data/train.jsonl"], "train": ["adapter/adapter_config.json"],
        "eval": ["eval/eval.json"], "export": ["gguf/keypin-q4_k_m.gguf"], "answers": ["eval/answers.json"],
        "register": ["config.yaml"]}
    assert {n: p.why_skipped for n, p in plans.items() if not p.applies} == {
        "data": "no data.files", "train": "no data.files", "eval": "no data.files", "answers": "no knowledge.eval_qa"}


def test_depends_on_is_what_the_key_reads(inputs):
    full = AssistantConfig.model_validate(CONFIGS["full"])
    assert {s: stages.depends_on(full, s) for s in stages.STAGES} == {
        "index": set(), "data": {"index"}, "train": {"data"}, "eval": {"train"}, "export": {"train"},
        "answers": {"export", "index"}, "register": {"export", "index"}}
    plain_data = AssistantConfig.model_validate({"name": "keypin", "data": {"files": ["conv.jsonl"]}})
    assert stages.depends_on(plain_data, "data") == set()  # the index only feeds grounded examples


# --- the typed results ---------------------------------------------------------------------------------------------

def test_headlines_of_a_real_build():
    typed = {name: stages.STAGE[name].result.from_json(raw) for name, raw in REPORTS.items()}
    assert typed["data"].headline() == {"train": 414, "val": 35, "kept": 353, "grounded": 96}
    assert typed["train"].headline() == {"best_val_loss": pytest.approx(2.3697, abs=1e-4),
                                         "val_loss_initial": pytest.approx(3.1895, abs=1e-4), "steps": 60,
                                         "tok/s": 21.2}
    assert typed["eval"].headline() == {"style base": 0.25, "style tuned": 1.0, "val_loss base": 3.1537,
                                        "val_loss tuned": 2.3898}
    assert typed["export"].headline() == {"merge": "original", "top1 hf~f16": 0.99609375}
    assert typed["index"].headline() == {"added": 4, "updated": 0, "removed": 0, "unchanged": 1, "skipped": 1}
    assert typed["answers"].headline() == {"accuracy": 0.8636, "source@3": 1.0, "guard": 0.6136, "refused ood": 1.0}
    assert typed["register"].headline() == {"quants": "f16,q4_k_m,q8_0"}


def test_typed_fields_of_a_real_build():
    data = DataResult.from_json(REPORTS["data"])
    assert len(data.files) == 3 and data.files[0].endswith("alpaca.json")
    train = TrainResult.from_json(REPORTS["train"])
    assert (train.device, train.steps, train.adapter) == ("cpu", 60, REPORTS["train"]["adapter"])
    ev = EvalResult.from_json(REPORTS["eval"])
    assert ev.tuned == EvalScores(val_loss=2.3898, perplexity=10.911, rouge_l=0.3165, bleu4=0.0742,
                                  style_adherence=1.0)
    export = ExportResult.from_json(REPORTS["export"])
    assert export.verified is True and export.default_quant == "q4_k_m"
    assert export.files == {"f16": "captain-byte-f16.gguf", "q4_k_m": "captain-byte-q4_k_m.gguf",
                            "q8_0": "captain-byte-q8_0.gguf"}
    index = IndexResult.from_json(REPORTS["index"])
    assert index.skipped == ["scan.pdf"] and index.chunks_total == 31 and "pricing-plans.md" in index.unchanged
    answers = AnswersResult.from_json(REPORTS["answers"])
    assert (answers.questions, answers.refusal_precision) == (58, 1.0) and answers.report.endswith("answers.json")
    assert RegisterResult.from_json(REPORTS["register"]).config.endswith("captain-byte/config.yaml")


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_results_round_trip_through_build_json(name):
    rtype = stages.STAGE[name].result
    result = rtype.from_json(REPORTS[name])
    assert result.to_json() == REPORTS[name]  # the manifest keeps its shape: nothing recorded is lost
    again = rtype.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result and type(again) is rtype


def test_partial_and_odd_reports_read_as_missing():
    """Stand-in stages and older reports: what is not there (or not a number) is None and left out of the headline;
    a data report without grounded examples does not claim any (the dotted-path summary showed the train count)."""
    assert DataResult.from_json({"kept": 3, "train": 2, "val": 1, "grounded": None}).headline() == {
        "train": 2, "val": 1, "kept": 3}
    assert TrainResult.from_json({"best_val_loss": "nan?", "global_step": True}).headline() == {}
    assert EvalResult.from_json({"base": None, "tuned": {"val_loss": 1.5}}).headline() == {"val_loss tuned": 1.5}
    assert ExportResult.from_json({"verification": {"ok": "yes"}}).verified is None
    assert RegisterResult.from_json({}).headline() == {} and StageResult.from_json(None).to_json() == {}


# --- the build ------------------------------------------------------------------------------------------------------

def _summary(outcomes) -> str:
    from rich.console import Console

    from protege.commands.build import print_summary

    cfg = AssistantConfig.model_validate({"name": "captain-byte"})
    out = io.StringIO()
    print_summary(Console(file=out, width=250), cfg, AssistantPaths.for_name(cfg.name), outcomes)
    return out.getvalue()


def test_summary_prints_the_headlines():
    outcomes = [stages.StageOutcome(n, "ran", 1.0, stages.STAGE[n].result.from_json(REPORTS[n])) for n in stages.STAGES]
    text = _summary(outcomes)
    for expected in ("train=414 val=35 kept=353 grounded=96", "best_val_loss=2.37 val_loss_initial=3.19 steps=60 "
                     "tok/s=21.2", "style base=0.25 style tuned=1 val_loss base=3.15 val_loss tuned=2.39",
                     "merge=original top1 hf~f16=0.996", "added=4 updated=0 removed=0 unchanged=1 skipped=1",
                     "accuracy=0.864 source@3=1 guard=0.614 refused ood=1", "quants=f16,q4_k_m,q8_0"):
        assert expected in text, text
    not_applicable = stages.StageOutcome("answers", "not-applicable", result=AnswersResult(),
                                         note="no knowledge.eval_qa")
    assert "no knowledge.eval_qa" in _summary([not_applicable])


def test_an_old_build_json_reads_back_typed_when_every_stage_is_skipped(inputs, monkeypatch):
    cfg = AssistantConfig.model_validate(CONFIGS["full"])
    paths = AssistantPaths.for_name(cfg.name).ensure()
    plans = stages.plan_stages(cfg, paths)
    manifest = {**MANIFEST, "stages": {p.name: {**MANIFEST["stages"][p.name], "key": p.key} for p in plans}}
    paths.manifest.write_text(json.dumps(manifest))
    for out in (o for p in plans for o in p.outputs if not o.exists()):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("x")
    monkeypatch.setattr(stages, "_runner", lambda stage: pytest.fail(f"{stage} ran"))
    outcomes = stages.build(cfg, paths)
    assert [(o.status, type(o.result)) for o in outcomes] == [("skipped", s.result) for s in stages.STAGE_TABLE]
    assert {o.name: o.result.to_json() for o in outcomes} == REPORTS
    assert "accuracy=0.864" in _summary(outcomes)


def test_a_stage_may_return_its_typed_result_and_build_json_records_the_report(inputs, monkeypatch):
    cfg = AssistantConfig.model_validate(CONFIGS["plain"])
    paths = AssistantPaths.for_name(cfg.name).ensure()

    def runner(stage):
        def run(cfg, paths):
            paths.gguf_file(cfg.export.default_quant).parent.mkdir(parents=True, exist_ok=True)
            paths.gguf_file(cfg.export.default_quant).write_text("x")
            return ExportResult.from_json({"merge": {"choice": "original"}, "path": Path("/x.gguf")})
        return stages.register if stage == "register" else run

    monkeypatch.setattr(stages, "_runner", runner)
    export = next(o for o in stages.build(cfg, paths) if o.name == "export")
    assert isinstance(export.result, ExportResult) and export.result.merge == "original"
    recorded = json.loads(paths.manifest.read_text())["stages"]
    assert recorded["export"]["result"] == {"merge": {"choice": "original"}, "path": "/x.gguf"}
    assert recorded["register"]["result"]["quants"] == ["q4_k_m"]
