"""The model families people pick, each as a tiny model with random weights in its real layout (written by
transformers' own classes, with a real tokenizer and sentence-transformers' files), pulled from a folder
through the real pull code, served over HTTP, and checked against sentence-transformers or transformers
on PyTorch: vectors, scores, padded batches, prompts. And the clear sentence for what is not supported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.engine.verify import prepare
from mlx_serve.store.pull import pull
from mlx_serve.store.store import ModelStore, StoreError

from . import tiny_models
from .conftest import App, build_app, cosine

TEXTS = [
    "The capital of China is Beijing.",
    "Explain gravity",
    "a",
    "Gravity is a force that attracts two bodies towards each other. " * 4,  # longer than Gemma's window
    "Grüße aus Köln, ça va? 日本語",
]
QUERY = "What is the capital of China?"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    e5_prompts = {"query": "query: ", "passage": "passage: "}
    nomic_prompts = {"search_query": "search_query: ", "search_document": "search_document: "}
    return {
        "xlmr-emb": tiny_models.xlm_roberta(root / "xlmr-emb", "embedding", seed=31, prompts=e5_prompts),
        "nomic-style": tiny_models.xlm_roberta(root / "nomic-style", "embedding", seed=38, prompts=nomic_prompts),
        "xlmr-rr": tiny_models.xlm_roberta(root / "xlmr-rr", "reranker", seed=32),
        "xlmr-rr2": tiny_models.xlm_roberta(root / "xlmr-rr2", "reranker", seed=33, labels=2),
        "mpnet": tiny_models.mpnet(root / "mpnet", seed=34),
        "gemma": tiny_models.embedding_gemma(root / "gemma", seed=35),
        "modernbert": tiny_models.modernbert(root / "modernbert", "embedding", seed=36),
        "modernbert-rr": tiny_models.modernbert(root / "modernbert-rr", "reranker", seed=37),
    }


@pytest.fixture(scope="module")
def app(module_home: Path, folders: dict[str, Path]) -> Iterator[App]:
    with pytest.MonkeyPatch.context() as mp:
        store = ModelStore(module_home / ".mlx-serve" / "models")
        for name, folder in folders.items():
            pull(store, str(folder), prepare=prepare, name=name)  # as `mlx-serve pull FOLDER --name NAME` does
        # float32 on every device, so that these tolerances hold on a Mac too (where auto is float16 on the
        # GPU); the half precisions are checked against the references in test_engine_*.py and test_overflow.py.
        app = build_app(mp, dtype="float32")
        yield app
        app.runtime.close()


def embed(app: App, model: str, texts: list[str], **body) -> np.ndarray:
    result = app.client.simulate_post("/v1/embeddings", json={"model": model, "input": texts, **body})
    assert result.status_code == 200, result.text
    return np.array([d["embedding"] for d in result.json["data"]], dtype=np.float32)


def scores(app: App, model: str, documents: list[str]) -> np.ndarray:
    body = {"model": model, "query": QUERY, "documents": documents}
    result = app.client.simulate_post("/v1/rerank", json=body)
    assert result.status_code == 200, result.text
    out = np.zeros(len(documents))
    for r in result.json["results"]:
        out[r["index"]] = r["relevance_score"]
    return out


def reference(folder: Path, **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True, **kwargs)


@pytest.mark.parametrize("name", ["xlmr-emb", "mpnet", "gemma", "modernbert"])
def test_embeddings_match_sentence_transformers(app: App, folders, name: str) -> None:
    ours = embed(app, name, TEXTS)
    expected = reference(folders[name])
    assert ours.shape == expected.shape
    assert cosine(ours, expected).min() >= 0.9999
    np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("name", ["xlmr-emb", "mpnet", "gemma", "modernbert"])
def test_a_padded_batch_equals_each_text_alone(app: App, name: str) -> None:
    together = embed(app, name, TEXTS)
    alone = np.concatenate([embed(app, name, [t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "body", "prompt_name"),
    [
        ("xlmr-emb", {"input_type": "query"}, "query"),  # e5: "query: "
        ("xlmr-emb", {"input_type": "document"}, "passage"),  # e5: "passage: "
        ("nomic-style", {"input_type": "query"}, "search_query"),  # nomic: "search_query: "
        ("nomic-style", {"input_type": "document"}, "search_document"),
        ("gemma", {"input_type": "query"}, "query"),
        ("gemma", {"input_type": "document"}, "document"),
        ("gemma", {"prompt_name": "Clustering"}, "Clustering"),
    ],
)
def test_prompts_are_applied_as_sentence_transformers_applies_them(app, folders, name, body, prompt_name) -> None:
    ours = embed(app, name, TEXTS, **body)
    expected = reference(folders[name], prompt_name=prompt_name)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert not np.allclose(ours, embed(app, name, TEXTS), atol=1e-3)  # the prompt changed the vectors


def test_cohere_input_types_use_the_models_prompts(app: App, folders) -> None:
    body = {"model": "gemma", "texts": TEXTS, "input_type": "clustering"}
    result = app.client.simulate_post("/v2/embed", json=body)
    assert result.status_code == 200, result.text
    expected = reference(folders["gemma"], prompt_name="Clustering")
    np.testing.assert_allclose(result.json["embeddings"]["float"], expected, atol=1e-4)


def test_an_unknown_prompt_name_is_a_400_naming_the_prompts(app: App) -> None:
    result = app.client.simulate_post("/v1/embeddings", json={"model": "gemma", "input": "x", "prompt_name": "nope"})
    assert result.status_code == 400 and result.json["error"]["param"] == "prompt_name"
    assert "Clustering" in result.json["error"]["message"]


def reference_scores(folder: Path) -> np.ndarray:
    """transformers' scores for (QUERY, each text): one label, its sigmoid (CrossEncoder's); two, the
    probability of the second."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForSequenceClassification

    ref = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    expected = []
    for doc in TEXTS:
        enc = tok.encode(QUERY, doc)
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([enc.ids])).logits[0]
        expected.append(torch.sigmoid(logits[0]).item() if len(logits) == 1 else torch.softmax(logits, 0)[1].item())
    return np.array(expected)


@pytest.mark.parametrize("name", ["xlmr-rr", "xlmr-rr2", "modernbert-rr"])
def test_cross_encoders_match_transformers(app: App, folders, name: str) -> None:
    expected = reference_scores(folders[name])
    got = scores(app, name, TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.ptp(got) > 1e-4  # the documents are told apart
    alone = np.array([scores(app, name, [t])[0] for t in TEXTS])
    np.testing.assert_allclose(got, alone, atol=1e-5)


def test_models_and_show_report_architecture_and_prompts(app: App) -> None:
    cards = {m["id"]: m for m in app.client.simulate_get("/v1/models").json["data"]}
    assert cards["xlmr-emb"]["architecture"] == "XLMRobertaModel"
    assert cards["xlmr-rr"]["architecture"] == "XLMRobertaForSequenceClassification"
    assert cards["mpnet"]["architecture"] == "MPNetModel"
    assert cards["gemma"]["architecture"] == "Gemma3TextModel"
    assert cards["modernbert"]["architecture"] == "ModernBertModel"
    shown = app.client.simulate_post("/api/show", json={"name": "gemma"}).json
    assert shown["prompts"] == tiny_models.EMBEDDING_GEMMA_PROMPTS


def test_an_unsupported_architecture_is_refused_at_pull_in_one_sentence(tmp_path: Path) -> None:
    from transformers import FunnelConfig, FunnelModel

    folder = tmp_path / "funnel"
    folder.mkdir()
    tiny_models.wordpiece_tokenizer(folder, tiny_models.BERT_SPECIALS, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]", 64)
    config = FunnelConfig(vocab_size=300, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=64)
    FunnelModel(config).save_pretrained(folder, safe_serialization=True)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError) as err:
        pull(store, str(folder), prepare=prepare)
    message = str(err.value)
    assert "FunnelModel" in message and "XLM-RoBERTa" in message and "EmbeddingGemma" in message
    assert "\n" not in message and "Traceback" not in message
    assert store.get("funnel") is None


def test_a_causal_gemma3_is_not_served_as_an_embedding_model(tmp_path: Path, folders) -> None:
    """Gemma3 weights without bidirectional attention once served at cosine -0.16, with status 200."""
    import json
    import shutil

    folder = tmp_path / "causal-gemma"
    shutil.copytree(folders["gemma"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["use_bidirectional_attention"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StoreError, match="causal Gemma3"):
        pull(ModelStore(tmp_path / "store"), str(folder), prepare=prepare)
