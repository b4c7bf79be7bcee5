"""MLX only: loading models, tokenising, forward passes, pooling, scoring. Knows nothing of HTTP or settings."""

from mlx_serve.engine.batching import Seq, plan_batches
from mlx_serve.engine.embedder import Embedder, Embeddings, truncate_dimensions
from mlx_serve.engine.loader import UnsupportedModelError, load_embedder, load_model
from mlx_serve.engine.reranker import Reranker, Scores
from mlx_serve.engine.tokenizer import InputError

__all__ = [
    "Embedder",
    "Embeddings",
    "InputError",
    "Reranker",
    "Scores",
    "Seq",
    "UnsupportedModelError",
    "load_embedder",
    "load_model",
    "plan_batches",
    "truncate_dimensions",
]
