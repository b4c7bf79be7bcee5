"""The rerank API, Qwen3 embeddings over HTTP, truncation, the queue and dynamic batching, through the
app with tiny models imported into a real store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.core.intents import RerankIntent
from mlx_serve.engine.families.qwen3 import DEFAULT_INSTRUCTION
from mlx_serve.engine.families.qwen3 import QUERY_TEMPLATE as QWEN3_QUERY_TEMPLATE

from . import tiny_models
from .conftest import MINILM, build_app, hold_inference_thread, wait_for

DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Explain gravity",
    "emoji 🚀",
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-models")
    return {
        "qwen3-emb": tiny_models.qwen3(root / "qwen3-emb", "embedding", seed=5),
        "qwen3-rr": tiny_models.qwen3(root / "qwen3-rr", "reranker", seed=6),
        "ce": tiny_models.bert_cross_encoder(root / "ce", seed=7),
    }


@pytest.fixture
def make(make_app, model_dirs):
    """An app with the three tiny models in its store, and these settings."""
    return lambda **settings: make_app(models=model_dirs, **settings)


@pytest.fixture(scope="module")
def api(module_home, model_dirs):
    """One app for the tests that only ask (the models load once); `make` builds one with other settings."""
    with pytest.MonkeyPatch.context() as mp:
        app = build_app(mp, model_dirs)
        yield app.client, app.runtime
        app.runtime.close()


def rerank(client, **body):
    return client.simulate_post(
        "/v1/rerank", json={"query": "What is the capital of China?", "documents": DOCS, **body}
    )


def test_store_detects_each_type(api) -> None:
    client, _ = api
    types = {m["id"]: m["type"] for m in client.simulate_get("/v1/models").json["data"]}
    assert types == {"qwen3-emb": "embedding", "qwen3-rr": "reranker", "ce": "reranker", MINILM: "embedding"}


@pytest.mark.parametrize("model", ["ce", "qwen3-rr"])
def test_rerank_sorts_by_score_with_index_and_usage(api, model) -> None:
    client, runtime = api
    result = rerank(client, model=model)
    assert result.status_code == 200, result.text
    body = result.json
    assert body["model"] == model and body["usage"]["total_tokens"] > 0
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in body["results"]) == list(range(len(DOCS)))
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    # The same scores as the engine gives for each document.
    direct = runtime.rerank(RerankIntent(model, "What is the capital of China?", DOCS)).scores
    for r in body["results"]:
        assert r["relevance_score"] == pytest.approx(float(direct[r["index"]]), abs=1e-6)
        assert 0.0 <= r["relevance_score"] <= 1.0


def test_top_n_return_documents_and_document_objects(api) -> None:
    client, _ = api
    objects = [{"text": d} for d in DOCS]
    full = rerank(client, model="ce").json["results"]
    top = rerank(client, model="ce", documents=objects, top_n=2, return_documents=True).json["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert [r["document"] for r in top] == [{"text": DOCS[r["index"]]} for r in top]
    assert len(rerank(client, model="ce", top_n=99).json["results"]) == len(DOCS)


def test_rerank_at_root_is_infinitys_shape(api) -> None:
    """/rerank ranks as /v1/rerank does, and returns documents as plain strings (Infinity's shape, which
    litellm's `infinity/` provider reads); /v1/rerank returns them as objects (Jina's and Cohere's)."""
    client, _ = api
    body = {"model": "ce", "query": "q", "documents": DOCS, "return_documents": True}
    infinity = client.simulate_post("/rerank", json=body).json["results"]
    jina = client.simulate_post("/v1/rerank", json=body).json["results"]
    assert [(r["index"], r["relevance_score"]) for r in infinity] == [(r["index"], r["relevance_score"]) for r in jina]
    assert [r["document"] for r in infinity] == [DOCS[r["index"]] for r in infinity]
    assert [r["document"] for r in jina] == [{"text": DOCS[r["index"]]} for r in jina]


def test_object_documents_rank_their_rank_fields_and_come_back_whole(api) -> None:
    client, _ = api
    docs = [{"title": d.split()[0], "body": d, "id": i} for i, d in enumerate(DOCS)]
    ranked = rerank(client, model="ce", documents=docs, rank_fields=["title", "body"], return_documents=True).json
    as_text = rerank(client, model="ce", documents=[f"title: {d['title']}\nbody: {d['body']}" for d in docs]).json
    assert [(r["index"], r["relevance_score"]) for r in ranked["results"]] == [
        (r["index"], r["relevance_score"]) for r in as_text["results"]
    ]
    assert [r["document"] for r in ranked["results"]] == [docs[r["index"]] for r in ranked["results"]]
    missing = rerank(client, model="ce", documents=[{"title": "x"}])
    assert missing.status_code == 400 and "rank_fields" in missing.json["error"]["message"]
    none = rerank(client, model="ce", documents=[{"title": "x"}], rank_fields=["body"])
    assert none.status_code == 400 and none.json["error"]["param"] == "documents"


def test_text_output_follows_the_threshold_at_its_boundary(api) -> None:
    client, _ = api
    results = rerank(client, model="qwen3-rr").json["results"]
    assert all("text_output" not in r for r in results)
    middle = results[1]["relevance_score"]  # a threshold equal to a score says "yes" to it
    judged = rerank(client, model="qwen3-rr", return_text=True, decision_threshold=middle).json["results"]
    assert [r["text_output"] for r in judged] == ["yes", "yes"] + ["no"] * (len(DOCS) - 2)
    assert [r["relevance_score"] for r in judged] == [r["relevance_score"] for r in results]
    default = rerank(client, model="qwen3-rr", return_text=True).json["results"]
    assert all(r["text_output"] == ("yes" if r["relevance_score"] >= 0.5 else "no") for r in default)
    assert [
        r["text_output"] for r in rerank(client, model="ce", return_text=True, decision_threshold=0.0).json["results"]
    ] == ["yes"] * len(DOCS)
    assert [
        r["text_output"] for r in rerank(client, model="ce", return_text=True, decision_threshold=1.0).json["results"]
    ] == ["no"] * len(DOCS)


def test_an_embedding_model_reranks_by_cosine(api) -> None:
    client, _ = api
    query = "What is the capital of China?"
    results = rerank(client, model=MINILM).json["results"]
    vectors = client.simulate_post("/v1/embeddings", json={"model": MINILM, "input": [query, *DOCS]}).json["data"]
    q = np.array(vectors[0]["embedding"])
    for r in results:
        d = np.array(vectors[1 + r["index"]]["embedding"])
        assert r["relevance_score"] == pytest.approx(float(q @ d / np.linalg.norm(q) / np.linalg.norm(d)), abs=1e-5)


def test_qwen3_reranker_instruction(api) -> None:
    client, _ = api
    default = {r["index"]: r["relevance_score"] for r in rerank(client, model="qwen3-rr").json["results"]}
    custom = {
        r["index"]: r["relevance_score"]
        for r in rerank(client, model="qwen3-rr", instruction="Find poems").json["results"]
    }
    assert default != custom


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "ce", "documents": DOCS}, 400, "invalid_query"),
        ({"model": "ce", "query": "", "documents": DOCS}, 400, "invalid_query"),
        ({"model": "ce", "query": "q", "documents": []}, 400, "invalid_documents"),
        ({"model": "ce", "query": "q", "documents": "one"}, 400, "invalid_documents"),
        ({"model": "ce", "query": "q", "documents": ["a", 3]}, 400, "invalid_documents"),
        ({"model": "ce", "query": "q", "documents": [{"txt": "a"}]}, 400, "invalid_documents"),
        ({"model": "ce", "query": "q", "documents": DOCS, "top_n": 0}, 400, "invalid_top_n"),
        (
            {"model": "ce", "query": "q", "documents": DOCS, "decision_threshold": 1.5},
            400,
            "invalid_decision_threshold",
        ),
        ({"model": "ce", "query": "q", "documents": DOCS, "return_text": "yes"}, 400, "invalid_return_text"),
        ({"model": "ce", "query": "q", "documents": DOCS, "instruction": "x"}, 400, "invalid_instruction"),
        ({"model": "nope", "query": "q", "documents": DOCS}, 404, "model_not_found"),
        ({"query": "q", "documents": DOCS}, 404, "model_not_found"),
    ],
)
def test_rerank_errors(api, body, status, code) -> None:
    client, _ = api
    result = client.simulate_post("/v1/rerank", json=body)
    assert result.status_code == status, result.text
    assert result.json["error"]["code"] == code


def test_a_reranker_cannot_embed(api) -> None:
    client, _ = api
    result = client.simulate_post("/v1/embeddings", json={"model": "ce", "input": "x"})
    assert result.status_code == 400 and result.json["error"]["code"] == "invalid_model"


def embed(client, **body):
    return client.simulate_post("/v1/embeddings", json={"model": "qwen3-emb", **body})


def vec(result) -> np.ndarray:
    assert result.status_code == 200, result.text
    return np.array([d["embedding"] for d in result.json["data"]])


def test_qwen3_queries_get_the_instruction_documents_none(api) -> None:
    client, _ = api
    query = "What is the capital of China?"
    as_query = vec(embed(client, input=query, input_type="query"))
    by_hand = vec(embed(client, input=QWEN3_QUERY_TEMPLATE.format(instruction=DEFAULT_INSTRUCTION, text=query)))
    np.testing.assert_allclose(as_query, by_hand, atol=1e-6)
    np.testing.assert_allclose(
        vec(embed(client, input=query, input_type="document")), vec(embed(client, input=query)), atol=1e-6
    )
    custom = vec(embed(client, input=query, instruction="Find poems"))
    assert not np.allclose(custom, as_query, atol=1e-3)
    bad = embed(client, input=query, input_type="document", instruction="x")
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_instruction"
    bert = client.simulate_post("/v1/embeddings", json={"model": MINILM, "input": "x", "instruction": "y"})
    assert bert.status_code == 400 and bert.json["error"]["code"] == "invalid_instruction"


def test_default_instruction_is_configurable_per_model(make) -> None:
    client = make(model_instructions='{"qwen3-emb" = "Find poems"}').client
    configured = vec(embed(client, input="q", input_type="query"))
    explicit = vec(embed(client, input="q", instruction="Find poems"))
    np.testing.assert_allclose(configured, explicit, atol=1e-6)


def test_qwen3_matryoshka_dimensions(api) -> None:
    client, _ = api
    full = vec(embed(client, input="gravity"))[0]
    short = vec(embed(client, input="gravity", dimensions=32))[0]
    np.testing.assert_allclose(short, full[:32] / np.linalg.norm(full[:32]), atol=1e-6)


def test_truncation_off_is_a_400_naming_the_input(api, make) -> None:
    client, _ = api
    long_text = "gravity " * 400
    assert embed(client, input=["ok", long_text]).status_code == 200  # truncated by default
    error = embed(client, input=["ok", long_text], truncate=False).json["error"]
    assert error["code"] == "invalid_input" and "input[1]" in error["message"] and "128" in error["message"]
    error = rerank(client, model="ce", documents=["ok", long_text * 3], truncate=False).json["error"]
    assert error["code"] == "invalid_input" and "documents[1]" in error["message"]

    strict = make(auto_truncate="false").client
    assert embed(strict, input=long_text).status_code == 400
    assert embed(strict, input=long_text, truncate=True).status_code == 200


def test_full_queue_is_a_503_and_others_still_succeed(make) -> None:
    app = make(max_queued_requests="2")
    client, runtime = app.client, app.runtime
    assert embed(client, input="load the model").status_code == 200
    release = hold_inference_thread(runtime)
    with ThreadPoolExecutor(2) as pool:
        queued = [pool.submit(embed, client, input=f"text {i}") for i in range(2)]
        wait_for(lambda: runtime.scheduler.queued()[0] == 2)
        refused = embed(client, input="one too many")
        assert refused.status_code == 503 and refused.json["error"]["code"] == "overloaded"
        release.set()
        assert [q.result().status_code for q in queued] == [200, 200]


def test_a_request_past_its_deadline_is_a_503_and_never_runs(make) -> None:
    app = make(request_timeout="0.5")
    client, runtime = app.client, app.runtime
    release = hold_inference_thread(runtime)
    late = embed(client, input="late")
    assert late.status_code == 503 and "0.5" in late.json["error"]["message"]
    release.set()
    assert embed(client, input="on time").status_code == 200
    assert 'mlx_serve_tokens_total{model="qwen3-emb"}' in client.simulate_get("/metrics").text
    assert runtime.metrics.inputs.labels("qwen3-emb")._value.get() == 1  # only the request on time ran


def test_a_queued_request_whose_client_has_gone_never_runs(make) -> None:
    """The worker tells each request thread how to ask after its client (core/client.py); a request
    still queued when its client goes is dropped, and the inference thread never runs it."""
    import threading

    from mlx_serve.core import client as connection
    from mlx_serve.core.errors import ClientClosed
    from mlx_serve.core.intents import EmbedIntent

    runtime = make().runtime
    runtime.embed(EmbedIntent("qwen3-emb", ["loads the model"]))
    gone = threading.Event()
    outcome: list[BaseException] = []

    def request() -> None:
        with connection.watch(gone.is_set):
            try:
                runtime.embed(EmbedIntent("qwen3-emb", ["left before its turn"]))
            except ClientClosed as exc:
                outcome.append(exc)

    release = hold_inference_thread(runtime)
    thread = threading.Thread(target=request)
    thread.start()
    wait_for(lambda: runtime.scheduler.queued()[0] == 1)
    gone.set()
    thread.join(5)
    release.set()
    assert outcome and outcome[0].status == 499
    runtime.embed(EmbedIntent("qwen3-emb", ["on time"]))  # the inference thread goes on
    assert runtime.metrics.inputs.labels("qwen3-emb")._value.get() == 2  # the one that left never ran
    assert runtime.metrics.abandoned.labels("queued")._value.get() == 1


def test_concurrent_requests_of_mixed_models_and_lengths_get_their_own_answers(api) -> None:
    client, runtime = api
    jobs = []
    for i in range(12):
        texts = [f"{i} " + "gravity and the capital " * (i % 5 + 1)] * (1 + i % 3)
        if i % 3 == 0:
            jobs.append(("/v1/embeddings", {"model": "qwen3-emb", "input": texts}))
        elif i % 3 == 1:
            jobs.append(("/v1/embeddings", {"model": MINILM, "input": texts}))
        else:
            jobs.append(("/v1/rerank", {"model": "qwen3-rr", "query": f"q{i}", "documents": texts + DOCS}))
    alone = [client.simulate_post(path, json=body).json for path, body in jobs]

    release = hold_inference_thread(runtime)  # everything below queues, then runs merged
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(client.simulate_post, path, json=body) for path, body in jobs]
        wait_for(lambda: runtime.scheduler.queued()[0] == len(jobs))
        release.set()
        together = [f.result().json for f in futures]

    for a, t in zip(alone, together, strict=True):
        if "data" in a:
            np.testing.assert_allclose(vec_of(t), vec_of(a), atol=1e-5)
        else:
            # Compared by document: duplicated documents tie, and ties may swap places.
            by_index = {r["index"]: r["relevance_score"] for r in a["results"]}
            np.testing.assert_allclose(
                [r["relevance_score"] for r in t["results"]], [by_index[r["index"]] for r in t["results"]], atol=1e-5
            )
    metrics = client.simulate_get("/metrics").text
    # Requests for the same model were merged: some batch run served more than one request.
    merged = [line for line in metrics.splitlines() if line.startswith('mlx_serve_batch_requests_bucket{le="1.0"}')]
    count = [line for line in metrics.splitlines() if line.startswith("mlx_serve_batch_requests_count")]
    assert float(merged[0].split()[-1]) < float(count[0].split()[-1])
    for name in (
        "mlx_serve_batch_size_bucket",
        "mlx_serve_queue_wait_seconds_bucket",
        'mlx_serve_inference_seconds_count{model="qwen3-rr"}',
        'mlx_serve_tokens_total{model="qwen3-emb"}',
    ):
        assert name in metrics


def vec_of(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]])


def test_a_load_outlasting_its_request_still_happens_once_for_the_next(make) -> None:
    """A model whose load is still queued when its request times out loads anyway: the next request finds
    it loaded, and no load is ever left queued for ever (which kept the model's slot from being freed)."""
    app = make(request_timeout="0.5")
    client, runtime = app.client, app.runtime
    release = hold_inference_thread(runtime)
    late = embed(client, input="its model is not loaded yet")
    assert late.status_code == 503
    release.set()
    wait_for(lambda: [m["name"] for m in client.simulate_get("/api/ps").json["models"]] == ["qwen3-emb"])
    misses = runtime.metrics.cache_misses.labels("embedding")._value.get()
    assert embed(client, input="on time").status_code == 200
    assert runtime.metrics.cache_misses.labels("embedding")._value.get() == misses  # loaded once, for both
