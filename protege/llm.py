"""The assistant's own model in-process, for `protege rag eval --answers` and the build's answers stage
(protege/answer_eval.py): the same llama.cpp engine, the same GGUF choice (serve/registry.py decides which file an id
serves) and the same RAG sampling defaults as the server. `protege ask` and the Python API answer through
protege/api.py instead (the server's own request path); folding this eval onto it too is left to issue 11.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protege.config import AssistantConfig


class LocalLLM:
    """`generate(messages) -> str` over the assistant's GGUF; the model loads on the first call (a refusal never
    loads it) and stays loaded for the next questions."""

    def __init__(self, cfg: AssistantConfig | None, max_tokens: int | None = None, temperature: float = 0.0):
        """`cfg` None (a bare knowledge folder, `--folder`): the embedded base model answers."""
        if cfg is None:
            from protege.config_file import config_from_dict

            cfg = config_from_dict({"name": "knowledge"}, source="--folder")
        self.cfg, self.max_tokens, self.temperature = cfg, max_tokens, temperature
        self._engine: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def gguf(self):
        from protege.errors import ProtegeError
        from serve.registry import Registry

        spec = Registry([self.cfg]).get(self.cfg.name)
        if spec is None or spec.gguf is None:
            raise ProtegeError(f"{self.cfg.name}: no GGUF to answer with: run `protege build` first")
        return spec.gguf

    def _run(self, coro):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def __call__(self, messages: list[dict]) -> str:
        from serve.engines.base import GenParams
        from serve.engines.llamacpp import LlamaCppEngine
        from serve.service import RAG_MAX_TOKENS, rag_sampling_defaults

        if self._engine is None:
            s = self.cfg.serve
            self._engine = LlamaCppEngine(self.gguf(), [self.cfg.name], n_ctx=s.n_ctx, parallel=1,
                                          n_threads=s.n_threads)
            self._run(self._engine.load())
        params = GenParams(model=self.cfg.name, messages=messages, max_tokens=self.max_tokens or RAG_MAX_TOKENS,
                           temperature=self.temperature)  # the engine caps it to the context's room
        rag_sampling_defaults(params, self._engine)
        return self._run(self._engine.chat(params)).texts[0]

    def close(self) -> None:
        if self._engine is not None:
            self._run(self._engine.close())
            self._engine = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None
