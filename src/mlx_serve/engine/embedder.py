"""An embedding model: tokenizer + encoder or decoder stack + pooling, run through the batch runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_serve.engine.batching import BatchRunner, Seq
from mlx_serve.engine.pooling import PoolingConfig, l2_normalize, pool
from mlx_serve.engine.tokenizer import Input, TextTokenizer, Truncation

# (ids, mask, padded) -> hidden states (B, L, D)
Forward = Callable[[mx.array, mx.array, bool], mx.array]


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, in input order
    token_counts: list[int]  # tokens each input used after truncation, special tokens included


class Embedder:
    type = "embedding"

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
        query_template: str | None = None,
        default_instruction: str | None = None,
    ) -> None:
        self.name = name
        self.forward = forward
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.dimensions = dimensions
        self.query_template = query_template
        self.default_instruction = default_instruction
        self._arrays = arrays
        self.runner = BatchRunner(self._head, pad_id, "right", streams)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def streams(self) -> list[mx.Stream]:
        return self.runner.streams

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays())

    def _head(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        out = pool(self.forward(ids, mask, padded), mask, self.pooling.mode)
        return l2_normalize(out) if self.pooling.normalize else out

    def apply_instruction(self, inputs: Sequence[Input], instruction: str | None) -> list[Input]:
        """Texts as the model card wants queries written, e.g. Qwen3's `Instruct: {task}\\nQuery:{text}`."""
        if not instruction:
            return list(inputs)
        if self.query_template is None:
            raise ValueError(f"the model {self.name} takes no instruction")
        return [
            self.query_template.format(instruction=instruction, text=x) if isinstance(x, str) else x for x in inputs
        ]

    def tokenize(
        self, inputs: Sequence[Input], instruction: str | None = None, truncate: bool | Truncation = True
    ) -> list[Seq]:
        return self.tokenizer.encode(self.apply_instruction(inputs, instruction), truncate)

    def run(self, seqs: Sequence[Seq], max_batch_tokens: int) -> np.ndarray:
        return self.runner.run(seqs, max_batch_tokens)

    def embed(
        self, inputs: Sequence[Input], max_batch_tokens: int, instruction: str | None = None, truncate: bool = True
    ) -> Embeddings:
        seqs = self.tokenize(inputs, instruction, truncate)
        return Embeddings(self.run(seqs, max_batch_tokens), [len(s) for s in seqs])


def truncate_dimensions(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """Matryoshka truncation: the first `dimensions` values, renormalised if the model normalises."""
    out = np.ascontiguousarray(vectors[:, :dimensions])
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
