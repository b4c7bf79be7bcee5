"""Each dialect over the fake service: what it asks of the core (the intent it builds from its own fields),
the shape it answers in, and its own error shape. The real clients drive the same routes against a real
server in test_clients.py."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mlx_serve.core.intents import ClassifyIntent, EmbedIntent, PullIntent, RerankIntent
from mlx_serve.core.types import Truncation
from mlx_serve.http.encodings import quantize

from .fake_service import CLASSIFIER, DIMENSIONS, EMBEDDER, RERANKER, vector

DOCS = ["paris is the capital of france", "gravity is a force", "the capital of china is beijing"]
QUERY = "what is the capital of france"


def post(fake, path: str, **body):
    return fake.client.simulate_post(path, json=body)


def intent(fake, kind: type):
    return next(i for i in reversed(fake.service.intents) if isinstance(i, kind))


def assert_openai_error(result, status: int, code: str, param: str | None = None) -> None:
    assert result.status_code == status, result.text
    assert set(result.json) == {"error"} and result.json["error"]["code"] == code
    if param:
        assert result.json["error"]["param"] == param


def assert_tei_error(result, status: int, words: str) -> None:
    assert result.status_code == status, result.text
    assert set(result.json) == {"error", "error_type"}
    assert result.json["error_type"] == {400: "Validation", 404: "Validation", 413: "Validation"}.get(status, "Backend")
    assert words in result.json["error"]


def assert_ollama_error(result, status: int, words: str) -> None:
    assert result.status_code == status, result.text
    assert isinstance(result.json["error"], str) and words in result.json["error"]


# -- OpenAI and Voyage on /v1/embeddings -------------------------------------------------------------
def test_openai_fields_become_the_intent(fake) -> None:
    post(fake, "/v1/embeddings", model=EMBEDDER, input=["a b", "c"], dimensions=8, truncate=False, input_type="query")
    assert intent(fake, EmbedIntent) == EmbedIntent(
        EMBEDDER, ["a b", "c"], dimensions=8, input_type="query", truncation=Truncation(enabled=False)
    )


def test_voyage_names_mean_the_same_and_disagreeing_twins_are_refused(fake) -> None:
    body = {"model": EMBEDDER, "input": ["a"], "output_dimension": 8, "truncation": True}
    assert post(fake, "/v1/embeddings", **body).status_code == 200
    assert intent(fake, EmbedIntent).dimensions == 8 and intent(fake, EmbedIntent).truncation == Truncation()
    assert_openai_error(post(fake, "/v1/embeddings", **body, dimensions=4), 400, "invalid_output_dimension")


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_voyage_output_dtype_sends_the_compact_bytes_it_names(fake, dtype) -> None:
    body = {"model": EMBEDDER, "input": ["a text"], "output_dtype": dtype}
    expected = quantize(vector("a text")[None], dtype)[0]
    values = post(fake, "/v1/embeddings", **body).json["data"][0]["embedding"]
    assert values == expected.tolist()
    encoded = post(fake, "/v1/embeddings", **body, encoding_format="base64").json["data"][0]["embedding"]
    assert np.frombuffer(base64.b64decode(encoded), dtype=expected.dtype).tolist() == expected.tolist()


def test_float_base64_is_little_endian_float32(fake) -> None:
    body = {"model": EMBEDDER, "input": "a text", "encoding_format": "base64"}
    encoded = post(fake, "/v1/embeddings", **body).json["data"][0]["embedding"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded), "<f4"), vector("a text"))


def test_outputs_give_sparse_and_multi_vector_items(fake) -> None:
    body = {"model": EMBEDDER, "input": ["b a", "c"], "outputs": ["dense", "sparse", "multivector"]}
    item = post(fake, "/v1/embeddings", **body).json["data"][0]
    assert len(item["embedding"]) == DIMENSIONS
    assert item["sparse_embedding"]["indices"] == sorted(item["sparse_embedding"]["indices"])
    assert len(item["sparse_embedding"]["indices"]) == len(item["sparse_embedding"]["values"]) == 2
    assert np.array(item["multi_vector"]).shape == (2, DIMENSIONS)  # one vector per token, specials dropped
    only_sparse = post(fake, "/v1/embeddings", **{**body, "outputs": ["sparse"]}).json["data"][0]
    assert "embedding" not in only_sparse or only_sparse["embedding"] is None
    assert_openai_error(post(fake, "/v1/embeddings", **{**body, "outputs": ["lexical"]}), 400, "invalid_outputs")
    # Fields that shape the dense vector are refused when no dense vector was asked for, not ignored.
    for field, value in (("encoding_format", "base64"), ("output_dtype", "int8")):
        refused = post(fake, "/v1/embeddings", **{**body, "outputs": ["sparse"], field: value})
        assert_openai_error(refused, 400, f"invalid_{field}")
        assert refused.json["error"]["param"] == field


# -- rerank: Jina's (and Cohere v1's, Voyage's) /v1/rerank, Infinity's /rerank ----------------------------
def test_jina_rerank_orders_and_returns_documents_as_sent(fake) -> None:
    docs = [DOCS[0], {"text": DOCS[1], "id": "g"}, DOCS[2]]
    body = {"model": RERANKER, "query": QUERY, "documents": docs, "top_n": 2, "return_documents": True}
    result = post(fake, "/v1/rerank", **body).json
    assert [r["index"] for r in result["results"]] == [0, 2]
    assert result["results"][0]["document"] == {"text": DOCS[0]}
    scores = [r["relevance_score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
    assert intent(fake, RerankIntent).documents == DOCS
    assert "object" not in result and "data" not in result


def test_voyage_rerank_gets_top_k_and_its_data_field(fake) -> None:
    body = {"model": RERANKER, "query": QUERY, "documents": DOCS, "top_k": 1, "truncation": True}
    result = post(fake, "/v1/rerank", **body).json
    assert result["object"] == "list" and result["data"] == result["results"] and len(result["data"]) == 1
    assert_openai_error(post(fake, "/v1/rerank", **body, top_n=2), 400, "invalid_top_k")


def test_a_misspelt_rerank_field_is_a_400_not_ignored(fake) -> None:
    result = post(fake, "/v1/rerank", model=RERANKER, query=QUERY, documents=DOCS, topn=1)
    assert_openai_error(result, 400, "unknown_field", "topn")
    assert "top_n" in result.json["error"]["message"]


def test_infinity_rerank_returns_the_documents_text(fake) -> None:
    docs = [{"text": DOCS[0]}, DOCS[1]]
    body = {"model": RERANKER, "query": QUERY, "documents": docs, "return_documents": True}
    result = post(fake, "/rerank", **body).json["results"]
    assert result[0]["document"] == DOCS[0]


def test_rank_fields_build_each_text_once(fake) -> None:
    docs = [{"title": "paris", "body": "the capital of france"}]
    body = {"model": RERANKER, "query": QUERY, "documents": docs, "rank_fields": ["title", "body", "title"]}
    assert post(fake, "/v1/rerank", **body).status_code == 200
    assert intent(fake, RerankIntent).documents == ["title: paris\nbody: the capital of france"]


# -- Cohere v1/v2 -------------------------------------------------------------------------------------
def test_cohere_v2_embed_maps_its_fields_and_answers_by_type(fake) -> None:
    body = {"model": EMBEDDER, "texts": ["a text"], "input_type": "search_query", "embedding_types": ["float", "int8"]}
    result = post(fake, "/v2/embed", **body, truncate="START", output_dimension=8).json
    sent = intent(fake, EmbedIntent)
    assert (sent.input_type, sent.dimensions, sent.truncation.side) == ("query", 8, "start")
    assert set(result["embeddings"]) == {"float", "int8"}
    short = vector("a text")[:8] / np.linalg.norm(vector("a text")[:8])
    np.testing.assert_allclose(result["embeddings"]["float"][0], short, atol=1e-6)
    assert result["embeddings"]["int8"][0] == quantize(short[None], "int8")[0].tolist()
    assert result["meta"]["billed_units"]["input_tokens"] == 4


def test_cohere_errors_have_cohere_shape(fake) -> None:
    result = post(fake, "/v2/embed", model=EMBEDDER, texts=["a"], input_type="search_query", dimension=8)
    assert result.status_code == 400 and set(result.json) == {"id", "message"}
    assert "dimension" in result.json["message"]
    missing = post(fake, "/v2/rerank", model="nope", query="q", documents=["d"])
    assert missing.status_code == 404 and set(missing.json) == {"id", "message"}


# -- TEI ----------------------------------------------------------------------------------------------
def test_tei_embed_answers_a_bare_array_with_the_default_model(fake) -> None:
    result = post(fake, "/embed", inputs=["a", "b"], normalize=False, truncation_direction="left", truncate=True)
    assert np.array(result.json).shape == (2, DIMENSIONS)
    sent = intent(fake, EmbedIntent)
    assert sent.model == EMBEDDER and sent.normalize is False and sent.truncation == Truncation(side="start")
    root = fake.client.simulate_post("/", json={"inputs": "a"})
    np.testing.assert_allclose(root.json, [vector("a")], atol=1e-6)


def test_tei_rerank_by_texts_on_rerank_and_on_root(fake) -> None:
    body = {"query": QUERY, "texts": DOCS, "return_text": True}
    ranks = post(fake, "/rerank", **body).json
    assert [r["index"] for r in ranks] == [0, 2, 1] and ranks[0]["text"] == DOCS[0]
    assert post(fake, "/", **body).json == ranks
    raw = post(fake, "/rerank", **body, raw_scores=True).json
    assert raw[0]["score"] > 1  # the logit, not the sigmoid
    assert intent(fake, RerankIntent).model == RERANKER


def test_tei_errors_have_tei_shape(fake) -> None:
    assert_tei_error(post(fake, "/embed", inputs=["a"], normalise=True), 400, "normalise")
    assert_tei_error(post(fake, "/rerank", query=QUERY, texts=[], raw_scores=True), 400, "texts")
    assert_tei_error(post(fake, "/embed", inputs=["a"], model="nope"), 404, "nope")
    too_long = post(fake, "/embed", inputs=["w " * 100], truncate=False)
    assert_tei_error(too_long, 400, "inputs[0]")


def test_tei_embed_sparse_lists_the_non_zero_entries(fake) -> None:
    (row,) = post(fake, "/embed_sparse", inputs=["b a a"]).json
    assert [set(e) for e in row] == [{"index", "value"}] * 2 and all(e["value"] > 0 for e in row)
    assert intent(fake, EmbedIntent).outputs == ("sparse",)


def test_tei_predict_one_input_or_a_batch(fake) -> None:
    one = post(fake, "/predict", inputs="great film").json
    assert {p["label"] for p in one} == {"negative", "positive"}
    assert sum(p["score"] for p in one) == pytest.approx(1)
    batch = post(fake, "/predict", inputs=[["great film"], ["a", "pair"]]).json
    assert len(batch) == 2 and intent(fake, ClassifyIntent).inputs == ["great film", ("a", "pair")]
    assert intent(fake, ClassifyIntent).model == CLASSIFIER


def test_tei_tokenize_and_decode_round_trip(fake) -> None:
    (tokens,) = post(fake, "/tokenize", inputs=["hello big world"]).json
    assert [t["text"] for t in tokens] == ["[CLS]", "hello", "big", "world", "[SEP]"]
    assert tokens[2]["start"] == 6 and tokens[2]["stop"] == 9 and tokens[0]["special"]
    assert post(fake, "/decode", ids=[t["id"] for t in tokens]).json == ["hello big world"]


def test_tei_info_describes_the_default_model(fake) -> None:
    info = fake.client.simulate_get("/info").json
    assert info["served_model_name"] == EMBEDDER and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_batch_tokens"] == 4096


# -- Ollama -------------------------------------------------------------------------------------------
def test_ollama_root_and_version(fake) -> None:
    root = fake.client.simulate_get("/")
    assert root.status_code == 200 and root.text == "mlx-serve is running"
    assert "version" in fake.client.simulate_get("/api/version").json


def test_ollama_embed_maps_its_fields_and_answers_its_shape(fake) -> None:
    body = {"model": f"{EMBEDDER}:latest", "input": "a b", "truncate": False, "options": {"num_ctx": 8}}
    result = post(fake, "/api/embed", **body, keep_alive="5m", dimensions=None).json
    assert set(result) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert result["model"] == EMBEDDER and result["prompt_eval_count"] == 4
    np.testing.assert_allclose(result["embeddings"][0], vector("a b"), atol=1e-6)
    sent = intent(fake, EmbedIntent)
    assert sent.truncation == Truncation(enabled=False, max_tokens=8) and sent.keep_alive == 300


def test_ollama_legacy_embeddings(fake) -> None:
    result = post(fake, "/api/embeddings", model=EMBEDDER, prompt="a b").json
    np.testing.assert_allclose(result["embedding"], vector("a b"), atol=1e-6)


def test_ollama_options_it_does_not_have_and_unknown_fields_are_refused(fake) -> None:
    assert_ollama_error(
        post(fake, "/api/embed", model=EMBEDDER, input="a", options={"num_gpu": 1, "top_kk": 1}), 400, "top_kk"
    )
    assert_ollama_error(post(fake, "/api/embed", model=EMBEDDER, input="a", truncat=True), 400, "truncat")
    assert_ollama_error(post(fake, "/api/embed", model="nope", input="a"), 404, "nope")


def test_ollama_control_plane_shapes(fake) -> None:
    post(fake, "/api/embed", model=EMBEDDER, input="load")
    (tag,) = [t for t in fake.client.simulate_get("/api/tags").json["models"] if t["name"] == EMBEDDER]
    assert tag["model"] == EMBEDDER and tag["size"] > 0 and tag["details"]["family"] == "bert"
    (ps,) = fake.client.simulate_get("/api/ps").json["models"]
    assert (ps["model"], ps["size"], ps["size_vram"]) == (EMBEDDER, ps["size_bytes"], ps["size_bytes"])
    shown = post(fake, "/api/show", model=f"{EMBEDDER}:latest").json
    assert shown["model_info"]["general.architecture"] == "bert"
    assert shown["model_info"]["bert.embedding_length"] == DIMENSIONS and shown["capabilities"] == ["embedding"]


def test_refusing_to_delete_a_protected_model_leaves_it_loaded(fake) -> None:
    post(fake, "/api/embed", model=EMBEDDER, input="load")
    refused = fake.client.simulate_delete("/api/delete", json={"model": EMBEDDER})
    assert_ollama_error(refused, 400, "cannot be deleted")
    assert [m["name"] for m in fake.client.simulate_get("/api/ps").json["models"]] == [EMBEDDER]
    assert fake.client.simulate_delete("/api/delete", json={"model": RERANKER}).json["status"] == "success"
    assert RERANKER not in [m["id"] for m in fake.client.simulate_get("/v1/models").json["data"]]


def test_ollama_pull_streams_progress_or_answers_once(fake) -> None:
    streamed = post(fake, "/api/pull", model="org/new-model", type="reranker")
    lines = streamed.text.splitlines()
    assert len(lines) == 3 and lines[-1] == '{"status": "success"}'
    assert intent(fake, PullIntent) == PullIntent("org/new-model", type="reranker")
    once = post(fake, "/api/pull", model="org/missing", stream=False)
    assert once.json["error"] == "no model at 'org/missing'"


# -- Infinity's /classify ---------------------------------------------------------------------------------
def test_infinity_classify_answers_each_input_best_first(fake) -> None:
    result = post(fake, "/classify", model=CLASSIFIER, input=["great film", "dull"]).json
    assert result["object"] == "classify" and result["model"] == CLASSIFIER and len(result["data"]) == 2
    for row in result["data"]:
        assert {r["label"] for r in row} == {"negative", "positive"}
        assert [r["score"] for r in row] == sorted((r["score"] for r in row), reverse=True)
        assert sum(r["score"] for r in row) == pytest.approx(1)
    assert intent(fake, ClassifyIntent).inputs == ["great film", "dull"]
    raw = post(fake, "/classify", model=CLASSIFIER, input=["great film"], raw_scores=True).json["data"][0]
    assert sum(r["score"] for r in raw) != pytest.approx(1)  # logits, not probabilities
    assert_openai_error(post(fake, "/classify", model=EMBEDDER, input=["x"]), 400, "invalid_model")
    assert_openai_error(post(fake, "/classify", model=CLASSIFIER, input=["x"], top_k=1), 400, "unknown_field")
