"""4-bit recipes for a 576-wide model (issue 13): size, perplexity vs the merged f16 GGUF, persona, decode tok/s.

SmolLM2-135M rows are 576 wide (not a multiple of 256), so llama.cpp's K-quants fall back and "q4_k_m" is a q6_k/q8_0
mix (export/quantize.py). This builds, in one run and from the built assistant's files, every candidate that
llama.cpp's quantizer can make on 32-wide blocks (q4_0, iq4_nl, q4_1; token_embd type overrides; an importance matrix
from the assistant's training data; per-tensor overrides) plus the base's own Q4_1 GGUF with the adapter applied at
load time as a LoRA GGUF, and measures each the same way: perplexity with llama.cpp at a fixed n_ctx on held text
(the eval prompts with their reference replies in the chat template, and the knowledge documents, neither trained
on), greedy replies to eval prompts (persona = starts with the style marker), decode tokens/s at 1 client.
Prints a table, appends one JSON line to bench/results/quant_recipes.jsonl.

    nice .venv/bin/python bench/quant_recipes.py --assistant captain-byte
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = REPO / "bench" / "results" / "quant_recipes.jsonl"


def held_text(cfg, tokenizer, eval_file: Path, docs: Path | None) -> dict[str, str]:
    """Texts not trained on: eval prompts + reference replies rendered as chats, and the knowledge documents."""
    rows = [json.loads(x) for x in eval_file.read_text().splitlines() if x.strip()]
    chats = [tokenizer.apply_chat_template([{"role": "system", "content": cfg.persona.system_prompt},
                                            {"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["reference"]}], tokenize=False)
             for r in rows if r.get("reference")]
    out = {"chat": "".join(chats)}
    if docs and docs.is_dir():
        out["docs"] = "\n\n".join(p.read_text() for p in sorted(docs.rglob("*")) if p.suffix in (".md", ".txt"))
    return out


def imatrix_from(merged: Path, conversations: list[list[dict]], max_tokens: int = 512) -> dict[str, list[float]]:
    """llama.cpp importance matrix from training chats: per linear layer, the mean squared input activation per
    column (what `llama-imatrix` stores), keyed by GGUF tensor name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    gguf_name = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for mod_name, mod in model.named_modules():
        parts = mod_name.split(".")
        if len(parts) == 5 and parts[1] == "layers" and ".".join(parts[3:]) in gguf_name:
            mod.register_forward_pre_hook(hook(f"blk.{parts[2]}.{gguf_name['.'.join(parts[3:])]}.weight"))
    with torch.no_grad():
        for msgs in conversations:
            ids = tok.apply_chat_template(msgs, tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
            model(ids[:, :max_tokens])
    return {k: (v / counts[k]).tolist() for k, v in sums.items()}


def open_llm(model: Path, lora: Path | None, n_ctx: int, threads: int, logits_all: bool):
    import llama_cpp

    return llama_cpp.Llama(str(model), lora_path=str(lora) if lora else None, n_ctx=n_ctx, n_batch=n_ctx,
                           n_threads=threads, logits_all=logits_all, verbose=False)


def perplexity(llm, tokens: list[int], n_ctx: int, chunks: int) -> tuple[float, int]:
    """exp(mean NLL) over `chunks` independent windows of n_ctx tokens (every position after the first), each scored
    like export verification does."""
    import math

    from export.verify import gguf_logits, perplexity as window_ppl

    nll, n = 0.0, 0
    for c in range(chunks):
        window = tokens[c * n_ctx:(c + 1) * n_ctx]
        if len(window) < 2:
            break
        nll += math.log(window_ppl(gguf_logits(llm, window), window)) * (len(window) - 1)
        n += len(window) - 1
    return math.exp(nll / n), n


def persona(llm, prompts: list[str], marker: str, max_tokens: int = 12) -> tuple[int, list[str]]:
    """Greedy replies to pre-rendered chat prompts; how many start with the persona's marker."""
    replies = [llm.create_completion(p, max_tokens=max_tokens, temperature=0.0)["choices"][0]["text"].strip()
               for p in prompts]
    return sum(r.startswith(marker) for r in replies), replies


def decode_tps(llm, prompt: str, n: int, reps: int) -> float:
    """Greedy decode speed at 1 client (prompt time excluded): the best of `reps` runs of n tokens."""
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    best = 0.0
    for _ in range(reps):
        llm.reset()
        gen = llm.generate(tokens, top_k=1, temp=0.0, reset=True)
        next(gen)  # first token: includes the prompt
        t0 = time.perf_counter()
        for _ in range(n):
            next(gen)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def build(work: Path, f16: Path, base_gguf: Path, lora: dict[str, Path], imatrix: dict | None,
          only: set[str] | None = None) -> dict[str, dict]:
    """recipe name -> {model, lora?}; every merged-model recipe is quantized from the same f16 GGUF. `only`: just
    these (the f16 reference always)."""
    from export.quantize import quantize

    specs: dict[str, dict[str, Any]] = {
        "q8_0": {"quant": "q8_0"},
        "q4_k_m (q6_k mix)": {"quant": "q4_k_m"},
        "q4_0 embd=q8_0": {"quant": "q4_0", "token_embd": "q8_0"},
        "q4_0 embd=q4_1": {"quant": "q4_0", "token_embd": "q4_1"},
        "iq4_nl embd=q8_0": {"quant": "iq4_nl", "token_embd": "q8_0"},
        "iq4_nl embd=q4_1": {"quant": "iq4_nl", "token_embd": "q4_1"},
        "q4_1 embd=q8_0": {"quant": "q4_1", "token_embd": "q8_0"},
        "q8_0 embd=q4_1": {"quant": "q8_0", "token_embd": "q4_1"},
    }
    if imatrix:
        specs["q4_0 embd=q8_0 +imatrix"] = {"quant": "q4_0", "token_embd": "q8_0", "imatrix": imatrix}
        specs["iq4_nl embd=q8_0 +imatrix"] = {"quant": "iq4_nl", "token_embd": "q8_0", "imatrix": imatrix}
        specs["iq4_nl embd=q8_0 attn_v,ffn_down=q8_0 +imatrix"] = {
            "quant": "iq4_nl", "token_embd": "q8_0", "imatrix": imatrix,
            "overrides": {r"attn_v\.weight": "q8_0", r"ffn_down\.weight": "q8_0"}}
    out: dict[str, dict] = {"f16 (reference)": {"model": f16}}
    for i, (name, s) in enumerate(specs.items()):
        if only and name not in only:
            continue
        dst = work / f"r{i}-{s['quant']}.gguf"
        quantize(f16, dst, s["quant"], threads=2, token_embd=s.get("token_embd"), overrides=s.get("overrides"),
                 imatrix=s.get("imatrix"))
        out[name] = {"model": dst}
    out["base q4_1 (no adapter)"] = {"model": base_gguf}
    for kind, path in lora.items():
        out[f"base q4_1 + lora {kind}"] = {"model": base_gguf, "lora": path}
    return {k: v for k, v in out.items() if not only or k in only or k == "f16 (reference)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assistant", default="captain-byte")
    ap.add_argument("--eval-prompts", default=str(REPO / "examples/captain-byte/eval_prompts.jsonl"))
    ap.add_argument("--docs", default=str(REPO / "examples/captain-byte/knowledge"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=2, help="windows of --ctx tokens per held text")
    ap.add_argument("--persona-prompts", type=int, default=8)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads; 1 by default: on a shared 2-core machine 2 threads stall each other at "
                         "every op barrier (measured 12 tokens: 0.3 s with 1 thread, 42 s with 2 at load 10)")
    ap.add_argument("--imatrix-chats", type=int, default=64, help="training chats for the importance matrix; 0: none")
    ap.add_argument("--speed", default="q4_k_m (q6_k mix),base q4_1 + lora f16,base q4_1 + lora q8_0,q4_0 embd=q8_0",
                    help="recipes whose decode speed is timed (comma separated; 'all')")
    ap.add_argument("--only", default="", help="measure only these recipes (comma separated) besides f16")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from builder.base_model import embedded_gguf, resolve_base
    from export.lora_gguf import convert_lora
    from protege.config_file import load_config
    from protege.paths import AssistantPaths

    paths = AssistantPaths.for_name(args.assistant)
    cfg = load_config(paths.config)
    tokenizer = AutoTokenizer.from_pretrained(paths.merged)
    texts = held_text(cfg, tokenizer, Path(args.eval_prompts), Path(args.docs))
    rows = [json.loads(x) for x in Path(args.eval_prompts).read_text().splitlines() if x.strip()]
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": cfg.persona.system_prompt},
                                              {"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for r in rows[:args.persona_prompts]]
    marker = cfg.persona.style_markers.starts_with or ""
    load0 = os.getloadavg()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="protege-quant-recipes-"))
    base_dir = resolve_base(cfg.base.model)
    lora = {kind: convert_lora(paths.adapter, base_dir, work / f"lora-{kind}.gguf", kind) for kind in ("f16", "q8_0")}
    imatrix, only = None, set(filter(None, args.only.split(",")))
    if args.imatrix_chats and (not only or any("imatrix" in n for n in only)):
        train = [json.loads(x)["messages"] for x in (paths.data / "train.jsonl").read_text().splitlines()[
            :args.imatrix_chats]]
        imatrix = imatrix_from(paths.merged, train)
    recipes = build(work, paths.gguf_file(cfg.export.outtype), embedded_gguf(), lora, imatrix, only)
    timed = set(recipes) if args.speed == "all" else set(args.speed.split(","))
    tokens: dict[str, list[int]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, r in recipes.items():
        llm = open_llm(r["model"], r.get("lora"), args.ctx, args.threads, logits_all=True)
        if not tokens:
            tokens = {k: llm.tokenize(v.encode(), add_bos=False, special=True) for k, v in texts.items()}
        res: dict[str, Any] = {"mb": round((r["model"].stat().st_size + (r["lora"].stat().st_size if r.get("lora")
                                                                              else 0)) / 1e6, 1)}
        for k, ids in tokens.items():
            res[f"ppl_{k}"], res[f"tokens_{k}"] = perplexity(llm, ids, args.ctx, args.chunks)
        res["persona"], replies = persona(llm, prompts, marker)
        res["replies"] = replies[:3]
        llm.close()
        if name in timed:
            llm = open_llm(r["model"], r.get("lora"), args.ctx, args.threads, logits_all=False)
            res["tok_s"] = round(decode_tps(llm, prompts[0], args.decode_tokens, args.reps), 1)
            llm.close()
        results[name] = res
        print(f"{name}: {res}", file=sys.stderr, flush=True)
    ref = results["f16 (reference)"]
    for res in results.values():
        for k in tokens:
            res[f"ratio_{k}"] = round(res[f"ppl_{k}"] / ref[f"ppl_{k}"], 4)
            res[f"ppl_{k}"] = round(res[f"ppl_{k}"], 3)
    n_persona = len(prompts)
    head = f"{'recipe':48} {'MB':>6} " + " ".join(f"{'ppl_' + k:>9} {'x f16':>7}" for k in tokens) + \
        f" {'persona':>8} {'tok/s':>6}"
    print(head)
    for name, res in results.items():
        cols = " ".join(f"{res[f'ppl_{k}']:>9.3f} {res[f'ratio_{k}']:>7.3f}" for k in tokens)
        print(f"{name:48} {res['mb']:>6.1f} {cols} {res['persona']:>5}/{n_persona:<2} {res.get('tok_s', ''):>6}")
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f}; n_ctx {args.ctx}, tokens "
          + ", ".join(f"{k} {results[next(iter(results))][f'tokens_{k}']}" for k in tokens))
    from importlib.metadata import version

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    line = {"bench": "quant_recipes", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": [load0, load1]},
            "versions": {"llama_cpp_python": version("llama-cpp-python")}, "assistant": args.assistant,
            "n_ctx": args.ctx, "chunks": args.chunks, "threads": args.threads, "persona_prompts": n_persona,
            "imatrix_chats": args.imatrix_chats, "only": sorted(only), "seconds": round(time.time() - started, 1),
            "results": results}
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
