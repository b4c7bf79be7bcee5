"""An embedding model: tokenizer + encoder or decoder stack + pooling (+ Dense modules), run through the batch
runner. The runner gives pooled vectors before normalisation: the runtime normalises on the host after a
Matryoshka cut, or not at all when a client asks for raw vectors (TEI's `normalize: false`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_serve.core.errors import InvalidRequest
from mlx_serve.core.types import Input, Truncation
from mlx_serve.engine.batching import BatchRunner, Seq, Stop
from mlx_serve.engine.pooling import pool
from mlx_serve.engine.st_layout import Layout, prompt_for
from mlx_serve.engine.tokenizer import TextTokenizer

# (ids, mask, padded) -> hidden states (B, L, D)
Forward = Callable[[mx.array, mx.array, bool], mx.array]


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, in input order
    token_counts: list[int]  # tokens each input used after truncation, special tokens included


class DenseLayer:
    """A sentence-transformers Dense module (run in float32, after pooling)."""

    def __init__(self, weight: mx.array, bias: mx.array | None, activation: str) -> None:
        self.weight_t = mx.contiguous(weight.astype(mx.float32).T)
        self.bias = None if bias is None else bias.astype(mx.float32)
        self.activation = activation

    @classmethod
    def load(cls, folder: Path, activation: str) -> DenseLayer:
        w = mx.load(str(folder / "model.safetensors"))
        return cls(w["linear.weight"], w.get("linear.bias"), activation)

    def __call__(self, x: mx.array) -> mx.array:
        x = x @ self.weight_t if self.bias is None else mx.addmm(self.bias, x, self.weight_t)
        return mx.tanh(x) if self.activation == "tanh" else x


class Embedder:
    """Vectors as the model's sentence-transformers files describe them (st_layout): pooling, Dense
    modules, normalisation, and the model's named prompts."""

    type = "embedding"

    def __init__(
        self,
        name: str,
        forward: Forward,
        tokenizer: TextTokenizer,
        layout: Layout,
        hidden_size: int,
        pad_id: int,
        arrays: Callable[[], list[mx.array]],
        streams: Sequence[mx.Stream] = (),
        query_template: str | None = None,
        default_instruction: str | None = None,
    ) -> None:
        self.name = name
        self.forward = forward
        self.tokenizer = tokenizer
        self.layout = layout
        self.dense = [DenseLayer.load(d.path, d.activation) for d in layout.dense]
        self.dimensions = layout.dimensions(hidden_size)
        self.query_template = query_template
        self.default_instruction = default_instruction
        self.arrays = arrays
        self.runner = BatchRunner(self._head, pad_id, "right", streams)

    @property
    def normalize(self) -> bool:
        return self.layout.normalize

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def streams(self) -> list[mx.Stream]:
        return self.runner.streams

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays()) + sum(d.weight_t.nbytes for d in self.dense)

    def _head(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        out = pool(self.forward(ids, mask, padded), mask, self.layout.pooling)  # type: ignore[arg-type]
        for dense in self.dense:
            out = dense(out)
        return out

    def apply_instruction(self, inputs: Sequence[Input], instruction: str | None) -> list[Input]:
        """Texts as the model card wants queries written, e.g. Qwen3's `Instruct: {task}\\nQuery:{text}`."""
        if not instruction:
            return list(inputs)
        if self.query_template is None:
            raise InvalidRequest(
                f"the model {self.name} takes no instruction", code="invalid_instruction", param="instruction"
            )
        return [
            self.query_template.format(instruction=instruction, text=x) if isinstance(x, str) else x for x in inputs
        ]

    def prompted(
        self,
        inputs: Sequence[Input],
        instruction: str | None = None,
        input_type: str | None = None,
        prompt_name: str | None = None,
    ) -> list[Input]:
        """Texts as the model wants them: with an instruction in the model's query format (Qwen3), or
        with the model's named prompt before them, as sentence-transformers' encode(prompt_name=...) does:
        `prompt_name`, else the prompt for `input_type`, else the model's default prompt."""
        if instruction or (self.query_template and input_type == "query" and prompt_name is None):
            return self.apply_instruction(inputs, instruction or self.default_instruction)
        prompt = prompt_for(self.layout, prompt_name, input_type)
        return [prompt + x if isinstance(x, str) else x for x in inputs] if prompt else list(inputs)

    def tokenize(
        self,
        inputs: Sequence[Input],
        instruction: str | None = None,
        truncate: bool | Truncation = True,
        input_type: str | None = None,
        prompt_name: str | None = None,
    ) -> list[Seq]:
        return self.tokenizer.encode(self.prompted(inputs, instruction, input_type, prompt_name), truncate)

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> np.ndarray:
        return self.runner.run(seqs, max_batch_tokens, stop, max_bytes)

    def embed(
        self,
        inputs: Sequence[Input],
        max_batch_tokens: int,
        instruction: str | None = None,
        truncate: bool = True,
        input_type: str | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """The vectors as sentence-transformers gives them (for tests and benchmarks, outside the scheduler)."""
        seqs = self.tokenize(inputs, instruction, truncate, input_type, prompt_name)
        rows = self.run(seqs, max_batch_tokens)
        return Embeddings(normalized(rows) if self.normalize else rows, [len(s) for s in seqs])


def normalized(vectors: np.ndarray) -> np.ndarray:
    """L2 normalisation in float32, with torch.nn.functional.normalize's epsilon (sentence-transformers')."""
    vectors = vectors.astype(np.float32, copy=False)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), np.float32(1e-12))


def truncate_dimensions(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """Matryoshka truncation: the first `dimensions` values, renormalised if the model normalises."""
    out = np.ascontiguousarray(vectors[:, :dimensions])
    return normalized(out) if normalize else out
