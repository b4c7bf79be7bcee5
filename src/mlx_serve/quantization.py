"""Compact embeddings, as Cohere's `embedding_types` and sentence-transformers' `quantize_embeddings` define
them: `int8`/`uint8` scale each value into 256 buckets, `binary`/`ubinary` keep one sign bit per dimension,
packed eight to a byte.

sentence-transformers calibrates int8 buckets on the embeddings at hand, so the same text would quantize
differently in different requests. A server must answer the same for the same text: the range here is
fixed at [-1, 1], which holds every value of a normalised vector (values outside are clipped). The
formula is sentence-transformers' with `ranges` [-1, 1] (tests/test_quantization.py checks it against it).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Precision = Literal["int8", "uint8", "binary", "ubinary"]
_LOW, _HIGH = -1.0, 1.0


def quantize(vectors: np.ndarray, precision: Precision) -> np.ndarray:
    """(N, D) float vectors -> (N, D) int8/uint8, or (N, ceil(D/8)) packed bits."""
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    step = np.float32((_HIGH - _LOW) / 255)
    buckets = np.clip(np.floor((vectors.astype(np.float32) - np.float32(_LOW)) / step), 0, 255)
    return (buckets - 128).astype(np.int8) if precision == "int8" else buckets.astype(np.uint8)
