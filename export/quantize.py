"""Quantize the f16 GGUF with llama.cpp itself (`llama_model_quantize`, the library behind `llama-quantize`).

K-quants (q4_K, q5_K, q6_K) work on 256-wide super-blocks. When a model's rows are not a multiple of 256 (SmolLM2-135M:
hidden 576), llama.cpp silently falls back per tensor (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0), so "q4_k_m" becomes
mostly q5_0. Measured on SmolLM2-135M (base weights on a Q4_1 grid: it is imported from a Q4_1 GGUF), 512 tokens of the
check text, perplexity vs f16: llama.cpp's q4_k_m mix +35% (base) / +24.5% (merged persona adapter), pure q5_0 +41%,
pure q5_1 +110%. The same loss appears with the q5 weights dequantized to f32 in numpy (gguf package), so the CPU
kernels are right: it is re-quantization of Q4_1-grid weights onto another grid. Pure q4_1 looks good on the base
(+1.9%) but snaps a merged model back onto the base's grid, erasing the adapter (-41% perplexity = the base's, persona
lost). Only q8_0-grade types keep both: so on such models a 4/5-bit K-quant request is served by llama.cpp's q6_k
mix (q8_0 where rows do not fit, q6_K on the rest; -1.8%, persona kept, 138 MB vs 105 MB), and `describe` records
the tensor types actually written, and why.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from protege.errors import ProtegeError, require

QK_K = 256  # K-quant super-block width (ggml's QK_K)
# 4/5-bit K-quant request -> llama.cpp type used when some rows are not a multiple of QK_K (see module docstring)
K_FALLBACK = {"q4_k_m": "q6_k", "q4_k_s": "q6_k", "q5_k_m": "q6_k", "q5_k_s": "q6_k"}


def ftype_of(quant: str) -> int:
    llama_cpp = require("llama_cpp", "export")
    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if value is None:
        raise ProtegeError(f"export.quants: llama.cpp has no quantization type {quant!r}")
    return int(value)


def k_incompatible(src: Path) -> list[str]:
    """Matrices whose rows (ne0) are not a multiple of 256: llama.cpp cannot give them a K-quant type."""
    import gguf

    reader = gguf.GGUFReader(src)
    return [t.name for t in reader.tensors if len(t.shape) >= 2 and int(t.shape[0]) % QK_K != 0]


def plan(src: Path, quant: str) -> dict[str, Any]:
    """The llama_model_quantize settings for `quant` on this model, with the reason (goes to export_report.json)."""
    quant = quant.lower()
    recipe: dict[str, Any] = {"requested": quant, "base_type": quant, "why": "llama.cpp's own mix for this type"}
    if quant in K_FALLBACK:
        bad = k_incompatible(src)
        if bad:
            recipe.update(base_type=K_FALLBACK[quant], k_incompatible_tensors=len(bad),
                          why=f"{len(bad)} matrices have rows not a multiple of {QK_K} (e.g. {bad[0]}): llama.cpp "
                              f"would fall back to q5_0/q5_1 for them, measured +24..35% perplexity on SmolLM2-135M "
                              f"(q4_1 erases a merged adapter); {K_FALLBACK[quant]} (q8_0 on those rows) measured "
                              f"-1.8% with the adapter kept")
    return recipe


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """src (f16/f32 GGUF) -> dst quantized to `quant` (e.g. q4_k_m, q8_0), following `plan`."""
    llama_cpp = require("llama_cpp", "export")
    llama_cpp.llama_backend_init()
    recipe = plan(src, quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(recipe["base_type"])
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


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type a GGUF holds (what was really written)."""
    import gguf

    return dict(Counter(t.tensor_type.name.lower() for t in gguf.GGUFReader(path).tensors))


def describe(src: Path, dst: Path, quant: str) -> dict[str, Any]:
    """Recipe + actual tensor types of a quantized GGUF, for export_report.json."""
    return {**plan(src, quant), "tensor_types": tensor_types(dst)}
