"""The engine-neutral generation request, shared by the wire types (serve/protocol*.py build it) and the engines.

It lives apart from serve/engines/ so the pure-pydantic protocol modules can return it (their `to_gen_params()`, like
vLLM's `to_sampling_params()`) without importing any engine code. What a request asks of an engine is derived from it
(`requested()`), never listed by hand, so a new field cannot be forgotten by one router and rejected by another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Every capability a request may ask of an engine, in the order a 400 names the first one the engine lacks.
# Sampling knobs first, then what changes the answer's shape, then request content no engine here handles.
CAPABILITIES = ("temperature", "top_p", "seed", "stop", "top_k", "logit_bias", "tools", "suffix", "n", "logprobs",
                "echo", "presence_penalty", "frequency_penalty", "repeat_penalty", "json_object", "json_schema",
                "images", "think", "context")


def flags(**on: Any) -> set[str]:
    """The names whose value is truthy: wire types list request-level features as `flags(tools=self.tools, ...)`."""
    return {name for name, value in on.items() if value}


def ordered(names: set[str] | frozenset[str]) -> list[str]:
    """`names` in CAPABILITIES order (unknown names last, alphabetically), so errors are deterministic."""
    rank = {n: i for i, n in enumerate(CAPABILITIES)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


@dataclass
class GenParams:
    """One generation request, after the router has applied persona, RAG context and defaults."""

    model: str
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str | None = None          # raw text completion (no chat template) when set
    max_tokens: int | None = None      # None: until end of turn or the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    # What the client asked that no field above says: request content (images, tools, suffix, ...) and a chosen
    # temperature (it has no neutral value: each API has its own default). Filled by the wire type.
    features: set[str] = field(default_factory=set)
    # (engine key, prompt, messages, token ids): the prompt tokenized once per request (BaseEngine.prompt_ids)
    prompt_cache: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def requested(self) -> frozenset[str]:
        """The capabilities this request needs: every field off its neutral value, plus `features`."""
        derived = flags(top_p=self.top_p != 1.0, seed=self.seed is not None, stop=self.stop, top_k=self.top_k > 0,
                        n=self.n > 1, logprobs=self.logprobs, presence_penalty=self.presence_penalty,
                        frequency_penalty=self.frequency_penalty, repeat_penalty=self.repeat_penalty != 1.0,
                        json_object=self.json_object, json_schema=self.json_schema is not None)
        return frozenset(derived | self.features)
