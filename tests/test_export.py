"""Export on the tiny random Llama: LoRA merge -> llama.cpp converter -> f16 -> q8_0 -> llama_cpp.Llama, with the
metadata / template / logit checks, the Modelfile, and the all-or-nothing swap (a failed or killed export keeps the
previous one byte for byte)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from protege.config_file import config_from_dict  # noqa: E402
from protege.errors import ProtegeError  # noqa: E402
from protege.paths import AssistantPaths  # noqa: E402

NAME = "tiny-export"
SYSTEM = "You are Byte, a terse robot. Start every reply with 'Beep.'"
VAL = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Beep. Hello, human."}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Beep. Paris."}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Count to three"},
     {"role": "assistant", "content": "Beep. One, two, three."}],
]


def make_adapter(base_dir: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter on all linear layers with non-zero B, so merging changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    peft_model.save_pretrained(out)
    return out


def make_config(base_dir: Path, knowledge: dict | None = None, **export):
    data = {"name": NAME, "base": {"model": str(base_dir)}, "persona": {"system_prompt": SYSTEM},
            "export": {"quants": ["q8_0"], "default_quant": "q8_0", "num_ctx": 1024,
                       # random weights have near-tied logits: the 98% gate is for real models (see slow test)
                       "parity": {"min_top1": 0.9}, **export}}
    if knowledge is not None:
        data["knowledge"] = knowledge
    return config_from_dict(data)


def write_val(paths: AssistantPaths) -> None:
    paths.data.mkdir(parents=True, exist_ok=True)
    (paths.data / "val.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in VAL))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below root (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    from export.pipeline import run

    paths = AssistantPaths(tmp_path_factory.mktemp("home") / "assistants" / NAME).ensure()
    make_adapter(tiny_model_dir, paths.adapter)
    write_val(paths)
    cfg = make_config(tiny_model_dir)
    report = run(cfg, paths)
    return cfg, paths, report


def test_export_writes_every_artifact(exported):
    cfg, paths, report = exported
    assert paths.quants() == ["f16", "q8_0"]
    for q in ("f16", "q8_0"):
        assert paths.gguf_file(q).stat().st_size > 1_000_000
        assert paths.modelfile(q).is_file()
    assert (paths.merged / "model.safetensors").is_file() and (paths.merged / "chat_template.jinja").is_file()
    assert (paths.gguf / "config.yaml").is_file() and f"name: {NAME}" in (paths.gguf / "config.yaml").read_text()
    on_disk = json.loads((paths.gguf / "export_report.json").read_text())
    assert on_disk["verification"]["ok"] is True and on_disk["files"]["q8_0"]["file"] == f"{NAME}-q8_0.gguf"
    assert not list(paths.root.glob(".export-*")), "staging folders must be gone"
    assert report["versions"]["converter"] == report["versions"]["llama-cpp-python"]


def test_auto_merge_scores_both_candidates(exported):
    _, _, report = exported
    merge = report["merge"]
    losses = merge["val_loss"]
    assert set(losses) == {"original", "nf4_roundtrip"} and all(v > 0 for v in losses.values())
    assert merge["choice"] == min(losses, key=losses.get)
    assert losses["original"] != losses["nf4_roundtrip"]


def test_merge_folds_the_lora_delta(tiny_model_dir, tmp_path):
    """merged W == W0 + (alpha/r) B @ A for every adapted layer (mode `original`)."""
    from safetensors.torch import load_file

    from export.merge import merge

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    info = merge(tiny_model_dir, adapter, tmp_path / "merged", mode="original")
    assert info["choice"] == "original"
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    key = "model.layers.1.mlp.down_proj.weight"
    a = lora[f"base_model.model.{key.removesuffix('.weight')}.lora_A.weight"]
    b = lora[f"base_model.model.{key.removesuffix('.weight')}.lora_B.weight"]
    expected = base[key] + (8 / 4) * b @ a
    assert (merged[key] - base[key]).abs().max() > 1e-3
    assert (merged[key] - expected).abs().max() < 1e-5
    assert not any("lora" in k for k in merged)


def test_gguf_metadata_from_disk(exported):
    import llama_cpp
    from transformers import AutoTokenizer

    _, paths, _ = exported
    tok = AutoTokenizer.from_pretrained(paths.merged)
    meta = llama_cpp.Llama(str(paths.gguf_file("q8_0")), vocab_only=True, verbose=False).metadata
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tok.convert_tokens_to_ids("<|im_end|>")
    assert int(meta["tokenizer.ggml.bos_token_id"]) == tok.bos_token_id
    assert int(meta["general.file_type"]) == 7  # LLAMA_FTYPE_MOSTLY_Q8_0


def test_verification_report(exported):
    _, _, report = exported
    v = report["verification"]
    assert v["ok"] and not v["failures"]
    assert {c["name"] for c in v["checks"] if c["ok"]} == {"chat_template", "bos_id", "eos_id", "eot_is_eog"}
    assert v["template_tokens"]["ok"] and v["template_tokens"]["cases"] >= 6
    assert v["text_tokenization_match"] is True
    parity = v["parity_hf_vs_f16"]
    assert parity["positions"] >= 256
    assert parity["top1_agreement"] >= 0.9
    # the f16 GGUF computes the same function: logit error far below the spread of the logits
    assert parity["max_abs_logit_diff"] < 0.05 * parity["ref_logit_std"]
    assert v["quants"]["q8_0"]["top1_agreement_vs_f16"] >= 0.9
    assert v["perplexity"]["q8_0"] == pytest.approx(v["perplexity"]["f16"], rel=0.05)


def test_llama_cpp_loads_and_chats_with_the_same_tokens(exported):
    from transformers import AutoTokenizer

    from export.verify import hf_chat_tokens, llama_chat_tokens, open_gguf

    _, paths, _ = exported
    tok = AutoTokenizer.from_pretrained(paths.merged)
    llm = open_gguf(paths.gguf_file("q8_0"), n_ctx=256)
    try:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Naïve café? ✓"}]
        ids = llama_chat_tokens(llm, llm.metadata["tokenizer.chat_template"], msgs, True)
        assert ids == hf_chat_tokens(tok, msgs, True)
        out = llm.create_chat_completion(messages=msgs, max_tokens=4, temperature=0.0)
        assert out["choices"][0]["finish_reason"] in ("length", "stop")
        assert out["usage"]["prompt_tokens"] == len(ids)
    finally:
        llm.close()


def test_modelfile_matches_the_chat_template(exported):
    from transformers import AutoTokenizer

    from export.chat_template import PROBES
    from tests.gotemplate import render

    cfg, paths, report = exported
    text = paths.modelfile("q8_0").read_text()
    from_line = re.search(r"^FROM (.+)$", text, re.M).group(1)
    assert from_line == f"./gguf/{NAME}-q8_0.gguf" and (paths.root / from_line).resolve() == paths.gguf_file("q8_0")
    assert f'SYSTEM """{SYSTEM}"""' in text
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<|im_end|>", "<|im_start|>"]
    assert "PARAMETER num_ctx 1024" in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    tok = AutoTokenizer.from_pretrained(paths.merged)
    convs = PROBES + [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "a {{ b }} c"}]]
    for msgs in convs:
        gen = msgs[-1]["role"] != "assistant"
        assert render(template, msgs) == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert report["template"]["translated"] and report["template"]["end_of_turn"] == "<|im_end|>"


def test_unsupported_architecture_fails_before_merging(tmp_path, monkeypatch, tiny_model_dir):
    import export.merge
    from export.pipeline import run

    base = tmp_path / "weird"
    shutil.copytree(tiny_model_dir, base)
    cfg_json = json.loads((base / "config.json").read_text())
    cfg_json["architectures"] = ["FrobnicatorForCausalLM"]
    (base / "config.json").write_text(json.dumps(cfg_json))
    monkeypatch.setattr(export.merge, "merge", lambda *a, **k: pytest.fail("merged before checking the arch"))
    paths = AssistantPaths(tmp_path / "a" / NAME).ensure()
    with pytest.raises(ProtegeError, match="FrobnicatorForCausalLM.*not supported by llama.cpp's converter"):
        run(make_config(base), paths)
    assert not list(paths.root.glob(".export-*"))


def test_missing_converter_says_make_setup(monkeypatch, tmp_path):
    from export.convert import llama_cpp_dir

    monkeypatch.setenv("PROTEGE_LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ProtegeError, match="make setup"):
        llama_cpp_dir()


def test_bad_quant_type_is_a_clear_error(exported, tmp_path):
    from export.quantize import quantize

    _, paths, _ = exported
    with pytest.raises(ProtegeError, match="no quantization type 'q3_zz'"):
        quantize(paths.gguf_file("f16"), tmp_path / "x.gguf", "q3_zz")


def _copy_export(exported, dest_home: Path) -> AssistantPaths:
    _, paths, _ = exported
    dest = AssistantPaths(dest_home / "assistants" / NAME)
    shutil.copytree(paths.root, dest.root)
    return dest


def test_failed_verification_keeps_the_previous_export(exported, tmp_path, monkeypatch, tiny_model_dir):
    import export.verify
    from export.pipeline import run

    paths = _copy_export(exported, tmp_path / "home")
    before = snapshot(paths.root)
    real_compare = export.verify.compare

    def broken(ref, other):  # the gate sees a GGUF that disagrees with the merged model
        return dict(real_compare(ref, other), top1_agreement=0.5)

    monkeypatch.setattr(export.verify, "compare", broken)
    cfg = make_config(tiny_model_dir, quants=[], merge={"base": "original"})  # the cheapest export that verifies
    with pytest.raises(ProtegeError, match=r"verification failed: parity \(top-1 0.500 < 0.9\)"):
        run(cfg, paths)
    failed = paths.root / "export_report.failed.json"
    assert json.loads(failed.read_text())["verification"]["parity_hf_vs_f16"]["ok"] is False
    failed.unlink()
    assert snapshot(paths.root) == before
    assert not list(paths.root.glob(".export-*"))


def test_killed_export_keeps_the_previous_export(exported, tmp_path, tiny_model_dir):
    from export.pipeline import recover

    home = tmp_path / "home"
    paths = _copy_export(exported, home)
    before = snapshot(paths.root)
    cfg_file = tmp_path / "assistant.yaml"
    cfg_file.write_text(f"name: {NAME}\nbase:\n  model: {tiny_model_dir}\nexport:\n  quants: [q8_0]\n")
    env = dict(os.environ, PROTEGE_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "protege", "export", str(cfg_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # kill once the new merged model is on disk
            if any(paths.root.glob(".export-stage-*/merged/model.safetensors")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "export finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert list(paths.root.glob(".export-stage-*")), "the kill should have left a staging folder"
    assert snapshot(paths.root / "gguf") == {k[5:]: v for k, v in before.items() if k.startswith("gguf/")}
    recover(paths)  # what the next export does first
    assert snapshot(paths.root) == before


def test_interrupted_swap_is_finished_by_recover(tmp_path):
    from export.pipeline import BACKUP, STAGE_PREFIX, VERIFIED, recover

    paths = AssistantPaths(tmp_path / NAME).ensure()
    for folder in ("merged", "gguf"):
        (paths.root / folder).mkdir()
        (paths.root / folder / "f").write_text("old")
    paths.modelfile("q4_0").write_text("old")  # a quant the new export no longer has
    stage = paths.root / f"{STAGE_PREFIX}x"
    for folder in ("merged", "gguf"):
        (stage / folder).mkdir(parents=True)
        (stage / folder / "f").write_text("new")
    (stage / "Modelfile.q8_0").write_text("new")
    (stage / VERIFIED).write_text(json.dumps({"modelfiles": ["Modelfile.q8_0"]}))
    # the swap was cut after merged/ moved: old merged in the backup, new merged in place
    (paths.root / BACKUP).mkdir()
    (paths.root / "merged").rename(paths.root / BACKUP / "merged")
    (stage / "merged").rename(paths.root / "merged")
    recover(paths)
    assert (paths.root / "merged" / "f").read_text() == "new" and (paths.root / "gguf" / "f").read_text() == "new"
    assert paths.modelfile("q8_0").read_text() == "new" and not paths.modelfile("q4_0").exists()
    assert sorted(p.name for p in paths.root.iterdir() if p.name != ".lock") == ["Modelfile.q8_0", "gguf", "merged"]


def test_unverified_stage_is_discarded(tmp_path):
    from export.pipeline import STAGE_PREFIX, recover

    paths = AssistantPaths(tmp_path / NAME).ensure()
    (paths.root / "gguf").mkdir()
    (paths.root / "gguf" / "f").write_text("old")
    stage = paths.root / f"{STAGE_PREFIX}y"
    (stage / "gguf").mkdir(parents=True)
    (stage / "gguf" / "f").write_text("half written")
    recover(paths)
    assert (paths.root / "gguf" / "f").read_text() == "old" and not stage.exists()


def test_chat_template_analysis_llama3_style_and_untranslatable():
    import jinja2

    from export.chat_template import UntranslatableTemplate, analyze
    from export.modelfile import go_template
    from tests.gotemplate import render

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    llama3 = env.from_string(
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
        "+ m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

    def r(msgs, gen):
        return llama3.render(messages=msgs, add_generation_prompt=gen, bos_token="<|begin_of_text|>")

    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    parts = analyze(r, "<|begin_of_text|>", specials, "<|end_of_text|>")
    assert parts.stops == ["<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>"]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]
    assert render(go_template(parts), msgs) == r(msgs, True)

    alternating = env.from_string(
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}[{{ m['content'] }}]{% endfor %}")

    def strict(msgs, gen):
        def boom(msg):
            raise ValueError(msg)
        return alternating.render(messages=msgs, add_generation_prompt=gen, raise_exception=boom)

    with pytest.raises(UntranslatableTemplate, match="refused a probe"):
        analyze(strict)


def test_modelfile_without_template_keeps_a_note():
    from export.modelfile import render_modelfile

    text = render_modelfile("m.gguf", None, 'say """hi"""', 512, ["</s>"], note="template not translated")
    assert "TEMPLATE" not in text and "# NOTE: template not translated" in text
    system = re.search(r'^SYSTEM """(.*)"""$', text, re.M).group(1)
    assert '"""' not in system and system.replace("\u200b", "") == 'say """hi"""'
    assert 'PARAMETER stop "</s>"' in text


def test_bundle_is_a_servable_home(exported, tmp_path, monkeypatch):
    import tarfile

    import yaml

    from export.bundle import build_bundle

    cfg, paths, _ = exported
    info = build_bundle(cfg, paths)
    assert info["quant"] == "q8_0" and info["knowledge"] is False
    bundle = Path(info["dir"])
    home = bundle / "home" / "assistants" / NAME
    assert (home / "gguf" / f"{NAME}-q8_0.gguf").stat().st_size == paths.gguf_file("q8_0").stat().st_size
    assert yaml.safe_load((home / "config.yaml").read_text())["serve"]["quant"] == "q8_0"
    assert os.access(bundle / "launch.sh", os.X_OK) and os.access(bundle / "launch.py", os.X_OK)
    assert f"FROM ./home/assistants/{NAME}/gguf/{NAME}-q8_0.gguf" in (bundle / "Modelfile").read_text()
    with tarfile.open(info["tarball"]) as tar:
        names = tar.getnames()
    assert f"{NAME}-bundle/launch.sh" in names and f"{NAME}-bundle/home/assistants/{NAME}/config.yaml" in names
    # the server's own registry, pointed at the bundle, exposes the bundled GGUF as the default model
    spec = _bundled_spec(bundle, monkeypatch)
    assert spec.quant == "q8_0" and spec.gguf == home / "gguf" / f"{NAME}-q8_0.gguf" and not spec.has_knowledge


def _bundled_spec(bundle: Path, monkeypatch):
    """The serve registry's spec of NAME with PROTEGE_HOME pointed at the bundle (what launch.py does)."""
    from serve.registry import Registry

    monkeypatch.setenv("PROTEGE_HOME", str(bundle / "home"))
    spec = Registry().get(NAME)
    assert spec is not None and spec.paths.root == bundle / "home" / "assistants" / NAME
    return spec


def test_bundle_carries_the_knowledge_index_and_answers_from_it(exported, tmp_path, monkeypatch):
    """An assistant with knowledge: the bundle holds its Chroma index, the config points at embedded Chroma, and the
    server's knowledge factory on the bundle retrieves from the bundled index alone (the original index and the
    documents are deleted before the question is asked)."""
    import tarfile

    from export.bundle import build_bundle
    from rag.knowledge import KnowledgeBase
    from serve.service import default_knowledge_factory

    cfg, _, _ = exported
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "warranty.md").write_text("# Warranty\n\nEvery Byte robot carries a seven year warranty on its motors. "
                                      "Claims are filed at the service desk with the serial number.\n")
    (docs / "charging.md").write_text("# Charging\n\nA flat Byte robot charges to full in ninety minutes on the "
                                      "dock. Unplug the dock before cleaning its contacts.\n")
    paths = _copy_export(exported, tmp_path / "home")
    kcfg = make_config(Path(cfg.base.model), knowledge={"folder": str(docs), "min_score": 0.3,
                                                        "chroma": {"host": "chroma.invalid", "port": 8000}})
    local = kcfg.model_copy(deep=True)
    local.knowledge.chroma.host = None  # index locally into paths.knowledge; the bundle must drop the server too
    assert sorted(KnowledgeBase.open(local, paths).index()["added"]) == ["charging.md", "warranty.md"]
    info = build_bundle(kcfg, paths)
    assert info["knowledge"] is True and "protege[serve,llamacpp,rag]" in (Path(info["dir"]) / "README.txt").read_text()
    bundle = Path(info["dir"])
    bundled_index = bundle / "home" / "assistants" / NAME / "knowledge"
    assert (bundled_index / "chroma.sqlite3").is_file() and (bundled_index / "index_report.json").is_file()
    with tarfile.open(info["tarball"]) as tar:
        assert f"{NAME}-bundle/home/assistants/{NAME}/knowledge/chroma.sqlite3" in tar.getnames()
    shutil.rmtree(paths.knowledge)
    shutil.rmtree(docs)
    spec = _bundled_spec(bundle, monkeypatch)
    assert spec.has_knowledge and spec.cfg.knowledge.chroma.host is None
    kb = default_knowledge_factory(spec)
    hit = kb.retrieve("How long is the warranty on the motors?")
    assert not hit.refused and hit.sources[0].path == "warranty.md" and "seven year" in hit.sources[0].text
    assert kb.retrieve("How long does charging take on the dock?").sources[0].path == "charging.md"


@pytest.mark.slow
def test_lora_gguf_applied_by_llama_cpp_matches_the_adapter(exported, tiny_model_dir, tmp_path):
    """The LoRA-only GGUF on the base GGUF (applied at load) computes what base + adapter compute in peft."""
    import llama_cpp
    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from export.convert import convert_hf_to_gguf
    from export.lora_gguf import convert_lora
    from export.verify import gguf_logits, hf_logits, open_gguf

    _, paths, _ = exported
    base_gguf = convert_hf_to_gguf(tiny_model_dir, tmp_path / "base-f16.gguf", "f16")
    lora = convert_lora(paths.adapter, tiny_model_dir, tmp_path / "lora-f16.gguf", "f16")
    ids = list(range(100, 164))
    ref = hf_logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                              str(paths.adapter)).eval(), ids)
    with_lora = llama_cpp.Llama(str(base_gguf), lora_path=str(lora), n_ctx=128, logits_all=True, verbose=False)
    plain = open_gguf(base_gguf, n_ctx=128, logits_all=True)
    try:
        a, c = gguf_logits(with_lora, ids), gguf_logits(plain, ids)
    finally:
        with_lora.close()
        plain.close()
    assert np.abs(c - ref).max() > 1e-2, "the adapter must change the logits"
    assert np.abs(a - ref).max() < 0.1 * np.abs(c - ref).max()


@pytest.mark.slow
def test_bundle_launcher_serves_offline_from_another_folder(exported, tmp_path):
    """Unpack the tarball elsewhere, run launch.sh, and chat through the OpenAI API with the bundled GGUF."""
    import socket
    import tarfile
    import urllib.request

    from export.bundle import build_bundle

    cfg, paths, _ = exported
    info = build_bundle(cfg, paths)
    with tarfile.open(info["tarball"]) as tar:
        tar.extractall(tmp_path / "edge", filter="data")
    launch = tmp_path / "edge" / f"{NAME}-bundle" / "launch.sh"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHON=sys.executable, PROTEGE_HOME=str(tmp_path / "ignored"))
    proc = subprocess.Popen([str(launch), "--port", str(port), "--threads", "1"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.5)
        models = json.loads(urllib.request.urlopen(base + "/v1/models", timeout=10).read())
        assert NAME in {m["id"] for m in models["data"]}
        body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                           "rag": False}).encode()
        req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert reply["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_k_quant_on_rows_not_multiple_of_256_uses_the_q6_k_recipe(exported, tmp_path):
    """hidden 64 (like SmolLM2's 576) has no K-quant layout: llama.cpp's q4_k_m would fall back to q5_0 there (+24..35%
    perplexity on SmolLM2), so q4_k_m is served by the q6_k mix (q8_0 on those rows) and the report records the
    tensor types really written and why."""
    from export.quantize import describe, plan, quantize

    _, paths, report = exported
    f16 = paths.gguf_file("f16")
    recipe = plan(f16, "q4_k_m")
    assert recipe["requested"] == "q4_k_m" and recipe["base_type"] == "q6_k"
    assert recipe["k_incompatible_tensors"] > 0 and "multiple of 256" in recipe["why"]
    out = quantize(f16, tmp_path / "x-q4_k_m.gguf", "q4_k_m", threads=2)
    types = describe(f16, out, "q4_k_m")["tensor_types"]
    assert "q8_0" in types and not {"q5_0", "q5_1", "q4_1"} & set(types), types
    assert plan(f16, "q8_0")["base_type"] == "q8_0" and plan(f16, "q8_0")["why"] == "llama.cpp's own mix for this type"
    assert set(plan(f16, "q8_0")) == {"requested", "base_type", "why"}  # no settings the quantizer would not apply
    q8 = report["verification"]["quants"]["q8_0"]["recipe"]
    assert q8["requested"] == "q8_0" and set(q8["tensor_types"]) == {"q8_0", "f32"}
