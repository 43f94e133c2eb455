"""The public Python API (protege/api.py): registry look-ups, build, retrieve with the gate, and chat/ask through the
server's own request path. The fake engine stands in for the LLM where only the plumbing is under test (it echoes and
counts calls); the real llama.cpp engine on the embedded GGUF runs in the `slow` test. The knowledge base is the real
one (Chroma + the packaged all-MiniLM-L6-v2) over tests/assets/rag_corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import protege
from protege.config_file import config_from_dict
from protege.errors import AssistantNotFound, ConfigError, GenerationError, NoKnowledgeError, ProtegeError
from protege.paths import AssistantPaths
from protege.stage_results import IndexResult

CORPUS = Path(__file__).resolve().parent / "assets" / "rag_corpus"
REFUSAL = "I don't know: my documents don't cover that."


def test_import_protege_and_the_api_import_nothing_heavy():
    code = ("import sys, protege\nprotege.Assistant, protege.Reply, protege.build\nprotege.list_assistants()\n"
            "print([m for m in ('torch', 'transformers', 'chromadb', 'llama_cpp', 'vllm', 'serve.service') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_of_an_unknown_name_names_it_and_the_registry(protege_home):
    with pytest.raises(AssistantNotFound) as e:
        protege.Assistant.load("nobody")
    assert isinstance(e.value, ProtegeError) and e.value.name == "nobody"
    assert "'nobody'" in str(e.value) and f"$PROTEGE_HOME={protege_home}" in str(e.value)


def _register(home: Path, name: str, quants: list[str], knowledge: bool = False) -> Path:
    root = home / "assistants" / name
    (root / "gguf").mkdir(parents=True)
    (root / "config.yaml").write_text(f"name: {name}\n")
    for q in quants:
        (root / "gguf" / f"{name}-{q}.gguf").write_bytes(b"GGUF")
    if knowledge:
        (root / "knowledge").mkdir()
    return root


def test_list_assistants_and_load_a_registered_one(protege_home):
    assert protege.list_assistants() == []
    root = _register(protege_home, "bob", ["q8_0", "q4_k_m"], knowledge=True)
    _register(protege_home, "amy", [])
    infos = protege.list_assistants()
    assert [(i.name, i.quants, i.has_knowledge, i.path) for i in infos] == [
        ("amy", [], False, protege_home / "assistants" / "amy"), ("bob", ["q4_k_m", "q8_0"], True, root)]
    a = protege.Assistant.load("bob:q8_0")
    assert a.model_id == "bob:q8_0" and a.paths.root == root and a.config.name == "bob"
    with pytest.raises(AssistantNotFound, match=r"'bob:f16'.*bob:q4_k_m, bob:q8_0"):
        protege.Assistant.load("bob:f16")
    with pytest.raises(NoKnowledgeError, match="bob: the config has no knowledge section"):
        a.ask("anything?")


def test_build_runs_the_stages_and_returns_the_registered_assistant(tmp_path, monkeypatch, capsys):
    import protege.stages as stages

    ran: list[str] = []

    def recorder(stage):
        if stage == "register":
            return stages.register

        def run(cfg, paths):
            ran.append(stage)
            out = {"export": paths.gguf_file(cfg.export.default_quant), "index": paths.knowledge / "r.json"}[stage]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("x")
            return {"stage": stage}
        return run

    monkeypatch.setattr(stages, "_runner", recorder)
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("# A\nfacts")
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bob", "knowledge": {"folder": "kb"}}))
    seen: list[tuple[str, str]] = []
    a = protege.build(cfg, progress=False, on_stage=lambda s, e: seen.append((s, e)))
    assert ran == ["index", "export"] and capsys.readouterr().out == ""
    assert seen == [("index", "start"), ("index", "done"), ("export", "start"), ("export", "done"),
                    ("register", "start"), ("register", "done")]
    assert a.name == "bob" and [(o.name, o.status) for o in a.outcomes if o.status != "not-applicable"] == [
        ("index", "ran"), ("export", "ran"), ("register", "ran")]
    assert [(i.name, i.quants) for i in protege.list_assistants()] == [("bob", ["q4_k_m"])]
    again = protege.build(str(cfg), overrides=["knowledge.top_k=3"], force=["index"], progress=True)
    assert ran == ["index", "export", "index"] and {o.status for o in again.outcomes} >= {"skipped"}
    assert "Building bob" in capsys.readouterr().out and again.config.knowledge.top_k == 3
    with pytest.raises(ConfigError, match="--force trian: expected one of index, data"):
        protege.build(cfg, force=["trian"])


# --- answering, with the fake engine -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def volt(tmp_path_factory):
    """A knowledge assistant on the real index; the fake engine answers (and shows what it was sent)."""
    pytest.importorskip("chromadb")
    from serve.engines.fake import FakeEngine

    engines: list[FakeEngine] = []

    def factory(spec):
        engines.append(FakeEngine([spec.id], context_length=4096))
        return engines[-1]

    # min_score: `protege rag calibrate` on tests/assets/rag_qa.jsonl picks 0.362 with sentence vectors (0.280 without)
    cfg = config_from_dict({"name": "volt", "persona": {"system_prompt": "You are Volt."},
                            "knowledge": {"folder": str(CORPUS), "min_score": 0.36, "refusal": REFUSAL}})
    a = protege.Assistant(cfg, AssistantPaths(tmp_path_factory.mktemp("home") / "volt"), engine=factory)
    report = a.index()
    assert isinstance(report, IndexResult) and len(report.added) == 6 and report.added == report.raw["added"]
    assert report.chunks_total == report.raw["chunks_total"] > 0 and report.removed == report.skipped == []
    again = a.index()  # incremental: nothing changed
    assert again.added == [] and sorted(again.unchanged) == sorted(report.added) and again.raw["writes"] == 0
    yield a, engines
    a.close()


def test_retrieve_applies_the_gate(volt):
    a, _ = volt
    r = a.retrieve("How long is the warranty?")
    assert not r.refused and r.sources[0].path == "warranty.txt" and "ten years" in r.sources[0].text
    assert r.confidence >= 0.35 and all(s.score >= 0.35 for s in r.sources)
    off = a.retrieve("How do I bake sourdough bread?")
    assert off.refused and off.sources == [] and off.confidence < 0.35


def test_ask_below_the_gate_refuses_without_calling_the_model(volt):
    a, engines = volt
    calls = sum(e.calls for e in engines)
    reply = a.ask("How do I bake sourdough bread?")
    assert reply.text == REFUSAL and reply.grounding == "refused" and reply.refused and reply.sources == []
    assert reply.confidence < 0.35 and reply.usage == {"prompt_tokens": 0, "completion_tokens": 0}
    assert sum(e.calls for e in engines) == calls
    assert reply.to_dict() == {"answer": REFUSAL, "sources": [], "confidence": reply.confidence, "refused": True,
                               "grounding": "refused", "why": reply.why}
    assert reply.why and reply.why.startswith("below min_score")  # which gate refused (`protege ask --json` prints it)


def test_ask_sends_the_grounded_prompt_and_returns_sources(volt):
    a, engines = volt
    reply = a.ask("Who is allowed to install the home battery?")
    sent = engines[-1].last_params
    assert sent.temperature == 0.0 and sent.messages[0]["content"].startswith("You are Volt.")
    assert sent.messages[-1]["content"].startswith("<documents>\n[1] ")
    assert reply.sources[0].path == "guides/installation.md" and reply.confidence >= 0.35
    # the fake echoes the prompt back: the guard cuts the leaked scaffold and quotes the source instead
    assert reply.grounding == "extractive" and "<documents>" not in reply.text and "electrician" in reply.text
    assert reply.usage["prompt_tokens"] == engines[-1].count_tokens(sent) and reply.usage["completion_tokens"] > 0


def test_chat_without_rag_and_streaming(volt):
    a, engines = volt
    msgs = [{"role": "user", "content": "hello there"}]
    reply = a.chat(msgs, rag=False)
    assert reply.text == "Echo: hello there" and reply.grounding is None and reply.sources == []
    # fake tokens: words + 3 per message; "You are Volt." is the persona's system turn
    assert reply.usage == {"prompt_tokens": (3 + 3) + (2 + 3), "completion_tokens": 3}
    assert reply.finish_reason == "stop" and engines[-1].last_params.messages[0]["content"] == "You are Volt."
    s = a.chat(msgs, stream=True, rag=False, max_tokens=2)
    with pytest.raises(ProtegeError, match="only after the stream"):
        s.reply
    assert list(s) == ["Echo:", " hello"]
    assert s.reply.text == "Echo: hello" and s.reply.finish_reason == "length" and s.reply.usage["completion_tokens"] == 2


def test_chat_errors_are_typed(volt):
    a, _ = volt
    with pytest.raises(TypeError, match="'temprature'"):
        a.chat([{"role": "user", "content": "hi"}], temprature=0)
    with pytest.raises(GenerationError) as e:
        a.chat([{"role": "user", "content": "hi"}], rag=False, max_tokens=10**6)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 4096" in str(e.value)


# --- the real engine ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_llamacpp_chat_ask_and_the_cli_folder_mode(tmp_path, capsys):
    """The embedded SmolLM2 GGUF on llama.cpp (configs/minimal.yaml's model): chat counts tokens, ask cites the source
    the question is about; `protege ask --folder` goes the same way."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("chromadb")
    from builder.base_model import embedded_gguf
    from protege.cli import main

    embedded_gguf()  # a missing package fails here, not as a skip
    cfg = config_from_dict({"name": "volt", "knowledge": {"folder": str(CORPUS), "min_score": 0.35}})
    with protege.Assistant(cfg) as a:
        a.index()
        r = a.chat([{"role": "user", "content": "Say hello."}], rag=False, temperature=0, max_tokens=16)
        assert r.text.strip() and r.usage["prompt_tokens"] > 10 and 0 < r.usage["completion_tokens"] <= 16
        ans = a.ask("How long is the warranty?")
        assert ans.sources[0].path == "warranty.txt" and ans.text.strip() and ans.usage["completion_tokens"] > 0
        assert ans.grounding in ("generated", "extractive")
    persist = str(tmp_path / "chroma")
    assert main(["index", "--folder", str(CORPUS), "--collection", "volt-cli", "--persist", persist, "--json"]) == 0
    capsys.readouterr()
    assert main(["ask", "--folder", str(CORPUS), "--collection", "volt-cli", "--persist", persist,
                 "How long is the warranty?", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["sources"][0]["path"] == "warranty.txt" and got["answer"].strip()
    assert got["grounding"] in ("generated", "extractive") and got["refused"] is False
    # the answer eval asks through the same path: `protege rag eval --answers` on a written QA file
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "How long is the warranty?", "source": "warranty.txt",
                              "answer_contains": ["ten years"]}) + "\n"
                  + json.dumps({"question": "How do I bake sourdough bread?", "source": None}) + "\n")
    assert main(["rag", "eval", "--folder", str(CORPUS), "--collection", "volt-cli", "--persist", persist, str(qa),
                 "--answers", "--no-index", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["questions"] == 2 and m["source_hit@3"] == 1.0 and m["refusal_recall"] == 1.0
    assert [d["grounding"] for d in m["questions_detail"]][1] == "refused"
    assert m["questions_detail"][0]["sources"][0] == "warranty.txt" and m["answer_accuracy"] == 1.0
