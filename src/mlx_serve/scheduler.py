"""Dynamic batching: one inference thread owns all MLX work and merges concurrent requests.

Request threads submit jobs and wait on futures. The inference thread takes the oldest job, gathers every
other queued job for the same model, runs all their sequences together (sorted by length and split by
the token budget inside the engine), and hands each job its own rows. Many clients at once cost little
more than one; a large request may span several batches.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlx_serve.engine import Seq
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics

log = get_logger("mlx_serve.scheduler")


class QueueFull(RuntimeError):
    pass


@dataclass
class Job:
    model: str
    load: Callable[[], Any]  # the model object (cached by the runtime), loaded on this thread
    prepare: Callable[[Any], list[Seq]]  # tokenise: may raise a request error for this job alone
    finish: Callable[[Any, np.ndarray], Any]  # rows of this job -> the job's result
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class Scheduler:
    def __init__(self, max_batch_tokens: int, max_queued: int, metrics: Metrics) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_queued = max_queued
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="mlx-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} requests are already waiting")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the inference thread (model loads, preloads), in queue order."""
        return self.submit(Job("", load=lambda: None, prepare=lambda _: [], finish=lambda _m, _r: fn()))

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            if not first.model:
                return [first]
            same = [j for j in self._queue if j.model == first.model]
            for job in same:
                self._queue.remove(job)
            return [first, *same]

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip the timed-out
            if live:
                self._run(live)

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
