"""Fold the LoRA adapter into a 16/32-bit copy of the base and save a plain HF model (safetensors + tokenizer +
chat template), the input of llama.cpp's converter.

Never merge into a 4-bit model: the LoRA delta would be rounded away. Two candidate bases exist for a QLoRA adapter:
the original weights (what Unsloth does) and an nf4 quantize->dequantize copy of them (what Axolotl does: the
weights the adapter actually saw during training). `export.merge.base: auto` scores both by val loss and keeps the
better one; the choice and both losses go into the export report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from protege.errors import ProtegeError

NF4_BLOCKSIZE = 64  # bitsandbytes' default for 4-bit, as used by transformers' BitsAndBytesConfig
VAL_MAX_EXAMPLES = 64


def load_base(base_dir: Path, dtype: Any = None):
    """The base in full precision (float32 on CPU), never quantized."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype or torch.float32)
    if getattr(model.config, "quantization_config", None) is not None:
        raise ProtegeError(f"{base_dir}: the base is saved quantized; export needs a 16/32-bit base to merge into")
    model.eval()
    return model


def nf4_roundtrip(model) -> int:
    """Replace every Linear weight the QLoRA loader would quantize (all but the output head) by dequant(quant(W))."""
    import torch
    from bitsandbytes import functional as bnbf

    head = model.get_output_embeddings()
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                w = module.weight.data
                q, state = bnbf.quantize_4bit(w.float().contiguous(), blocksize=NF4_BLOCKSIZE,
                                              compress_statistics=True, quant_type="nf4")
                module.weight.data = bnbf.dequantize_4bit(q, state).to(w.dtype).reshape(w.shape)
                count += 1
    return count


def apply_adapter(model, adapter_dir: Path):
    """PeftModel + merge_and_unload: a plain transformers model with the LoRA (or DoRA) delta folded in."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ProtegeError(f"{adapter_dir}: the adapter does not fit this base model ({e})") from None
    return peft_model.merge_and_unload()


def load_tokenizer(base_dir: Path, adapter_dir: Path | None):
    """The tokenizer saved beside the adapter wins (it carries the chat template used in training)."""
    from transformers import AutoTokenizer

    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter_dir)
    return AutoTokenizer.from_pretrained(base_dir)


def read_val(val_file: Path) -> list[list[dict[str, str]]]:
    if not val_file.is_file():
        return []
    from protege.records import read_conversations

    return read_conversations(val_file)[:VAL_MAX_EXAMPLES]


def merge(base_dir: Path, adapter_dir: Path | None, out_dir: Path, mode: str = "auto",
          val_file: Path | None = None, max_seq_len: int = 512, trained_on_nf4: bool = True) -> dict:
    """Write the merged model to `out_dir`; return what was done (choice, losses) for the export report."""
    from builder.format import assistant_loss

    tokenizer = load_tokenizer(base_dir, adapter_dir)
    info: dict[str, Any] = {"base": str(base_dir), "adapter": str(adapter_dir) if adapter_dir else None,
                            "mode": mode, "choice": None, "val_loss": {}}
    if adapter_dir is None:
        model = load_base(base_dir)
        info["choice"] = "base_only"
    else:
        val = read_val(val_file) if val_file else []
        candidates = ["original", "nf4_roundtrip"] if mode == "auto" else [mode]
        if mode == "auto" and not trained_on_nf4:
            candidates = ["original"]
            info["note"] = "adapter trained on the unquantized base (lora/dora): merged onto the original weights"
        elif mode == "auto" and not val:
            candidates = ["original"]
            info["note"] = "no val data: kept the original base (nothing to score the nf4 round trip with)"
        best = None
        for name in candidates:
            base = load_base(base_dir)
            if name == "nf4_roundtrip":
                info["nf4_linear_layers"] = nf4_roundtrip(base)
            merged = apply_adapter(base, adapter_dir)
            loss = assistant_loss(merged, tokenizer, val, max_seq_len) if val else None
            info["val_loss"][name] = loss
            score = math.inf if loss is None else loss
            if best is None or score < best[0]:
                best = (score, name, merged)
            else:
                del merged
        assert best is not None
        _, info["choice"], model = best
    save_merged(model, tokenizer, out_dir)
    return info


def save_merged(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise ProtegeError("the tokenizer has no chat template: the GGUF would lose the chat format")
    if not (out_dir / "chat_template.jinja").is_file():  # older transformers keep it in tokenizer_config.json only
        (out_dir / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
