"""Dynamic batching: one inference thread owns all MLX work and merges concurrent requests.

Request threads tokenize their inputs themselves (the Rust tokenizer releases the GIL, so they do it in
parallel), submit a job of token sequences and wait on its future. The inference thread takes the oldest
job, gathers every other queued job for the same loaded model, runs all their sequences together (sorted
by length and split by the token budget inside the engine), and hands each job its own rows, which the
request thread turns into its answer. So the inference thread does little but keep the device busy;
many clients at once cost little more than one; a large request may span several batches.

Control jobs (loading, unloading, preloading models) are a queue of their own: they run before the next
batch and never count against the request queue's limit, so housekeeping can never turn requests away.
Background work (building a loaded model's batch shapes) runs only when nothing else waits, one small
piece at a time, so it never delays a request by more than one piece.
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

from mlx_serve.core.errors import ClientClosed, NumericalOverflow, Overloaded
from mlx_serve.core.errors import OutOfMemory as DeviceOutOfMemory
from mlx_serve.engine.batching import OutOfMemory, Rows, Stop, Stopped, finite_rows
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics

if TYPE_CHECKING:
    from mlx_serve.engine import Seq

log = get_logger("mlx_serve.serving.scheduler")


def overflowed(index: int, widened: bool) -> NumericalOverflow:
    """One of a job's sequences gave NaN or infinite values: never served as numbers."""
    again = ", even computed again in float32" if widened else ""
    return NumericalOverflow(
        f"gave NaN or infinite values{again}: the model overflows on it (or its weights are not finite), "
        "so no answer is served",
        index=index,
    )


def too_large(index: int) -> DeviceOutOfMemory:
    """One of a job's sequences (its own index) did not fit in the device's memory even alone."""
    return DeviceOutOfMemory(
        "does not fit in the device's memory, even alone; shorten it (or lower max_batch_tokens if this "
        "happens with other requests too)",
        index=index,
    )


class BatchModel(Protocol):
    """What the inference thread needs of a loaded model: token sequences in, one row each out."""

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> Rows: ...


@dataclass(eq=False)
class Job:
    """One request's token sequences. Jobs of the same `group` (one loaded model, and the outputs asked of
    it) are merged into batches; the future's result is the job's rows, in order."""

    model: str  # the model's name, for metrics and logs
    group: Hashable
    runner: BatchModel
    seqs: list[Seq]
    # The same model in float32 (loaded on first call), for rows that overflow in half precision; None
    # when the model already runs in float32 or cannot (a quantized one).
    widen: Callable[[], BatchModel] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    # Set by the request thread when its client has gone: a run whose jobs all have it stops between
    # batches, and a job taken from the queue with it never runs.
    abandoned: bool = False


@dataclass(eq=False)
class ControlJob:
    """Work that must run on the inference thread but is no request: loads, unloads, preloads."""

    run: Callable[[], Any]
    future: Future = field(default_factory=Future)
    background: bool = False  # a piece of background work: nobody waits on it


def inflight_of(model: object) -> int:
    """A loaded model's in-flight bytes: every model runs through its `runner` (engine/batching.py)."""
    return int(getattr(getattr(model, "runner", None), "inflight_bytes", 0))


class Scheduler:
    def __init__(
        self,
        max_batch_tokens: int,
        max_queued: int,
        metrics: Metrics,
        on_idle: Callable[[], None] | None = None,
        idle_after: float = 2.0,
        max_inflight_bytes: int | None = None,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        # The activations of the batches on the device at once (engine/batching.py keeps them within it).
        self.max_inflight_bytes = max_inflight_bytes
        self._running: BatchModel | None = None
        self.max_queued = max_queued
        self.metrics = metrics
        # Run once on this thread when no batch has come for `idle_after` seconds since the last one
        # (the runtime gives MLX's buffer cache back there).
        self.on_idle = on_idle
        self.idle_after = idle_after
        self._ran_since_idle = False
        self._requests: deque[Job] = deque()
        self._control: deque[ControlJob] = deque()
        self._background: deque[Callable[[], Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="mlx-inference", daemon=True)
        self._thread.start()

    @property
    def inflight_bytes(self) -> int:
        """The estimated activations of the batches on the device now (0 between runs)."""
        return inflight_of(self._running)

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closing:
                raise Overloaded("The server is shutting down.")
            if len(self._requests) >= self.max_queued:
                raise Overloaded(
                    f"The server is busy: {len(self._requests)} requests are already waiting. Retry later."
                )
            self._requests.append(job)
            self._cond.notify()
        return job.future

    def control(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the inference thread before the next batch; never refused for a full queue."""
        job = ControlJob(fn)
        with self._cond:
            if self._closing:
                raise Overloaded("The server is shutting down.")
            self._control.append(job)
            self._cond.notify()
        return job.future

    def background(self, pieces: Sequence[Callable[[], Any]]) -> None:
        """Run these, in order, whenever no request and no control job waits. Their failures are logged."""
        with self._cond:
            self._background.extend(pieces)
            self._cond.notify()

    def background_pending(self) -> int:
        with self._cond:
            return len(self._background)

    def queued(self) -> tuple[int, int]:
        """Requests and control jobs waiting for the inference thread."""
        with self._cond:
            return len(self._requests), len(self._control)

    def _take(self) -> ControlJob | list[Job] | None:
        with self._cond:
            while not self._requests and not self._control and not self._closing:
                if self._background:
                    # Its buffers go to MLX's cache as a batch's do: given back once idle, as theirs are.
                    self._ran_since_idle = True
                    return ControlJob(self._background.popleft(), background=True)
                if self._ran_since_idle and self.on_idle is not None:
                    if not self._cond.wait(self.idle_after):
                        self._ran_since_idle = False
                        return ControlJob(self.on_idle)
                else:
                    self._cond.wait()
            if self._control:
                return self._control.popleft()
            if not self._requests:
                return None
            first = self._requests.popleft()
            same = [j for j in self._requests if j.group == first.group]
            for job in same:
                self._requests.remove(job)
            self._ran_since_idle = True
            return [first, *same]

    def _loop(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        """Take and run one piece of work; False once closed. (A method of its own, so that nothing of the
        last job, such as an unloaded model, stays referenced while the thread waits for the next.)"""
        work = self._take()
        if work is None:
            return False
        try:
            if isinstance(work, ControlJob):
                self._run_control(work)
            else:
                # Skip the timed-out and those whose client has gone (a cancelled future).
                live = [j for j in work if j.future.set_running_or_notify_cancel()]
                if live:
                    self._run(live)
        except Exception:  # never reached by design; the thread that owns MLX must not die of a bug
            log.exception("inference_thread_error")
        return True

    @staticmethod
    def _run_control(job: ControlJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.run())
        except Exception as exc:
            if job.background:
                log.warning("background_work_failed", error=str(exc)[:200])
            job.future.set_exception(exc)

    def _run(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        for job in jobs:
            self.metrics.queue_wait.observe(started - job.enqueued)
        seqs = [s for job in jobs for s in job.seqs]
        failed: set[int] = set()
        self._running = jobs[0].runner
        try:
            rows = jobs[0].runner.run(
                seqs, self.max_batch_tokens, lambda: all(j.abandoned for j in jobs), self.max_inflight_bytes
            )
        except Stopped:
            log.info("run_abandoned", model=jobs[0].model, inputs=len(seqs))
            for job in jobs:
                job.future.set_exception(ClientClosed("the client went away"))
            return
        except OutOfMemory as exc:  # every other sequence has its row: only their jobs fail
            rows, failed = exc.rows, exc.failed
            log.warning("out_of_memory", model=jobs[0].model, inputs=len(failed), batch=len(seqs))
        except Exception as exc:
            log.exception("inference_failed", model=jobs[0].model)
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            self._running = None
        overflowing = self._recompute(jobs[0], seqs, rows, failed)
        self.metrics.batch_size.observe(len(seqs))
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.inference_seconds.labels(jobs[0].model).observe(time.perf_counter() - started)
        offset = 0
        for job in jobs:
            span = range(offset, offset + len(job.seqs))
            offset += len(job.seqs)
            lost = [i - span.start for i in span if i in failed]
            bad = [i - span.start for i in span if i in overflowing]
            if lost:
                job.future.set_exception(too_large(lost[0]))
            elif bad:
                job.future.set_exception(overflowed(bad[0], job.widen is not None))
            else:
                job.future.set_result(rows[span.start : span.stop])

    def _recompute(self, job: Job, seqs: list[Seq], rows: Rows, failed: set[int]) -> set[int]:
        """Rows with NaN or inf run again in float32 (in place in `rows`); those still not finite.

        Half precision overflows past 65504 (float16) where float32 does not: a model trained in float32
        may have activations that large. Checked as the rows are read back, before any answer is built."""
        bad = [int(i) for i in np.flatnonzero(~finite_rows(rows)) if int(i) not in failed]
        if not bad:
            return set()
        if job.widen is not None:
            try:
                again = job.widen().run([seqs[i] for i in bad], self.max_batch_tokens, None, self.max_inflight_bytes)
                for k, i in enumerate(bad):
                    rows[i] = again[k]
            except Exception:  # out of memory for the float32 copy, or a bug: these rows fail alone
                log.exception("float32_recompute_failed", model=job.model)
        still = {i for i, ok in zip(bad, finite_rows([rows[i] for i in bad]), strict=True) if not ok}
        log.warning("numerical_overflow", model=job.model, inputs=len(bad), recomputed=len(bad) - len(still))
        if len(bad) > len(still):
            self.metrics.numerical_overflows.labels(job.model, "recomputed").inc(len(bad) - len(still))
        if still:
            self.metrics.numerical_overflows.labels(job.model, "failed").inc(len(still))
        return still

    def close(self) -> None:
        """Finish what is queued and running, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
