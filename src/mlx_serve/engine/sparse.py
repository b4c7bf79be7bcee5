"""Sparse (lexical) vectors: one weight per vocabulary entry, only the non-zero ones sent.

- SPLADE (sentence-transformers' SparseEncoder: a masked-LM transformer + SpladePooling): the MLM logits of
  every token, log(1 + relu(.)) (twice for `log1p_relu`), pooled over the text's tokens by max or sum.
  Pooled on the device, so only a (texts, vocabulary) array comes back, never (texts, tokens, vocabulary).
- BGE-M3's sparse head, as FlagEmbedding computes it (BGEM3FlagModel.encode, `_process_token_weights`):
  relu(sparse_linear(h)) per token; per token id, the largest weight of its occurrences; the cls, eos,
  pad and unk tokens dropped; only weights above 0 kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from mlx_serve.core.intents import SparseVector
from mlx_serve.engine.st_layout import Splade

# The MLM logits are (tokens, vocabulary): 30522 floats a token for BERT. They are made this many tokens
# at a time, so that a batch's logits never take more than ~125 MB in float32.
LOGIT_TOKENS = 1024


def splade_pool(hidden: mx.array, mask: mx.array, logits: Callable[[mx.array], mx.array], splade: Splade) -> mx.array:
    """hidden (B, L, D), mask (B, L) -> (B, vocabulary) float32, as SpladePooling computes it."""
    rows = max(1, LOGIT_TOKENS // max(1, hidden.shape[1]))
    parts = []
    for start in range(0, hidden.shape[0], rows):
        chunk = logits(hidden[start : start + rows]).astype(mx.float32)  # (r, L, V)
        m = mask[start : start + rows, :, None].astype(mx.float32)
        if splade.pooling == "max":
            # log1p and relu rise with their argument, so the max of the activated logits is the activated
            # max; padding's logits are zeroed (as SpladePooling multiplies by the mask), and relu drops them.
            parts.append(_activate(mx.max(chunk * m, axis=1), splade))
        else:
            parts.append(mx.sum(_activate(chunk * m, splade), axis=1))
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)


def _activate(x: mx.array, splade: Splade) -> mx.array:
    x = mx.log1p(mx.maximum(x, 0.0))
    return mx.log1p(x) if splade.activation == "log1p_relu" else x


def from_vocabulary(rows: np.ndarray) -> list[SparseVector]:
    """(N, vocabulary) weights -> each row's non-zero entries, ids ascending."""
    out = []
    for row in rows:
        indices = np.flatnonzero(row)
        out.append(SparseVector(indices.astype(np.int64), row[indices].astype(np.float32)))
    return out


def from_tokens(weights: np.ndarray, ids: Sequence[int], unused: frozenset[int]) -> SparseVector:
    """BGE-M3: one weight per token -> per token id the largest, special tokens and weights <= 0 dropped."""
    token_ids = np.asarray(ids, dtype=np.int64)
    keep = (weights > 0) & ~np.isin(token_ids, np.fromiter(unused, dtype=np.int64, count=len(unused)))
    if not keep.any():
        return SparseVector(np.zeros(0, np.int64), np.zeros(0, np.float32))
    token_ids, weights = token_ids[keep], weights[keep].astype(np.float32)
    indices = np.unique(token_ids)
    values = np.zeros(len(indices), np.float32)
    np.maximum.at(values, np.searchsorted(indices, token_ids), weights)
    return SparseVector(indices, values)
