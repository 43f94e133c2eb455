"""A deterministic engine for route tests: answers "Echo: <last user message>" one word per token.

Tokens are whitespace words (plus 3 per message for the template), so tests can compute exact usage and provoke
`context_length_exceeded` with small inputs. It counts calls, which lets tests prove a RAG refusal never reached it.
`fail_after=k` makes it fail after k tokens (`fail`, else an EngineUnavailable): an engine dying mid-answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from serve.engines.base import BaseEngine, EngineUnavailable, GenDelta, GenParams, TokenLogprob, Usage
from serve.params import CAPABILITIES


class FakeEngine(BaseEngine):
    name = "fake"
    # text-only and stateless, like our real engines; everything else it honours (or echoes)
    capabilities = frozenset(CAPABILITIES) - {"images", "tools", "think", "context", "suffix", "echo"}

    def __init__(self, model_ids: list[str] | None = None, context_length: int = 256,
                 unsupported: set[str] | None = None, delay: float = 0.0, load_delay: float = 0.0,
                 fail_after: int | None = None, fail: Exception | None = None):
        """`unsupported`: capabilities this instance lacks too (route tests of the 400)."""
        super().__init__(model_ids, context_length)
        self.capabilities = type(self).capabilities - set(unsupported or ())
        self.delay = delay
        self.load_delay = load_delay
        self.fail_after, self.fail = fail_after, fail
        self.tokenized = 0  # prompt tokenizations: tests check a request tokenizes its prompt once
        self.calls = 0
        self.last_params = None  # what the last call was sent (tests check the grounded prompt)
        self.cancelled = 0
        self.completed = 0

    async def load(self) -> None:
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        self.loaded = True

    async def close(self) -> None:
        self.loaded = False

    def prompt_tokens(self, params: GenParams) -> list[int]:
        """One id per whitespace word, plus 3 per message for the template."""
        self.tokenized += 1
        if params.prompt is not None:
            return [1] * len(params.prompt.split())
        return [1] * sum(len(m.get("content", "").split()) + 3 for m in params.messages)

    def answer(self, params: GenParams) -> list[str]:
        if params.prompt is not None:
            src = params.prompt
        else:
            src = next((m["content"] for m in reversed(params.messages) if m["role"] == "user"), "")
        if params.json_object or params.json_schema:
            import json

            return [json.dumps({"echo": src})]
        return ["Echo:"] + src.split()

    async def stream_chat(self, params: GenParams, usage: Usage | None = None) -> AsyncIterator[GenDelta]:
        self.calls += 1
        self.last_params = params
        usage = usage if usage is not None else Usage()
        usage.prompt_tokens = self.count_tokens(params)
        t0 = time.perf_counter_ns()
        words = self.answer(params)
        limit = params.max_tokens if params.max_tokens is not None else self.context_length - usage.prompt_tokens
        finished = False
        try:
            for i in range(params.n):
                text_so_far = ""
                for k, w in enumerate(words):
                    if k == self.fail_after:
                        raise self.fail or EngineUnavailable("The engine stopped in the middle of an answer.")
                    if k >= limit:
                        yield GenDelta("", i, "length")
                        break
                    piece = w if k == 0 else " " + w
                    cut = _stop_cut(text_so_far + piece, params.stop)
                    if cut is not None:
                        rest = cut[len(text_so_far):]
                        if rest:
                            yield GenDelta(rest, i)
                        yield GenDelta("", i, "stop")
                        break
                    text_so_far += piece
                    usage.completion_tokens += 1
                    lp = [TokenLogprob(piece, -0.5, [(piece, -0.5)])] if params.logprobs else None
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    else:
                        await asyncio.sleep(0)
                    yield GenDelta(piece, i, None, lp)
                else:
                    yield GenDelta("", i, "stop")
            finished = True
            self.completed += 1
        finally:
            usage.eval_ns = time.perf_counter_ns() - t0
            if not finished:
                self.cancelled += 1


def _stop_cut(text: str, stops: list[str]) -> str | None:
    idx = [text.find(s) for s in stops if s and s in text]
    return text[: min(idx)] if idx else None
