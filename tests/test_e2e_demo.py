"""The product's promise end to end: `protege build` on the demo (reduced steps) produces every artifact, a second
build rebuilds nothing, and the served assistant answers a knowledge question with its source and refuses another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.net import free_port, wait_healthy

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "captain-byte.yaml"
# Reduced so CI stays inside its budget; the full demo is `make demo`.
QUICK = ["--set", "train.max_steps=4", "--set", "train.eval_steps=2", "--set", "train.save_steps=2",
         "--set", "train.batch_size=4", "--set", "eval.max_samples=2", "--set", "eval.max_new_tokens=12",
         "--set", "export.quants=[q4_k_m]"]



def protege(*args: str, env: dict, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protege", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    env = {**os.environ, "PROTEGE_HOME": str(home)}
    r = protege("build", str(CONFIG), *QUICK, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return home, env


def test_build_writes_every_artifact(built):
    home, _ = built
    root = home / "assistants" / "captain-byte"
    manifest = json.loads((root / "build.json").read_text())
    assert list(manifest["stages"]) == ["index", "data", "train", "eval", "export", "answers", "register"]
    for rel in ("config.yaml", "data/train.jsonl", "data/val.jsonl", "adapter/adapter_config.json",
                "adapter/adapter_model.safetensors", "eval/report.md", "gguf/captain-byte-q4_k_m.gguf",
                "gguf/captain-byte-f16.gguf", "Modelfile.q4_k_m", "knowledge/index_report.json"):
        assert (root / rel).is_file(), rel
    n_train = sum(1 for _ in (root / "data" / "train.jsonl").open())
    assert n_train >= 300
    report = json.loads((root / "gguf" / "export_report.json").read_text())
    assert report["verification"]["parity_hf_vs_f16"]["top1_agreement"] >= 0.98
    data = json.loads((root / "data" / "data_report.json").read_text())
    assert data["grounded"]["answer_examples"] >= 60 and data["grounded"]["refusal_examples"] >= 10
    grounded = [json.loads(x)["messages"] for x in (root / "data" / "train.jsonl").open() if "<documents>" in x]
    assert len(grounded) >= 50 and all(m[-1]["content"].startswith("Ahoy!") for m in grounded)
    answers = json.loads((root / "eval" / "answers.json").read_text())["metrics"]
    # even 4 training steps: the guard makes the replies hold the documents' facts (the full demo: see README)
    assert answers["answer_accuracy"] >= 0.6 and answers["refusal_recall"] >= 0.8, answers
    index_report = json.loads((root / "knowledge" / "index_report.json").read_text())
    assert len(index_report["added"]) >= 10 and not index_report.get("skipped")


def test_second_build_rebuilds_nothing_quickly(built):
    home, env = built
    before = json.loads((home / "assistants" / "captain-byte" / "build.json").read_text())["stages"]
    t0 = time.perf_counter()
    r = protege("build", str(CONFIG), *QUICK, env=env, timeout=120)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.loads((home / "assistants" / "captain-byte" / "build.json").read_text())["stages"]
    assert {k: v["finished_at"] for k, v in after.items()} == {k: v["finished_at"] for k, v in before.items()}
    assert elapsed < 60, f"a no-op build took {elapsed:.0f}s"


def test_served_demo_cites_its_source_and_refuses_off_topic(built):
    home, env = built
    port = free_port()
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "protege", "serve", str(CONFIG), "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", home / "serve.log", timeout=180)
        ids = [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]]
        assert "captain-byte" in ids and "captain-byte:q4_k_m" in ids
        ask = {"model": "captain-byte", "max_tokens": 40, "temperature": 0,
               "messages": [{"role": "user", "content": "How much does the Sloop server cost each month?"}]}
        body = httpx.post(f"{base}/v1/chat/completions", json=ask, timeout=300).json()
        assert body["sources"][0]["path"] == "pricing-plans.md", body["sources"]
        from protege.config_file import load_config

        assert body["confidence"] >= load_config(CONFIG).knowledge.min_score
        text = body["choices"][0]["message"]["content"]
        assert "$14" in text and text.startswith("Ahoy!") and body["grounding"] in ("generated", "extractive")
        off = {**ask, "messages": [{"role": "user", "content": "Who won the 1998 football world cup?"}]}
        body = httpx.post(f"{base}/v1/chat/completions", json=off, timeout=300).json()
        refusal = load_config(CONFIG).knowledge.refusal
        assert body["choices"][0]["message"]["content"] == refusal
        assert refusal.startswith("Ahoy!")  # the persona holds even when refusing
        assert not body.get("sources")
        # near-domain: the score gate lets it through; the demo's scope examples refuse it (rag/scope.py)
        near = {**ask, "messages": [{"role": "user", "content": "can I rent a server with an nvidia gpu?"}]}
        body = httpx.post(f"{base}/v1/chat/completions", json=near, timeout=300).json()
        assert body["choices"][0]["message"]["content"] == refusal and body["grounding"] == "refused"
        assert body["confidence"] >= load_config(CONFIG).knowledge.min_score
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.mark.parametrize("question", ["How much does the Sloop server cost each month?", "How much is the Sloop plan?"])
def test_ask_prints_the_right_price(built, question):
    """The Sloop's price and no other plan's (the trained demo once opened with "The Sloop plan is $32 per month",
    the Schooner's price, before quoting $14)."""
    _, env = built
    r = protege("ask", str(CONFIG), question, "--json", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ans = json.loads(r.stdout)
    assert "$14" in ans["answer"] and ans["sources"][0]["path"] == "pricing-plans.md" and not ans["refused"]
    assert not any(wrong in ans["answer"] for wrong in ("$6 ", "$32", "$88", "$0.048"))
