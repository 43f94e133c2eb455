"""`protege eval`: base vs tuned on the held-out split (and the optional prompts file).

Measures val loss + perplexity on the assistant tokens (same masking as training), ROUGE-L and BLEU-4 of greedy
generations against references, and the style-adherence rate when the persona declares markers. One model object
serves both sides: the PEFT adapter is disabled for the base. Generation stops at the end-of-turn token
(builder/format.py decides it: the tokenizer's eos, `<|im_end|>` for SmolLM2). Writes eval/eval.json, eval/report.md and eval/scores.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from protege.config import AssistantConfig
from protege.errors import DataError, ProtegeError
from protege.paths import AssistantPaths


def read_prompts(path: Path, system: str | None) -> list[dict]:
    """{"prompt": ..., "reference": ...?} per line -> [{"messages": [...], "reference": str|None, "source": ...}]."""
    from protege.records import iter_json_records

    out = []
    for n, rec in iter_json_records(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise DataError(f"{path}:{n}: expected an object with a non-empty string 'prompt'")
        ref = rec.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise DataError(f"{path}:{n}: 'reference' must be a string")
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": rec["prompt"]})
        out.append({"messages": msgs, "reference": ref, "source": f"{path.name}:{n}"})
    return out


def held_out(val: list[list[dict]]) -> list[dict]:
    """Each val conversation becomes a prompt (all but the last reply) and its reference (the last reply)."""
    return [{"messages": m[:-1], "reference": m[-1]["content"], "source": f"val:{i + 1}"} for i, m in enumerate(val)]


def load_tuned(cfg: AssistantConfig, paths: AssistantPaths):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from builder.adapter_swap import recover
    from builder.base_model import resolve_base

    recover(paths)  # an adapter swap cut short by a kill
    if not (paths.adapter / "adapter_config.json").is_file():
        raise ProtegeError(f"{paths.adapter}: no adapter yet: run `protege train` first")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base_dir = resolve_base(cfg.base.model)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(model, paths.adapter).eval()
    return model, tokenizer, device


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, device: str,
             batch_size: int = 20) -> list[str]:
    """Greedy replies, left-padded batches, stopping at the end-of-turn token."""
    import torch

    from builder.format import end_of_turn_token

    tokenizer.padding_side = "left"
    eos = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    out = []
    for i in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
        for row in gen[:, batch["input_ids"].shape[1]:]:
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def score(replies: list[str], items: list[dict], cfg: AssistantConfig) -> dict:
    from builder.metrics import bleu4, follows_style, has_markers, rouge_l

    refs = [(r, it["reference"]) for r, it in zip(replies, items) if it["reference"]]
    markers = cfg.persona.style_markers
    return {
        "rouge_l": round(sum(rouge_l(h, r) for h, r in refs) / len(refs), 4) if refs else None,
        "bleu4": round(bleu4([h for h, _ in refs], [r for _, r in refs]), 4) if refs else None,
        "style_adherence": (round(sum(follows_style(r, markers) for r in replies) / len(replies), 4)
                            if replies and has_markers(markers) else None),
    }


def run(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """Compare base vs tuned; write eval/eval.json, eval/report.md, eval/scores.png; return the results."""
    from builder.data import read_jsonl
    from builder.eval_report import write_report
    from builder.format import assistant_loss
    from protege.config_file import atomic_write_text, save_resolved

    model, tokenizer, device = load_tuned(cfg, paths)
    val_path = paths.data / "val.jsonl"
    val = read_jsonl(val_path)[: cfg.eval.max_samples] if val_path.is_file() else []
    items = held_out(val)
    if cfg.eval.prompts_file:
        if not Path(cfg.eval.prompts_file).is_file():
            raise DataError(f"{cfg.eval.prompts_file}: eval.prompts_file not found")
        items += read_prompts(Path(cfg.eval.prompts_file), cfg.persona.system_prompt)[: cfg.eval.max_samples]
    if not items:
        raise DataError(f"{val_path}: no held-out examples and no eval.prompts_file: nothing to evaluate")
    results: dict = {"samples": {"held_out": len(val), "prompts": len(items) - len(val)}, "device": device}
    samples = []
    for side in ("base", "tuned"):
        if side == "base":
            with model.disable_adapter():
                loss = assistant_loss(model, tokenizer, val, cfg.data.max_seq_len, device) if val else None
                replies = generate(model, tokenizer, [it["messages"] for it in items], cfg.eval.max_new_tokens, device)
        else:
            loss = assistant_loss(model, tokenizer, val, cfg.data.max_seq_len, device) if val else None
            model.merge_adapter()  # generation with the adapter folded in: no LoRA matmuls on every new token
            try:
                replies = generate(model, tokenizer, [it["messages"] for it in items], cfg.eval.max_new_tokens,
                                   device)
            finally:
                model.unmerge_adapter()
        results[side] = {"val_loss": round(loss, 4) if loss is not None else None,
                         "perplexity": round(math.exp(loss), 3) if loss is not None else None,
                         **score(replies, items, cfg)}
        samples.append(replies)
    results["examples"] = [{"source": it["source"], "prompt": it["messages"][-1]["content"],
                            "reference": it["reference"], "base": b, "tuned": t}
                           for it, b, t in list(zip(items, *samples))[:10]]
    paths.eval.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.eval / "eval.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_report(results, cfg, paths.eval)
    save_resolved(cfg, paths.eval)
    return results
