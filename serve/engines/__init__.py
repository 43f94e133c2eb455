"""Engines behind one Protocol: llamacpp (CPU default), vllm (GPU), fake (tests). Imported lazily by name so a
laptop install never needs vllm, and `protege serve --help` never imports llama_cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from protege.config import ServeConfig
    from serve.engines.base import Engine
    from serve.registry import ModelSpec

ENGINES = ("llamacpp", "vllm", "fake")


def engine_factory(name: str, cfg: "ServeConfig") -> Callable[["ModelSpec"], "Engine"]:
    """A function ModelSpec -> unloaded Engine for the engine `name`."""
    if name == "llamacpp":
        from serve.engines.llamacpp import LlamaCppEngine

        def make(spec: "ModelSpec") -> "Engine":
            return LlamaCppEngine(spec.gguf, [spec.id], n_ctx=cfg.n_ctx, parallel=cfg.parallel,
                                  n_threads=cfg.n_threads, prefix_cache=cfg.prefix_cache, lora=spec.lora,
                                  kv_unified=not cfg.batch_invariant)
        return make
    if name == "vllm":
        from serve.engines.vllm import VllmEngine

        def make_vllm(spec: "ModelSpec") -> "Engine":
            return VllmEngine.from_spec(spec, cfg)

        make_vllm.key = lambda spec: f"vllm:{spec.assistant}"  # type: ignore[attr-defined]  # quants share one
        return make_vllm
    if name == "fake":
        from serve.engines.fake import FakeEngine

        return lambda spec: FakeEngine([spec.id], context_length=cfg.n_ctx)
    raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)}")
