"""Turning token sequences into padded MLX batches: sorted by length, bounded by a token budget, split
across the inference streams."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import mlx.core as mx
import numpy as np

PaddingSide = Literal["right", "left"]
# (ids, type_ids, mask, padded) -> one output row per sequence, (B, ...)
Head = Callable[[mx.array, mx.array, mx.array, bool], mx.array]


@dataclass(frozen=True)
class Seq:
    ids: list[int]
    type_ids: list[int] | None = None  # segment ids of a sentence pair (cross-encoders)

    def __len__(self) -> int:
        return len(self.ids)


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group indices into batches sorted by length, each at most `max_batch_tokens` once padded.

    Sorting first means each batch pads to a length close to its members', so little compute is spent
    on padding; a single input longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the newcomer is the longest: the padded size is its length times the count.
        if current and lengths[i] * (len(current) + 1) > max_batch_tokens:
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
    def __init__(self, head: Head, pad_id: int, padding_side: PaddingSide, streams: Sequence[mx.Stream]) -> None:
        self.head = head
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.streams = list(streams) or [mx.default_stream(mx.default_device())]

    def run(self, seqs: Sequence[Seq], max_batch_tokens: int) -> np.ndarray:
        """One output row per sequence, in order."""
        out: np.ndarray | None = None
        for batch in plan_batches([len(s) for s in seqs], max_batch_tokens):
            rows = self._run([seqs[i] for i in batch])
            if out is None:
                out = np.empty((len(seqs), *rows.shape[1:]), dtype=np.float32)
            out[batch] = rows
        return out if out is not None else np.empty((0,), dtype=np.float32)

    def _run(self, seqs: list[Seq]) -> np.ndarray:
        """One batch, split across the streams: MLX runs each CPU stream on its own thread, so on a CPU
        the element-wise work (GELU, softmax, norms), which MLX does on one core, uses them all."""
        bounds = split_evenly([len(s) for s in seqs], len(self.streams))
        runs = pairwise(bounds)  # at most one run per stream
        outs = [self._forward(seqs[a:b], stream) for (a, b), stream in zip(runs, self.streams, strict=False)]
        mx.eval(outs)
        return np.concatenate([np.array(o) for o in outs])

    def _forward(self, seqs: list[Seq], stream: mx.Stream) -> mx.array:
        # Inputs arrive sorted by length, so each part pads only to its own longest member.
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int32)
        type_ids = np.zeros((len(seqs), width), dtype=np.int32)
        mask = np.zeros((len(seqs), width), dtype=np.int32)
        for row, seq in enumerate(seqs):
            span = slice(0, len(seq)) if self.padding_side == "right" else slice(width - len(seq), width)
            ids[row, span] = seq.ids
            mask[row, span] = 1
            if seq.type_ids is not None:
                type_ids[row, span] = seq.type_ids
        padded = any(len(s) != width for s in seqs)
        with mx.stream(stream):
            return self.head(mx.array(ids), mx.array(type_ids), mx.array(mask), padded).astype(mx.float32)
