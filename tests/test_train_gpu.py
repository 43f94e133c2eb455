"""QLoRA on CUDA (run on the lent GPU): bf16 compute, nf4 double-quant base on the GPU, adapter learns, val loss
recorded. Uses a randomly initialised SmolLM2-135M-shaped Llama (the real tokenizer), so nothing big travels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def make_smollm2_shaped(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.tiny_model import TOKENIZER_DIR

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(  # SmolLM2-135M's shape
        vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
        rope_theta=100000.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def test_qlora_bf16_nf4_on_cuda(tmp_path, monkeypatch):
    import bitsandbytes as bnb
    import torch

    from builder.data import prepare
    from tests.synth import write_dataset
    from builder.train import build_trainer, run
    from protege.config_file import config_from_dict
    from protege.paths import AssistantPaths

    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    base = make_smollm2_shaped(tmp_path / "smollm2-shaped")
    data = write_dataset(tmp_path / "data", n=300)
    cfg = config_from_dict({
        "name": "gputest", "persona": {"system_prompt": "You are Captain Byte."}, "base": {"model": str(base)},
        "data": {"files": [str(data)], "val_fraction": 0.1, "max_seq_len": 384, "clean": {"near_dup_threshold": None}},
        "train": {"method": "qlora", "epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "eval_steps": 5,
                  "report_to": "none", "early_stopping_patience": None},
    })
    paths = AssistantPaths.for_name(cfg.name)
    prepare(cfg, paths)
    trainer, _, info = build_trainer(cfg, paths, quiet=True)
    assert info["device"] == "cuda" and info["precision"] == "bf16"
    q = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert q and all(m.weight.device.type == "cuda" for m in q)
    assert q[0].weight.quant_type == "nf4" and q[0].weight.quant_state.nested
    assert q[0].compute_dtype == torch.bfloat16
    del trainer
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    m = run(cfg, paths, quiet=True)
    assert m["global_step"] == m["max_steps"] > 2
    assert m["val_loss_final"] < m["val_loss_initial"]
    assert m["tokens_per_second"] > 0 and m["peak_memory_mb"] > 0
    assert (paths.adapter / "adapter_model.safetensors").is_file()
    out = os.environ.get("OUT")
    summary = {k: m[k] for k in ("device", "precision", "method", "global_step", "train_tokens", "train_seconds",
                                 "tokens_per_second", "peak_memory_mb", "val_loss_initial", "val_loss_final")}
    summary["gpu"] = torch.cuda.get_device_name()
    print("GPU_METRICS " + json.dumps(summary))
    if out:
        Path(out, "gpu_metrics.json").write_text(json.dumps(summary, indent=2))
