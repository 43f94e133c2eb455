"""The CPU default: llama-cpp-python with continuous batching over llama.cpp's multi-sequence batch API.

One scheduler thread owns a llama_context with `n_seq_max = parallel` sequences in one unified KV cache
(`kv_unified=True`, the default: 8 clients on 2 cores decode ~140 tokens/s against ~100 with a stream each), with
flash attention. With `kv_unified=False` (`serve.batch_invariant`) each sequence has its own KV stream: a sequence's
greedy output is then bit-identical alone or batched with 7 others (the unified cache changed 5 of 8 answers;
sequences never see each other's tokens either way: bench/soak.py). Each step puts the next token of every decoding
sequence plus prompt chunks of newly admitted ones into ONE `llama_decode` call, then samples each sequence with its
own llama.cpp sampler chain. New requests join at the next step (continuous batching); a finished or cancelled one
frees its slot at once, its KV kept for the next prompt sharing its prefix (serve/engines/prefix_cache.py). The chat
template is the GGUF's own, via Jinja2ChatFormatter.

Threading: llama_decode runs in the scheduler thread (ctypes releases the GIL), results go back to each request's
asyncio.Queue with call_soon_threadsafe, so streams never mix and the event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ctypes
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from protege.errors import require
from serve.engines.base import BaseEngine, EngineError, GenDelta, GenParams, TokenLogprob, Usage, stop_holdback
from serve.engines.lora import attach as attach_lora, free as free_lora
from serve.engines.llamacpp_sampling import sampler_chain
from serve.engines.prefix_cache import SlotCache

log = logging.getLogger("protege.serve")

# Private-use code points stand in for message contents while the template renders (see prompt_tokens).
_SENTINEL = ("\ue000", "\ue001")
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass
class _Seq:
    params: GenParams
    tokens: list[int]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    usage: Usage
    max_new: int
    slot: int = -1
    n_past: int = 0
    prefilled: int = 0
    next_token: int | None = None
    logit_idx: int = -1
    generated: int = 0
    pending: str = ""
    cancelled: bool = False
    sampler: Any = None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    t0: int = field(default_factory=time.perf_counter_ns)
    t_first: int | None = None


class LlamaCppEngine(BaseEngine):
    """One GGUF, `parallel` decoding slots; `model_ids` lists the ids (quant tags, personas) it serves."""

    name = "llamacpp"
    # one choice per request (n > 1 would need n sequences), text only
    capabilities = frozenset({"temperature", "top_p", "top_k", "seed", "stop", "logprobs", "json_object",
                              "json_schema", "presence_penalty", "frequency_penalty", "repeat_penalty"})

    def __init__(self, gguf: str | Path, model_ids: list[str] | None = None, n_ctx: int = 2048, parallel: int = 4,
                 n_threads: int | None = None, n_batch: int = 512, kv_unified: bool = True, flash_attn: int = 1,
                 prefix_cache: bool = True, lora: str | Path | None = None):
        super().__init__(model_ids, n_ctx)
        self.gguf = Path(gguf)
        self.lora, self._adapter = (Path(lora) if lora else None), None  # serve/engines/lora.py
        self.requested_ctx = n_ctx
        self.parallel = parallel
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_batch = n_batch
        self.kv_unified = kv_unified
        self.flash_attn = flash_attn  # -1 auto, 0 off, 1 on (llama_flash_attn_type)
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._active: list[_Seq] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pieces: dict[int, bytes] = {}
        self.slots = SlotCache(prefix_cache)  # prefix reuse (serve/engines/prefix_cache.py)

    # ------------------------------------------------------------------------------------------------ loading
    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        lc = require("llama_cpp", "llamacpp")
        from llama_cpp import _internals, _logger

        _logger.set_verbose(log.isEnabledFor(logging.DEBUG))  # llama.cpp's own log is very chatty
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.gguf.is_file():
            raise EngineError(f"GGUF not found: {self.gguf}")
        self.lc = lc
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_mmap = True
        self.model = _internals.LlamaModel(path_model=str(self.gguf), params=mp, verbose=False)
        train_ctx = self.model.n_ctx_train()
        self.context_length = min(self.requested_ctx, train_ctx) if train_ctx > 0 else self.requested_ctx
        cp = lc.llama_context_default_params()
        cp.n_ctx = self.context_length * self.parallel
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = self.parallel
        cp.kv_unified = self.kv_unified
        cp.flash_attn_type = self.flash_attn
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.model, params=cp, verbose=False)
        if self.lora:
            self._adapter = attach_lora(lc, self.model, self.ctx, self.lora)
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        meta = self.model.metadata()
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise EngineError(f"{self.gguf.name} has no tokenizer.chat_template in its metadata")
        eos, bos = self.model.token_eos(), self.model.token_bos()
        self.formatter = Jinja2ChatFormatter(
            template, eos_token=self.model.token_get_text(eos) if eos >= 0 else "",
            bos_token=self.model.token_get_text(bos) if bos >= 0 else "")
        self._free = list(range(self.parallel - 1, -1, -1))
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"llamacpp-{self.gguf.stem}", daemon=True)
        self._thread.start()
        self.loaded = True
        log.info("loaded %s: ctx %d x %d slots, %d threads", self.gguf.name, self.context_length, self.parallel,
                 self.n_threads)

    async def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread:
            await asyncio.to_thread(self._thread.join, 30)
        if self.loaded:
            self.lc.llama_batch_free(self.batch)
            self.ctx.close()
            free_lora(self.lc, self._adapter)
            self.model.close()
            self.loaded = False

    # ---------------------------------------------------------------------------------------------- interface
    def prompt_tokens(self, params: GenParams) -> list[int]:
        """The prompt's token ids. Only the chat template's own scaffold may produce special tokens: every message's
        content (user text, retrieved documents) is tokenized as plain text, so a document that contains
        `<|im_start|>system` cannot open a system turn."""
        if params.prompt is not None:
            return self.model.tokenize(params.prompt.encode(), add_bos=self.model.add_bos_token(), special=False)
        contents, msgs = [], []
        for m in params.messages:
            if isinstance(m.get("content"), str):
                msgs.append({**m, "content": f"{_SENTINEL[0]}{len(contents)}{_SENTINEL[1]}"})
                contents.append(m["content"])
            else:
                msgs.append(m)
        rendered = self.formatter(messages=msgs).prompt
        ids: list[int] = []
        for j, part in enumerate(_SENTINEL_RE.split(rendered)):
            if j % 2:  # a message's content
                ids += self.model.tokenize(contents[int(part)].encode(), add_bos=False, special=False)
            elif part:  # the template's scaffold
                ids += self.model.tokenize(part.encode(), add_bos=False, special=True)
        return ids

    async def stream_chat(self, params: GenParams, usage: Usage | None = None) -> AsyncIterator[GenDelta]:
        if params.n != 1:
            raise EngineError("n > 1 is not supported by the llama.cpp engine", "n")
        usage = usage if usage is not None else Usage()
        tokens = self.prompt_ids(params)  # already tokenized by the context check (Service.prepare)
        usage.prompt_tokens = len(tokens)
        room = self.context_length - len(tokens)
        if room <= 0:
            raise EngineError(f"prompt of {len(tokens)} tokens fills the context of {self.context_length}")
        seq = _Seq(params, tokens, asyncio.get_running_loop(), asyncio.Queue(), usage,
                   min(params.max_tokens or room, room))
        seq.sampler = self._make_sampler(params)
        with self._cv:
            self._waiting.append(seq)
            self._cv.notify()
        try:
            while True:
                item = await seq.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.cancelled = True  # the client went away or the stream ended: the scheduler frees the slot
            with self._cv:
                self._cv.notify()

    # ----------------------------------------------------------------------------------------------- sampling
    def _make_sampler(self, p: GenParams) -> Any:
        return sampler_chain(self.lc, self.vocab, self.n_vocab, p)  # serve/engines/llamacpp_sampling.py

    def _piece(self, tok: int) -> bytes:
        b = self._pieces.get(tok)
        if b is None:
            buf = ctypes.create_string_buffer(128)
            n = self.lc.llama_token_to_piece(self.vocab, tok, buf, 128, 0, False)
            b = self._pieces[tok] = buf.raw[:max(n, 0)]
        return b

    def _logprob(self, idx: int, tok: int, top_n: int) -> TokenLogprob:
        import numpy as np

        logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx.ctx, idx), shape=(self.n_vocab,))
        x = logits.astype(np.float64)
        ls = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
        top = np.argsort(-ls)[:top_n] if top_n else []
        text = lambda t: self._piece(int(t)).decode("utf-8", "replace")  # noqa: E731
        return TokenLogprob(text(tok), float(ls[tok]), [(text(t), float(ls[t])) for t in top])

    # ---------------------------------------------------------------------------------------------- scheduler
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stop:
                    for s in list(self._waiting) + self._active:
                        self._send(s, EngineError("server shutting down"))
                        self._send(s, None)
                    return
                while self._waiting and self._free:
                    s = self._waiting.popleft()
                    if s.cancelled:
                        self._free_seq(s)
                        continue
                    self._take_slot(s)
                    self._active.append(s)
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - fail the batch, keep serving
                log.exception("decode step failed")
                for s in list(self._active):
                    self._finish(s, None, EngineError(f"generation failed: {e}"))

    def _take_slot(self, s: _Seq) -> None:
        """Give `s` the free slot sharing the longest prefix with its prompt, its KV past that prefix dropped."""
        slot, keep = self.slots.choose(self._free, s.tokens)
        self._free.remove(slot)
        mem = self.ctx.memory
        if keep <= 0 or not self.lc.llama_memory_seq_rm(mem, slot, keep, -1):
            self.lc.llama_memory_seq_rm(mem, slot, -1, -1)
            keep = 0
        self.slots.start(slot, s.tokens, keep)
        s.slot, s.prefilled, s.n_past = slot, keep, keep
        s.usage.cached_tokens = keep

    def _step(self) -> None:
        for s in [s for s in self._active if s.cancelled]:
            self._release(s)
        if not self._active:
            return
        b, n, budget = self.batch, 0, self.n_batch
        stepping: list[_Seq] = []
        for s in self._active:
            s.logit_idx = -1
            if s.next_token is not None:
                self._add(b, n, s.next_token, s.n_past, s.slot, True)
                self.slots.add(s.slot, [s.next_token])
                s.logit_idx, s.next_token = n, None
                n += 1
                s.n_past += 1
                budget -= 1
                stepping.append(s)
        for s in self._active:
            if s.prefilled < len(s.tokens) and budget > 0 and s not in stepping:
                chunk = s.tokens[s.prefilled:s.prefilled + budget]
                done = s.prefilled + len(chunk) == len(s.tokens)
                for j, t in enumerate(chunk):
                    self._add(b, n, t, s.n_past + j, s.slot, done and j == len(chunk) - 1)
                    n += 1
                self.slots.add(s.slot, chunk)
                s.n_past += len(chunk)
                s.prefilled += len(chunk)
                budget -= len(chunk)
                if done:
                    s.logit_idx = n - 1
                stepping.append(s)
        b.n_tokens = n
        if n == 0:
            return
        rc = self.lc.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            for s in stepping:  # what the failed batch left in these slots is unknown: never reuse it
                self.slots.forget(s.slot)
            raise RuntimeError(f"llama_decode returned {rc}")
        for s in stepping:
            if s.logit_idx >= 0:
                self._sample(s)

    @staticmethod
    def _add(b: Any, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b.token[i] = tok
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _sample(self, s: _Seq) -> None:
        p = s.params
        lp = None
        tok = self.lc.llama_sampler_sample(s.sampler, self.ctx.ctx, s.logit_idx)
        now = time.perf_counter_ns()
        if s.t_first is None:
            s.t_first = now
            s.usage.prompt_ns = now - s.t0
        if self.lc.llama_vocab_is_eog(self.vocab, tok):
            return self._finish(s, "stop")
        if p.logprobs:
            lp = [self._logprob(s.logit_idx, tok, p.top_logprobs)]
        s.generated += 1
        s.usage.completion_tokens = s.generated
        s.pending += s.decoder.decode(self._piece(tok))
        for stop in p.stop:
            k = s.pending.find(stop)
            if k >= 0:
                s.pending = s.pending[:k]
                return self._finish(s, "stop")
        hold = stop_holdback(s.pending, p.stop)
        out, s.pending = s.pending[:len(s.pending) - hold], s.pending[len(s.pending) - hold:]
        if out or lp:
            self._send(s, GenDelta(out, 0, None, lp))
        if s.generated >= s.max_new or s.n_past + 1 >= self.context_length:
            return self._finish(s, "length")
        s.next_token = tok

    def _finish(self, s: _Seq, reason: str | None, error: BaseException | None = None) -> None:
        if error is None:
            tail = s.pending + s.decoder.decode(b"", final=True)
            s.usage.eval_ns = time.perf_counter_ns() - (s.t_first or s.t0)
            self._send(s, GenDelta(tail, 0, reason))
        else:
            self._send(s, error)
        self._send(s, None)
        self._release(s)

    def _release(self, s: _Seq) -> None:
        if s in self._active:
            self._active.remove(s)
            if not self.slots.keeps(s.slot):  # else the slot keeps its KV for the next prompt
                self.lc.llama_memory_seq_rm(self.ctx.memory, s.slot, -1, -1)
                self.slots.forget(s.slot)
            self._free.append(s.slot)
        self._free_seq(s)

    def _free_seq(self, s: _Seq) -> None:
        if s.sampler is not None:
            self.lc.llama_sampler_free(s.sampler)
            s.sampler = None

    @staticmethod
    def _send(s: _Seq, item: Any) -> None:
        try:
            s.loop.call_soon_threadsafe(s.out.put_nowait, item)
        except RuntimeError:  # the event loop is closed (shutdown)
            pass

