"""The scheduler's queues, with plain functions for models: request jobs are bounded, control jobs are not,
and control jobs run before the next batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from mlx_serve.core.errors import ClientClosed, Overloaded
from mlx_serve.core.errors import OutOfMemory as DeviceOutOfMemory
from mlx_serve.engine.batching import OutOfMemory, Stopped
from mlx_serve.metrics import Metrics
from mlx_serve.serving.scheduler import Job, Scheduler


class Doubler:
    """A 'model' whose rows are twice each sequence's length; it notes each batch it runs."""

    def __init__(self, log: list | None = None) -> None:
        self.log = log

    def run(self, seqs: Sequence, max_batch_tokens: int, stop=None, max_bytes=None) -> np.ndarray:
        if self.log is not None:
            self.log.append(("batch", list(seqs)))
        return np.array([[2.0 * len(s)] for s in seqs])


class Steps:
    """A 'model' that runs one sequence per batch, asking `stop` before each, as BatchRunner does; it
    waits at `gate` before each batch so that a test can act in between."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.gate = threading.Semaphore(0)

    def run(self, seqs: Sequence, max_batch_tokens: int, stop=None, max_bytes=None) -> np.ndarray:
        for s in seqs:
            assert self.gate.acquire(timeout=5)
            if stop is not None and stop():
                raise Stopped("stopped")
            self.ran.append(s)
        return np.array([[float(len(s))] for s in seqs])


def job(texts: list[str], group: object = "m", log: list | None = None) -> Job:
    return Job("m", group, Doubler(log), list(texts))


def rows(future) -> list[float]:
    return future.result(5)[:, 0].tolist()


@pytest.fixture
def scheduler():
    s = Scheduler(max_batch_tokens=4096, max_queued=1, metrics=Metrics())
    yield s
    s.close()


def hold(scheduler: Scheduler) -> threading.Event:
    release, started = threading.Event(), threading.Event()
    scheduler.control(lambda: (started.set(), release.wait(10)))
    assert started.wait(5)
    return release


def test_regression_control_jobs_never_count_against_the_request_limit(scheduler) -> None:
    release = hold(scheduler)
    unloads = [scheduler.control(lambda: "unloaded") for _ in range(50)]  # housekeeping piles up...
    queued = scheduler.submit(job(["ab"]))  # ...and a request is still taken in
    with pytest.raises(Overloaded):
        scheduler.submit(job(["c"]))  # the request limit (1) itself still holds
    assert scheduler.queued() == (1, 50)
    release.set()
    assert rows(queued) == [4.0]
    assert [u.result(5) for u in unloads] == ["unloaded"] * 50


def test_control_jobs_run_before_the_next_batch_and_same_group_jobs_merge(scheduler) -> None:
    scheduler.max_queued = 10
    order: list = []
    release = hold(scheduler)
    first = scheduler.submit(job(["a"], log=order))
    second = scheduler.submit(job(["bb", "c"], log=order))
    other = scheduler.submit(job(["zzz"], group="other", log=order))
    control = scheduler.control(lambda: order.append("control"))
    release.set()
    assert (rows(first), rows(second), rows(other)) == ([2.0], [4.0, 2.0], [6.0])
    control.result(5)
    # the control job first; then the two jobs of one group merged into one batch, then the other group
    assert order == ["control", ("batch", ["a", "bb", "c"]), ("batch", ["zzz"])]


def test_a_failing_control_job_fails_only_itself(scheduler) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        scheduler.control(boom).result(5)
    assert rows(scheduler.submit(job(["ok"]))) == [4.0]


class Tight:
    """A 'model' whose device holds at most 3 characters of input at once, as a GPU holds so many tokens."""

    def run(self, seqs: Sequence, max_batch_tokens: int, stop=None, max_bytes=None) -> np.ndarray:
        out = np.array([[float(len(s))] for s in seqs])
        failed = {i for i, s in enumerate(seqs) if len(s) > 3}
        if failed:
            raise OutOfMemory(failed, out)
        return out


def test_an_input_too_large_for_the_device_fails_its_own_request_only(scheduler) -> None:
    scheduler.max_queued = 10
    release = hold(scheduler)
    tight = Tight()
    fine = scheduler.submit(Job("m", tight, tight, ["ab", "c"]))
    huge = scheduler.submit(Job("m", tight, tight, ["ok", "far too long"]))
    release.set()
    assert rows(fine) == [2.0, 1.0]
    with pytest.raises(DeviceOutOfMemory) as error:
        huge.result(5)
    assert error.value.index == 1


def test_a_run_stops_between_batches_once_every_client_has_gone(scheduler) -> None:
    model = Steps()
    first, second = Job("m", "g", model, ["a", "b", "c"]), Job("m", "g", model, ["d"])
    release = hold(scheduler)
    futures = [scheduler.submit(first)]
    scheduler.max_queued = 2
    futures.append(scheduler.submit(second))
    release.set()  # both run merged: a, b, c, d, one per batch

    def step(ran: list[str]) -> None:
        model.gate.release()
        deadline = time.monotonic() + 5
        while model.ran != ran:
            assert time.monotonic() < deadline, model.ran
            time.sleep(0.01)

    step(["a"])
    first.abandoned = True  # one client gone: the run goes on for the other
    step(["a", "b"])
    second.abandoned = True  # both gone: it stops before the next batch
    model.gate.release()
    for future in futures:
        with pytest.raises(ClientClosed):
            future.result(5)
    assert model.ran == ["a", "b"]


def test_background_work_waits_for_requests_and_runs_when_idle(scheduler) -> None:
    """Background pieces (a model's shapes being built) run one at a time when nothing waits: a request
    submitted while many are queued is served after at most the piece in progress."""
    done: list[int] = []
    scheduler.background([lambda i=i: (time.sleep(0.02), done.append(i)) for i in range(15)])
    time.sleep(0.05)
    future = scheduler.submit(job(["abc"]))
    assert rows(future) == [6.0]
    assert len(done) < 8  # served long before the 15 pieces (0.3 s) were through
    deadline = time.monotonic() + 5
    while len(done) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done == list(range(15))
    scheduler.background([lambda: 1 / 0, lambda: done.append(15)])  # a failing piece stops nothing
    deadline = time.monotonic() + 5
    while len(done) < 16 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done[-1] == 15
