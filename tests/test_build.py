"""`protege build` orchestration: stage order, skip when unchanged, rerun on change, --force, manifest written.

The stages here are recorders (the real stages have their own tests and the slow end-to-end test runs them all):
what is under test is the bookkeeping that decides what runs."""

from __future__ import annotations

import json

import pytest
import yaml

import protege.stages as build_mod
from protege.config_file import load_config
from protege.paths import AssistantPaths, list_assistants


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "conv.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "Ahoy!"}]}\n')
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("# A\nfacts")
    cfg_path = tmp_path / "a.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "bob", "data": {"files": ["conv.jsonl"]},
                                        "knowledge": {"folder": "kb"}}))
    ran: list[str] = []

    def fake_runner(stage):
        if stage == "register":
            return build_mod.register

        def run(cfg, paths):
            ran.append(stage)
            out = {"data": paths.data / "train.jsonl", "train": paths.adapter / "adapter_config.json",
                   "eval": paths.eval / "eval.json", "export": paths.gguf_file(cfg.export.default_quant),
                   "index": paths.knowledge / "index_report.json"}[stage]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("x")
            return {"stage": stage, "val_loss": 1.5}
        return run

    monkeypatch.setattr(build_mod, "_runner", fake_runner)
    return cfg_path, ran


def run_build(cfg_path, overrides=(), force=()):
    cfg = load_config(cfg_path, list(overrides))
    return build_mod.build(cfg, AssistantPaths.for_name(cfg.name).ensure(), force=set(force))


def test_first_build_runs_all_then_nothing(project):
    cfg_path, ran = project
    outcomes = run_build(cfg_path)
    assert ran == ["index", "data", "train", "eval", "export"]
    assert [o.status for o in outcomes] == ["ran"] * 5 + ["not-applicable", "ran"]
    assert [a.name for a in list_assistants()] == ["bob"]
    manifest = json.loads(AssistantPaths.for_name("bob").manifest.read_text())
    assert set(manifest["stages"]) == {"data", "train", "eval", "export", "index", "register"}
    assert manifest["stages"]["train"]["result"]["val_loss"] == 1.5
    ran.clear()
    outcomes = run_build(cfg_path)
    assert ran == [] and {o.status for o in outcomes} == {"skipped", "not-applicable"}


def test_changed_data_reruns_downstream_but_not_index(project):
    cfg_path, ran = project
    run_build(cfg_path)
    ran.clear()
    (cfg_path.parent / "conv.jsonl").write_text('{"messages": [{"role": "user", "content": "yo"}, '
                                                '{"role": "assistant", "content": "Ahoy!"}]}\n')
    run_build(cfg_path)
    assert ran == ["data", "train", "eval", "export"]


def test_changed_knowledge_only_reindexes(project):
    cfg_path, ran = project
    run_build(cfg_path)
    ran.clear()
    (cfg_path.parent / "kb" / "b.txt").write_text("more")
    run_build(cfg_path)
    assert ran == ["index"]


def test_config_change_reruns_only_what_reads_it(project):
    cfg_path, ran = project
    run_build(cfg_path)
    ran.clear()
    run_build(cfg_path, ["export.quants=[q8_0]"])
    assert ran == ["export"]
    ran.clear()
    run_build(cfg_path, ["export.quants=[q8_0]", "train.learning_rate=0.001"])
    assert ran == ["train", "eval", "export"]


def test_force_and_missing_outputs(project):
    cfg_path, ran = project
    run_build(cfg_path)
    ran.clear()
    run_build(cfg_path, force=["train"])
    assert ran == ["train", "eval", "export"]  # what reads the adapter follows it
    ran.clear()
    AssistantPaths.for_name("bob").gguf_file("q4_k_m").unlink()
    run_build(cfg_path)
    assert ran == ["export"]


def test_no_data_skips_training_stages(tmp_path, monkeypatch, project):
    _, ran = project
    p = tmp_path / "b.yaml"
    p.write_text("name: plain\n")
    outcomes = run_build(p)
    assert ran == ["export"]
    assert {o.name: o.status for o in outcomes}["train"] == "not-applicable"
