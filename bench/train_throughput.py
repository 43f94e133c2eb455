"""Training throughput, three sides on the same base and data, measured in the same run:
- ours: `protege train`'s path (trl SFTTrainer, masked labels; padding-free packed rows on CUDA; on CPU
  length-grouped batches, the loss over the labelled positions only, micro-batches of train.micro_batch_tokens);
- bare: a bare forward (the model's own loss over the full logits) + backward + AdamW loop over the very batches
  ours trains on, with the same model: the target is ours >= 0.9x bare;
- plain: the seeds' recipe (HF Trainer + peft, every sample padded to 384, batch 4).
Each side runs in its own subprocess so its peak memory (RSS on CPU) is its own. Throughput counts real (non-padding)
tokens per second over the timed steps (the first step, with its warm-up, is excluded). Prints the sides and the
ratios; appends a JSON line to bench/results/train_throughput.jsonl. No absolute time is asserted.

    .venv/bin/python bench/train_throughput.py                  # SmolLM2-135M, QLoRA, the demo's chats, 4 steps
    .venv/bin/python bench/train_throughput.py --method lora --max-seq-len 512 \
        --data "${PROTEGE_HOME:-$HOME/.protege}/assistants/captain-byte/data/train.jsonl"   # the demo's rows
    .venv/bin/python bench/train_throughput.py --model tiny --steps 3
    python bench/train_throughput.py --model smollm2-shaped        # on the GPU machine (no base package there)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROTEGE_BASE_HOME", str(ROOT / ".pytest_cache" / "protege-base"))
PLAIN_LEN, PLAIN_BATCH = 384, 4
DATA = ROOT / "examples" / "captain-byte" / "conversations" / "chats.jsonl"
TOKENIZER_DIR = ROOT / "tests" / "assets" / "smollm2-tokenizer"  # a data file; the bench imports nothing from tests/
SHAPES = {  # random-weight Llamas: "tiny" for quick CPU runs, "smollm2-shaped" (SmolLM2-135M's shape) for machines
    # without the base package
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0),
    "smollm2-shaped": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0),
}


def random_llama(out: Path, shape: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, rms_norm_eps=1e-5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **SHAPES[shape])
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def step_timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """Wall time and non-padding tokens from the end of step 1 to the end of the run."""

        def __init__(self):
            self.t1 = self.tok1 = None
            self.t_end = self.tok_end = None

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t1, self.tok1 = time.perf_counter(), state.num_input_tokens_seen
            self.t_end, self.tok_end = time.perf_counter(), state.num_input_tokens_seen

        def result(self) -> dict:
            secs, toks = self.t_end - self.t1, self.tok_end - self.tok1
            return {"timed_seconds": round(secs, 3), "real_tokens": int(toks),
                    "tokens_per_second": round(toks / secs, 1) if secs > 0 else 0.0}

    return Timer()


def make_cfg(base: str, data: Path, steps: int, method: str, max_seq_len: int):
    from protege.config_file import config_from_dict

    return config_from_dict({
        "name": "bench", "base": {"model": base},
        "data": {"files": [str(data)], "val_fraction": 0, "max_seq_len": max_seq_len,
                 "clean": {"near_dup_threshold": None}},
        "train": {"method": method, "max_steps": steps + 1, "batch_size": 8, "report_to": "none",
                  "early_stopping_patience": None},
    })


def run_bare(cfg, paths) -> dict:
    """A bare loop over ours's batches and model: forward with labels (full logits), backward, AdamW, zero_grad."""
    import torch

    from builder.data import prepare
    from builder.train import build_trainer

    prepare(cfg, paths)
    trainer, _, info = build_trainer(cfg, paths, quiet=True)
    model = trainer.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
    secs = tokens = 0
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if step > cfg.train.max_steps - 1:
            break
        batch = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels",
                                                                         "position_ids")}
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if info["device"] == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            secs += time.perf_counter() - t0
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return {"timed_seconds": round(secs, 3), "real_tokens": tokens,
            "tokens_per_second": round(tokens / secs, 1) if secs else 0.0, "batch": "ours's batches",
            "device": info["device"], "precision": info["precision"]}


def run_ours(cfg, paths) -> dict:
    from builder.data import prepare
    from builder.train import build_trainer

    prepare(cfg, paths)
    trainer, _, info = build_trainer(cfg, paths, quiet=True)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    batch = (f"{cfg.train.batch_size} packed rows x {PLAIN_LEN}" if info["packing"]
             else f"{cfg.train.batch_size} length-grouped samples")
    return {**timer.result(), "batch": batch,
            "device": info["device"], "precision": info["precision"]}


def run_plain(cfg, paths) -> dict:
    """The seeds' recipe: tokenize chat-templated text, pad every sample to 384, labels = ids (pad -> -100)."""
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from builder.base_model import resolve_base
    from builder.data import load_files
    from builder.train import load_model, pick_device, pick_precision

    device = pick_device()
    precision = pick_precision("auto", device)
    base = resolve_base(cfg.base.model)
    tok = AutoTokenizer.from_pretrained(base)
    convs = [c.messages for c in load_files(cfg.data.files, cfg).conversations]
    texts = [tok.apply_chat_template(m, tokenize=False) for m in convs]
    enc = tok(texts, padding="max_length", truncation=True, max_length=PLAIN_LEN, add_special_tokens=False)
    rows = [{"input_ids": torch.tensor(i), "attention_mask": torch.tensor(a),
             "labels": torch.tensor([t if m else -100 for t, m in zip(i, a)])}
            for i, a in zip(enc["input_ids"], enc["attention_mask"])]
    model = load_model(cfg, base, device, precision)
    args = TrainingArguments(
        output_dir=str(paths.train / "plain"), per_device_train_batch_size=PLAIN_BATCH,
        max_steps=cfg.train.max_steps, learning_rate=cfg.train.learning_rate, report_to="none", save_strategy="no",
        logging_steps=1000, use_cpu=device == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
        include_num_input_tokens_seen="non_padding", disable_tqdm=True, seed=0,
    )
    timer = step_timer()
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[timer]).train()
    return {**timer.result(), "batch": f"{PLAIN_BATCH} samples padded to {PLAIN_LEN}", "device": device,
            "precision": precision}


def child(side: str, base: str, steps: int, data: Path, method: str, max_seq_len: int) -> None:
    import torch

    from builder.monitor import peak_memory_mb
    from protege.paths import AssistantPaths

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PROTEGE_HOME"] = str(Path(tmp) / "home")
        cfg = make_cfg(base, data, steps, method, max_seq_len)
        paths = AssistantPaths.for_name("bench")
        res = {"ours": run_ours, "bare": run_bare, "plain": run_plain}[side](cfg, paths)
        res["peak_memory_mb"] = peak_memory_mb(res["device"])
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="base id or dir; 'tiny' / 'smollm2-shaped' build a random Llama")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--data", type=Path, default=DATA, help="a JSONL of conversations (default: the demo's chats)")
    ap.add_argument("--method", choices=["qlora", "lora", "dora"], default="qlora")
    ap.add_argument("--max-seq-len", type=int, default=PLAIN_LEN)
    ap.add_argument("--sides", default="plain,bare,ours", help="comma-separated subset of plain,bare,ours")
    ap.add_argument("--child", choices=["ours", "bare", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model, args.steps, args.data, args.method, args.max_seq_len)
    model = args.model
    tmp = tempfile.mkdtemp()
    if model in SHAPES:
        model = str(random_llama(Path(tmp) / model, model))
    results = {}
    for side in args.sides.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", side, "--model", model, "--steps",
                              str(args.steps), "--data", str(args.data), "--method", args.method,
                              "--max-seq-len", str(args.max_seq_len)], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(line[-1][7:])
        print(f"{side:6s} {results[side]['tokens_per_second']:>9.1f} real tok/s   peak "
              f"{results[side]['peak_memory_mb']:>8.1f} MiB   ({results[side]['batch']})")
    ratios = {}
    for other in ("bare", "plain"):
        if "ours" in results and other in results:
            ratios[f"ratio_tokens_per_second_vs_{other}"] = round(
                results["ours"]["tokens_per_second"] / max(results[other]["tokens_per_second"], 1e-9), 3)
            ratios[f"ratio_peak_memory_vs_{other}"] = round(
                results["ours"]["peak_memory_mb"] / max(results[other]["peak_memory_mb"], 1e-9), 3)
            print(f"ratio  ours/{other} tokens/s = {ratios[f'ratio_tokens_per_second_vs_{other}']:.2f}x   "
                  f"peak memory ours/{other} = {ratios[f'ratio_peak_memory_vs_{other}']:.2f}x")
    import torch
    import transformers
    import trl

    record = {"bench": "train_throughput", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.machine(), "platform": platform.platform(), "cpus": os.cpu_count(),
              "model": args.model, "data": str(args.data), "method": args.method, "max_seq_len": args.max_seq_len,
              "steps": args.steps, "torch": torch.__version__, "transformers": transformers.__version__,
              "trl": trl.__version__, "load_at_start": round(os.getloadavg()[0], 2), **results, **ratios}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "train_throughput.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
