"""Quantize the f16 GGUF with llama.cpp itself (`llama_model_quantize`, the library behind `llama-quantize`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from protege.errors import ProtegeError, require


def ftype_of(quant: str) -> int:
    llama_cpp = require("llama_cpp", "export")
    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if value is None:
        raise ProtegeError(f"export.quants: llama.cpp has no quantization type {quant!r}")
    return int(value)


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """src (f16/f32 GGUF) -> dst quantized to `quant` (e.g. q4_k_m, q8_0)."""
    llama_cpp = require("llama_cpp", "export")
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(quant)
    params.nthread = threads or os.cpu_count() or 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    from llama_cpp._logger import logger  # the per-tensor log is noise on the console; errors still show

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    finally:
        logger.setLevel(level)
    if rc != 0 or not dst.is_file():
        raise ProtegeError(f"llama.cpp could not quantize {src.name} to {quant} (return code {rc})")
    return dst
