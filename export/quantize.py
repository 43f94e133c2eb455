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

A true 4-bit file (issue 13, bench/quant_recipes.py, 2x512 tokens of held chat + docs text, 8 eval prompts): merged
32-wide types re-grid the base: q4_0 +10/+25% (chat/docs), iq4_nl +15/+19%, both with token_embd q8_0; token_embd
q4_1 costs a further +5..10% (it is also the tied output). An importance matrix from 64 training chats helps (iq4_nl
+5/+8%), and with attn_v/ffn_down kept q8_0 reaches +2.5/+2.6% at 106.7 MB, persona kept. Best is the documented mix
`lora_pair`: the base's own Q4_1 GGUF (lossless) + the adapter as a LoRA GGUF applied at load time, 108.2 MB (f16
LoRA) or 105.9 MB (q8_0 LoRA) at +0.2/+0.6% and +0.5/+0.0%, persona 8/8; the runtime LoRA costs decode speed.
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
                              f"-1.8% with the adapter kept; a 4-bit-class alternative on the embedded base is "
                              f"export.lora_pair")
    return recipe


def ggml_type(name: str) -> int:
    llama_cpp = require("llama_cpp", "export")
    value = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if value is None:
        raise ProtegeError(f"export: llama.cpp has no tensor type {name!r}")
    return int(value)


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None, *, token_embd: str | None = None,
             overrides: dict[str, str] | None = None, imatrix: dict[str, Any] | None = None) -> Path:
    """src (f16/f32 GGUF) -> dst quantized to `quant` (e.g. q4_k_m, q8_0), following `plan`. Optional llama.cpp knobs
    (what `llama-quantize --token-embedding-type / --tensor-type / --imatrix` set): token_embd type, per-tensor type
    overrides {regex: type}, an importance matrix {tensor name: mean squared input activation per column}."""
    import ctypes

    llama_cpp = require("llama_cpp", "export")
    llama_cpp.llama_backend_init()
    recipe = plan(src, quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(recipe["base_type"])
    params.nthread = threads or os.cpu_count() or 1
    keep: list[Any] = []  # ctypes buffers the params point into: alive until llama_model_quantize returns
    if token_embd:
        params.token_embedding_type = ggml_type(token_embd)
    if overrides:
        tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()  # zeroed last entry ends the list
        for i, (pattern, kind) in enumerate(overrides.items()):
            tt[i].pattern, tt[i].type = pattern.encode(), ggml_type(kind)
        params.tt_overrides = tt
        keep.append(tt)
    if imatrix:
        im = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            buf = (ctypes.c_float * len(values))(*map(float, values))
            im[i].name, im[i].data, im[i].size = name.encode(), buf, len(values)
            keep.append(buf)
        params.imatrix = im
        keep.append(im)
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


def pair_base_gguf(cfg) -> Path:
    """The base GGUF of the base + LoRA pair. Only a base imported from a quantized GGUF qualifies: its HF weights
    (what the adapter was trained on) are that file dequantized, so the file is the base without any loss. That is
    the embedded SmolLM2 (Q4_1); for other bases a merged K-quant is the 4-bit file and the pair would only add the
    runtime LoRA's cost."""
    from protege.config import DEFAULT_BASE

    if cfg.base.model != DEFAULT_BASE:
        raise ProtegeError(f"export.lora_pair needs the embedded base {DEFAULT_BASE!r} (shipped as a Q4_1 GGUF); "
                           f"{cfg.base.model!r} has no quantized GGUF of its own: use a merged quant instead")
    from builder.base_model import embedded_gguf

    return embedded_gguf()


def lora_pair(base_src: Path, lora: Path, base_dst: Path, tokenizer, text: str, positions: int,
              ref_ppl: float, max_increase: float) -> dict[str, Any]:
    """Place the base GGUF beside the LoRA GGUF (hard link, else copy) and measure the pair as llama.cpp loads it
    (`Llama(model_path=base, lora_path=lora)`) on the verification text, against the merged f16's perplexity."""
    import shutil

    from export.verify import gguf_logits, perplexity, read_metadata, text_ids

    base_dst.unlink(missing_ok=True)
    try:
        os.link(base_src, base_dst)
    except OSError:
        shutil.copyfile(base_src, base_dst)
    llama_cpp = require("llama_cpp", "export")
    llm = llama_cpp.Llama(str(base_dst), lora_path=str(lora), n_ctx=max(positions + 8, 512), logits_all=True,
                          n_batch=512, verbose=False)
    try:
        meta = read_metadata(llm)
        bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token") else None
        ids = text_ids(tokenizer, text, positions, bos)
        ppl = perplexity(gguf_logits(llm, ids), ids)
        same_template = meta.get("tokenizer.chat_template") == tokenizer.chat_template
    finally:
        llm.close()
    rel = ppl / ref_ppl - 1
    return {"base": {"file": base_dst.name, "bytes": base_dst.stat().st_size, "from": str(base_src),
                     "tensor_types": tensor_types(base_dst)},
            "lora": {"file": lora.name, "bytes": lora.stat().st_size},
            "bytes": base_dst.stat().st_size + lora.stat().st_size, "perplexity": ppl, "ppl_increase_vs_f16": rel,
            "within_max_ppl_increase": rel <= max_increase, "chat_template_matches_merged": same_template,
            "load": {"model_path": base_dst.name, "lora_path": lora.name},
            "why": "the base kept on its own quantized grid (lossless) + the adapter applied at load time: "
                   "re-quantizing a merged 576-wide model to 4 bits either re-grids the base (q4_0/iq4_nl) or snaps "
                   "the adapter away (q4_1)"}
