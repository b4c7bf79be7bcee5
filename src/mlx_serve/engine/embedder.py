"""An embedding model: tokenizer + encoder + pooling, run over length-sorted, token-budgeted batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_serve.engine.pooling import PoolingConfig, l2_normalize, pool
from mlx_serve.engine.tokenizer import Input, TextTokenizer

Forward = Callable[[mx.array, mx.array, bool], mx.array]


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, in input order
    token_counts: list[int]  # tokens each input used after truncation, special tokens included


class Embedder:
    def __init__(
        self,
        name: str,
        forward: Forward,
        tokenizer: TextTokenizer,
        pooling: PoolingConfig,
        dimensions: int,
        pad_id: int,
        arrays: Callable[[], list[mx.array]],
        streams: Sequence[mx.Stream] = (),
    ) -> None:
        self.name = name
        self.forward = forward
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.dimensions = dimensions
        self.pad_id = pad_id
        self._arrays = arrays
        self.streams = list(streams) or [mx.default_stream(mx.default_device())]

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays())

    def embed(self, inputs: Sequence[Input], max_batch_tokens: int) -> Embeddings:
        token_ids = self.tokenizer.encode(inputs)
        vectors = np.empty((len(token_ids), self.dimensions), dtype=np.float32)
        for batch in plan_batches([len(t) for t in token_ids], max_batch_tokens):
            vectors[batch] = self._run([token_ids[i] for i in batch])
        return Embeddings(vectors, [len(t) for t in token_ids])

    def _run(self, seqs: list[list[int]]) -> np.ndarray:
        """One batch, split across the streams: MLX runs each CPU stream on its own thread, so on a CPU the
        element-wise work (GELU, softmax, layer norm), which MLX does on one core, uses them all."""
        n = min(len(self.streams), len(seqs))
        bounds = [len(seqs) * i // n for i in range(n + 1)]
        outs = [
            self._forward(seqs[bounds[i] : bounds[i + 1]], self.streams[i])
            for i in range(n)
            if bounds[i] < bounds[i + 1]
        ]
        mx.eval(outs)
        return np.concatenate([np.array(o) for o in outs])

    def _forward(self, seqs: list[list[int]], stream: mx.Stream) -> mx.array:
        # Inputs arrive sorted by length, so each part pads only to its own longest member.
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(seqs), width), dtype=np.int32)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        with mx.stream(stream):
            lengths = mx.array([len(s) for s in seqs])
            mask_mx = mx.array(mask)
            padded = any(len(s) != width for s in seqs)
            hidden = self.forward(mx.array(ids), mask_mx, padded)
            out = pool(hidden, mask_mx, lengths, self.pooling.mode)
            if self.pooling.normalize:
                out = l2_normalize(out)
            return out.astype(mx.float32)


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group input indices into batches sorted by length, each at most `max_batch_tokens` once padded.

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


def truncate_dimensions(result: Embeddings, dimensions: int, normalize: bool) -> Embeddings:
    """Matryoshka truncation: the first `dimensions` values, renormalised if the model normalises."""
    vectors = np.ascontiguousarray(result.vectors[:, :dimensions])
    if normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return Embeddings(vectors, result.token_counts)
