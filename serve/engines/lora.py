"""A LoRA GGUF applied at load time to a llama.cpp context: how the base + adapter pair (`export.lora_pair`: the
embedded base's own Q4_1 file, lossless, and the adapter kept exact) is served. llama.cpp adds the adapter's
low-rank product in each matmul, so the weights stay mmapped and unchanged."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from serve.engines.base import EngineError


def attach(lc: Any, model: Any, ctx: Any, path: Path, scale: float = 1.0) -> Any:
    """Load the adapter at `path` for `model` (an _internals.LlamaModel) and set it on `ctx` (an
    _internals.LlamaContext); the adapter handle, to free() once the context is closed."""
    if not path.is_file():
        raise EngineError(f"LoRA GGUF not found: {path}")
    adapter = lc.llama_adapter_lora_init(model.model, str(path).encode())
    if not adapter:
        raise EngineError(f"llama.cpp could not load the LoRA GGUF {path.name} for this base")
    adapters = (lc.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(scale)
    if lc.llama_set_adapters_lora(ctx.ctx, adapters, 1, scales) != 0:
        lc.llama_adapter_lora_free(adapter)
        raise EngineError(f"llama.cpp could not apply the LoRA GGUF {path.name}")
    return adapter


def free(lc: Any, adapter: Any) -> None:
    if adapter:
        lc.llama_adapter_lora_free(adapter)
