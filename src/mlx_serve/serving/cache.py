"""Loaded models: an LRU per type with a cap, idle unloading, and leases.

Every request leases its model from lookup to response; a leased model is never unloaded. Idle models
of each type sit in a cachetools LRUCache; a lease takes its model out, and the end of the last lease
puts it back as the most recently used. So when a new model needs room, `popitem()` gives exactly the
least recently used idle model. If every model is busy, the new one loads anyway and the cap is exceeded
until leases end, when the cache trims back: waiting instead could deadlock, since the requests holding
those leases may be queued behind the load.

An idle model unloads `ttl` seconds after its last lease ends (0: at once; negative: never), by a reaper
thread that needs no request to wake it. A model whose name now means other files (pulled again, or a
stored model shadowing the built-in one) is *retired*: new leases get a new slot, and the old one unloads
once its last lease ends.

Loads and unloads run on the inference thread, which owns all MLX work: the cache is handed a function
that runs a control job there, and the functions that load a model and give memory back. It never
imports MLX itself, and takes its clock as an argument, so its policy is tested in milliseconds with
fake models and a fake clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cachetools import LRUCache

from mlx_serve.core.intents import LoadedModel
from mlx_serve.core.types import ModelType
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics
from mlx_serve.store.store import ModelEntry

log = get_logger("mlx_serve.serving.cache")
Reason = Literal["lru", "ttl", "manual", "replaced"]
# The longest the reaper sleeps at once: a far deadline (keep_alive of years) is just looked at again.
MAX_WAIT = 3600.0
RETRY_WAIT = 1.0  # after a job could not be queued


class CachedModel(Protocol):
    """What the cache needs of a loaded model."""

    def nbytes(self) -> int: ...


Load = Callable[[ModelEntry], CachedModel]
Release = Callable[[], None]  # gives the memory of dropped models back (gc, MLX's buffer cache)
RunControl = Callable[[Callable[[], object]], object]  # queue a job on the inference thread
Clock = Callable[[], float]


@dataclass(eq=False)
class Slot:
    """One model in the cache: loaded or loading, leased or idle."""

    entry: ModelEntry
    pinned: bool = False
    # Preloaded (or pinned): a request's keep_alive may lengthen its stay, never shorten it. Other clients
    # rely on it: `keep_alive: 0` in a loop once raised everyone's median latency from 17 ms to 303 ms.
    guarded: bool = False
    model: CachedModel | None = None
    leases: int = 0
    idle_since: float | None = None  # None while leased
    keep_alive: float | None = None  # the next idle period's TTL, set by a request
    unload_requested: bool = False
    unload_queued: bool = False  # an unload job is waiting on the inference thread: never queue a second
    loads_queued: int = 0  # load jobs queued or running: the slot stays, so later requests share its load
    retired: bool = False
    nbytes: int = 0

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def type(self) -> ModelType:
        return self.entry.type

    def ttl(self, default: float) -> float:
        own = -1 if self.pinned else default
        if self.keep_alive is None:
            return own
        if self.guarded or self.pinned:
            return -1 if own < 0 or self.keep_alive < 0 else max(own, self.keep_alive)
        return self.keep_alive

    def expires_at(self, default: float) -> float | None:
        """Deadline on the cache's clock, or None when leased or never expiring."""
        ttl = self.ttl(default)
        if self.idle_since is None or ttl < 0 or not math.isfinite(ttl):
            return None
        return self.idle_since + ttl


class ModelCache:
    def __init__(
        self,
        caps: dict[ModelType, int],
        ttl: float,
        metrics: Metrics,
        *,
        load: Load,
        release: Release,
        run_control: RunControl,
        clock: Clock = time.monotonic,
    ) -> None:
        self.caps = caps
        self.ttl = ttl
        self.metrics = metrics
        self._load = load
        self._release = release
        self._run_control = run_control
        self._clock = clock
        self._current: dict[str, Slot] = {}  # the slot a new lease of each name gets
        self._retired: list[Slot] = []  # replaced slots still leased or loaded
        # The cap is applied here, not by maxsize: leased models count against it but cannot be evicted.
        self._idle: dict[ModelType, LRUCache[str, Slot]] = {t: LRUCache(maxsize=math.inf) for t in caps}
        self._pinned: set[str] = set()
        self._guarded: set[str] = set()  # preloaded: see Slot.guarded
        self._trim_queued = False
        self._cond = threading.Condition(threading.RLock())
        self._changes = 0  # counts state changes, so the reaper never sleeps through one
        self._closing = False
        self._reaper: threading.Thread | None = None

    # -- request threads -------------------------------------------------------------------------
    @contextmanager
    def lease(self, entry: ModelEntry, keep_alive: float | None = None) -> Iterator[Slot]:
        """Hold `entry`'s model from lookup to response; its slot is what the job loads and runs."""
        with self._cond:
            slot = self._current.get(entry.name)
            if slot is not None and slot.entry != entry:  # the name means other files now
                self._retire(slot)
                slot = None
            if slot is None:
                slot = self._current[entry.name] = Slot(
                    entry, pinned=entry.name in self._pinned, guarded=entry.name in self._guarded
                )
            self._idle[slot.type].pop(slot.name, None)
            slot.leases += 1
            slot.idle_since = None
        try:
            yield slot
        finally:
            self._end_lease(slot, keep_alive)

    def _end_lease(self, slot: Slot, keep_alive: float | None) -> None:
        with self._cond:
            slot.leases -= 1
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            if slot.leases == 0:
                if slot.model is None:  # never loaded (or failed to): forgotten, unless its load is queued
                    if slot.loads_queued == 0:
                        self._forget(slot)
                else:
                    slot.idle_since = self._clock()
                    if not slot.retired:
                        self._idle[slot.type][slot.name] = slot  # the most recently used idle model now
                # The reaper recomputes its deadlines and trims over-cap caches. Only here: a lease that
                # leaves others behind changes nothing it looks at, and waking it for every request cost
                # each one another thread's turn at the interpreter lock.
                self._changed()

    def request_unload(self, name: str) -> bool:
        """Unload once in-flight requests finish; False if the model is not loaded."""
        with self._cond:
            slot = self._current.get(name)
            if slot is None or slot.model is None:
                return False
            slot.unload_requested = True
            self._changed()
            return True

    def wait_unloaded(self, name: str, timeout: float) -> bool:
        """Block until no model called `name` is loaded (e.g. after request_unload); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._loaded_slots(name), timeout)

    def pin(self, name: str) -> None:
        """Never unload this model for idleness (preloads with `preload_pinned`)."""
        with self._cond:
            self._pinned.add(name)
            if (slot := self._current.get(name)) is not None:
                slot.pinned = True

    def guard(self, name: str) -> None:
        """A request's keep_alive may lengthen this model's stay, never shorten it (preloaded models)."""
        with self._cond:
            self._guarded.add(name)
            if (slot := self._current.get(name)) is not None:
                slot.guarded = True

    def snapshot(self) -> list[LoadedModel]:
        """What /api/ps shows: loaded models, their memory, in-flight requests and expiry (unix time)."""
        with self._cond:
            now, wall = self._clock(), time.time()
            out = []
            for slot in self._slots():
                if slot.model is None:
                    continue
                deadline = slot.expires_at(self.ttl)
                out.append(
                    LoadedModel(
                        slot.name,
                        slot.type,
                        slot.nbytes,
                        slot.leases,
                        slot.pinned,
                        None if deadline is None else wall + (deadline - now),
                    )
                )
        return sorted(out, key=lambda m: m.name)

    def loaded(self) -> list[str]:
        return sorted({m.name for m in self.snapshot()})

    def resident_bytes(self) -> int:
        """The weights of the loaded models, with the float32 copy a model that overflowed keeps beside it."""
        with self._cond:
            total = 0
            for slot in self._slots():
                if slot.model is not None:
                    widened = getattr(slot.model, "widened", None)
                    total += slot.nbytes + (widened.nbytes() if widened is not None else 0)
            return total

    def ready(self, slot: Slot) -> CachedModel | None:
        """The model of a leased slot if it is loaded (a cache hit), else None: load it on the inference
        thread then. A leased model cannot be unloaded, so the answer stays true for the lease."""
        with self._cond:
            if slot.model is not None:
                self.metrics.cache_hits.labels(slot.type).inc()
            return slot.model

    # -- the inference thread ----------------------------------------------------------------
    def schedule_load(self, slot: Slot) -> Any:
        """Queue the load of a leased slot on the inference thread (run_control's answer: a future). While it
        is queued the slot stays in the cache even if its request gives up, so that the next request for
        the model waits for this load instead of queueing another: a load slower than request_timeout
        then happens once, not once per request."""
        with self._cond:
            slot.loads_queued += 1

        def job() -> CachedModel:
            try:
                return self.load(slot)
            finally:
                with self._cond:
                    slot.loads_queued -= 1
                    if slot.loads_queued == 0 and slot.leases == 0 and slot.model is None:
                        self._forget(slot)  # failed, and nobody waits for it any more

        return self._run_control(job)

    def load(self, slot: Slot) -> CachedModel:
        """The model of a leased slot, loading it (and making room) on a miss."""
        with self._cond:
            if slot.model is not None:
                self.metrics.cache_hits.labels(slot.type).inc()
                return slot.model
        self.metrics.cache_misses.labels(slot.type).inc()
        self._evict_lru(slot.type, self.caps[slot.type] - 1)
        started = self._clock()
        model = self._load(slot.entry)
        seconds = self._clock() - started
        with self._cond:
            slot.model, slot.nbytes = model, model.nbytes()
            self._adopt(slot)
            self._count_loaded()
            self._changed()
        self.metrics.model_load_seconds.observe(seconds)
        self.metrics.model_memory_bytes.labels(slot.name).set(slot.nbytes)
        log.info("model_loaded", model=slot.name, type=slot.type, seconds=round(seconds, 3), bytes=slot.nbytes)
        return model

    def _evict_lru(self, type: ModelType, limit: int) -> None:
        """Unload least recently used idle models of `type` until at most `limit` are loaded."""
        while True:
            with self._cond:
                if self._count(type) <= limit:
                    return
                if not self._idle[type]:
                    log.warning("cache_over_capacity", type=type, cap=self.caps[type], reason="every model is in use")
                    return
                _, victim = self._idle[type].popitem()  # the least recently used idle model
            self._unload(victim, "lru")

    def _trim(self) -> None:
        """Back to the caps once the leases that kept models over them have ended."""
        with self._cond:
            self._trim_queued = False
        for type, cap in self.caps.items():
            self._evict_lru(type, cap)

    def _unload_if_due(self, slot: Slot, reason: Reason) -> None:
        with self._cond:
            slot.unload_queued = False
            if self._due(slot, self._clock()) != reason:
                return  # leased again, or its deadline moved, since the job was queued
            slot.unload_requested = False
            slot.keep_alive = None
        self._unload(slot, reason)

    def _unload(self, slot: Slot, reason: Reason) -> None:
        with self._cond:
            if slot.model is None or slot.leases > 0:
                return
            slot.model = None  # the only reference: the release below can free its arrays
            self._forget(slot)
            # Metrics move with the state they describe, before the slower freeing below.
            self.metrics.cache_evictions.labels(slot.type, reason).inc()
            if self._loaded_slots(slot.name):
                self.metrics.model_memory_bytes.labels(slot.name).set(self._loaded_slots(slot.name)[0].nbytes)
            else:
                self.metrics.model_memory_bytes.remove(slot.name)
            self._count_loaded()
            self._changed()  # wait_unloaded callers
        self._release()
        log.info("model_unloaded", model=slot.name, type=slot.type, reason=reason, bytes=slot.nbytes)

    # -- the reaper ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reaper thread: idle models unload on time with no request to wake them."""
        self._reaper = threading.Thread(target=self._reap_forever, name="mlx-cache-reaper", daemon=True)
        self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            try:
                with self._cond:
                    if self._closing:
                        return
                    seen = self._changes
                wait = self.reap()
                timeout = MAX_WAIT if wait is None else min(wait, MAX_WAIT)
                with self._cond:
                    self._cond.wait_for(lambda s=seen: self._closing or self._changes != s, timeout)
            except Exception:  # the reaper must outlive any bug: log it, look again a little later
                log.exception("cache_reaper_error")
                time.sleep(1.0)

    def reap(self) -> float | None:
        """One look at the cache: queue one unload job per model that is due (expired, asked for, or
        replaced) and one trim if a type is over its cap. Returns the seconds until the next deadline."""
        jobs: list[tuple[Callable[[], None], Slot | None]] = []
        with self._cond:
            now = self._clock()
            next_deadline: float | None = None
            for slot in self._slots():
                if slot.model is None or slot.leases > 0 or slot.unload_queued:
                    continue
                reason = self._due(slot, now)
                if reason is not None:
                    slot.unload_queued = True
                    jobs.append((lambda s=slot, r=reason: self._unload_if_due(s, r), slot))
                elif (deadline := slot.expires_at(self.ttl)) is not None:
                    next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
            if not self._trim_queued and any(self._over_cap(t) for t in self.caps):
                self._trim_queued = True
                jobs.append((self._trim, None))
        refused = False
        for job, slot in jobs:
            try:
                self._run_control(job)
            except Exception as exc:  # not queued (the server is stopping?): look again a little later
                log.warning("cache_job_not_queued", error=str(exc))
                refused = True
                with self._cond:
                    if slot is None:
                        self._trim_queued = False
                    else:
                        slot.unload_queued = False
        if refused:
            return RETRY_WAIT
        return None if next_deadline is None else max(0.0, next_deadline - now)

    def _due(self, slot: Slot, now: float) -> Reason | None:
        if slot.model is None or slot.leases > 0:
            return None
        if slot.retired:
            return "replaced"
        if slot.unload_requested:
            return "manual"
        deadline = slot.expires_at(self.ttl)
        return "ttl" if deadline is not None and deadline <= now else None

    def _over_cap(self, type: ModelType) -> bool:
        return self._count(type) > self.caps[type] and len(self._idle[type]) > 0

    # -- helpers (with the lock held) -------------------------------------------------------------
    def _slots(self) -> Iterator[Slot]:
        yield from self._current.values()
        yield from self._retired

    def _loaded_slots(self, name: str) -> list[Slot]:
        return [s for s in self._slots() if s.name == name and s.model is not None]

    def _count(self, type: ModelType) -> int:
        return sum(1 for s in self._slots() if s.type == type and s.model is not None)

    def _retire(self, slot: Slot) -> None:
        del self._current[slot.name]
        self._idle[slot.type].pop(slot.name, None)
        if slot.leases > 0 or slot.model is not None:
            slot.retired = True
            self._retired.append(slot)
            self._changed()

    def _adopt(self, slot: Slot) -> None:
        """A slot whose request gave up (timed out) while it loaded: keep the model, as the cache's own
        (idle) model of that name, or as a retired one that unloads, instead of leaking it."""
        if slot.retired or self._current.get(slot.name) is slot:
            return
        if slot.name in self._current:
            slot.retired = True
            self._retired.append(slot)
        else:
            self._current[slot.name] = slot
            if slot.leases == 0:
                slot.idle_since = self._clock()
                self._idle[slot.type][slot.name] = slot

    def _forget(self, slot: Slot) -> None:
        """Out of the cache entirely (unloaded, or never loaded and no longer leased)."""
        if self._current.get(slot.name) is slot:
            del self._current[slot.name]
        if self._idle[slot.type].get(slot.name) is slot:
            del self._idle[slot.type][slot.name]
        if slot in self._retired:
            self._retired.remove(slot)

    def _changed(self) -> None:
        self._changes += 1
        self._cond.notify_all()

    def _count_loaded(self) -> None:
        for type in self.caps:
            self.metrics.models_loaded.labels(type).set(self._count(type))

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._reaper is not None:
            self._reaper.join()
