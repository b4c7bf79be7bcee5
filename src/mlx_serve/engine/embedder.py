"""An embedding model: tokenizer + encoder or decoder stack + pooling (+ Dense modules), run through the batch
runner. The runner gives pooled vectors before normalisation: the runtime normalises on the host after a
Matryoshka cut, or not at all when a client asks for raw vectors (TEI's `normalize: false`).

Its outputs (core/types.py): a dense vector; or a SPLADE model's sparse vector (its only output); or, for
a model with BGE-M3's heads beside its weights, a dense vector, a sparse one and a vector per token, any of
them in one run (`view`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_serve.core.errors import InvalidRequest
from mlx_serve.core.types import OUTPUTS, Input, Output, Truncation
from mlx_serve.engine import multivector, sparse
from mlx_serve.engine.batching import BatchRunner, Rows, RunnerModel, Seq, Stop
from mlx_serve.engine.pooling import pool
from mlx_serve.engine.st_layout import Layout, prompt_for
from mlx_serve.engine.tokenizer import TextTokenizer

# (ids, mask, padded) -> hidden states (B, L, D)
Forward = Callable[[mx.array, mx.array, bool], mx.array]
# hidden states (B, L, D) -> a masked-LM's logits (B, L, vocabulary)
Logits = Callable[[mx.array], mx.array]


@dataclass(frozen=True)
class TokenHeads:
    """BGE-M3's heads beside its weights, in float32, each as (weight transposed, bias): `sparse` is
    sparse_linear (D -> 1), `colbert` is colbert_linear (D -> D'). `unused` are the token ids the sparse
    output drops (cls, eos, pad, unk)."""

    sparse: tuple[mx.array, mx.array] | None = None
    colbert: tuple[mx.array, mx.array] | None = None
    unused: frozenset[int] = frozenset()

    def arrays(self) -> list[mx.array]:
        return [a for head in (self.sparse, self.colbert) if head is not None for a in head]


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


class Embedder(RunnerModel):
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
        logits: Logits | None = None,
        token_heads: TokenHeads | None = None,
        vocabulary: int = 0,
    ) -> None:
        """`logits`: the masked-LM head a SPLADE layout pools; `token_heads`: BGE-M3's."""
        self.forward = forward
        self.layout = layout
        self.dense = [DenseLayer.load(d.path, d.activation) for d in layout.dense]
        self.logits = logits
        self.token_heads = token_heads or TokenHeads()
        if layout.splade is not None:
            if logits is None:
                raise ValueError("a SPLADE layout needs the model's masked-LM head")
            self.outputs: tuple[Output, ...] = ("sparse",)
            self.dimensions = vocabulary  # the sparse vectors' space
        else:
            heads = self.token_heads
            self.outputs = tuple(
                o for o in OUTPUTS if o == "dense" or (heads.sparse if o == "sparse" else heads.colbert) is not None
            )
            self.dimensions = layout.dimensions(hidden_size)
        self.query_template = query_template
        self.default_instruction = default_instruction
        self.pad_id = pad_id
        runner = BatchRunner(self._splade if layout.splade else self._head, pad_id, "right", streams)
        super().__init__(name, tokenizer, runner, arrays)
        self._views: dict[tuple[Output, ...], OutputView] = {}

    @property
    def normalize(self) -> bool:
        return self.layout.normalize

    def nbytes(self) -> int:
        dense = sum(d.weight_t.nbytes for d in self.dense)
        return sum(a.nbytes for a in self.arrays()) + dense + sum(a.nbytes for a in self.token_heads.arrays())

    def _pooled(self, hidden: mx.array, mask: mx.array) -> mx.array:
        out = pool(hidden, mask, self.layout.pooling)  # type: ignore[arg-type]
        for dense in self.dense:
            out = dense(out)
        return out

    def _head(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        return self._pooled(self.forward(ids, mask, padded), mask)

    def _splade(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        assert self.logits is not None and self.layout.splade is not None
        return sparse.splade_pool(self.forward(ids, mask, padded), mask, self.logits, self.layout.splade)

    def view(self, outputs: Sequence[Output]) -> Embedder | OutputView:
        """What runs to give `outputs` (which the model has): the model itself for its first output, else
        a runner whose head gives each of them in one pass (kept: its compiled graphs are reused)."""
        key = tuple(o for o in OUTPUTS if o in outputs)
        if key == self.outputs[:1]:
            return self
        if key not in self._views:
            self._views[key] = OutputView(self, key)
        return self._views[key]

    def split(self, rows: Rows, seqs: Sequence[Seq], outputs: Sequence[Output]) -> dict[Output, Any]:
        """The runner's rows -> each output: "dense" (N, D) before normalisation, "sparse" a SparseVector
        per input, "multivector" a (vectors, D') array per input."""
        if isinstance(rows, np.ndarray):  # the model's first output, from its own runner
            return {"sparse": sparse.from_vocabulary(rows)} if self.layout.splade else {"dense": rows}
        key = tuple(o for o in OUTPUTS if o in outputs)
        out: dict[Output, Any] = {}
        for k, output in enumerate(key):
            parts = [row[k] for row in rows]
            if output == "dense":
                out["dense"] = np.stack(parts) if parts else np.zeros((0, self.dimensions), np.float32)
            elif output == "sparse":
                unused = self.token_heads.unused
                out["sparse"] = [sparse.from_tokens(p, s.ids, unused) for p, s in zip(parts, seqs, strict=True)]
            else:
                out["multivector"] = [multivector.per_text(p) for p in parts]
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
    ) -> Rows:
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
        assert isinstance(rows, np.ndarray)
        return Embeddings(normalized(rows) if self.normalize else rows, [len(s) for s in seqs])


class OutputView:
    """An embedder asked for outputs other than its first (BGE-M3's sparse or per-token vectors, alone or
    together): a runner of its own whose head computes each from one forward pass."""

    def __init__(self, embedder: Embedder, outputs: tuple[Output, ...]) -> None:
        self.embedder = embedder
        self.outputs = outputs
        per_token = tuple(o != "dense" for o in outputs)
        self.runner = BatchRunner(self._head, embedder.pad_id, "right", embedder.streams, per_token=per_token)

    def _head(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> tuple[mx.array, ...]:
        model = self.embedder
        hidden = model.forward(ids, mask, padded)
        out = []
        for output in self.outputs:
            if output == "dense":
                out.append(model._pooled(hidden, mask))
            elif output == "sparse":
                assert model.token_heads.sparse is not None
                weight_t, bias = model.token_heads.sparse
                out.append(mx.maximum(mx.addmm(bias, hidden.astype(mx.float32), weight_t), 0.0)[..., 0])
            else:
                assert model.token_heads.colbert is not None
                out.append(multivector.colbert_vectors(hidden, *model.token_heads.colbert))
        return tuple(out)

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> Rows:
        return self.runner.run(seqs, max_batch_tokens, stop, max_bytes)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """L2 normalisation in float32, with torch.nn.functional.normalize's epsilon (sentence-transformers')."""
    vectors = vectors.astype(np.float32, copy=False)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), np.float32(1e-12))


def truncate_dimensions(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """Matryoshka truncation: the first `dimensions` values, renormalised if the model normalises."""
    out = np.ascontiguousarray(vectors[:, :dimensions])
    return normalized(out) if normalize else out
