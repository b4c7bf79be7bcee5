"""The MLX BERT encoder against sentence-transformers (PyTorch) on the real all-MiniLM-L6-v2: in float32,
and in the half precisions a GPU runs it in (MLX runs them on a CPU too), against the float32 reference."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.engine import load_embedder, plan_batches
from mlx_serve.engine.batching import split_evenly

from .conftest import MINILM_TEXTS as TEXTS
from .conftest import cosine

# The least cosine to the float32 reference each compute dtype must reach (bfloat16 keeps 8 bits of mantissa).
MIN_COSINE = {"float32": 0.9999, "float16": 0.9999, "bfloat16": 0.999}


@pytest.fixture(scope="module")
def embedder(minilm_dir: Path):
    return load_embedder("all-MiniLM-L6-v2", minilm_dir)


@pytest.fixture(scope="module", params=list(MIN_COSINE))
def any_dtype(request, minilm_dir: Path):
    return request.param, load_embedder("all-MiniLM-L6-v2", minilm_dir, dtype=request.param)


def test_matches_sentence_transformers_on_every_text(any_dtype, minilm_reference) -> None:
    dtype, embedder = any_dtype
    # A budget that batches texts of like lengths together: MLX multiplies half-precision matrices some 30x
    # slower than float32 on a CPU, and this pads half as many tokens as one batch would.
    out = embedder.embed(TEXTS, max_batch_tokens=512)
    sims = cosine(out.vectors, minilm_reference)
    assert sims.min() >= MIN_COSINE[dtype], dict(zip(TEXTS, sims, strict=True))
    # all-MiniLM-L6-v2 ends in a Normalize module: unit vectors, like the reference.
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)


def test_texts_over_the_max_length_are_truncated(embedder) -> None:
    out = embedder.embed(["word " * 600, "short"], max_batch_tokens=16384)
    assert out.token_counts[0] == embedder.max_length == 256
    assert out.token_counts[1] == 3  # [CLS] short [SEP]


def test_padded_batches_equal_each_text_alone(embedder) -> None:
    # In float32, where a leak of padding into a text's vector would show at 1e-5. The half-precision
    # batches are checked against sentence-transformers itself (test_matches_sentence_transformers_...).
    together = embedder.embed(TEXTS, max_batch_tokens=1 << 20).vectors
    alone = np.stack([embedder.embed([t], max_batch_tokens=1 << 20).vectors[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "cls", "last", "max"])
def test_a_float16_vector_of_norm_10000_comes_back_unit_length(mode) -> None:
    """In float16 the square of a norm past 256 overflows (65504 is its largest value): normalised there,
    such a vector came back as all zeros with status 200. Pooling and normalisation run in float32."""
    import mlx.core as mx

    from mlx_serve.engine.pooling import l2_normalize, pool

    value = 10_000 / np.sqrt(384)  # each value fits float16 easily; the norm is 10,000
    hidden = mx.full((2, 5, 384), value, dtype=mx.float16)
    mask = mx.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pooled = pool(hidden, mask, mode)
    np.testing.assert_allclose(np.linalg.norm(np.array(pooled), axis=1), 10_000, rtol=1e-3)
    out = np.array(l2_normalize(pooled))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, 1 / np.sqrt(384), rtol=1e-3)


def test_small_token_budget_splits_batches_without_changing_results(embedder) -> None:
    big = embedder.embed(TEXTS, max_batch_tokens=1 << 20).vectors
    small = embedder.embed(TEXTS, max_batch_tokens=64).vectors
    np.testing.assert_allclose(big, small, atol=1e-5)


def test_token_arrays_embed_like_the_text_they_encode(embedder) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = embedder.tokenizer.encode([text])[0].ids
    content = ids[len(embedder.tokenizer.prefix) : len(ids) - len(embedder.tokenizer.suffix)]
    from_text, from_ids = embedder.embed([text, content], max_batch_tokens=4096).vectors
    np.testing.assert_allclose(from_text, from_ids, atol=1e-6)


def test_plan_batches_respects_budget_and_keeps_every_index() -> None:
    lengths = [5, 100, 7, 3, 64, 64, 2, 300]
    batches = plan_batches(lengths, max_batch_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert longest * len(batch) <= 200 or len(batch) == 1


def test_streams_get_even_padded_shares_of_a_batch() -> None:
    lengths = [15, 16, 16, 17, 17, 17, 18, 18, 18, 18, 19, 20, 20, 20, 22]  # sorted, as batches are
    bounds = split_evenly(lengths, 2)
    assert bounds[0] == 0 and bounds[-1] == len(lengths) and len(bounds) == 3
    padded = [lengths[b - 1] * (b - a) for a, b in pairwise(bounds)]
    assert max(padded) <= 154 < 176  # equal counts would pad the long half to 8 x 22
    assert split_evenly([5], 2) == [0, 1]  # one input: one stream
    assert split_evenly([1, 1, 1, 100], 2) == [0, 3, 4]  # the long one alone
