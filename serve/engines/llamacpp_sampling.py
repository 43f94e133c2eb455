"""One request's llama.cpp sampler chain, built from its GenParams (serve/engines/llamacpp.py).

The order is llama.cpp's own (common/sampling.cpp): the JSON grammar first, so no later stage can pick a token the
grammar forbids; the repeat/presence/frequency penalties over the last 64 tokens; then greedy at temperature 0, or
top-k, top-p, temperature and a seeded draw."""

from __future__ import annotations

import json
import random
from typing import Any

from serve.engines.base import GenParams

PENALTY_LAST_N = 64  # tokens the penalties look back over


def sampler_chain(lc: Any, vocab: Any, n_vocab: int, p: GenParams) -> Any:
    """A new sampler chain (llama_cpp's low-level `lc` module) for the request `p`; the caller frees it."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lambda s: lc.llama_sampler_chain_add(chain, s)  # noqa: E731
    if p.json_object or p.json_schema is not None:
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        g = (LlamaGrammar.from_json_schema(json.dumps(p.json_schema), verbose=False) if p.json_schema is not None
             else LlamaGrammar.from_string(JSON_GBNF, verbose=False))
        add(lc.llama_sampler_init_grammar(vocab, g._grammar.encode(), g._root.encode()))
    if p.repeat_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
        add(lc.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repeat_penalty, p.frequency_penalty,
                                            p.presence_penalty))
    if p.temperature <= 0:
        add(lc.llama_sampler_init_greedy())
    else:
        if p.top_k > 0:
            add(lc.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(lc.llama_sampler_init_top_p(p.top_p, 1))
        add(lc.llama_sampler_init_temp(p.temperature))
        add(lc.llama_sampler_init_dist(p.seed if p.seed is not None else random.getrandbits(32)))
    return chain
