"""The model cache end to end: through HTTP, real (tiny) models, real MLX memory and the real reaper.
Its policy (LRU, TTL, keep_alive, leases, trimming, pinning) is tested in test_cache_policy.py."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import pytest

from . import tiny_models
from .conftest import MINILM, App, free_port, hold_inference_thread, metric, run_cli, wait_for


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-models")
    return {
        "emb-a": tiny_models.qwen3(root / "emb-a", "embedding", seed=11),
        "emb-b": tiny_models.qwen3(root / "emb-b", "embedding", seed=12),
        "rr": tiny_models.bert_cross_encoder(root / "rr", seed=13),
    }


@pytest.fixture
def make(make_app, model_dirs):
    return lambda cli=None, **settings: make_app(models=model_dirs, cli=cli, **settings)


def embed(app: App, model: str, **extra) -> int:
    return app.client.simulate_post("/v1/embeddings", json={"model": model, "input": "hi", **extra}).status_code


def test_idle_ttl_unloads_with_no_traffic(make) -> None:
    app = make(keep_alive="0.3")
    assert embed(app, "emb-a") == 200
    finished = time.monotonic()
    assert app.runtime.cache.loaded() == ["emb-a"]
    wait_for(lambda: app.runtime.cache.loaded() == [], timeout=4)
    assert 0.25 <= time.monotonic() - finished <= 2.3  # the deadline, plus the two seconds the plan allows
    assert metric(app.client, 'mlx_serve_cache_evictions_total{reason="ttl",type="embedding"}') == 1


def test_keep_alive_in_a_request_sets_the_next_idle_ttl(make) -> None:
    app = make(keep_alive="1800")
    assert embed(app, "emb-a", keep_alive=0.2) == 200
    wait_for(lambda: app.runtime.cache.loaded() == [], timeout=3)
    body = {"model": "rr", "query": "q", "documents": ["d"], "keep_alive": -1}
    assert app.client.simulate_post("/v1/rerank", json=body).status_code == 200
    assert app.client.simulate_get("/api/ps").json["models"][0]["expires_at"] is None


def test_regression_a_model_pulled_under_a_loaded_name_mid_request(make, model_dirs) -> None:
    # Storing a model under the built-in's name while a request on the built-in is in flight: the old
    # request's end deleted the new model's slot, and the next request failed with a KeyError (500).
    app = make(keep_alive="-1")
    assert embed(app, MINILM) == 200
    release = hold_inference_thread(app.runtime)
    with ThreadPoolExecutor(2) as pool:
        before = pool.submit(embed, app, MINILM)  # leases the built-in MiniLM, queued behind the hold
        wait_for(lambda: app.runtime.scheduler.queued()[0] == 1)
        app.runtime.store.import_dir(model_dirs["emb-a"], MINILM)  # the name now means a Qwen3 model
        after = pool.submit(embed, app, MINILM)  # a new slot: its load waits as a control job
        wait_for(lambda: sum(app.runtime.scheduler.queued()) == 2)
        release.set()
        assert (before.result(), after.result()) == (200, 200)
    assert embed(app, MINILM) == 200
    dims = len(
        app.client.simulate_post("/v1/embeddings", json={"model": MINILM, "input": "x"}).json["data"][0]["embedding"]
    )
    assert dims == 64  # the stored model's, not the built-in's 384
    wait_for(lambda: metric(app.client, 'mlx_serve_cache_evictions_total{reason="replaced",type="embedding"}') == 1)
    assert [m["name"] for m in app.client.simulate_get("/api/ps").json["models"]] == [MINILM]


@pytest.mark.parametrize("layer", ["config.yaml", "environment", "cli"])
def test_preload_from_each_layer(make, home: Path, layer: str) -> None:
    from mlx_serve.cli.parser import build_parser, cli_layer

    if layer == "config.yaml":
        (home / ".mlx-serve").mkdir(exist_ok=True)
        (home / ".mlx-serve" / "config.yaml").write_text("preload_models: [emb-a, rr]\n")
        app = make()
    elif layer == "environment":
        app = make(preload_models="emb-a,rr")
    else:
        app = make(cli=cli_layer(build_parser().parse_args(["start", "--preload", "emb-a", "--preload", "rr"])))
    assert app.settings.preload_models == ("emb-a", "rr")
    app.runtime.preload(app.settings.preload_models)
    assert sorted(app.runtime.cache.loaded()) == ["emb-a", "rr"]


def test_preloaded_and_pinned_models_never_expire(make) -> None:
    app = make(keep_alive="1", preload_pinned="true")
    app.runtime.preload(["emb-a"])
    (model,) = app.client.simulate_get("/api/ps").json["models"]
    assert model["pinned"] is True and model["expires_at"] is None


@pytest.mark.parametrize("pinned", ["true", "false"])
def test_a_request_cannot_unload_what_was_preloaded(make, pinned: str) -> None:
    """`keep_alive: 0` in one request unloaded a model preloaded with preload_pinned, and sent in a loop
    raised everyone's latency 18-fold. A request may lengthen a preloaded model's stay, never shorten it."""
    app = make(keep_alive="-1", preload_pinned=pinned)
    app.runtime.preload(["emb-a"])
    for _ in range(3):
        assert embed(app, "emb-a", keep_alive=0) == 200
    time.sleep(0.3)  # an unload would have run by now (the reaper acts at once on a keep_alive of 0)
    assert [m["name"] for m in app.client.simulate_get("/api/ps").json["models"]] == ["emb-a"]
    assert embed(app, "emb-b", keep_alive=0) == 200  # what nobody preloaded: unloaded once idle, as asked
    wait_for(lambda: app.runtime.cache.loaded() == ["emb-a"])


def test_lookups_of_unknown_names_are_not_kept(make) -> None:
    """Each unknown model name looked up stayed in the store's cache: +61 MB per 200,000 names."""
    app = make()
    assert embed(app, "no-such-model") == 404  # the 404 lists the stored models, which are kept
    before = len(app.runtime.store._entries)
    for i in range(2000):
        assert embed(app, f"no-such-model-{i}") == 404
    assert len(app.runtime.store._entries) == before


def test_unload_really_frees_memory(make) -> None:
    app = make(keep_alive="-1")
    mx.clear_cache()
    before = mx.get_active_memory()
    assert embed(app, MINILM) == 200
    loaded = mx.get_active_memory()
    assert loaded - before > 80 * 2**20  # all-MiniLM-L6-v2 holds about 87 MiB of float32 weights
    unload = app.client.simulate_post("/api/unload", json={"name": MINILM})
    assert unload.json == {"name": MINILM, "status": "unloading"}
    wait_for(lambda: app.runtime.cache.loaded() == [])
    wait_for(lambda: mx.get_active_memory() - before < 4 * 2**20)


def test_metrics_after_a_scripted_sequence(make) -> None:
    app = make(cache_max_embedding_models="1", keep_alive="-1")
    embed(app, "emb-a")  # miss
    embed(app, "emb-a")  # hit
    embed(app, "emb-b")  # miss, emb-a evicted (lru)
    app.client.simulate_post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["d"]})  # reranker miss
    assert metric(app.client, 'mlx_serve_models_loaded{type="embedding"}') == 1
    app.client.simulate_post("/api/unload", json={"name": "emb-b"})
    wait_for(lambda: app.runtime.cache.loaded() == ["rr"])
    expected = {
        'mlx_serve_cache_hits_total{type="embedding"}': 1,
        'mlx_serve_cache_misses_total{type="embedding"}': 2,
        'mlx_serve_cache_misses_total{type="reranker"}': 1,
        'mlx_serve_cache_evictions_total{reason="lru",type="embedding"}': 1,
        'mlx_serve_cache_evictions_total{reason="manual",type="embedding"}': 1,
        'mlx_serve_models_loaded{type="embedding"}': 0,
        'mlx_serve_models_loaded{type="reranker"}': 1,
        "mlx_serve_model_load_seconds_count": 3,
    }
    assert {name: metric(app.client, name) for name in expected} == expected
    assert metric(app.client, 'mlx_serve_model_memory_bytes{model="rr"}') > 0
    assert metric(app.client, 'mlx_serve_model_memory_bytes{model="emb-b"}') is None


def test_unload_and_ps_endpoints(make) -> None:
    app = make(keep_alive="600")
    client = app.client
    assert client.simulate_get("/api/ps").json["models"] == []
    embed(app, "emb-a")
    (model,) = client.simulate_get("/api/ps").json["models"]
    assert model["name"] == "emb-a" and model["type"] == "embedding" and model["in_flight"] == 0
    assert model["size_bytes"] > 0 and model["expires_at"].endswith("Z")
    assert client.simulate_post("/api/unload", json={"name": "emb-b"}).json["status"] == "not_loaded"
    missing = client.simulate_post("/api/unload", json={"name": "nope"})
    assert missing.status_code == 404 and missing.json["code"] == "model_not_found"
    assert client.simulate_post("/api/unload", json={}).status_code == 400


@pytest.mark.process
def test_cli_ps_and_unload_against_a_running_server(home: Path) -> None:
    port = str(free_port())

    def cli(*args: str):
        return run_cli(home, *args, "--port", port)

    assert cli("start", "--preload", MINILM).returncode == 0
    try:
        models = json.loads(cli("ps", "--json").stdout)
        assert [m["name"] for m in models] == [MINILM]
        assert MINILM in cli("ps").stdout
        out = cli("unload", MINILM)
        assert out.returncode == 0 and "unloading" in out.stdout
        deadline = time.monotonic() + 5
        while json.loads(cli("ps", "--json").stdout) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(cli("ps", "--json").stdout) == []
        assert cli("unload", "nope").stderr.startswith("mlx-serve: The model 'nope' does not exist")
    finally:
        cli("stop")
