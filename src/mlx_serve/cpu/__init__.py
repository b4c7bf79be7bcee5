"""The CPU fast paths on Linux: a fast BLAS loaded before MLX (blas.py) and kernels compiled for this CPU
(jit.py). Both are process-wide state, set once at start (`configure`), never per model load."""

from __future__ import annotations

import os

from mlx_serve.cpu import blas, jit


def configure(streams: int) -> jit.JitStatus:
    """Turn the JIT compiler's flags on and share the cores among the BLAS calls of `streams` inference
    streams (engine/loader.stream_count). Idempotent."""
    kernels = jit.enable()
    blas.set_threads((os.cpu_count() or 1) // max(1, streams))
    return kernels
