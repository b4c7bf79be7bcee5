"""Turning token sequences into padded MLX batches: sorted by length, bounded by a token budget, split
across the inference streams, run back to back, and split again where a device runs out of memory.

On a GPU, batch shapes are rounded up to a small set of buckets (lengths and row counts): every new
shape costs new buffers, a new cuDNN attention graph and a new CUDA graph (each cached per shape), so a
server that sees texts of every length would otherwise keep building and caching them.

Memory: a batch's activations, not the weights, make the peak (on an H100 a Qwen3-0.6B server reached ten
times its weights under a burst). A runner given `max_bytes` measures what a padded token costs it (once,
at two widths: attention grows with the width) and keeps the batches in flight (two: the next is queued
before the last is read) within that many bytes, making batches smaller where they would not fit.
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
# (ids, type_ids, mask, padded) -> one output row per sequence, (B, ...); or a tuple of such outputs, some
# of them one row per token (B, L, ...): see BatchRunner's `per_token`.
Head = Callable[[mx.array, mx.array, mx.array, bool], mx.array | tuple[mx.array, ...]]
# What a runner gives: one row per sequence, stacked; or, for a head of several outputs, per sequence a
# tuple of them, the per-token ones cut to the sequence's own tokens (None for one that did not fit).
Rows = np.ndarray | list

LENGTH_BUCKETS = [
    *range(32, 257, 32),
    *range(320, 513, 64),
    *range(640, 1025, 128),
    *range(1280, 2049, 256),
    *range(2560, 4097, 512),
    *range(5120, 8193, 1024),
]
ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
# A run of at most this many tokens is never bounded by bytes (nor measured for it): its activations are
# small beside any bound, and measuring costs two batches.
SMALL_RUN = 2048
# Each batch within this share of a byte bound: a half lets two run back to back inside it.
BATCH_SHARE = 0.5


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


@dataclass(frozen=True)
class TokenCost:
    """Bytes a batch's activations take on the device, per padded token: `base + per_width * width` (the
    attention scores grow with the width). Measured by BatchRunner.measure."""

    base: float
    per_width: float

    def __call__(self, rows: int, width: int) -> float:
        return rows * width * (self.base + self.per_width * width)


class PeakMemory:
    """MLX's peak counter, which measuring a batch resets: the highest value it had before any reset is
    kept here, so that "the peak since start" (/health, /metrics) survives the measurement."""

    def __init__(self) -> None:
        self.before_resets = 0

    def measure(self, fn: Callable[[], object]) -> int:
        """Bytes above the active memory of the moment that `fn` needed at its peak."""
        self.before_resets = max(self.before_resets, mx.get_peak_memory())
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        fn()
        return max(0, mx.get_peak_memory() - base)

    def since_start(self) -> int:
        return max(self.before_resets, mx.get_peak_memory())


PEAK = PeakMemory()  # MLX's counter is the process's: so is this, its memory


def finite_rows(rows: Rows) -> np.ndarray:
    """Whether each row holds only finite values (a row that did not fit counts as finite)."""
    if isinstance(rows, np.ndarray):
        return np.isfinite(rows.reshape(len(rows), -1)).all(axis=1) if len(rows) else np.ones(0, bool)
    return np.array([row is None or all(np.isfinite(part).all() for part in row) for row in rows], dtype=bool)


def is_out_of_memory(exc: BaseException) -> bool:
    """MLX reports a failed device allocation as a RuntimeError (CUDA: cudaMallocAsync ... out of memory;
    Metal: [METAL] Command buffer execution failed: Insufficient Memory)."""
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or "insufficient memory" in text)


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    buckets: bool = False,
    fits: Callable[[int, int], bool] | None = None,
) -> list[list[int]]:
    """Group indices into batches sorted by length, each at most `max_batch_tokens` once padded (and,
    given `fits(rows, width)`, each that it accepts).

    Sorting first means each batch pads to a length close to its members', so little compute is spent
    on padding; a single input longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the newcomer is the longest: the padded size is its length times the count.
        width = bucket(lengths[i], LENGTH_BUCKETS) if buckets else lengths[i]
        rows = len(current) + 1
        if current and (width * rows > max_batch_tokens or (fits is not None and not fits(rows, width))):
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
        per_token: tuple[bool, ...] | None = None,
    ) -> None:
        """`per_token`: the head returns a tuple of outputs, and these of them have a row per token (cut
        to each sequence's length; right padding only)."""
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
        assert per_token is None or padding_side == "right"
        self.per_token = per_token
        self.cost: TokenCost | None = None  # measured on the first run given max_bytes
        self.cost_width = 0  # the width it was measured at
        self.inflight_bytes = 0  # the estimated activations of the batches queued and not yet read

    def measure(self, width: int, tokens: int = 512) -> TokenCost:
        """What a padded token costs this model's activations, from one batch of about `tokens` tokens at
        `width` (the longest input the model has been given, which its maximum length bounds) and one at a
        quarter of it, fitted as base + per_width * width. It also builds those shapes."""
        widths = (max(1, width // 4), max(1, width))
        spent = []
        for w in widths:
            rows = max(1, tokens // w)
            batch = [Seq([self.pad_id] * w) for _ in range(rows)]
            used = PEAK.measure(lambda b=batch: self._rows(b, self._launch(b)))
            spent.append(used / (rows * w))
        per_width = max(0.0, (spent[1] - spent[0]) / (widths[1] - widths[0])) if widths[1] - widths[0] >= 16 else 0.0
        self.cost = TokenCost(max(1.0, spent[1] - per_width * widths[1]), per_width)
        self.cost_width = widths[1]
        return self.cost

    def shapes(self, max_batch_tokens: int, max_length: int) -> list[tuple[int, int]]:
        """The (rows, width) shapes this runner's batches can take (bucketed, within the token budget and
        the model's maximum length), shortest first: each is built on first sight, so a server warms them
        after loading a model (`warm`) rather than on a request's time. None without buckets (a CPU)."""
        if not self.buckets:
            return []
        longest = bucket(max_length, LENGTH_BUCKETS)
        out = []
        for width in (w for w in LENGTH_BUCKETS if w <= longest):
            most = bucket(max(1, max_batch_tokens // width), ROW_BUCKETS)
            out += [(rows, width) for rows in ROW_BUCKETS if rows <= most]
        return out

    def warm(self, rows: int, width: int, max_bytes: int | None = None) -> bool:
        """Build and run one shape as a padded batch (inputs one token short of the width) gives it; not
        one that `max_bytes` would never let a run launch (run's `fits`), nor, under a bound, a large one
        whose cost is not known yet: measuring it takes what a request that long takes (on the H100, warming
        that measured up to 8192-token widths raised Qwen3-0.6B's peak from 2.1 to 4.4 GB). Whether built."""
        unknown = self.cost is None or width > 2 * self.cost_width
        if (
            max_bytes is not None
            and rows * width > SMALL_RUN
            and (unknown or self.cost(rows, width) > max_bytes * BATCH_SHARE)
        ):
            return False
        batch = [Seq([self.pad_id] * max(1, width - 1)) for _ in range(rows)]
        self._rows(batch, self._launch(batch))
        return True

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> Rows:
        """One output row per sequence, in order (see Rows). Raises OutOfMemory (with every other row) when some
        sequences did not fit in device memory even alone, and Stopped when `stop()` says so before a batch.

        Batches run back to back: the next batch's arrays are built and queued (mx.async_eval) before the
        previous one's results are read, so a GPU never waits for Python between batches. With
        `max_bytes` (on a CPU; a GPU is held to its bound by MLX's memory limit, serving/memory.throttles), the two
        in flight stay within it (each batch within half)."""
        fits = None
        if max_bytes is not None and sum(len(s) for s in seqs) > SMALL_RUN:
            width = max(len(s) for s in seqs)
            # Measured once, and again for inputs over twice as long as those measured (a few times at
            # most: the model's maximum length bounds them), since attention grows with the width.
            cost = self.cost
            if cost is None or width > 2 * self.cost_width:
                try:
                    cost = self.measure(width)
                except Exception as exc:  # the device is full: run as before, splitting what does not fit
                    if not is_out_of_memory(exc):
                        raise
                    mx.clear_cache()
            if cost is not None:  # as _bytes counts a batch: its width arrives bucketed, its rows too
                fits = lambda rows, width: (  # noqa: E731
                    cost(bucket(rows, ROW_BUCKETS) if self.buckets else rows, width) <= max_bytes * BATCH_SHARE
                )
        batches = plan_batches([len(s) for s in seqs], max_batch_tokens, self.buckets, fits)
        sizes = {id(b): self._bytes(seqs, b) for b in batches}
        out: Rows = np.empty((0,), dtype=np.float32) if self.per_token is None else [None] * len(seqs)
        failed: set[int] = set()
        in_flight: tuple[list[int], list[mx.array]] | None = None

        def read(flight: tuple[list[int], list[mx.array]]) -> None:
            nonlocal out
            done, outs = flight
            rows, lost = self._collect([seqs[i] for i in done], outs)
            self.inflight_bytes = max(0, self.inflight_bytes - sizes[id(done)])
            if isinstance(out, list):
                for k, i in enumerate(done):
                    out[i] = rows[k]
            else:
                if out.shape[0] != len(seqs):
                    out = np.zeros((len(seqs), *rows.shape[1:]), dtype=np.float32)
                out[done] = rows
            failed.update(done[i] for i in lost)

        try:
            for batch in batches:
                if stop is not None and stop():
                    raise Stopped(f"stopped with {len(batches)} batches planned")
                if (
                    in_flight is not None
                    and max_bytes is not None
                    and self.inflight_bytes + sizes[id(batch)] > max_bytes
                ):
                    read(in_flight)  # both would not fit at once (an input longer than the others): one by one
                    in_flight = None
                try:
                    launched = (batch, self._launch([seqs[i] for i in batch]))
                    self.inflight_bytes += sizes[id(batch)]
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    launched = (batch, [])  # run it again below, split
                if in_flight is not None:
                    read(in_flight)
                in_flight = launched
            if in_flight is not None:
                read(in_flight)
        finally:
            self.inflight_bytes = 0
        if failed:
            raise OutOfMemory(failed, out)
        return out

    def _bytes(self, seqs: Sequence[Seq], batch: list[int]) -> int:
        if self.cost is None:
            return 0
        width = max(len(seqs[i]) for i in batch)
        rows = len(batch)
        if self.buckets:
            width, rows = bucket(width, LENGTH_BUCKETS), bucket(rows, ROW_BUCKETS)
        return int(self.cost(rows, width))

    def _rows(self, seqs: list[Seq], outs: list) -> Rows:
        """A launched batch's outputs read back: one row per sequence (see Rows)."""
        if self.per_token is None:
            return np.concatenate([np.array(o) for o in outs])
        rows: list = []
        for part in outs:
            arrays = [np.array(o) for o in part]
            for r in range(arrays[0].shape[0]):
                n = len(seqs[len(rows)])
                rows.append(tuple(a[r, :n] if tok else a[r] for a, tok in zip(arrays, self.per_token, strict=True)))
        return rows

    def _collect(self, seqs: list[Seq], outs: list) -> tuple[Rows, set[int]]:
        """The rows of a launched batch; on out-of-memory, the batch again in halves, down to one sequence."""
        try:
            if not outs:
                raise MemoryError("out of memory")  # the launch itself ran out of memory
            return self._rows(seqs, outs), set()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        del outs
        mx.clear_cache()  # give back what the failed batch held before trying smaller ones
        if len(seqs) == 1:
            if self.per_token is not None:
                return [None], {0}
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
        if self.per_token is not None:
            return parts[0] + parts[1], lost
        return np.concatenate(parts), lost

    def _row_shape(self) -> tuple[int, ...]:
        probe = self._launch([Seq([self.pad_id])])
        return tuple(np.array(probe[0]).shape[1:])

    def _launch(self, seqs: list[Seq]) -> list:
        """One batch, split across the streams and queued: MLX runs each CPU stream on its own thread, so
        on a CPU the element-wise work (GELU, softmax, norms), which MLX does on one core, uses them all."""
        bounds = split_evenly([len(s) for s in seqs], len(self.streams))
        runs = pairwise(bounds)  # at most one run per stream
        outs = [self._forward(seqs[a:b], stream) for (a, b), stream in zip(runs, self.streams, strict=False)]
        mx.async_eval(outs)
        return outs

    def _forward(self, seqs: list[Seq], stream: mx.Stream) -> mx.array | tuple[mx.array, ...]:
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
            out = self.head(mx.array(ids), mx.array(type_ids), mx.array(mask), padded)
            if isinstance(out, tuple):
                return tuple(o.astype(mx.float32)[: len(seqs)] for o in out)
            out = out.astype(mx.float32)
        return out[: len(seqs)] if rows != len(seqs) else out


class RunnerModel:
    """What a model that runs through a BatchRunner shares (embedders, rerankers, classifiers): its name, tokenizer,
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
