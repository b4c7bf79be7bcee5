"""Sequence classifiers against transformers, pulled from folders and served over HTTP (TEI's /predict and
Infinity's /classify): softmax probabilities, or sigmoids for a multi-label model, equal to transformers'
own within 1e-5 in float32, and within half precision's error in float16 and bfloat16; a padded batch
equals each input alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.engine.verify import prepare
from mlx_serve.store.pull import pull
from mlx_serve.store.store import ModelStore

from . import tiny_models
from .conftest import App, pulled_and_served

LABELS = ("negative", "neutral", "positive")
TEXTS = ["a great film", "the plot was dull and far too long", "fine", "Gravity is a force " * 6]
TOLERANCE = {"float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classifiers")
    return {
        "sentiment": tiny_models.bert_cross_encoder(root / "sentiment", seed=11, labels=LABELS),
        "topics": tiny_models.bert_cross_encoder(
            root / "topics", seed=12, labels=("film", "science", "food"), problem_type="multi_label_classification"
        ),
    }


@pytest.fixture(scope="module", params=list(TOLERANCE))
def app(request, module_home: Path, folders: dict[str, Path]) -> Iterator[tuple[str, App]]:
    with pulled_and_served(module_home, folders, request.param) as served:
        yield request.param, served


def reference(folder: Path, texts: list[str]) -> np.ndarray:
    """transformers' logits, one text at a time (no padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return np.stack([model(**tokenizer(t, return_tensors="pt")).logits[0].numpy() for t in texts])


def by_label(row: list[dict], labels: tuple[str, ...]) -> list[float]:
    scores = {item["label"]: item["score"] for item in row}
    return [scores[label] for label in labels]


def test_the_type_is_detected_from_the_files(app) -> None:
    _, served = app
    types = {m["id"]: m["type"] for m in served.client.simulate_get("/v1/models").json["data"]}
    assert types["sentiment"] == types["topics"] == "classifier"


def test_predict_and_classify_equal_transformers_softmax(app, folders) -> None:
    dtype, served = app
    logits = reference(folders["sentiment"], TEXTS)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = served.client.simulate_post("/predict", json={"model": "sentiment", "inputs": [[t] for t in TEXTS]})
    assert predicted.status_code == 200, predicted.text
    ours = np.array([by_label(row, LABELS) for row in predicted.json])
    np.testing.assert_allclose(ours, probabilities, atol=TOLERANCE[dtype])
    classified = served.client.simulate_post("/classify", json={"model": "sentiment", "input": TEXTS}).json["data"]
    np.testing.assert_allclose(np.array([by_label(row, LABELS) for row in classified]), ours, atol=1e-6)
    raw = served.client.simulate_post("/classify", json={"model": "sentiment", "input": TEXTS, "raw_scores": True})
    raw_logits = np.array([by_label(row, LABELS) for row in raw.json["data"]])
    np.testing.assert_allclose(raw_logits, logits, atol=TOLERANCE[dtype] * 10)


def test_a_multi_label_model_gives_each_labels_sigmoid(app, folders) -> None:
    dtype, served = app
    labels = ("film", "science", "food")
    logits = reference(folders["topics"], TEXTS)
    result = served.client.simulate_post("/classify", json={"model": "topics", "input": TEXTS}).json["data"]
    np.testing.assert_allclose(
        np.array([by_label(row, labels) for row in result]), 1 / (1 + np.exp(-logits)), atol=TOLERANCE[dtype]
    )


def test_a_padded_batch_equals_each_input_alone(app) -> None:
    dtype, served = app

    def scores(texts: list[str]) -> np.ndarray:
        data = served.client.simulate_post("/classify", json={"model": "sentiment", "input": texts}).json["data"]
        return np.array([by_label(row, LABELS) for row in data])

    alone = np.concatenate([scores([t]) for t in TEXTS])
    np.testing.assert_allclose(scores(TEXTS), alone, atol=1e-5 if dtype == "float32" else TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_activations_past_float16s_range_still_give_transformers_probabilities(
    make_app, home: Path, folders, tmp_path, dtype
) -> None:
    """A classifier whose residual stream passes 65504 (as trained models' do): float16 is answered from the
    float32 copy, bfloat16's range holds; the probabilities are transformers' either way."""
    from .conftest import metric

    big = tiny_models.scaled(folders["sentiment"], tmp_path / "big-sentiment", 1e5)
    pull(ModelStore(home / ".mlx-serve" / "models"), str(big), prepare=prepare, name="big")
    app = make_app(dtype=dtype)
    logits = reference(big, TEXTS)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    data = app.client.simulate_post("/classify", json={"model": "big", "input": TEXTS}).json["data"]
    np.testing.assert_allclose(np.array([by_label(row, LABELS) for row in data]), probabilities, atol=2e-2)
    recomputed = metric(app.client, 'mlx_serve_numerical_overflows_total{model="big",outcome="recomputed"}')
    assert (recomputed or 0) == (len(TEXTS) if dtype == "float16" else 0)
