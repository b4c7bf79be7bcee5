"""mlx-serve: a local embedding and reranking server on MLX."""

# Imported first, on purpose: the fast BLAS must be in the process before anything imports mlx.core.
from mlx_serve.cpu import blas as _blas  # noqa: F401

__version__ = "0.1.0"
