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
    # Punctuation is no token and case is folded: both sides are ["ahoy"].
    assert rouge_l("Ahoy!", "ahoy !") == 1.0 and rouge_l("x", "y") == 0.0
    # hyp ahoy matey the harbor (4), ref ahoy matey open the harbor console (6): LCS 4, P = 1, R = 2/3,
    # F = 2 * 1 * 2/3 / (1 + 2/3) = 0.8 (the comma is not a token: with it, as the old metric did, R = 4/7, F = 8/11)
    assert rouge_l("ahoy matey the harbor", "Ahoy matey, open the harbor console") == pytest.approx(0.8)


def test_rouge_l_keeps_letters_of_every_script():
    # café crème brûlée vs café crème: LCS 2, P = 2/3, R = 1 -> F = 0.8 (rouge-score's own tokenizer reads "caf cr me")
    assert rouge_l("Café crème brûlée", "café crème") == pytest.approx(0.8)
    assert rouge_l("日本語 テキスト", "日本語 テキスト") == 1.0


def test_rouge_l_is_rouge_scores_on_ascii_text():
    """Cross-check only: on ASCII text the Unicode tokenizer reads what rouge-score's default one reads."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for hyp, ref in [("Ahoy, matey! Press save_now (twice).", "ahoy matey: press SAVE now twice"),
                     ("It's 3 a.m. in port 8080.", "its 3 am in port 8080")]:
        assert rouge_l(hyp, ref) == pytest.approx(scorer.score(ref, hyp)["rougeL"].fmeasure)


def test_bleu4_identity_brevity_and_zero():
    ref = "ahoy matey open the harbor console and press save"
    assert bleu4([ref], [ref]) == pytest.approx(1.0)
    assert bleu4(["completely different words here today"], [ref]) == 0.0  # no unigram matches: nothing to smooth
    # Hypothesis = the reference's first 6 tokens: precisions are all 1, brevity penalty exp(1 - 9/6).
    short = "ahoy matey open the harbor console"
    assert bleu4([short], [ref]) == pytest.approx(math.exp(1 - 9 / 6))


def test_bleu4_hand_computed_smoothing_case_and_corpus():
    # the cat sat on the mat / the cat is on the mat: 1-grams 5/6, 2-grams 3/5 (the cat, on the, the mat),
    # 3-grams 1/4 (on the mat), 4-grams 0/3 -> exp smoothing 1/(2*3); equal lengths, BP 1.
    # BLEU = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** (1/4) ~ 0.3799 (unsmoothed, as before: 0)
    assert bleu4(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx((1 / 48) ** 0.25)
    # Case counts: only "Ahoy" differs from "ahoy", so each order loses the one n-gram holding it:
    # 8/9 * 7/8 * 6/7 * 5/6 = 5/9 -> (5/9) ** (1/4)
    ref = "ahoy matey open the harbor console and press save"
    assert bleu4(["Ahoy matey open the harbor console and press save"], [ref]) == pytest.approx((5 / 9) ** 0.25)
    # Corpus BLEU pools the counts: [ref, first 6 tokens] vs [ref, ref] match every n-gram, lengths 15 vs 18,
    # so BLEU = exp(1 - 18/15) = exp(-0.2), not the mean of the sentence scores (1 + exp(-0.5)) / 2.
    short = "ahoy matey open the harbor console"
    assert bleu4([ref, short], [ref, ref]) == pytest.approx(math.exp(-0.2))


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
