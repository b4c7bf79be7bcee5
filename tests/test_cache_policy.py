"""The model cache's policy with fake models and a fake clock, in milliseconds: LRU per type, idle TTL,
keep_alive, leases, trimming after overflow, pinning, unloading, and the two races once reproduced.

The cache runs its loads and unloads as control jobs on the inference thread; here that thread is a list
of queued jobs that a test runs when it wants to, so "the inference thread is busy" is a test's choice."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlx_serve.metrics import Metrics
from mlx_serve.serving.cache import ModelCache
from mlx_serve.store.store import ModelEntry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass(eq=False)
class FakeModel:
    entry: ModelEntry

    def nbytes(self) -> int:
        return 1000


class InferenceThread:
    """Control jobs wait here until the test runs them, as they would wait behind a long batch."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], object]] = []

    def __call__(self, fn: Callable[[], object]) -> None:
        self.jobs.append(fn)

    def run(self) -> int:
        done = 0
        while self.jobs:
            self.jobs.pop(0)()
            done += 1
        return done


class Harness:
    def __init__(self, caps: dict | None = None, ttl: float = 60) -> None:
        self.clock = Clock()
        self.thread = InferenceThread()
        self.loads: list[str] = []
        self.releases = 0
        self.metrics = Metrics()
        self.fail_next_load = False
        self.cache = ModelCache(
            caps or {"embedding": 2, "reranker": 1},
            ttl,
            self.metrics,
            load=self._load,
            release=self._release,
            run_control=self.thread,
            clock=self.clock,
        )

    def _load(self, entry: ModelEntry) -> FakeModel:
        if self.fail_next_load:
            self.fail_next_load = False
            raise RuntimeError("cannot load")
        self.loads.append(entry.name)
        return FakeModel(entry)

    def _release(self) -> None:
        self.releases += 1

    def use(self, entry: ModelEntry, keep_alive: float | None = None) -> FakeModel:
        """One request: lease, load on the (here: same) inference thread, release."""
        with self.cache.lease(entry, keep_alive) as slot:
            return self.cache.load(slot)  # type: ignore[return-value]

    def tick(self, seconds: float = 0.0) -> int:
        """Let time pass, let the reaper look, and run what it queued."""
        self.clock.advance(seconds)
        self.cache.reap()
        return self.thread.run()

    def loaded(self) -> list[str]:
        return self.cache.loaded()

    def evictions(self, reason: str, type: str = "embedding") -> float:
        return self.metrics.cache_evictions.labels(type, reason)._value.get()


def entry(name: str, type: str = "embedding", path: str | None = None, created: int = 1) -> ModelEntry:
    return ModelEntry(name, Path(path or f"/models/{name}"), type, "test", created)  # type: ignore[arg-type]


A, B, C = entry("a"), entry("b"), entry("c")
R1, R2 = entry("r1", "reranker"), entry("r2", "reranker")


def test_lru_evicts_the_least_recently_used_idle_model_of_its_type() -> None:
    h = Harness()
    for e in (A, B, A, C):  # b is the least recently used when c needs room
        h.use(e)
    assert h.loaded() == ["a", "c"]
    assert h.loads == ["a", "b", "c"]  # the second use of a was a hit
    h.use(R1)
    h.use(R2)  # rerankers have a cap of their own and never push embedders out
    assert h.loaded() == ["a", "c", "r2"]
    assert h.evictions("lru") == 1 and h.evictions("lru", "reranker") == 1
    assert h.metrics.cache_hits.labels("embedding")._value.get() == 1


def test_idle_ttl_unloads_at_the_deadline_with_no_request() -> None:
    h = Harness(ttl=10)
    h.use(A)
    assert h.tick(9.9) == 0 and h.loaded() == ["a"]
    assert h.tick(0.1) == 1 and h.loaded() == []
    assert h.evictions("ttl") == 1 and h.releases == 1


def test_ttl_zero_unloads_when_idle_and_negative_never() -> None:
    h = Harness(ttl=0)
    h.use(A)
    h.tick()
    assert h.loaded() == []
    forever = Harness(ttl=-1)
    forever.use(A)
    forever.tick(10**9)
    assert forever.loaded() == ["a"]
    assert forever.cache.snapshot()[0].expires_at is None


def test_a_lease_longer_than_the_ttl_keeps_its_model_and_the_ttl_runs_from_its_end() -> None:
    h = Harness(ttl=10)
    with h.cache.lease(A) as slot:
        h.cache.load(slot)
        h.tick(100)
        assert h.loaded() == ["a"]
        (row,) = h.cache.snapshot()
        assert row.in_flight == 1 and row.expires_at is None
    h.tick(9)
    assert h.loaded() == ["a"]
    h.tick(1)
    assert h.loaded() == []


def test_keep_alive_sets_the_next_idle_ttl_only() -> None:
    h = Harness(ttl=100)
    h.use(A, keep_alive=1)
    h.tick(1)
    assert h.loaded() == []
    h.use(A, keep_alive=-1)  # forever, until unloaded
    h.tick(10**6)
    assert h.loaded() == ["a"]
    h.cache.request_unload("a")
    h.tick()
    h.use(A)  # a new load starts from the default TTL again
    h.tick(99)
    assert h.loaded() == ["a"]
    h.tick(1)
    assert h.loaded() == []


def test_every_model_leased_exceeds_the_cap_then_trims_back() -> None:
    h = Harness(caps={"embedding": 1, "reranker": 1}, ttl=-1)
    h.use(A)
    with h.cache.lease(A) as held, h.cache.lease(B) as other:
        h.cache.load(held)
        h.cache.load(other)
        assert h.loaded() == ["a", "b"]  # over the cap: nothing in use is torn down
    # b's lease ended first, a's last: both idle now, the cache over its cap, and b the least recently used.
    h.tick()
    assert h.loaded() == ["a"] and h.evictions("lru") == 1


def test_the_trim_spares_a_model_still_in_use() -> None:
    h = Harness(caps={"embedding": 1, "reranker": 1}, ttl=-1)
    with h.cache.lease(A) as held:
        h.cache.load(held)
        h.use(B)  # loads over the cap, since a is in use; idle once its request ends
        h.tick()
        assert h.loaded() == ["a"]  # b went, a stays while leased


def test_pinned_models_never_expire_but_unload_on_request() -> None:
    h = Harness(ttl=1)
    h.cache.pin("a")
    h.use(A)
    h.tick(1000)
    assert h.loaded() == ["a"] and h.cache.snapshot()[0].pinned
    assert h.cache.request_unload("a") is True
    h.tick()
    assert h.loaded() == [] and h.evictions("manual") == 1


def test_unload_waits_for_in_flight_requests() -> None:
    h = Harness(ttl=-1)
    with h.cache.lease(A) as slot:
        h.cache.load(slot)
        assert h.cache.request_unload("a") is True
        h.tick()
        assert h.loaded() == ["a"]
    h.tick()
    assert h.loaded() == []
    assert h.cache.request_unload("a") is False  # not loaded any more


def test_a_model_that_fails_to_load_is_forgotten_and_loads_next_time() -> None:
    h = Harness()
    h.fail_next_load = True
    with pytest.raises(RuntimeError), h.cache.lease(A) as slot:
        h.cache.load(slot)
    assert h.loaded() == []
    h.use(A)
    assert h.loaded() == ["a"]


def test_a_load_whose_request_gave_up_is_kept_not_leaked() -> None:
    h = Harness(ttl=5)
    with h.cache.lease(A) as slot:
        pass  # the request timed out before its job ran
    h.cache.load(slot)  # the job runs anyway, later
    assert h.loaded() == ["a"]
    h.tick(5)
    assert h.loaded() == []  # and it expires like any idle model


def test_regression_the_reaper_queues_one_unload_per_expiry_however_long_the_thread_is_busy() -> None:
    # While an expired model waited for its unload, the reaper queued another job on every wake-up
    # (every 50 ms): with the inference thread busy for seconds, the queue filled and requests got 503.
    h = Harness(ttl=1)
    h.use(A)
    h.use(B)
    for _ in range(100):  # the reaper looks again and again while the inference thread is busy
        h.clock.advance(0.05)
        h.cache.reap()
    assert len(h.thread.jobs) == 2  # one unload for each of a and b
    assert h.thread.run() == 2 and h.loaded() == []
    h.use(A)  # and a later expiry gets its own job again
    h.tick(1)
    assert h.loaded() == []


def test_regression_a_lease_releases_only_the_slot_it_took() -> None:
    # The same name may come to mean other files while a request holds it (a model pulled under the
    # built-in's name). The old lease's end deleted the new slot: the other request got a KeyError (500).
    h = Harness(ttl=-1)
    moved = entry("a", path="/store/a")
    with h.cache.lease(A) as old:
        h.cache.load(old)
        with h.cache.lease(moved) as new:
            assert new is not old
            assert h.cache.load(new).entry == moved  # type: ignore[attr-defined]
        # the new lease ended first; the old one ends now
    h.tick()  # the old files' model unloads once its last lease ends; the new one stays
    (row,) = h.cache.snapshot()
    assert row.name == "a" and h.evictions("replaced") == 1
    assert h.use(moved).entry == moved and h.loads == ["a", "a"]


def test_a_type_change_of_a_name_replaces_its_slot() -> None:
    h = Harness()
    h.use(A)
    h.use(entry("a", "reranker", path="/store/a", created=2))
    h.tick()
    assert [(m.name, m.type) for m in h.cache.snapshot()] == [("a", "reranker")]


def test_snapshot_reports_size_in_flight_and_expiry() -> None:
    h = Harness(ttl=30)
    h.use(A)
    (row,) = h.cache.snapshot()
    assert (row.name, row.type, row.size_bytes, row.in_flight, row.pinned) == ("a", "embedding", 1000, 0, False)
    assert row.expires_at == pytest.approx(time.time() + 30, abs=2)


def test_load_metrics() -> None:
    h = Harness(caps={"embedding": 1, "reranker": 1})
    h.use(A)
    h.use(A)
    h.use(B)
    m = h.metrics
    assert m.cache_misses.labels("embedding")._value.get() == 2
    assert m.cache_hits.labels("embedding")._value.get() == 1
    assert m.models_loaded.labels("embedding")._value.get() == 1
    assert m.model_memory_bytes.labels("b")._value.get() == 1000


def test_the_reaper_thread_unloads_on_time_and_survives_a_failing_job() -> None:
    """The real reaper thread, with a control function that fails once: it logs and goes on."""
    calls: list[str] = []

    def run_control(fn: Callable[[], object]) -> None:
        if not calls:
            calls.append("refused")
            raise RuntimeError("the queue refused it")
        calls.append("ran")
        fn()

    cache = ModelCache(
        {"embedding": 1},
        0.05,
        Metrics(),
        load=FakeModel,  # type: ignore[arg-type]
        release=lambda: None,
        run_control=run_control,
    )
    cache.start()
    try:
        for e in (A, B):
            with cache.lease(e) as slot:
                cache.load(slot)
        deadline = time.monotonic() + 5
        while cache.loaded() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.loaded() == [] and "ran" in calls
    finally:
        cache.close()


def test_wait_unloaded_returns_once_the_model_is_gone() -> None:
    h = Harness(ttl=-1)
    h.use(A)
    h.cache.request_unload("a")
    done = threading.Event()
    waiter = threading.Thread(target=lambda: h.cache.wait_unloaded("a", 5) and done.set())
    waiter.start()
    assert not done.wait(0.05)
    h.tick()
    waiter.join(5)
    assert done.is_set()


def test_the_reaper_thread_survives_absurd_keep_alives() -> None:
    """keep_alive of 1e300 once raised OverflowError in the reaper (it died: no unload ever again), and
    NaN made it spin. The API refuses both now; the cache copes with them anyway."""
    cache = ModelCache(
        {"embedding": 3},
        0.05,
        Metrics(),
        load=FakeModel,  # type: ignore[arg-type]
        release=lambda: None,
        run_control=lambda fn: fn(),
    )
    cache.start()
    try:
        for e, keep_alive in ((A, 1e300), (B, float("nan")), (C, None)):
            with cache.lease(e, keep_alive) as slot:
                cache.load(slot)
        deadline = time.monotonic() + 5
        while "c" in cache.loaded() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.loaded() == ["a", "b"]  # c expired on time; a and b wait for their (far) deadlines
        assert cache._reaper is not None and cache._reaper.is_alive()
    finally:
        cache.close()


def test_regression_a_load_slower_than_the_request_timeout_happens_once() -> None:
    """Requests that gave up on a slow load left nothing behind, so each new request queued the load again
    (every request 503, `model_loaded` logged over and over). The queued load now stays the model's."""
    h = Harness()
    for _ in range(3):  # three requests, each timing out before the load ran
        with h.cache.lease(A) as slot:
            h.cache.schedule_load(slot)
    assert h.thread.run() == 3  # the three jobs run; the first loads, the others find it loaded
    assert h.loads == ["a"] and h.loaded() == ["a"]
    h.use(A)
    assert h.loads == ["a"]


def test_a_failed_load_whose_requests_gave_up_is_forgotten() -> None:
    h = Harness()
    h.fail_next_load = True
    with h.cache.lease(A) as slot:
        h.cache.schedule_load(slot)
    with pytest.raises(RuntimeError):
        h.thread.run()
    assert h.loaded() == [] and h.cache.snapshot() == []
    h.use(A)
    assert h.loaded() == ["a"]
