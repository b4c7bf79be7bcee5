"""Dynamic batching: one inference thread owns all MLX work and merges concurrent requests.

Request threads submit jobs and wait on futures. The inference thread takes the oldest job, gathers every
other queued job for the same loaded model, runs all their sequences together (sorted by length and split
by the token budget inside the engine), and hands each job its own rows. Many clients at once cost little
more than one; a large request may span several batches.

Control jobs (loading, unloading, preloading models) are a queue of their own: they run before the next
batch and never count against the request queue's limit, so housekeeping can never turn requests away.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics

if TYPE_CHECKING:
    from mlx_serve.engine import Seq

log = get_logger("mlx_serve.scheduler")


class QueueFull(RuntimeError):
    pass


class BatchModel(Protocol):
    """What the inference thread needs of a loaded model: token sequences in, one row each out."""

    def run(self, seqs: Sequence[Seq], max_batch_tokens: int) -> np.ndarray: ...


@dataclass(eq=False)
class Job:
    """One request's work. Jobs of the same `group` (one loaded model) are merged into batches."""

    model: str  # the model's name, for metrics and logs
    group: Hashable
    load: Callable[[], BatchModel]  # the loaded model (a cache hit, or a load on this thread)
    prepare: Callable[[Any], list[Seq]]  # tokenise: may raise a request error for this job alone
    finish: Callable[[Any, np.ndarray], Any]  # rows of this job -> the job's result
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class ControlJob:
    """Work that must run on the inference thread but is no request: loads, unloads, preloads."""

    run: Callable[[], Any]
    future: Future = field(default_factory=Future)


class Scheduler:
    def __init__(self, max_batch_tokens: int, max_queued: int, metrics: Metrics) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_queued = max_queued
        self.metrics = metrics
        self._requests: deque[Job] = deque()
        self._control: deque[ControlJob] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="mlx-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._requests) >= self.max_queued:
                raise QueueFull(f"{len(self._requests)} requests are already waiting")
            self._requests.append(job)
            self._cond.notify()
        return job.future

    def control(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the inference thread before the next batch; never refused for a full queue."""
        job = ControlJob(fn)
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            self._control.append(job)
            self._cond.notify()
        return job.future

    def queued(self) -> tuple[int, int]:
        """Requests and control jobs waiting for the inference thread."""
        with self._cond:
            return len(self._requests), len(self._control)

    def _take(self) -> ControlJob | list[Job] | None:
        with self._cond:
            while not self._requests and not self._control and not self._closing:
                self._cond.wait()
            if self._control:
                return self._control.popleft()
            if not self._requests:
                return None
            first = self._requests.popleft()
            same = [j for j in self._requests if j.group is first.group]
            for job in same:
                self._requests.remove(job)
            return [first, *same]

    def _loop(self) -> None:
        while (work := self._take()) is not None:
            try:
                if isinstance(work, ControlJob):
                    self._run_control(work)
                else:
                    live = [j for j in work if j.future.set_running_or_notify_cancel()]  # skip the timed-out
                    if live:
                        self._run(live)
            except Exception:  # never reached by design; the thread that owns MLX must not die of a bug
                log.exception("inference_thread_error")

    @staticmethod
    def _run_control(job: ControlJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.run())
        except Exception as exc:
            job.future.set_exception(exc)

    def _run(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        for job in jobs:
            self.metrics.queue_wait.observe(started - job.enqueued)
        try:
            model = jobs[0].load()
        except Exception as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        prepared: list[tuple[Job, list[Seq]]] = []
        for job in jobs:
            try:
                prepared.append((job, job.prepare(model)))
            except Exception as exc:  # one client's bad input fails that client only
                job.future.set_exception(exc)
        seqs = [s for _, job_seqs in prepared for s in job_seqs]
        try:
            rows = model.run(seqs, self.max_batch_tokens) if seqs else np.empty((0,))
        except Exception as exc:
            log.exception("inference_failed", model=jobs[0].model)
            for job, _ in prepared:
                job.future.set_exception(exc)
            return
        if seqs:
            self.metrics.batch_size.observe(len(seqs))
            self.metrics.batch_requests.observe(len(prepared))
            self.metrics.inference_seconds.labels(jobs[0].model).observe(time.perf_counter() - started)
        offset = 0
        for job, job_seqs in prepared:
            part = rows[offset : offset + len(job_seqs)]
            offset += len(job_seqs)
            try:
                job.future.set_result(job.finish(model, part))
            except Exception as exc:
                job.future.set_exception(exc)

    def close(self) -> None:
        """Finish what is queued and running, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
