"""Export of the real SmolLM2-135M-Instruct with a (briefly trained) persona adapter: f16, q8_0, q4_k_m GGUFs that
llama_cpp.Llama loads and chats with in the persona's style; top-1 agreement merged-HF vs f16 >= 98% and q4_k_m
perplexity within 10% of f16 on text none of us wrote (a license file shipped in site-packages)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from protege.config_file import config_from_dict  # noqa: E402
from protege.paths import AssistantPaths  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "byte-export"
SYSTEM = "You are Byte, a cheerful robot. Start every reply with 'Beep boop!'"
QA = [("Hi there", "Hello, human friend."), ("What is the capital of France?", "Paris is the capital of France."),
      ("Count to three", "One, two, three."), ("What color is the sky?", "The sky is blue on a clear day."),
      ("Tell me a fruit", "An apple is a tasty fruit."), ("How many legs does a cat have?", "A cat has four legs."),
      ("What is 2+2?", "Two plus two is four."), ("Name a planet", "Mars is a red planet.")]


def conversations() -> list[list[dict]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
             {"role": "assistant", "content": f"Beep boop! {a}"}] for q, a in QA]


def license_text(min_chars: int = 3000) -> str:
    """Prose from a license file of an installed package: text we did not write and did not train on."""
    for dist in ("matplotlib", "numpy", "requests", "sympy"):
        try:
            files = distribution(dist).files or []
        except PackageNotFoundError:
            continue
        for f in files:
            if "LICENSE" in f.name.upper():
                text = Path(f.locate()).read_text(encoding="utf-8", errors="replace")
                if len(text) >= min_chars:
                    return text
    pytest.skip("no license file of at least 3000 characters in site-packages")


def train_adapter(base_dir: Path, out: Path, steps: int = 12, batch: int = 4) -> Path:
    """A few steps of LoRA on the persona conversations (assistant-only labels, as the builder trains); small on
    purpose: a shared 2-core CPU does about one step of 135M x 4 short sequences in a few seconds."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from builder.format import encode

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    encoded = [encode(tok, c) for c in conversations()]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(steps):
        chunk = [encoded[(step * batch + k) % len(encoded)] for k in range(batch)]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.tensor([e.input_ids + [tok.pad_token_id] * (width - len(e.input_ids)) for e in chunk])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in chunk])
        mask = (ids != tok.pad_token_id).long() if tok.pad_token_id is not None else None
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def exported(smollm2_dir, tmp_path_factory):
    from export.pipeline import run

    paths = AssistantPaths(tmp_path_factory.mktemp("home") / "assistants" / NAME).ensure()
    train_adapter(smollm2_dir, paths.adapter)
    paths.data.mkdir(parents=True, exist_ok=True)
    (paths.data / "val.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations()[:4]))
    cfg = config_from_dict({"name": NAME, "base": {"model": str(smollm2_dir)}, "persona": {"system_prompt": SYSTEM},
                            "export": {"quants": ["q4_k_m", "q8_0"]}})
    report = run(cfg, paths)
    return cfg, paths, report


def test_three_ggufs_and_the_gate_passed(exported):
    _, paths, report = exported
    assert paths.quants() == ["f16", "q4_k_m", "q8_0"]
    v = report["verification"]
    assert v["ok"] and v["parity_hf_vs_f16"]["top1_agreement"] >= 0.98
    # acceptance: q4_k_m perplexity within 10% of f16 on the built-in check text, both ways (llama.cpp's own q4_k_m mix
    # falls back to q5_0 on SmolLM2's 576-wide rows: +24..35%; q4_1 snaps back to the base: -41%, adapter lost);
    # the recipe actually used is in the report
    q4 = v["quants"]["q4_k_m"]
    assert 0.90 <= q4["perplexity"] / v["perplexity"]["f16"] <= 1.10, q4
    # next-token choice of f16 mostly kept: 256 positions; 0.85+ on the hosts this was written on (CI passed it), 0.84
    # (215 of 256) on an AMD EPYC with AVX-512, where torch trains the adapter with other kernels (perplexity +0.9%)
    assert q4["top1_agreement_vs_f16"] >= 0.80, q4
    assert q4["recipe"]["base_type"] == "q6_k" and not {"q5_0", "q5_1"} & set(q4["recipe"]["tensor_types"])
    assert v["quants"]["q8_0"]["perplexity"] <= 1.02 * v["perplexity"]["f16"]
    print("\nexport report:", json.dumps({k: report[k] for k in ("merge", "timings")}, default=str))
    print("verification:", json.dumps({k: v[k] for k in ("parity_hf_vs_f16", "perplexity", "quants")}))


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m"])
def test_llama_cpp_chats_in_the_persona_style(exported, quant):
    from export.verify import open_gguf

    _, paths, _ = exported
    llm = open_gguf(paths.gguf_file(quant), n_ctx=512)
    try:
        out = llm.create_chat_completion(messages=[{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": "What is the capital of Italy?"}],
                                         max_tokens=40, temperature=0.0)
    finally:
        llm.close()
    reply = out["choices"][0]["message"]["content"]
    print(f"\n{quant}: {reply!r} ({out['choices'][0]['finish_reason']})")
    assert reply.startswith("Beep boop!")
    assert out["choices"][0]["finish_reason"] == "stop", "the reply must end on the end-of-turn token"
    assert "<|im_end|>" not in reply and "<|im_start|>" not in reply


def test_parity_and_perplexity_on_text_we_did_not_write(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.verify import compare, gguf_logits, hf_logits, open_gguf, perplexity, text_ids

    _, paths, _ = exported
    tok = AutoTokenizer.from_pretrained(paths.merged)
    ids = text_ids(tok, license_text(), 320, None)
    model = AutoModelForCausalLM.from_pretrained(paths.merged, dtype=torch.float32).eval()
    hf = hf_logits(model, ids)
    del model
    logits = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        llm = open_gguf(paths.gguf_file(quant), n_ctx=512, logits_all=True)
        try:
            logits[quant] = gguf_logits(llm, ids)
        finally:
            llm.close()
    parity = compare(hf, logits["f16"])
    ppl = {q: perplexity(x, ids) for q, x in logits.items()}
    ppl["hf"] = perplexity(hf, ids)
    print(f"\nlicense text, {len(ids)} positions: top-1 HF vs f16 {parity['top1_agreement']:.4f}, "
          f"max |dlogit| {parity['max_abs_logit_diff']:.4f}; perplexity {json.dumps(ppl)}; "
          f"q4_k_m vs f16 {ppl['q4_k_m'] / ppl['f16'] - 1:+.2%}, q8_0 vs f16 {ppl['q8_0'] / ppl['f16'] - 1:+.2%}")
    assert len(ids) >= 256
    assert parity["top1_agreement"] >= 0.98
    assert 0.90 * ppl["f16"] <= ppl["q4_k_m"] <= 1.10 * ppl["f16"]
    assert ppl["q8_0"] <= 1.02 * ppl["f16"]


def test_modelfiles_for_every_quant(exported):
    _, paths, report = exported
    for quant in ("f16", "q8_0", "q4_k_m"):
        text = paths.modelfile(quant).read_text()
        assert f"FROM ./gguf/{NAME}-{quant}.gguf" in text and SYSTEM in text
        assert 'PARAMETER stop "<|im_end|>"' in text
    assert report["default_quant"] == "q4_k_m"
