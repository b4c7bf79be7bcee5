"""Turning token sequences into padded MLX batches: sorted by length, bounded by a token budget, split
across the inference streams, run back to back, and split again where a device runs out of memory.

On a GPU, batch shapes are rounded up to a small set of buckets (lengths and row counts): every new
shape costs new buffers, a new cuDNN attention graph and a new CUDA graph (each cached per shape), so a
server that sees texts of every length would otherwise keep building and caching them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

import mlx.core as mx
import numpy as np

if TYPE_CHECKING:
    from mlx_serve.engine.tokenizer import TextTokenizer

PaddingSide = Literal["right", "left"]
# (ids, type_ids, mask, padded) -> one output row per sequence, (B, ...)
Head = Callable[[mx.array, mx.array, mx.array, bool], mx.array]

LENGTH_BUCKETS = [
    *range(32, 257, 32),
    *range(320, 513, 64),
    *range(640, 1025, 128),
    *range(1280, 2049, 256),
    *range(2560, 4097, 512),
    *range(5120, 8193, 1024),
]
ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def bucket(value: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `value` (or `value` itself, past the largest)."""
    i = bisect.bisect_left(buckets, value)
    return buckets[i] if i < len(buckets) else value


@dataclass(frozen=True)
class Seq:
    ids: list[int]
    type_ids: list[int] | None = None  # segment ids of a sentence pair (cross-encoders)

    def __len__(self) -> int:
        return len(self.ids)


class OutOfMemory(RuntimeError):
    """Some sequences did not fit in device memory even alone. `rows` holds every other sequence's row."""

    def __init__(self, failed: set[int], rows: np.ndarray) -> None:
        super().__init__(f"{len(failed)} input(s) did not fit in the device's memory, even alone")
        self.failed = failed
        self.rows = rows


class Stopped(RuntimeError):
    """`stop()` said to stop between two batches: every client of the run has gone."""


Stop = Callable[[], bool]  # asked between batches: True to stop the run (raises Stopped)


def is_out_of_memory(exc: BaseException) -> bool:
    """MLX reports a failed device allocation as a RuntimeError (CUDA: cudaMallocAsync ... out of memory;
    Metal: [METAL] Command buffer execution failed: Insufficient Memory)."""
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or "insufficient memory" in text)


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, buckets: bool = False) -> list[list[int]]:
    """Group indices into batches sorted by length, each at most `max_batch_tokens` once padded.

    Sorting first means each batch pads to a length close to its members', so little compute is spent
    on padding; a single input longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the newcomer is the longest: the padded size is its length times the count.
        width = bucket(lengths[i], LENGTH_BUCKETS) if buckets else lengths[i]
        if current and width * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def split_evenly(lengths: Sequence[int], parts: int) -> list[int]:
    """Bounds that cut ascending `lengths` into at most `parts` runs, one per stream, with padded sizes
    (longest x count) as even as possible: the slowest stream sets the batch's time. Equal counts
    would give the longer half all the long inputs (7 short texts against 8 long ones: 126 against 176
    padded tokens in a 15-text batch)."""
    n, parts = len(lengths), max(1, min(parts, len(lengths)))

    def cuts(cap: int) -> list[int]:
        # From the longest down, each run takes as many inputs as fit in `cap` padded tokens.
        bounds, end = [n], n
        while end > 0:
            end = max(0, end - max(1, cap // max(1, lengths[end - 1])))
            bounds.append(end)
        return bounds[::-1]

    low, high = max(lengths, default=1), max(lengths, default=1) * max(n, 1)
    while low < high:  # the smallest cap that needs no more than `parts` runs
        mid = (low + high) // 2
        if len(cuts(mid)) - 1 <= parts:
            high = mid
        else:
            low = mid + 1
    return cuts(low)


class BatchRunner:
    def __init__(
        self,
        head: Head,
        pad_id: int,
        padding_side: PaddingSide,
        streams: Sequence[mx.Stream],
        buckets: bool | None = None,
        compiled: bool | None = None,
    ) -> None:
        gpu = mx.default_device() == mx.gpu
        # On a GPU the whole head is one compiled function: the Python that builds a batch's graph (some
        # 150 operations for MiniLM) runs once per shape instead of once per batch, and element-wise work
        # is fused into fewer kernels to launch. Buckets keep the shapes, and so the traces, few. (On a
        # CPU, compiling the whole forward pass was slower: its kernels are compiled one by one there.)
        self.head = mx.compile(head) if (gpu if compiled is None else compiled) else head
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.streams = list(streams) or [mx.default_stream(mx.default_device())]
        self.buckets = gpu if buckets is None else buckets

    def run(self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None) -> np.ndarray:
        """One output row per sequence, in order. Raises OutOfMemory (with every other row) when some
        sequences did not fit in device memory even alone, and Stopped when `stop()` says so before a batch.

        Batches run back to back: the next batch's arrays are built and queued (mx.async_eval) before the
        previous one's results are read, so a GPU never waits for Python between batches."""
        batches = plan_batches([len(s) for s in seqs], max_batch_tokens, self.buckets)
        out: np.ndarray | None = None
        failed: set[int] = set()
        in_flight: tuple[list[int], list[mx.array]] | None = None
        for batch in [*batches, None]:
            launched = None
            if batch is not None and stop is not None and stop():
                raise Stopped(f"stopped with {len(batches)} batches planned")
            if batch is not None:
                try:
                    launched = (batch, self._launch([seqs[i] for i in batch]))
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    launched = (batch, [])  # run it again below, split
            if in_flight is not None:
                done, outs = in_flight
                rows, lost = self._collect([seqs[i] for i in done], outs)
                if out is None:
                    out = np.zeros((len(seqs), *rows.shape[1:]), dtype=np.float32)
                out[done] = rows
                failed.update(done[i] for i in lost)
            in_flight = launched
        if out is None:
            out = np.empty((0,), dtype=np.float32)
        if failed:
            raise OutOfMemory(failed, out)
        return out

    def _collect(self, seqs: list[Seq], outs: list[mx.array]) -> tuple[np.ndarray, set[int]]:
        """The rows of a launched batch; on out-of-memory, the batch again in halves, down to one sequence."""
        try:
            if not outs:
                raise MemoryError("out of memory")  # the launch itself ran out of memory
            return np.concatenate([np.array(o) for o in outs]), set()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        del outs
        mx.clear_cache()  # give back what the failed batch held before trying smaller ones
        if len(seqs) == 1:
            return np.zeros((1, *self._row_shape()), dtype=np.float32), {0}
        half = len(seqs) // 2
        parts = []
        lost: set[int] = set()
        for offset, part in ((0, seqs[:half]), (half, seqs[half:])):
            try:
                outs = self._launch(part)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                outs = []
            rows, part_lost = self._collect(part, outs)
            parts.append(rows)
            lost.update(offset + i for i in part_lost)
        return np.concatenate(parts), lost

    def _row_shape(self) -> tuple[int, ...]:
        probe = self._launch([Seq([self.pad_id])])
        return tuple(np.array(probe[0]).shape[1:])

    def _launch(self, seqs: list[Seq]) -> list[mx.array]:
        """One batch, split across the streams and queued: MLX runs each CPU stream on its own thread, so
        on a CPU the element-wise work (GELU, softmax, norms), which MLX does on one core, uses them all."""
        bounds = split_evenly([len(s) for s in seqs], len(self.streams))
        runs = pairwise(bounds)  # at most one run per stream
        outs = [self._forward(seqs[a:b], stream) for (a, b), stream in zip(runs, self.streams, strict=False)]
        mx.async_eval(outs)
        return outs

    def _forward(self, seqs: list[Seq], stream: mx.Stream) -> mx.array:
        # Inputs arrive sorted by length, so each part pads only to its own longest member.
        width = max(len(s) for s in seqs)
        rows = len(seqs)
        if self.buckets:
            width, rows = bucket(width, LENGTH_BUCKETS), bucket(rows, ROW_BUCKETS)
        ids = np.full((rows, width), self.pad_id, dtype=np.int32)
        type_ids = np.zeros((rows, width), dtype=np.int32)
        mask = np.zeros((rows, width), dtype=np.int32)
        mask[len(seqs) :, 0 if self.padding_side == "right" else -1] = 1  # filler rows: one token each
        for row, seq in enumerate(seqs):
            span = slice(0, len(seq)) if self.padding_side == "right" else slice(width - len(seq), width)
            ids[row, span] = seq.ids
            mask[row, span] = 1
            if seq.type_ids is not None:
                type_ids[row, span] = seq.type_ids
        padded = rows != len(seqs) or any(len(s) != width for s in seqs)
        with mx.stream(stream):
            out = self.head(mx.array(ids), mx.array(type_ids), mx.array(mask), padded).astype(mx.float32)
        return out[: len(seqs)] if rows != len(seqs) else out


class RunnerModel:
    """What a model that runs through a BatchRunner shares (rerankers, classifiers): its name, tokenizer,
    runner and weights (`arrays`, for its size)."""

    def __init__(
        self, name: str, tokenizer: TextTokenizer, runner: BatchRunner, arrays: Callable[[], list[mx.array]]
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.runner = runner
        self.arrays = arrays

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def streams(self) -> list[mx.Stream]:
        return self.runner.streams

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())
