"""Sequence classifiers (`*ForSequenceClassification` with `id2label`): one probability per label, a softmax
over the logits, or each label's sigmoid for a multi-label model (`problem_type:
multi_label_classification`), as transformers' pipelines compute them. The heads give the logits; the
probabilities are computed on the host."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from mlx_serve.core.types import Truncation
from mlx_serve.engine.batching import BatchRunner, RunnerModel, Seq, Stop
from mlx_serve.engine.tokenizer import TextTokenizer


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def logits_head(classifier: Callable[..., mx.array]) -> Callable[..., mx.array]:
    def head(ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        return classifier(ids, type_ids, mask, padded).astype(mx.float32)

    return head


class Classifier(RunnerModel):
    type = "classifier"

    def __init__(
        self,
        name: str,
        tokenizer: TextTokenizer,
        runner: BatchRunner,
        arrays: Callable[[], list[mx.array]],
        labels: tuple[str, ...],
        multi_label: bool,
    ) -> None:
        super().__init__(name, tokenizer, runner, arrays)
        self.labels = labels
        self.multi_label = multi_label

    def tokenize(self, inputs: Sequence[str | tuple[str, str]], truncate: bool | Truncation = True) -> list[Seq]:
        """Texts, or pairs of texts (as cross-encoders take them), in order."""
        out: list[Seq | None] = [None] * len(inputs)
        texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
        pairs = [(i, x) for i, x in enumerate(inputs) if not isinstance(x, str)]
        if texts:
            for (i, _), seq in zip(texts, self.tokenizer.encode([x for _, x in texts], truncate), strict=True):
                out[i] = seq
        if pairs:
            for (i, _), seq in zip(pairs, self.tokenizer.encode_pairs([x for _, x in pairs], truncate), strict=True):
                out[i] = seq
        return out  # type: ignore[return-value]

    def run(
        self, seqs: Sequence[Seq], max_batch_tokens: int, stop: Stop | None = None, max_bytes: int | None = None
    ) -> np.ndarray:
        return self.runner.run(seqs, max_batch_tokens, stop, max_bytes)

    def scores(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, logits)."""
        if self.multi_label:
            return (1.0 / (1.0 + np.exp(-rows.astype(np.float64)))).astype(np.float32), rows
        return softmax(rows), rows

    def classify(self, inputs: Sequence[str | tuple[str, str]], max_batch_tokens: int) -> np.ndarray:
        """The probabilities (for tests and benchmarks, outside the scheduler)."""
        return self.scores(self.run(self.tokenize(inputs), max_batch_tokens))[0]
