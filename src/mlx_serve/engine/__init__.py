"""MLX only: loading models, tokenising, forward passes, pooling. Knows nothing of HTTP or settings files."""

from mlx_serve.engine.embedder import Embedder, Embeddings, plan_batches
from mlx_serve.engine.loader import UnsupportedModelError, load_embedder
from mlx_serve.engine.tokenizer import InputError

__all__ = ["Embedder", "Embeddings", "InputError", "UnsupportedModelError", "load_embedder", "plan_batches"]
