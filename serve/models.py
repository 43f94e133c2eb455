"""Which engines are resident: load on first use (like Ollama), unload after `keep_alive`, at most `max_loaded` at once.

Every request sets its engine's keep_alive (its own `keep_alive`, else the server's `serve.keep_alive`); the timer runs
from the end of the engine's last request, and an engine with requests in flight is never unloaded. Loading one more
engine than `max_loaded` unloads the least recently used idle one first, or waits for one to become idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from protege.config import parse_keep_alive
from serve.engines.base import Engine, EngineError, EngineUnavailable, ModelNotFound
from serve.ops import authorize
from serve.registry import ModelSpec, Registry

log = logging.getLogger("protege.serve")

EngineFactory = Callable[[ModelSpec], Engine]
BUSY_WAIT_S = 120.0  # how long a load waits for a resident engine to become idle before a 503


def engine_key(spec: ModelSpec) -> str:
    """Ids that share weights share one loaded engine (e.g. `name` and `name:q4_k_m`, or two personas on the base);
    a base with an adapter applied at load time is other weights than the base alone."""
    key = str(spec.gguf) if spec.gguf else spec.assistant
    return f"{key}+{spec.lora}" if spec.lora else key


def keep_alive_seconds(value: Any) -> float | None:
    """A request's keep_alive in seconds (None: forever); a bad value is a 400 on param `keep_alive`."""
    try:
        return parse_keep_alive(value)
    except (ValueError, TypeError) as e:
        raise EngineError(str(e), "keep_alive") from None


@dataclass
class Resident:
    """A loaded engine: `keep_alive` seconds after `last_used` it goes (None: never); `busy` requests hold it."""

    key: str
    engine: Engine
    keep_alive: float | None
    last_used: float
    busy: int = 0

    def expires_at(self, now: float) -> float | None:
        if self.keep_alive is None:
            return None
        return (now if self.busy else self.last_used) + self.keep_alive


class ModelManager:
    """Engines by key, with keep_alive expiry and an LRU cap. `keep_alive`: the default in seconds (None: forever);
    `max_loaded`: None for no cap (`protege run`)."""

    def __init__(self, registry: Registry, factory: EngineFactory, key: Callable[[ModelSpec], str] = engine_key, *,
                 keep_alive: float | None = None, max_loaded: int | None = None, metrics: Any = None,
                 clock: Callable[[], float] = time.time):
        """`key` groups ids onto one engine; a factory may carry its own `.key` (vLLM: one engine per assistant)."""
        self.registry, self.factory = registry, factory
        self.key = getattr(factory, "key", key)
        self.keep_alive, self.max_loaded, self.metrics, self.clock = keep_alive, max_loaded, metrics, clock
        self.resident: dict[str, Resident] = {}
        self.load_seconds: dict[str, float] = {}
        self.ever_loaded: set[str] = set()
        self._load_lock = asyncio.Lock()
        self._freed = asyncio.Event()
        self._sweeps: set[asyncio.Task] = set()

    @property
    def engines(self) -> dict[str, Engine]:
        return {k: r.engine for k, r in self.resident.items()}

    def spec(self, model_id: str) -> ModelSpec:
        spec = self.registry.get(model_id)
        if spec is None:
            self.registry.refresh()  # an assistant built after startup
            spec = self.registry.get(model_id)
        if spec is None:
            known = ", ".join(self.registry.ids()) or "none"
            raise ModelNotFound(f"The model '{model_id}' does not exist. Available models: {known}.", "model")
        authorize(spec)  # 403 when the request's API key is another assistant's (serve/ops.py)
        return spec

    async def get(self, model_id: str, keep_alive: Any = None) -> tuple[ModelSpec, Engine]:
        """The engine of `model_id`, loaded if needed; `keep_alive` (a request's raw value) sets its expiry."""
        spec = self.spec(model_id)
        ka = self.keep_alive if keep_alive is None else keep_alive_seconds(keep_alive)
        key = self.key(spec)
        res = self.resident.get(key)
        if res is None or not res.engine.loaded:
            async with self._load_lock:
                res = self.resident.get(key)
                if res is not None and not res.engine.loaded and not res.busy:  # closed under us: load it again
                    del self.resident[key]
                    res = None
                if res is None:
                    res = await self._load(spec, key, ka)
        res.keep_alive, res.last_used = ka, self.clock()
        engine = res.engine
        if spec.id not in engine.model_ids:
            engine.model_ids.append(spec.id)
            engine.register(spec)
        return spec, engine

    async def acquire(self, model_id: str, keep_alive: Any = None) -> tuple[ModelSpec, Engine, Callable[[], None]]:
        """Like `get`, and hold the engine (never unloaded) until the returned release is called (once)."""
        spec, engine = await self.get(model_id, keep_alive)
        res = self.resident[self.key(spec)]  # no await since `get`: still resident
        res.busy += 1
        return spec, engine, lambda: self._release(res)

    def _release(self, res: Resident) -> None:
        res.busy -= 1
        res.last_used = self.clock()
        self._freed.set()
        if res.busy == 0 and res.keep_alive == 0:  # keep_alive 0: unload as soon as the last request is done
            try:
                task = asyncio.get_running_loop().create_task(self.sweep())
            except RuntimeError:
                return
            self._sweeps.add(task)
            task.add_done_callback(self._sweeps.discard)

    async def _load(self, spec: ModelSpec, key: str, ka: float | None) -> Resident:
        if spec.gguf is None and spec.merged is None and spec.adapter is None:
            raise EngineUnavailable(f"model '{spec.id}' has no weights to serve (no GGUF exported).")
        await self._make_room()
        engine = self.factory(spec)
        t0 = time.perf_counter()
        await engine.load()
        self.load_seconds[key] = time.perf_counter() - t0
        res = self.resident[key] = Resident(key, engine, ka, self.clock())
        self.ever_loaded.add(key)
        self._gauge(engine, 1)
        return res

    async def _make_room(self) -> None:
        """Under the load lock: unload LRU idle engines until one more fits, waiting for one to become idle."""
        deadline = time.monotonic() + BUSY_WAIT_S
        while self.max_loaded and len(self.resident) >= self.max_loaded:
            idle = [r for r in self.resident.values() if not r.busy]
            if idle:
                victim = min(idle, key=lambda r: r.last_used)
                log.info("unloading %s: %d models loaded (serve.max_loaded_models)", victim.key, len(self.resident))
                await self._unload(victim)
                continue
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                raise EngineUnavailable(f"All {len(self.resident)} loaded models are busy (serve.max_loaded_models="
                                        f"{self.max_loaded}); retry later.") from None

    async def _unload(self, res: Resident) -> None:
        if self.resident.get(res.key) is res:
            del self.resident[res.key]
        self._gauge(res.engine, 0)
        try:
            await res.engine.close()
        except Exception:  # noqa: BLE001 - an engine that fails to close is gone from the table all the same
            log.exception("closing %s failed", res.key)

    async def unload(self, model_id: str) -> bool:
        """Unload `model_id`'s engine now if idle (Ollama's keep_alive 0 on a load call); busy: when it is done."""
        res = self.resident.get(self.key(self.spec(model_id)))
        if res is None:
            return False
        res.keep_alive = 0
        if res.busy:
            return False
        await self._unload(res)
        return True

    async def keep(self, model_id: str, keep_alive: Any) -> None:
        """Set the keep_alive of `model_id`'s engine if resident (a 400 for a bad value; no load when not resident;
        ids that are no served model, e.g. the embedder's own name, are left alone)."""
        ka = keep_alive_seconds(keep_alive)
        spec = self.registry.get(model_id)
        res = self.resident.get(self.key(spec)) if spec is not None else None
        if res is None:
            return
        res.keep_alive = ka
        if ka == 0 and not res.busy:
            await self._unload(res)

    async def sweep(self) -> list[str]:
        """Unload every idle engine whose keep_alive has run out; the keys unloaded."""
        now = self.clock()
        gone = [r for r in self.resident.values() if not r.busy and (t := r.expires_at(now)) is not None and t <= now]
        for r in gone:  # out of the table before the first await: no request can take one of them meanwhile
            del self.resident[r.key]
        for r in gone:
            log.info("unloading %s: keep_alive expired", r.key)
            await self._unload(r)
        return [r.key for r in gone]

    async def reap(self, interval: float = 1.0) -> None:
        """Sweep forever (the app's lifespan runs this as a task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad close
                log.exception("keep_alive sweep failed")

    def running(self) -> list[Resident]:
        """Resident engines, most recently used first (for /api/ps)."""
        return sorted(self.resident.values(), key=lambda r: -r.last_used)

    def is_loaded(self, model_id: str | None) -> bool:
        if model_id is None:
            return bool(self.resident)
        spec = self.registry.get(model_id)
        return spec is not None and (r := self.resident.get(self.key(spec))) is not None and r.engine.loaded

    def can_serve(self, model_id: str) -> bool:
        """Loaded now, or loaded once and unloaded by keep_alive/the cap (the next request loads it again)."""
        spec = self.registry.get(model_id)
        return self.is_loaded(model_id) or (spec is not None and self.key(spec) in self.ever_loaded)

    def _gauge(self, engine: Engine, value: int) -> None:
        if self.metrics is not None:
            for mid in engine.model_ids:
                self.metrics.loaded.labels(mid).set(value)

    async def close(self) -> None:
        for t in list(self._sweeps):
            t.cancel()
        for r in list(self.resident.values()):
            await r.engine.close()
        self.resident.clear()
