"""Rerankers: score (query, document) pairs. Three kinds:

- cross-encoders (BERT, XLM-RoBERTa, MPNet `*ForSequenceClassification`): the sigmoid of one logit, or
  with two labels the softmax probability of the second;
- Qwen3-Reranker (a causal LM): the official prompt, then P("yes") from a softmax over the last
  position's "no"/"yes" logits;
- an embedding model: cosine similarity of the query's and each document's vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_serve.engine.batching import BatchRunner, Seq
from mlx_serve.engine.decoder import DecoderStack
from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.pooling import pool
from mlx_serve.engine.tokenizer import TextTokenizer, too_long

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Scores:
    values: np.ndarray  # (N,) relevance of each document, in order
    token_counts: list[int]


class Reranker:
    """Base: pairs -> sequences -> one score per sequence through the batch runner."""

    type = "reranker"

    def __init__(
        self, name: str, tokenizer: TextTokenizer, runner: BatchRunner, arrays: Callable[[], list[mx.array]]
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.runner = runner
        self._arrays = arrays

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays())

    def tokenize(self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool) -> list[Seq]:
        raise NotImplementedError

    def run(self, seqs: Sequence[Seq], max_batch_tokens: int) -> np.ndarray:
        return self.runner.run(seqs, max_batch_tokens).reshape(len(seqs))

    def scores_from_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        max_batch_tokens: int,
        instruction: str | None = None,
        truncate: bool = True,
    ) -> Scores:
        seqs = self.tokenize(query, documents, instruction, truncate)
        return Scores(self.scores_from_rows(self.run(seqs, max_batch_tokens)), [len(s) for s in seqs])


class CrossEncoder(Reranker):
    def tokenize(self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool) -> list[Seq]:
        if instruction:
            raise ValueError(f"the model {self.name} takes no instruction")
        return self.tokenizer.encode_pairs([(query, d) for d in documents], truncate)


def cross_encoder_head(classifier: Callable[..., mx.array], labels: int = 1) -> Callable[..., mx.array]:
    """One label: sigmoid of its logit (sentence-transformers' CrossEncoder). Two: the probability of the
    second label ("relevant"), a softmax over both."""

    def head(ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        logits = classifier(ids, type_ids, mask, padded).astype(mx.float32)
        return mx.sigmoid(logits[:, :1]) if labels == 1 else mx.softmax(logits, axis=-1)[:, 1:2]

    return head


class Qwen3Reranker(Reranker):
    def __init__(
        self,
        name: str,
        tokenizer: TextTokenizer,
        stack: DecoderStack,
        streams: Sequence[mx.Stream],
        default_instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        no, yes = tokenizer.token_id("no"), tokenizer.token_id("yes")
        if no is None or yes is None:
            raise ValueError(f"{name}: the tokenizer has no single 'yes'/'no' tokens, so it is not a Qwen3 reranker")
        self.stack = stack
        self.answer_ids = [no, yes]
        self.default_instruction = default_instruction
        self.prefix = tokenizer.raw(QWEN3_PREFIX)
        self.suffix = tokenizer.raw(QWEN3_SUFFIX)
        runner = BatchRunner(self._head, pad_id=stack.pad_id, padding_side="right", streams=streams)
        super().__init__(name, tokenizer, runner, stack.arrays)

    def _head(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        last = pool(self.stack(ids, mask, padded), mask, "last")
        logits = self.stack.token_logits(last, self.answer_ids).astype(mx.float32)
        return mx.softmax(logits, axis=-1)[:, 1:]  # P("yes")

    def tokenize(self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool) -> list[Seq]:
        # As the model card: the middle is truncated so that the prefix and suffix always survive.
        room = self.max_length - len(self.prefix) - len(self.suffix)
        task = instruction or self.default_instruction
        seqs = []
        for i, doc in enumerate(documents):
            text = f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {doc}"
            cut = self.tokenizer.bounded(text)
            middle = self.tokenizer.raw(cut)
            if len(middle) > room and not truncate:
                count = len(middle) + len(self.prefix) + len(self.suffix)
                raise too_long(i, count, self.max_length, at_least=cut is not text)
            seqs.append(Seq(self.prefix + middle[:room] + self.suffix))
        return seqs


class EmbeddingRanker(Reranker):
    """An embedding model asked to rerank: cosine similarity between the query and each document."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        super().__init__(embedder.name, embedder.tokenizer, embedder.runner, embedder._arrays)

    def tokenize(self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool) -> list[Seq]:
        # The query as a query (the model's instruction or query prompt), the documents as documents.
        query_seqs = self.embedder.tokenize([query], instruction, truncate, input_type="query")
        return query_seqs + self.embedder.tokenize(documents, None, truncate, input_type="document")

    def run(self, seqs: Sequence[Seq], max_batch_tokens: int) -> np.ndarray:
        return self.embedder.run(seqs, max_batch_tokens)

    def scores_from_rows(self, rows: np.ndarray) -> np.ndarray:
        query, docs = rows[0], rows[1:]
        norms = np.maximum(np.linalg.norm(docs, axis=1) * np.linalg.norm(query), 1e-12)
        return (docs @ query) / norms
