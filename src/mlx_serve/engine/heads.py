"""What an encoder family's weights become, by the type a model is served as: an embedder (pooling,
Dense, Normalize, as its sentence-transformers files say), a cross-encoder (a reranker) or a classifier.
Shared by the encoder families (bert.py, modernbert.py), which differ only in their networks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlx_serve.engine.batching import BatchRunner
from mlx_serve.engine.classifier import Classifier, logits_head
from mlx_serve.engine.embedder import Embedder, Forward
from mlx_serve.engine.families import LoadContext
from mlx_serve.engine.loader import max_seq_length
from mlx_serve.engine.reranker import CrossEncoder, cross_encoder_head
from mlx_serve.engine.tokenizer import TextTokenizer


def labels_of(config: dict[str, Any]) -> tuple[str, ...]:
    """The labels in id order: id2label, else LABEL_0.. for num_labels."""
    id2label = config.get("id2label") or {}
    if id2label:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))
    return tuple(f"LABEL_{i}" for i in range(int(config.get("num_labels", 2))))


def encoder_model(
    ctx: LoadContext,
    forward: Forward,
    classifier: Callable[[], Callable[..., Any]],
    arrays: Callable[[], list[Any]],
    hidden_size: int,
    pad_id: int,
) -> Embedder | CrossEncoder | Classifier:
    tokenizer = TextTokenizer(ctx.path / "tokenizer.json", max_seq_length(ctx.path, ctx.config))
    if ctx.type == "embedding":
        return Embedder(ctx.name, forward, tokenizer, ctx.layout, hidden_size, pad_id, arrays, ctx.streams)
    labels = labels_of(ctx.config)
    if ctx.type == "reranker":
        runner = BatchRunner(cross_encoder_head(classifier(), len(labels)), pad_id, "right", ctx.streams)
        return CrossEncoder(ctx.name, tokenizer, runner, arrays)
    multi = ctx.config.get("problem_type") == "multi_label_classification"
    runner = BatchRunner(logits_head(classifier()), pad_id, "right", ctx.streams)
    return Classifier(ctx.name, tokenizer, runner, arrays, labels, multi)
