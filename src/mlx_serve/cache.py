"""Loaded models: an LRU per type with a cap, idle unloading, and leases.

Every request leases its model from lookup to response; a leased model is never unloaded. Idle models
of each type sit in a cachetools LRUCache; a lease takes its model out into the busy set, and the end of
the last lease puts it back as the most recently used. So when a new model needs room, `popitem()` gives
exactly the least recently used idle model. If every model is busy, the
new one loads anyway and the cap is exceeded until leases end, when the cache trims back: waiting
instead could deadlock, since the requests holding those leases may be queued behind the load.

An idle model unloads `ttl` seconds after its last lease ends (0: at once; negative: never), by a
reaper thread that needs no request to wake it. Loads and unloads run on the inference thread, which
owns all MLX work; unloading drops the model's arrays and clears MLX's buffer cache.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import mlx.core as mx
from cachetools import LRUCache

from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics
from mlx_serve.store import ModelEntry

log = get_logger("mlx_serve.cache")
Reason = Literal["lru", "ttl", "manual"]


@dataclass
class Slot:
    entry: ModelEntry
    pinned: bool = False
    model: Any | None = None
    leases: int = 0
    idle_since: float | None = field(default_factory=time.monotonic)  # None while leased
    keep_alive: float | None = None  # the next idle period's TTL, set by a request
    unload_requested: bool = False
    nbytes: int = 0

    def ttl(self, default: float) -> float:
        if self.keep_alive is not None:
            return self.keep_alive
        return -1 if self.pinned else default

    def expires_at(self, default: float) -> float | None:
        """Monotonic deadline, or None when leased or never expiring."""
        ttl = self.ttl(default)
        if self.idle_since is None or ttl < 0:
            return None
        return self.idle_since + ttl


class ModelCache:
    def __init__(
        self,
        caps: dict[str, int],
        ttl: float,
        metrics: Metrics,
        load: Callable[[ModelEntry], Any],
        run_on_inference_thread: Callable[[Callable[[], Any]], Future],
    ) -> None:
        self.caps = caps
        self.ttl = ttl
        self.metrics = metrics
        self._load = load
        self._run = run_on_inference_thread
        # The cap is applied here, not by maxsize: leased models count against it but cannot be evicted.
        self._idle: dict[str, LRUCache[str, Slot]] = {t: LRUCache(maxsize=math.inf) for t in caps}
        self._busy: dict[str, dict[str, Slot]] = {t: {} for t in caps}
        self._pinned: set[str] = set()
        self._cond = threading.Condition(threading.RLock())
        self._closing = False
        self._reaper = threading.Thread(target=self._reap, name="mlx-cache-reaper", daemon=True)
        self._reaper.start()

    # -- request threads -------------------------------------------------------------------------
    @contextmanager
    def lease(self, entry: ModelEntry, keep_alive: float | None = None) -> Iterator[Slot]:
        with self._cond:
            kind, name = entry.type, entry.name
            slot = self._idle[kind].pop(name, None) or self._busy[kind].get(name)
            if slot is None or slot.entry.path != entry.path:
                slot = Slot(entry)
            self._busy[kind][name] = slot
            slot.leases += 1
            slot.idle_since = None
        try:
            yield slot
        finally:
            with self._cond:
                slot.leases -= 1
                if keep_alive is not None:
                    slot.keep_alive = keep_alive
                if slot.leases == 0:
                    del self._busy[kind][name]
                    if slot.model is not None:  # a model that failed to load is simply forgotten
                        slot.idle_since = time.monotonic()
                        self._idle[kind][name] = slot  # the most recently used idle model now
                self._cond.notify_all()  # the reaper recomputes its deadlines, trims over-cap caches

    def request_unload(self, name: str) -> bool:
        """Unload once in-flight requests finish; False if the model is not loaded."""
        with self._cond:
            slot = self._find(name)
            if slot is None or slot.model is None:
                return False
            slot.unload_requested = True
            self._cond.notify_all()
            return True

    def wait_unloaded(self, name: str, timeout: float) -> bool:
        """Block until `name` is no longer loaded (e.g. after request_unload); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: (s := self._find(name)) is None or s.model is None, timeout)

    def pin(self, entry: ModelEntry) -> None:
        """Never unload this model for idleness (preloads with `preload_pinned`)."""
        with self._cond:
            self._pinned.add(entry.name)

    def snapshot(self) -> list[dict[str, Any]]:
        """What /api/ps shows: loaded models, their memory, in-flight requests and expiry (unix time)."""
        now_mono, now = time.monotonic(), time.time()
        out = []
        with self._cond:
            for kind, slot in self._slots():
                if slot.model is None:
                    continue
                deadline = slot.expires_at(self.ttl)
                out.append(
                    {
                        "name": slot.entry.name,
                        "type": kind,
                        "size_bytes": slot.nbytes,
                        "in_flight": slot.leases,
                        "pinned": slot.pinned,
                        "expires_at": None if deadline is None else now + (deadline - now_mono),
                    }
                )
        return sorted(out, key=lambda m: m["name"])

    def loaded(self) -> list[str]:
        return [m["name"] for m in self.snapshot()]

    # -- the inference thread ----------------------------------------------------------------
    def get(self, entry: ModelEntry) -> Any:
        """The loaded model of a leased entry, loading it (and making room) on a miss."""
        with self._cond:
            slot = self._busy[entry.type][entry.name]
            if slot.model is not None:
                self.metrics.cache_hits.labels(entry.type).inc()
                return slot.model
        self.metrics.cache_misses.labels(entry.type).inc()
        self._evict_lru(entry.type, self.caps[entry.type] - 1)
        started = time.perf_counter()
        model = self._load(entry)
        seconds = time.perf_counter() - started
        with self._cond:
            slot.model, slot.nbytes = model, model.nbytes()
            slot.pinned = entry.name in self._pinned
        self.metrics.model_load_seconds.observe(seconds)
        self.metrics.model_memory_bytes.labels(entry.name).set(slot.nbytes)
        self._count_loaded()
        log.info("model_loaded", model=entry.name, type=entry.type, seconds=round(seconds, 3), bytes=slot.nbytes)
        return model

    def _evict_lru(self, kind: str, limit: int) -> None:
        """Unload least recently used idle models of `kind` until at most `limit` are loaded."""
        while True:
            with self._cond:
                loaded = len(self._idle[kind]) + sum(1 for s in self._busy[kind].values() if s.model is not None)
                if loaded <= limit:
                    return
                if not self._idle[kind]:
                    log.warning("cache_over_capacity", type=kind, cap=self.caps[kind], reason="every model is in use")
                    return
                _, victim = self._idle[kind].popitem()  # the least recently used idle model
            self._unload(victim, "lru")

    def _trim(self) -> None:
        """Back to the caps once the leases that kept models over them have ended."""
        for kind, cap in self.caps.items():
            self._evict_lru(kind, cap)

    def _unload(self, slot: Slot, reason: Reason) -> None:
        with self._cond:
            if slot.model is None or slot.leases > 0:
                return
            slot.model = None
            self._idle[slot.entry.type].pop(slot.entry.name, None)
            # Metrics move with the state they describe, before the slower freeing below.
            self.metrics.cache_evictions.labels(slot.entry.type, reason).inc()
            self.metrics.model_memory_bytes.remove(slot.entry.name)
            self._count_loaded()
            self._cond.notify_all()  # wait_unloaded callers
        gc.collect()  # the model's object graph has cycles: free its arrays now, not at some later GC
        mx.clear_cache()
        log.info("model_unloaded", model=slot.entry.name, type=slot.entry.type, reason=reason, bytes=slot.nbytes)

    def _count_loaded(self) -> None:
        with self._cond:  # re-entrant: callers may hold it already
            for kind in self.caps:
                count = sum(1 for k, s in self._slots() if k == kind and s.model is not None)
                self.metrics.models_loaded.labels(kind).set(count)

    # -- the reaper thread ------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                due, wait = self._due()
                over = any(self._over_cap(kind) for kind in self.caps)
                if not due and not over:
                    self._cond.wait(wait)
                    continue
            for slot, reason in due:
                self._submit(lambda s=slot, r=reason: self._unload_if_still_due(s, r))
            if over:
                self._submit(self._trim)
            with self._cond:  # give the inference thread time to act before looking again
                self._cond.wait(0.05)

    def _over_cap(self, kind: str) -> bool:
        loaded = len(self._idle[kind]) + sum(1 for s in self._busy[kind].values() if s.model is not None)
        return loaded > self.caps[kind] and len(self._idle[kind]) > 0

    def _due(self) -> tuple[list[tuple[Slot, Reason]], float | None]:
        now = time.monotonic()
        due: list[tuple[Slot, Reason]] = []
        next_deadline: float | None = None
        for lru in self._idle.values():
            for slot in lru.values():
                if slot.unload_requested:
                    due.append((slot, "manual"))
                    continue
                deadline = slot.expires_at(self.ttl)
                if deadline is None:
                    continue
                if deadline <= now:
                    due.append((slot, "ttl"))
                elif next_deadline is None or deadline < next_deadline:
                    next_deadline = deadline
        return due, None if next_deadline is None else max(0.0, next_deadline - now)

    def _submit(self, fn: Callable[[], Any]) -> None:
        try:
            self._run(fn)
        except Exception as exc:  # the queue is full or closing: the next wake-up tries again
            log.warning("cache_unload_deferred", error=str(exc))

    def _unload_if_still_due(self, slot: Slot, reason: Reason) -> None:
        with self._cond:
            still = (
                slot.model is not None
                and slot.leases == 0
                and (
                    (reason == "manual" and slot.unload_requested)
                    or (reason == "ttl" and (d := slot.expires_at(self.ttl)) is not None and d <= time.monotonic())
                )
            )
            if still:
                slot.unload_requested = False
                slot.keep_alive = None
        if still:
            self._unload(slot, reason)

    # -- helpers -----------------------------------------------------------------------------------
    def _slots(self) -> Iterator[tuple[str, Slot]]:
        for kind in self.caps:
            for slot in [*self._idle[kind].values(), *self._busy[kind].values()]:
                yield kind, slot

    def _find(self, name: str) -> Slot | None:
        return next((slot for _, slot in self._slots() if slot.entry.name == name), None)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._reaper.join()
