"""Cohere's routes through the app: input types, truncation, errors in Cohere's shape, over the fake service
(tests/fake_service.py) but for max_tokens_per_doc, which the engine's tokenizer applies. (The SDK itself
drives them in test_clients.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import MINILM
from .fake_service import EMBEDDER, RERANKER


@pytest.fixture
def client(fake):
    return fake.client


def embed(client, **body):
    return client.simulate_post("/v2/embed", json={"model": EMBEDDER, "texts": ["hello world"], **body})


def openai_vector(client, text: str) -> np.ndarray:
    body = {"model": EMBEDDER, "input": text}
    return np.array(client.simulate_post("/v1/embeddings", json=body).json["data"][0]["embedding"])


def assert_cohere_error(result, status: int, words: str) -> None:
    assert result.status_code == status, result.text
    assert set(result.json) == {"id", "message"}  # Cohere's shape, not OpenAI's
    assert result.json["id"] == result.headers["X-Request-ID"]
    assert words in result.json["message"]


def test_v2_embed_defaults_to_floats_and_reports_input_tokens(client) -> None:
    result = embed(client, input_type="search_document").json
    assert result["response_type"] == "embeddings_by_type"
    assert set(result["embeddings"]) == {"float"}
    assert np.allclose(result["embeddings"]["float"][0], openai_vector(client, "hello world"), atol=1e-6)
    assert result["meta"]["billed_units"]["input_tokens"] == 4
    assert result["texts"] == ["hello world"]


def test_v2_embed_inputs_with_text_content_and_output_dimension(client) -> None:
    body = {"inputs": [{"content": [{"type": "text", "text": "hello world"}]}], "output_dimension": 8}
    vector = np.array(
        client.simulate_post("/v2/embed", json={"model": EMBEDDER, **body}).json["embeddings"]["float"][0]
    )
    full = openai_vector(client, "hello world")
    assert np.allclose(vector, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"texts": []}, "texts"),
        ({"texts": None}, "texts"),
        ({"texts": [""]}, "texts"),
        ({"images": ["data:image/png;base64,AAAA"]}, "text only"),
        ({"texts": None, "inputs": [{"content": [{"type": "image_url"}]}]}, "inputs[0]"),
        ({"embedding_types": ["int4"]}, "embedding_types"),
        ({"input_type": "search"}, "input_type"),
        ({"truncate": "MIDDLE"}, "truncate"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"output_dimension": 999}, "dimensions"),
        ({"output_dimensions": 8}, "output_dimensions"),
    ],
)
def test_v2_embed_bad_fields_are_400s_in_cohere_shape(client, body, words) -> None:
    assert_cohere_error(embed(client, **body), 400, words)


def test_v2_errors_for_models_routes_and_keys_in_cohere_shape(make_fake, client) -> None:
    assert_cohere_error(embed(client, model="no-such-model"), 404, "no-such-model")
    assert_cohere_error(client.simulate_post("/v2/rerank", json={"model": RERANKER}), 400, "query")
    assert_cohere_error(client.simulate_post("/v2/nothing", json={}), 404, "/v2/nothing")
    keyed = make_fake(api_key="k").client
    assert_cohere_error(keyed.simulate_post("/v2/embed", json={}), 401, "")
    assert "error" in keyed.simulate_post("/v1/embeddings", json={}).json  # OpenAI's shape elsewhere


def test_v2_rerank_cuts_documents_at_max_tokens_per_doc(make_app) -> None:
    client = make_app().client
    long = "paris is the capital of france " * 10

    def score(document: str, **body) -> float:
        body = {"model": MINILM, "query": "capital of france", "documents": [document], **body}
        return client.simulate_post("/v2/rerank", json=body).json["results"][0]["relevance_score"]

    assert score(long, max_tokens_per_doc=3) == pytest.approx(score("paris is the"), abs=1e-6)
    assert score(long) != pytest.approx(score("paris is the"), abs=1e-3)


def test_v1_embed_answers_plain_floats_unless_types_are_asked(client) -> None:
    body = {"model": EMBEDDER, "texts": ["hello world"], "input_type": "search_query"}
    plain = client.simulate_post("/v1/embed", json=body).json
    typed = client.simulate_post("/v1/embed", json={**body, "embedding_types": ["float"]}).json
    assert plain["response_type"] == "embeddings_floats" and typed["response_type"] == "embeddings_by_type"
    assert plain["embeddings"] == typed["embeddings"]["float"]
    assert np.allclose(plain["embeddings"][0], openai_vector(client, "hello world"), atol=1e-6)
    assert_cohere_error(client.simulate_post("/v1/embed", json={"model": EMBEDDER}), 400, "texts")


def test_v2_rerank_ranks_object_documents_by_rank_fields(client) -> None:
    docs = [{"title": "paris", "body": "the capital of france"}, {"title": "gravity", "body": "a force"}]
    body = {"model": RERANKER, "query": "capital of france", "documents": docs, "rank_fields": ["title", "body"]}
    ranked = client.simulate_post("/v2/rerank", json=body).json["results"]
    texts = [f"title: {d['title']}\nbody: {d['body']}" for d in docs]
    plain = client.simulate_post("/v2/rerank", json={**body, "documents": texts, "rank_fields": None}).json
    assert ranked == plain["results"]
