"""Checks run after every export; their results are `export_report.json` and a failed check fails the export.

- metadata: the GGUF carries the chat template and the bos/eos ids of the merged tokenizer, and the end-of-turn
  token is an end-of-generation token for llama.cpp (else a chat never stops);
- template parity: llama-cpp-python's own chat formatter (the one `Llama.create_chat_completion` uses) on the GGUF's
  template yields exactly the token ids transformers' `apply_chat_template` yields;
- logit parity: top-1 next-token agreement of the merged HF model and the f16 GGUF over N positions of text;
- perplexity of every quant on the same text, relative to f16 (reported, not gated), with the tensor types each
  quant really holds and why (export.quantize.describe).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from protege.errors import ProtegeError, require


class VerificationError(ProtegeError):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


META_KEYS = ("general.architecture", "general.file_type", "tokenizer.chat_template", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
             "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
             "tokenizer.ggml.model", "tokenizer.ggml.pre")


def read_metadata(llm) -> dict[str, Any]:
    """The GGUF key/values llama.cpp itself sees (scalars only; fast, unlike parsing the vocab arrays)."""
    meta = llm.metadata
    out: dict[str, Any] = {}
    for key in META_KEYS:
        if key in meta:
            value = meta[key]
            if key.endswith("_id") or key == "general.file_type":
                value = int(value)
            elif key.startswith("tokenizer.ggml.add_"):
                value = str(value).lower() == "true"
            out[key] = value
    return out


def open_gguf(path: Path, n_ctx: int = 512, logits_all: bool = False):
    llama_cpp = require("llama_cpp", "export")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                           logits_all=logits_all, n_threads=os.cpu_count(), verbose=False)


def _check(name: str, ok: bool, detail: str = "") -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def check_metadata(meta: dict, llm, tokenizer, end_of_turn: str | None) -> list[dict]:
    llama_cpp = require("llama_cpp", "export")
    checks = [_check("chat_template", meta.get("tokenizer.chat_template") == tokenizer.chat_template,
                     "GGUF tokenizer.chat_template equals the merged tokenizer's chat template")]
    if tokenizer.bos_token_id is not None:
        got = meta.get("tokenizer.ggml.bos_token_id")
        checks.append(_check("bos_id", got == tokenizer.bos_token_id, f"gguf {got}, transformers {tokenizer.bos_token_id}"))
    got = meta.get("tokenizer.ggml.eos_token_id")
    checks.append(_check("eos_id", got == tokenizer.eos_token_id, f"gguf {got}, transformers {tokenizer.eos_token_id}"))
    if end_of_turn:
        ids = tokenizer.convert_tokens_to_ids([end_of_turn])
        eot_id = ids[0] if ids and ids[0] is not None else None
        is_eog = eot_id is not None and bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, eot_id))
        checks.append(_check("eot_is_eog", is_eog, f"end of turn {end_of_turn!r} (id {eot_id}) stops llama.cpp "
                                                   f"generation; gguf eot id {meta.get('tokenizer.ggml.eot_token_id')}"))
    return checks


def llama_chat_tokens(llm, template: str, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids exactly as llama-cpp-python's chat completion builds them from the GGUF's template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(tok: int) -> str:
        return llm.detokenize([tok], special=True).decode("utf-8", errors="replace") if tok >= 0 else ""

    fmt = Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()),
                              add_generation_prompt=add_generation_prompt)
    prompt = fmt(messages=messages).prompt
    return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


def hf_chat_tokens(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def check_template_tokens(llm, template: str, tokenizer, conversations: list[list[dict]]) -> dict:
    mismatches = []
    cases = 0
    for msgs in conversations:
        for gen in ((False,) if msgs[-1]["role"] == "assistant" else (True, False)):
            cases += 1
            a, b = hf_chat_tokens(tokenizer, msgs, gen), llama_chat_tokens(llm, template, msgs, gen)
            if a != b:
                at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                mismatches.append({"messages": len(msgs), "generation_prompt": gen, "first_diff": at,
                                   "transformers": a[at:at + 8], "llama_cpp": b[at:at + 8]})
    return {"ok": not mismatches, "cases": cases, "mismatches": mismatches[:5]}


def text_ids(tokenizer, text: str, positions: int, bos_id: int | None) -> list[int]:
    """`positions` token ids of `text` (repeated if short), after bos when the model expects one."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ProtegeError("the parity text is empty")
    while len(ids) < positions:
        ids += ids
    head = [bos_id] if bos_id is not None else []
    return head + ids[: positions - len(head)]


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:] under logits[:-1]."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(math.exp(nll.mean()))


def compare(ref: np.ndarray, other: np.ndarray) -> dict:
    diff = np.abs(ref - other)
    return {"positions": int(ref.shape[0]), "top1_agreement": float((ref.argmax(1) == other.argmax(1)).mean()),
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "ref_logit_std": float(ref.std())}


def default_conversations(system: str | None, extra: list[list[dict]] | None = None) -> list[list[dict]]:
    """Conversations for template parity: persona system prompt, default system, multi-turn, unicode, val data."""
    sys_msg = [{"role": "system", "content": system}] if system else []
    convs = [
        sys_msg + [{"role": "user", "content": "Hello! Who are you?"}],
        [{"role": "user", "content": "What's 2+2? Answer briefly."}],
        sys_msg + [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the "
                   "chicken cross the road?\nTo get to the other side."}, {"role": "user", "content": "Another one"}],
        [{"role": "user", "content": "Übersetze: «café» — 東京 🚀"}, {"role": "assistant", "content": "Café, Tokyo."}],
    ]
    return convs + [c for c in (extra or [])[:3] if c]


def verify_export(merged_dir: Path, ggufs: dict[str, Path], parity_cfg, text: str, conversations: list[list[dict]],
                  end_of_turn: str | None, f16_key: str = "f16") -> dict:
    """Run every check; raise VerificationError (carrying the report) when the f16 export is not faithful."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.quantize import describe

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ref_path = ggufs[f16_key]
    llm = open_gguf(ref_path, n_ctx=max(parity_cfg.positions + 8, 512), logits_all=True)
    try:
        meta = read_metadata(llm)
        bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token") else None
        ids = text_ids(tokenizer, text, parity_cfg.positions, bos)
        report: dict[str, Any] = {"metadata": {k: v for k, v in meta.items() if k != "tokenizer.chat_template"}}
        report["checks"] = check_metadata(meta, llm, tokenizer, end_of_turn)
        report["template_tokens"] = check_template_tokens(llm, meta.get("tokenizer.chat_template") or "",
                                                          tokenizer, conversations)
        plain = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        hf_plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        report["text_tokenization_match"] = plain == hf_plain
        ref = gguf_logits(llm, ids)
    finally:
        llm.close()

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    hf = hf_logits(model, ids)
    del model
    parity = compare(hf, ref)
    parity["min_top1"] = parity_cfg.min_top1
    parity["ok"] = parity["top1_agreement"] >= parity_cfg.min_top1
    report["parity_hf_vs_f16"] = parity

    ppl: dict[str, Any] = {"hf": perplexity(hf, ids), f16_key: perplexity(ref, ids)}
    quants: dict[str, Any] = {}
    for quant, path in ggufs.items():
        if quant == f16_key:
            continue
        q = open_gguf(path, n_ctx=max(len(ids) + 8, 512), logits_all=True)
        try:
            logits = gguf_logits(q, ids)
        finally:
            q.close()
        ppl[quant] = perplexity(logits, ids)
        rel = ppl[quant] / ppl[f16_key] - 1
        quants[quant] = {"perplexity": ppl[quant], "ppl_increase_vs_f16": rel,
                         "within_max_ppl_increase": rel <= parity_cfg.max_ppl_increase,
                         "top1_agreement_vs_f16": compare(ref, logits)["top1_agreement"],
                         "recipe": describe(ref_path, path, quant)}
    report["perplexity"] = ppl
    report["quants"] = quants
    report["text_positions"] = len(ids)

    failures = [c["name"] for c in report["checks"] if not c["ok"]]
    if not report["template_tokens"]["ok"]:
        failures.append("template_tokens")
    if not parity["ok"]:
        failures.append(f"parity (top-1 {parity['top1_agreement']:.3f} < {parity_cfg.min_top1})")
    report["ok"] = not failures
    report["failures"] = failures
    if failures:
        raise VerificationError(f"export verification failed: {', '.join(failures)}", report)
    return report
