"""Prefix reuse for the llama.cpp engine: which slot a prompt takes, and which tokens each slot's KV still holds.

A slot keeps its KV after a request. A new request takes the free slot whose cached tokens share the longest prefix
with its prompt (the persona and grounding rules of a RAG request, a chat's earlier turns), so only the rest is
prefilled. The same tokens at the same positions give the same KV, so no request continues another's.
"""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two id sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class SlotCache:
    """The tokens whose KV each slot holds, in order from position 0 (the engine's scheduler thread owns it)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.held: dict[int, list[int]] = {}

    def choose(self, free: list[int], prompt: Sequence[int]) -> tuple[int, int]:
        """(slot, how many prompt tokens its KV already holds): the free slot with the longest shared prefix; on a
        miss, one that holds nothing when there is one. At most all but one prompt token: the last is decoded again
        for its logits."""
        empty = [slot for slot in free if not self.held.get(slot)]
        slot, keep = (empty or free)[-1], 0
        if self.enabled:
            for candidate in reversed(free):
                n = common_prefix(self.held.get(candidate, ()), prompt)
                if n > keep:
                    slot, keep = candidate, n
        return slot, max(0, min(keep, len(prompt) - 1))

    def start(self, slot: int, prompt: Sequence[int], keep: int) -> None:
        """The slot now holds the prompt's first `keep` tokens (the engine dropped the rest of its KV)."""
        self.held[slot] = list(prompt[:keep])

    def add(self, slot: int, tokens: Sequence[int]) -> None:
        """Tokens just decoded into the slot, after the ones it holds."""
        self.held[slot].extend(tokens)

    def forget(self, slot: int) -> None:
        self.held.pop(slot, None)

    def keeps(self, slot: int) -> bool:
        """Whether a finished request's slot keeps its KV for the next prompt."""
        return self.enabled and slot in self.held
