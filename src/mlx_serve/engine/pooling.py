"""Pooling token states into one vector, and L2 normalisation, as sentence-transformers does them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import mlx.core as mx

# sentence-transformers' pooling modes ("last" is its "lasttoken"). Several modes concatenate, in order.
Mode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "last"]
MODES: tuple[str, ...] = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "last")


def pool(hidden: mx.array, mask: mx.array, modes: Mode | Sequence[Mode]) -> mx.array:
    """hidden (B, L, D) of a right-padded batch; mask (B, L) of 1/0. Always float32: a sum of 512
    float16 values, or the norm of a vector whose norm passes 256 (its square passes float16's 65504),
    overflows, and the answer would be an all-zero or NaN vector with status 200."""
    if isinstance(modes, str):
        return _pool_one(hidden, mask, modes)
    parts = [_pool_one(hidden, mask, m) for m in modes]
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)


def _pool_one(hidden: mx.array, mask: mx.array, mode: Mode) -> mx.array:
    if mode == "last":
        last = mask.sum(axis=1) - 1
        return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(mx.float32)
    if mode == "cls":
        return hidden[:, 0].astype(mx.float32)
    hidden = hidden.astype(mx.float32)
    m = mask[..., None].astype(mx.float32)
    if mode == "max":
        return mx.max(mx.where(m > 0, hidden, mx.array(-1e9, mx.float32)), axis=1)
    if mode == "weightedmean":  # token i (from 1) weighs i: later tokens count more
        m = m * mx.arange(1, hidden.shape[1] + 1, dtype=mx.float32)[None, :, None]
    total = (hidden * m).sum(axis=1)
    count = mx.maximum(m.sum(axis=1), 1e-9)
    return total / (mx.sqrt(count) if mode == "mean_sqrt_len_tokens" else count)


def l2_normalize(x: mx.array) -> mx.array:
    # In float32 (see pool); the same epsilon as torch.nn.functional.normalize, which sentence-transformers uses.
    x = x.astype(mx.float32)
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
