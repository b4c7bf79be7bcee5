"""MLX only: loading models (loader.py, one module per family in families/), tokenising, forward passes,
pooling, normalising and scoring. Knows nothing of HTTP, settings or files beyond a model's folder."""

from mlx_serve.engine.batching import Seq, plan_batches
from mlx_serve.engine.embedder import Embedder, Embeddings, truncate_dimensions
from mlx_serve.engine.loader import UnsupportedModelError, load_embedder, load_model
from mlx_serve.engine.reranker import Reranker

__all__ = [
    "Embedder",
    "Embeddings",
    "Reranker",
    "Seq",
    "UnsupportedModelError",
    "load_embedder",
    "load_model",
    "plan_batches",
    "truncate_dimensions",
]
