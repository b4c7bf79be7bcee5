"""Never a NaN or inf with status 200. Half precision tops out at 65504; trained models have activations
past it (Gemma3's residual stream reaches 1e5-1e6). A model scaled so that one layer's output reaches
that size must give the reference's vectors in every dtype: float16 by running the overflowing rows again
in float32. A model that is not finite even in float32 is refused per request, in the route's own shape,
while other requests are served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from . import tiny_models
from .conftest import MINILM, cosine, metric

TEXTS = ["the quick brown fox", "gravity pulls everything down", "a"]
# The least cosine to the float32 reference per compute dtype (bfloat16 keeps 8 bits of mantissa).
MIN_COSINE = {"float32": 0.99999, "float16": 0.9999, "bfloat16": 0.995}


@pytest.fixture(scope="module")
def overflowing(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The scaled model and sentence-transformers' vectors for TEXTS (in float32, on the CPU)."""
    from sentence_transformers import SentenceTransformer

    path = tiny_models.scaled(minilm_dir, tmp_path_factory.mktemp("models") / "big", 3000.0, layer=2)
    return path, SentenceTransformer(str(path), device="cpu").encode(TEXTS)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_an_overflowing_model_gives_the_reference_vectors_in_every_dtype(make_app, overflowing, dtype) -> None:
    path, reference = overflowing
    app = make_app(models={"big": path}, dtype=dtype)
    answer = app.client.simulate_post("/v1/embeddings", json={"model": "big", "input": TEXTS})
    assert answer.status_code == 200, answer.text
    vectors = np.array([d["embedding"] for d in answer.json["data"]])
    assert cosine(vectors, reference).min() > MIN_COSINE[dtype]
    recomputed = metric(app.client, 'mlx_serve_numerical_overflows_total{model="big",outcome="recomputed"}')
    # float16 overflows on every text and is answered from float32; the others never overflow.
    assert (recomputed or 0) == (len(TEXTS) if dtype == "float16" else 0)


def test_on_a_gpu_the_float32_copy_counts_in_the_memory_limit(make_app, overflowing, monkeypatch) -> None:
    """Where the in-flight bound is MLX's memory limit (a GPU), the float32 copy an overflowing model keeps
    beside it is resident memory too: a limit that left it out would sit below what MLX holds, and MLX
    would wait for the device after every kernel."""
    import mlx.core as mx

    from mlx_serve.serving import memory

    configured = mx.get_memory_limit()
    monkeypatch.setattr(memory, "throttles", lambda: True)  # the device: this machine has no GPU
    app = make_app(models={"big": overflowing[0]}, dtype="float16", max_inflight_bytes="64MiB")
    try:
        assert app.client.simulate_post("/v1/embeddings", json={"model": "big", "input": TEXTS}).status_code == 200
        half = app.runtime.cache.snapshot()[0].size_bytes
        assert mx.get_memory_limit() == half + 2 * half + 64 * 2**20  # float16 weights, their float32 copy, the bound
    finally:
        mx.set_memory_limit(configured)


def poisoned(dest: Path, value: float) -> Path:
    """A BERT in MiniLM's layout with one weight NaN (or inf): no dtype can give a finite vector."""
    tiny_models.bert(dest, seed=4)
    weights_file = next(dest.glob("*.safetensors"))
    weights = load_file(weights_file)
    key = next(k for k in weights if "layer.0.output.dense.bias" in k)
    weights[key][0] = value
    save_file(weights, weights_file, metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_outputs_are_refused_in_each_routes_shape_and_others_are_served(make_app, tmp_path, value) -> None:
    app = make_app(models={"bad": poisoned(tmp_path / "bad", value)}, default_embedding_model=MINILM)
    client = app.client
    openai = client.simulate_post("/v1/embeddings", json={"model": "bad", "input": ["ok", "x"]})
    assert openai.status_code == 500 and openai.json["error"]["code"] == "numerical_overflow"
    assert "input[0]" in openai.json["error"]["message"]
    cohere = client.simulate_post("/v2/embed", json={"model": "bad", "texts": ["ok"], "input_type": "search_query"})
    assert cohere.status_code == 500 and "NaN or infinite" in cohere.json["message"]
    ollama = client.simulate_post("/api/embed", json={"model": "bad", "input": "ok"})
    assert ollama.status_code == 500 and ollama.json["code"] == "numerical_overflow"
    tei = client.simulate_post("/embed", json={"inputs": "ok"})
    assert tei.status_code == 200  # the default model, untouched
    # An embedding model named for reranking scores by cosine: no score may be null.
    ranked = client.simulate_post("/v1/rerank", json={"model": "bad", "query": "q", "documents": ["a", "b"]})
    assert ranked.status_code == 500 and ranked.json["error"]["code"] == "numerical_overflow"
    fine = client.simulate_post("/v1/embeddings", json={"model": MINILM, "input": "ok"})
    assert fine.status_code == 200 and np.isfinite(fine.json["data"][0]["embedding"]).all()
    assert metric(client, 'mlx_serve_numerical_overflows_total{model="bad",outcome="failed"}') >= 4


def test_gemma3_never_runs_in_float16(make_app, tmp_path) -> None:
    """auto on a GPU is bfloat16 for it (serving/loader); an explicit float16 is refused in one sentence."""
    gemma = tiny_models.embedding_gemma(tmp_path / "gemma", seed=3)
    app = make_app(models={"gemma": gemma}, dtype="float16")
    answer = app.client.simulate_post("/v1/embeddings", json={"model": "gemma", "input": "ok"})
    assert answer.status_code == 400, answer.text
    message = answer.json["error"]["message"]
    assert "overflow float16" in message and "bfloat16" in message
