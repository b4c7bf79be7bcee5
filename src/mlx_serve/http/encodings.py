"""How vectors travel: JSON floats, base64 of little-endian float32 (OpenAI's clients decode it), and the
compact types of Cohere's `embedding_types` and Voyage's `output_dtype`, as sentence-transformers'
`quantize_embeddings` defines them: `int8`/`uint8` scale each value into 256 buckets, `binary`/`ubinary`
keep one sign bit per dimension, packed eight to a byte.

sentence-transformers calibrates the int8 buckets on the embeddings at hand, so the same text would
quantize differently in different requests. A server must answer the same for the same text: the range
here is fixed at [-1, 1], which holds every value of a normalised vector (values outside are clipped).
The formula is sentence-transformers' with `ranges` [-1, 1] (tests/test_clients.py checks it against it).
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np

Precision = Literal["int8", "uint8", "binary", "ubinary"]
Dtype = Literal["float", "int8", "uint8", "binary", "ubinary"]
_LOW, _HIGH = -1.0, 1.0


def quantize(vectors: np.ndarray, precision: Precision) -> np.ndarray:
    """(N, D) float vectors -> (N, D) int8/uint8, or (N, ceil(D/8)) packed bits."""
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    step = np.float32((_HIGH - _LOW) / 255)
    buckets = np.clip(np.floor((vectors.astype(np.float32) - np.float32(_LOW)) / step), 0, 255)
    return (buckets - 128).astype(np.int8) if precision == "int8" else buckets.astype(np.uint8)


def as_dtype(vectors: np.ndarray, dtype: Dtype) -> np.ndarray:
    """float32 vectors as they are, or quantized."""
    return vectors if dtype == "float" else quantize(vectors, dtype)


def base64_rows(rows: np.ndarray) -> list[str]:
    """Each row's bytes in base64: float32 little-endian, or the quantized bytes as they are."""
    if rows.dtype.kind == "f":
        rows = rows.astype("<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
