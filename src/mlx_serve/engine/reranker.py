"""Rerankers: score (query, document) pairs. Every head gives a raw score, the log-odds of relevance; the
score is its sigmoid, computed on the host:

- cross-encoders (BERT, XLM-RoBERTa, MPNet, ModernBERT `*ForSequenceClassification`): one label's logit
  (sentence-transformers' CrossEncoder takes its sigmoid), or with two labels the second's logit minus the
  first's (whose sigmoid is the softmax probability of the second);
- Qwen3-Reranker (families/qwen3.py): the "yes" logit minus the "no" logit at the last position (whose
  sigmoid is P("yes") of a softmax over the two);
- an embedding model: the cosine similarity of the query's and each document's vectors (score and raw);
  one with per-token vectors (BGE-M3): MaxSim over them (multivector.py), as FlagEmbedding scores them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_serve.core.errors import InvalidRequest
from mlx_serve.core.types import Output, Truncation
from mlx_serve.engine.batching import RunnerModel, Seq, Stop
from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.multivector import maxsim, per_text

Arrays = Callable[[], list[mx.array]]


def sigmoid(raw: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-raw.astype(np.float64)))).astype(np.float32)


class Reranker(RunnerModel):
    """Base: pairs -> sequences -> one raw score per sequence through the batch runner."""

    type = "reranker"

    def tokenize(
        self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool | Truncation
    ) -> list[Seq]:
        raise NotImplementedError

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> np.ndarray:
        return self.runner.run(seqs, max_batch_tokens, stop, max_bytes).reshape(len(seqs))

    def scores(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, raw scores) from the rows the runner gave."""
        return sigmoid(rows), rows

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        max_batch_tokens: int,
        instruction: str | None = None,
        truncate: bool | Truncation = True,
    ) -> np.ndarray:
        """The scores of the documents, in order (for tests and benchmarks, outside the scheduler)."""
        seqs = self.tokenize(query, documents, instruction, truncate)
        return self.scores(self.run(seqs, max_batch_tokens))[0]


def no_instruction(name: str, instruction: str | None) -> None:
    if instruction:
        raise InvalidRequest(f"the model {name} takes no instruction", code="invalid_instruction", param="instruction")


class CrossEncoder(Reranker):
    def tokenize(
        self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool | Truncation
    ) -> list[Seq]:
        no_instruction(self.name, instruction)
        return self.tokenizer.encode_pairs([(query, d) for d in documents], truncate)


def cross_encoder_head(classifier: Callable[..., mx.array], labels: int = 1) -> Callable[..., mx.array]:
    """The log-odds of relevance: one label's logit, or the second's minus the first's (see the module)."""

    def head(ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        logits = classifier(ids, type_ids, mask, padded).astype(mx.float32)
        return logits[:, :1] if labels == 1 else logits[:, 1:2] - logits[:, :1]

    return head


class EmbeddingRanker(Reranker):
    """An embedding model asked to rerank: cosine similarity between the query and each document."""

    outputs: tuple[Output, ...] = ("dense",)  # what the embedder is run for

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        super().__init__(embedder.name, embedder.tokenizer, embedder.runner, embedder.arrays)

    def tokenize(
        self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool | Truncation
    ) -> list[Seq]:
        # The query as a query (the model's instruction or query prompt), the documents as documents.
        query_seqs = self.embedder.tokenize([query], instruction, truncate, input_type="query")
        return query_seqs + self.embedder.tokenize(documents, None, truncate, input_type="document")

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> np.ndarray:
        return self.embedder.run(seqs, max_batch_tokens, stop, max_bytes)

    def scores(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        query, docs = rows[0], rows[1:]
        norms = np.maximum(np.linalg.norm(docs, axis=1) * np.linalg.norm(query), 1e-12)
        cosine = ((docs @ query) / norms).astype(np.float32)
        return cosine, cosine


class MaxSimRanker(EmbeddingRanker):
    """An embedding model with per-token vectors asked to rerank: MaxSim between the query's and each
    document's vectors (FlagEmbedding's colbert_score)."""

    outputs = ("multivector",)

    def scores(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        query, docs = per_text(rows[0][0]), [per_text(row[0]) for row in rows[1:]]
        out = np.array([maxsim(query, doc) for doc in docs], dtype=np.float32)
        return out, out
