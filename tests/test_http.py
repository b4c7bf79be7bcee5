"""The HTTP layer over the fake service (tests/fake_service.py): routes, bodies, limits, errors in OpenAI's
shape, the system routes and what every dialect shares. No model runs: the engine's own answers are in
test_api.py."""

from __future__ import annotations

import json

import pytest
from falcon import testing

from mlx_serve.core.intents import EmbedIntent

from .conftest import FakeApp, assert_error
from .fake_service import DIMENSIONS, EMBEDDER


def embed(client: testing.TestClient, **body) -> testing.Result:
    return client.simulate_post("/v1/embeddings", json={"model": EMBEDDER, **body})


def last_intent(app: FakeApp) -> EmbedIntent:
    return app.service.intents[-1]


def test_null_optional_fields_mean_their_defaults(fake) -> None:
    embed(fake.client, input="x")
    plain = last_intent(fake)
    nulls = embed(fake.client, input="x", encoding_format=None, dimensions=None, user=None, input_type=None)
    assert nulls.status_code == 200, nulls.text
    assert last_intent(fake) == plain


def test_one_model_in_openai_shape(fake) -> None:
    card = fake.client.simulate_get(f"/v1/models/{EMBEDDER}").json
    assert card == next(m for m in fake.client.simulate_get("/v1/models").json["data"] if m["id"] == EMBEDDER)
    assert_error(fake.client.simulate_get("/v1/models/no-such-model"), 404, "model_not_found")
    assert_error(fake.client.simulate_get("/v1/models/../../etc/passwd"), 404, "")


def test_models_list_every_type_in_openai_shape(fake) -> None:
    body = fake.client.simulate_get("/v1/models").json
    assert body["object"] == "list"
    assert {(m["id"], m["object"], m["type"]) for m in body["data"]} == {
        (EMBEDDER, "model", "embedding"),
        ("fake-rerank", "model", "reranker"),
        ("fake-classify", "model", "classifier"),
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"input": None}, "invalid_input"),
        ({"input": ""}, "invalid_input"),
        ({"input": []}, "invalid_input"),
        ({"input": ["ok", ""]}, "invalid_input"),
        ({"input": [[]]}, "invalid_input"),
        ({"input": ["ok", 3]}, "invalid_input"),
        ({"input": [1, "a"]}, "invalid_input"),
        ({"input": {"text": "a"}}, "invalid_input"),
        ({"input": [[1, 2], ["a"]]}, "invalid_input"),
        ({"input": [True]}, "invalid_input"),
        ({"input": "a", "encoding_format": "int8"}, "invalid_encoding_format"),
        ({"input": "a", "dimensions": 0}, "invalid_dimensions"),
        ({"input": "a", "dimensions": DIMENSIONS + 1}, "invalid_dimensions"),
        ({"input": "a", "dimensions": "8"}, "invalid_dimensions"),
        ({"input": "a", "model": 7}, "invalid_model"),
        ({"input": "a", "dimension": 8}, "unknown_field"),
    ],
)
def test_bad_bodies_are_400_in_openai_shape(fake, body, code) -> None:
    error = assert_error(embed(fake.client, **body), 400, code)
    assert error["type"] == "invalid_request_error"


def test_a_misspelt_field_is_refused_with_the_one_meant(fake) -> None:
    error = assert_error(embed(fake.client, input="a", dimension=8), 400, "unknown_field")
    assert error["param"] == "dimension" and "dimensions" in error["message"]
    assert fake.service.intents == []  # refused before the core saw it


def test_input_errors_name_the_item(fake) -> None:
    error = assert_error(embed(fake.client, input=["ok", "fine", 3]), 400, "invalid_input")
    assert "input[2]" in error["message"]


def test_core_errors_about_one_input_name_it(fake) -> None:
    error = assert_error(embed(fake.client, input=["ok", [1, 10**9]]), 400, "invalid_input")
    assert error["message"].startswith("input[1] ") and error["param"] == "input"


@pytest.mark.parametrize("model", ["no-such-model", "../../etc/passwd", "/abs/path", "a/b", "", None])
def test_missing_or_unknown_model_is_404(fake, model) -> None:
    body = {"input": "a"} if model is None else {"model": model, "input": "a"}
    assert_error(fake.client.simulate_post("/v1/embeddings", json=body), 404, "model_not_found")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'"text"', "invalid_body"),
        (b"\xff\xfe", "invalid_json"),
        ('{"model": "fake-embed", "input": "x"}'.encode("utf-16"), "invalid_json"),
    ],
)
def test_malformed_bodies(fake, raw, code) -> None:
    result = fake.client.simulate_post("/v1/embeddings", body=raw, headers={"Content-Type": "application/json"})
    assert_error(result, 400, code)


def test_body_over_the_limit_is_413(make_fake) -> None:
    client = make_fake(max_request_bytes="2048").client
    big = json.dumps({"model": EMBEDDER, "input": "x" * 5000})
    assert_error(client.simulate_post("/v1/embeddings", body=big), 413, "payload_too_large")
    assert embed(client, input="small").status_code == 200


def test_too_many_inputs(make_fake) -> None:
    client = make_fake(max_inputs_per_request="3").client
    error = assert_error(embed(client, input=["a"] * 4), 400, "too_many_inputs")
    assert "3" in error["message"]
    assert embed(client, input=["a"] * 3).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/embeddings"), ("DELETE", "/v1/models"), ("POST", "/health"), ("PUT", "/metrics")]
)
def test_wrong_method_is_405(fake, method, path) -> None:
    error = assert_error(fake.client.simulate_request(method, path), 405, "method_not_allowed")
    assert method in error["message"]


def test_unknown_route_is_404(fake) -> None:
    assert_error(fake.client.simulate_get("/v1/nothing"), 404, "not_found")


def test_health_lists_the_loaded_models(fake) -> None:
    from mlx_serve import __version__

    before = fake.client.simulate_get("/health").json
    assert before["status"] == "ok" and before["version"] == __version__ and before["models_loaded"] == []
    embed(fake.client, input="load it")
    after = fake.client.simulate_get("/health").json
    assert after["models_loaded"] == [EMBEDDER]
    assert after["memory"]["active_bytes"] > before["memory"]["active_bytes"]


def test_metrics_count_requests_by_route_and_status(fake) -> None:
    embed(fake.client, input="hello world")
    embed(fake.client, input=["a", "b"])
    embed(fake.client, input=None)  # 400
    text = fake.client.simulate_get("/metrics").text
    assert 'mlx_serve_requests_total{method="POST",route="/v1/embeddings",status="200"} 2.0' in text
    assert 'mlx_serve_requests_total{method="POST",route="/v1/embeddings",status="400"} 1.0' in text
    assert 'mlx_serve_request_duration_seconds_count{route="/v1/embeddings",status="200"} 2.0' in text


@pytest.mark.filterwarnings("ignore::wsgiref.validate.WSGIWarning")
def test_a_made_up_method_is_counted_as_other(fake) -> None:
    for method in ("FOO", "BAR", "BAZ"):
        fake.client.simulate_request(method, "/health")
    text = fake.client.simulate_get("/metrics").text
    assert 'method="FOO"' not in text and 'method="other"' in text


def test_request_id_is_echoed_or_made(fake) -> None:
    assert fake.client.simulate_get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    assert len(fake.client.simulate_get("/health").headers["X-Request-ID"]) == 32


def test_an_internal_error_is_500_without_a_trace_and_the_next_request_works(fake, monkeypatch) -> None:
    real, calls = fake.service.embed, []

    def flaky(intent):
        calls.append(intent)
        if len(calls) == 1:
            raise RuntimeError("secret internal detail")
        return real(intent)

    monkeypatch.setattr(fake.service, "embed", flaky)
    error = assert_error(embed(fake.client, input="x"), 500, "internal_error")
    assert "secret" not in error["message"] and error["type"] == "server_error"
    assert embed(fake.client, input="x").status_code == 200


@pytest.mark.parametrize(
    ("keep_alive", "status", "seconds"),
    [
        (1e300, 400, None),
        ("nan", 400, None),
        (True, 400, None),
        ("5x", 400, None),
        (-1e300, 200, -1.0),  # negative: until unloaded
        ("10m", 200, 600.0),
        ("1h30m", 200, 5400.0),
        (-1, 200, -1.0),
        (0, 200, 0.0),
        (30, 200, 30.0),
    ],
)
def test_keep_alive_is_finite_and_bounded(fake, keep_alive, status, seconds) -> None:
    result = embed(fake.client, input="x", keep_alive=keep_alive)
    assert result.status_code == status, result.text
    if status == 400:
        assert result.json["error"]["code"] == "invalid_keep_alive"
    else:
        assert last_intent(fake).keep_alive == seconds


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"model": "fake-embed", "input": ["ok", "bad \\ud800 here"]}', "input[1]"),
        (b'{"model": "fake-embed", "input": "a\\u0000b"}', "input"),
        (b'{"model": "fake-rerank", "query": "q", "documents": [{"text": "\\udfff"}]}', "documents[0].text"),
    ],
)
def test_lone_surrogates_and_nul_are_400s_naming_where(fake, raw, where) -> None:
    path = "/v1/rerank" if b"documents" in raw else "/v1/embeddings"
    result = fake.client.simulate_post(path, body=raw, headers={"Content-Type": "application/json"})
    error = assert_error(result, 400, "")
    assert error["message"].startswith(where + " holds")


def test_json_nested_deeper_than_1024_is_a_400(fake) -> None:
    result = fake.client.simulate_post("/v1/embeddings", body=b'{"a":' * 2000 + b"1" + b"}" * 2000)
    assert_error(result, 400, "invalid_json")


def test_head_and_trailing_slashes(fake) -> None:
    assert fake.client.simulate_head("/health").status_code == 200
    assert embed(fake.client, input="x").status_code == 200
    assert fake.client.simulate_post("/v1/embeddings/", json={"model": EMBEDDER, "input": "x"}).status_code == 200
