"""Issue 13: llama.cpp quantizer knobs (token_embd type, per-tensor overrides, importance matrix) and the base + LoRA
pair (the base's own GGUF + the adapter applied at load time), on the tiny random Llama (hidden 64)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from protege.errors import ProtegeError  # noqa: E402
from protege.paths import AssistantPaths  # noqa: E402
from tests.test_export import NAME, make_adapter, make_config, write_val  # noqa: E402


@pytest.fixture(scope="module")
def tiny_f16(tiny_model_dir, tmp_path_factory) -> Path:
    from export.convert import convert_hf_to_gguf

    return convert_hf_to_gguf(tiny_model_dir, tmp_path_factory.mktemp("f16") / "tiny-f16.gguf", "f16")


def types_by_name(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(path).tensors}


def test_token_embd_and_tensor_overrides_are_applied(tiny_f16, tmp_path):
    from export.quantize import quantize

    out = quantize(tiny_f16, tmp_path / "x.gguf", "q4_0", threads=1, token_embd="q8_0",
                   overrides={r"ffn_down\.weight": "q8_0"})
    types = types_by_name(out)
    assert types["token_embd.weight"] == "q8_0"
    assert types["blk.0.ffn_down.weight"] == "q8_0" and types["blk.1.ffn_down.weight"] == "q8_0"
    assert types["blk.0.attn_q.weight"] == "q4_0" and types["blk.0.ffn_up.weight"] == "q4_0"


def test_imatrix_changes_the_rounding(tiny_f16, tmp_path):
    """A strongly uneven importance per column must change which 4-bit values llama.cpp picks."""
    import gguf
    import numpy as np

    from export.quantize import quantize

    shapes = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(tiny_f16).tensors if t.name.startswith("blk.")
              and len(t.shape) == 2}
    imatrix = {name: [100.0 if j % 7 == 0 else 0.01 for j in range(n)] for name, n in shapes.items()}
    plain = quantize(tiny_f16, tmp_path / "plain.gguf", "q4_0", threads=1)
    weighted = quantize(tiny_f16, tmp_path / "imatrix.gguf", "q4_0", threads=1, imatrix=imatrix)

    def data(path: Path) -> bytes:
        return np.asarray(next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.ffn_up.weight").data) \
            .tobytes()

    assert data(plain) != data(weighted)


def test_unknown_tensor_type_is_an_error(tiny_f16, tmp_path):
    from export.quantize import quantize

    with pytest.raises(ProtegeError, match="no tensor type 'q3_zz'"):
        quantize(tiny_f16, tmp_path / "x.gguf", "q4_0", token_embd="q3_zz")


def test_pair_needs_the_embedded_base(tiny_model_dir):
    from export.quantize import pair_base_gguf

    with pytest.raises(ProtegeError, match="lora_pair needs the embedded base"):
        pair_base_gguf(make_config(tiny_model_dir, lora_pair=True))


def test_pipeline_rejects_a_pair_without_a_gguf_base_before_merging(tiny_model_dir):
    from export.pipeline import run

    paths = AssistantPaths.for_name(NAME).ensure()
    make_adapter(tiny_model_dir, paths.adapter)
    write_val(paths)
    with pytest.raises(ProtegeError, match="lora_pair"):
        run(make_config(tiny_model_dir, lora_pair=True), paths)
    assert not paths.merged.exists() and not list(paths.root.glob(".export-*"))


def test_export_writes_the_pair_at_the_merged_perplexity(tiny_model_dir, tiny_f16, monkeypatch):
    """With the base's own GGUF lossless (here: the f16 of the tiny base), base + runtime LoRA must score what the
    merged f16 scores; the pair's files carry "lora" in their names so the server does not list them as quants."""
    from export import quantize
    from export.pipeline import run

    monkeypatch.setattr(quantize, "pair_base_gguf", lambda cfg: tiny_f16)
    paths = AssistantPaths.for_name(NAME).ensure()
    make_adapter(tiny_model_dir, paths.adapter)
    write_val(paths)
    report = run(make_config(tiny_model_dir, lora_pair=True), paths)
    pair = report["lora_pair"]
    assert abs(pair["ppl_increase_vs_f16"]) < 0.01 and pair["within_max_ppl_increase"]
    assert pair["chat_template_matches_merged"] is True
    base, lora = paths.gguf / pair["base"]["file"], paths.gguf / pair["lora"]["file"]
    assert base.is_file() and lora.is_file() and pair["bytes"] == base.stat().st_size + lora.stat().st_size
    assert os.path.samefile(base, tiny_f16) or base.stat().st_size == tiny_f16.stat().st_size
    assert paths.quants() == ["f16", "q8_0"]
    assert report["default_quant"] == "q8_0"


def test_the_server_serves_the_pair_as_the_merged_model(tiny_model_dir, tiny_f16, monkeypatch):
    """The registry lists the pair as `<name>:q4_1-lora` (its own engine: the base alone is other weights), and the
    real llama.cpp engine with the adapter applied at load gives the merged f16's log-probabilities, where the base
    alone does not."""
    import asyncio

    from export import quantize
    from export.pipeline import run
    from serve.engines.base import GenParams
    from serve.engines.llamacpp import LlamaCppEngine
    from serve.models import engine_key
    from serve.registry import PAIR_TAG, Registry

    monkeypatch.setattr(quantize, "pair_base_gguf", lambda cfg: tiny_f16)
    paths = AssistantPaths.for_name(NAME).ensure()
    make_adapter(tiny_model_dir, paths.adapter)
    write_val(paths)
    cfg = make_config(tiny_model_dir, lora_pair=True)
    run(cfg, paths)
    reg = Registry([cfg], include_built=False)
    pair, merged = reg.get(f"{NAME}:{PAIR_TAG}"), reg.get(f"{NAME}:f16")
    assert pair is not None and pair.lora is not None and pair.lora.is_file() and os.path.samefile(pair.gguf,
                                                                                                     paths.lora_pair()[0])
    assert engine_key(pair) != engine_key(merged) and reg.get(NAME).lora is None  # the default stays q8_0

    def top_logprobs(gguf: Path, lora: Path | None) -> list[float]:
        engine = LlamaCppEngine(gguf, parallel=1, n_ctx=128, n_threads=1, lora=lora)

        async def first() -> list[float]:
            await engine.load()
            try:
                p = GenParams("m", prompt="The quick brown fox", max_tokens=1, temperature=0, logprobs=True,
                              top_logprobs=5)
                deltas = [d async for d in engine.stream_chat(p)]
            finally:
                await engine.close()
            lp = next(d.logprobs[0] for d in deltas if d.logprobs)
            return sorted((logprob for _, logprob in lp.top), reverse=True)
        return asyncio.run(first())

    want = top_logprobs(merged.gguf, None)
    got, alone = top_logprobs(pair.gguf, pair.lora), top_logprobs(pair.gguf, None)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-2
    assert max(abs(a - b) for a, b in zip(alone, want)) > 5e-2, "the adapter must change the log-probabilities"
