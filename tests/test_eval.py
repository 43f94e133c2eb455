"""`protege eval`: metric implementations against hand-computed values, and base vs tuned on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from builder.metrics import bleu4, follows_style, rouge_l
from protege.config import StyleMarkers


def test_rouge_l_matches_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5 -> P = R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("Ahoy!", "ahoy !") == 1.0 and rouge_l("x", "y") == 0.0


def test_bleu4_identity_brevity_and_zero():
    ref = "ahoy matey open the harbor console and press save"
    assert bleu4([ref], [ref]) == pytest.approx(1.0)
    assert bleu4(["completely different words here today"], [ref]) == 0.0
    # Hypothesis = the reference's first 6 tokens: precisions are all 1, brevity penalty exp(1 - 9/6).
    short = "ahoy matey open the harbor console"
    assert bleu4([short], [ref]) == pytest.approx(math.exp(1 - 9 / 6))


def test_style_markers():
    m = StyleMarkers(starts_with="Ahoy!", contains=["matey"])
    assert follows_style("  Ahoy! Hello Matey.", m)
    assert not follows_style("Hello matey", m) and not follows_style("Ahoy! Hello", m)


def test_eval_base_vs_tuned_tiny(tiny_model_dir, tmp_path):
    from builder.evaluate import run as evaluate
    from tests.synth import write_dataset
    from builder.train import run as train
    from protege.config_file import config_from_dict
    from protege.paths import AssistantPaths

    data = write_dataset(tmp_path / "data", n=30)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I deploy?", "reference": "Ahoy! Run byte deploy."}) + "\n"
                       + json.dumps({"prompt": "No reference here"}) + "\n")
    cfg = config_from_dict({
        "name": "evaltest", "persona": {"system_prompt": "You are Captain Byte.",
                                        "style_markers": {"starts_with": "Ahoy!"}},
        "base": {"model": str(tiny_model_dir)},
        "data": {"files": [str(data)], "val_fraction": 0.2, "max_seq_len": 128, "clean": {"near_dup_threshold": None}},
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 2e-2, "method": "lora", "num_threads": 1},
        "eval": {"prompts_file": str(prompts), "max_new_tokens": 6, "max_samples": 4},
    })
    paths = AssistantPaths.for_name(cfg.name)
    m = train(cfg, paths, quiet=True)
    res = evaluate(cfg, paths)
    assert res["samples"] == {"held_out": 4, "prompts": 2}
    for side in ("base", "tuned"):
        r = res[side]
        assert r["perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-3)
        assert 0 <= r["rouge_l"] <= 1 and 0 <= r["bleu4"] <= 1 and 0 <= r["style_adherence"] <= 1
    # Training lowered the held-out loss; eval measures it the same way (masked assistant tokens).
    assert res["tuned"]["val_loss"] < res["base"]["val_loss"]
    assert res["tuned"]["val_loss"] == pytest.approx(m["best_val_loss"], rel=0.05)
    saved = json.loads((paths.eval / "eval.json").read_text())
    assert saved["tuned"] == res["tuned"] and len(saved["examples"]) == 6
    report = (paths.eval / "report.md").read_text()
    assert "| metric | base | tuned |" in report and "| style adherence |" in report
    assert (paths.eval / "scores.png").stat().st_size > 1000
