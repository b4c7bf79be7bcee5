"""Multi-vector (late-interaction) outputs: one vector per token, and MaxSim to score with them.

BGE-M3's colbert head, as FlagEmbedding computes it (`_colbert_embedding`, then BGEM3FlagModel.encode's
`_process_colbert_vecs`): colbert_linear over every token's hidden state but the first (cls), each vector
L2-normalised, padding dropped. So a text of n tokens (cls and eos included) gives n - 1 vectors.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlx_serve.engine.pooling import l2_normalize


def colbert_vectors(hidden: mx.array, weight_t: mx.array, bias: mx.array) -> mx.array:
    """hidden (B, L, D) -> (B, L, D') normalised, in float32; the host drops the first token's (cls)."""
    return l2_normalize(mx.addmm(bias, hidden.astype(mx.float32), weight_t))


def per_text(vectors: np.ndarray) -> np.ndarray:
    """A text's token vectors (its own tokens, as the runner cut them) -> those FlagEmbedding keeps."""
    return np.ascontiguousarray(vectors[1:])


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """FlagEmbedding's colbert_score: for each query vector its best dot product with a document vector,
    averaged over the query's vectors."""
    if len(query) == 0 or len(document) == 0:
        return 0.0
    best = (query.astype(np.float32) @ document.astype(np.float32).T).max(axis=1)
    return float(best.sum() / len(query))
