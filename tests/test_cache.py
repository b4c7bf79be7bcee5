"""The model cache: LRU per type, idle TTL, leases, preload, explicit unload, memory, metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import pytest
import structlog
from falcon import testing

from mlx_serve.app import create_app
from mlx_serve.metrics import Metrics
from mlx_serve.runtime import Runtime
from mlx_serve.settings import load_settings
from mlx_serve.store import ModelStore

from . import tiny_models
from .conftest import MINILM, free_port, hold_inference_thread


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-models")
    return {
        "emb-a": tiny_models.qwen3(root / "emb-a", "embedding", seed=11),
        "emb-b": tiny_models.qwen3(root / "emb-b", "embedding", seed=12),
        "rr": tiny_models.bert_cross_encoder(root / "rr", seed=13),
    }


class Server:
    def __init__(self, home: Path, model_dirs: dict[str, Path], monkeypatch, cli: dict | None = None, **env: str):
        for key, value in env.items():
            monkeypatch.setenv(f"MLX_SERVE_{key.upper()}", value)
        self.settings = load_settings(cli=cli).settings
        store = ModelStore(self.settings.models_dir)
        for name, path in model_dirs.items():
            if store.get(name) is None:
                store.import_dir(path, name)
        self.runtime = Runtime(self.settings, store, Metrics())
        self.client = testing.TestClient(create_app(self.settings, self.runtime, self.runtime.metrics))

    def embed(self, model: str, **extra) -> int:
        return self.client.simulate_post("/v1/embeddings", json={"model": model, "input": "hi", **extra}).status_code

    def loaded(self) -> list[str]:
        return self.runtime.loaded()

    def wait_for(self, predicate, timeout: float = 5.0) -> float:
        start = time.monotonic()
        while not predicate():
            assert time.monotonic() - start < timeout, "condition not reached in time"
            time.sleep(0.02)
        return time.monotonic() - start

    def metric(self, name: str) -> float | None:
        for line in self.client.simulate_get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
def make(home: Path, model_dirs, monkeypatch) -> Iterator:
    servers: list[Server] = []

    def factory(cli: dict | None = None, **env: str) -> Server:
        server = Server(home, model_dirs, monkeypatch, cli, **env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.runtime.close()


def test_lru_order_with_a_cap_of_two(make) -> None:
    s = make(cache_max_embedding_models="2", cache_ttl_seconds="-1")
    for model in ("emb-a", "emb-b", "emb-a", MINILM):  # emb-b is now the least recently used
        assert s.embed(model) == 200
    assert sorted(s.loaded()) == sorted(["emb-a", MINILM])
    assert s.embed("rr") == 400  # a reranker lives in its own cache...
    s.client.simulate_post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["d"]})
    assert sorted(s.loaded()) == sorted(["emb-a", MINILM, "rr"])  # ...and does not push embedders out


def test_lru_order_with_a_cap_of_one(make) -> None:
    s = make(cache_max_embedding_models="1", cache_ttl_seconds="-1")
    with structlog.testing.capture_logs() as logs:
        assert s.embed("emb-a") == 200
        assert s.embed("emb-b") == 200
    assert s.loaded() == ["emb-b"]
    events = [(e["event"], e.get("model"), e.get("reason")) for e in logs if e["event"].startswith("model_")]
    assert events == [
        ("model_loaded", "emb-a", None),
        ("model_unloaded", "emb-a", "lru"),
        ("model_loaded", "emb-b", None),
    ]


def test_idle_ttl_unloads_with_no_traffic(make) -> None:
    s = make(cache_ttl_seconds="1")
    assert s.embed("emb-a") == 200
    finished = time.monotonic()
    assert s.loaded() == ["emb-a"]
    s.wait_for(lambda: s.loaded() == [], timeout=4)
    assert 0.9 <= time.monotonic() - finished <= 3.0  # the deadline, plus the two seconds the plan allows
    assert s.metric('mlx_serve_cache_evictions_total{reason="ttl",type="embedding"}') == 1


def test_ttl_zero_unloads_as_soon_as_idle_and_negative_never(make) -> None:
    s = make(cache_ttl_seconds="0")
    assert s.embed("emb-a") == 200
    s.wait_for(lambda: s.loaded() == [], timeout=2)
    forever = make(cache_ttl_seconds="-1")
    assert forever.embed("emb-a") == 200
    time.sleep(1.5)
    assert forever.loaded() == ["emb-a"]
    assert forever.client.simulate_get("/api/ps").json["models"][0]["expires_at"] is None


def test_a_request_longer_than_the_ttl_keeps_its_model(make) -> None:
    s = make(cache_ttl_seconds="1")
    assert s.embed("emb-a") == 200
    release = hold_inference_thread(s.runtime)  # the next request waits 2 s: longer than the TTL
    result: dict = {}
    request = threading.Thread(target=lambda: result.setdefault("status", s.embed("emb-a")))
    request.start()
    time.sleep(2.0)
    assert s.loaded() == ["emb-a"], "a leased model must not expire"
    ps = s.client.simulate_get("/api/ps").json["models"][0]
    assert ps["in_flight"] == 1 and ps["expires_at"] is None
    release.set()
    request.join()
    assert result["status"] == 200
    finished = time.monotonic()
    s.wait_for(lambda: s.loaded() == [], timeout=4)  # and the TTL runs from the end of the lease
    assert time.monotonic() - finished >= 0.9


def test_eviction_when_every_model_is_leased_exceeds_the_cap_then_trims(make) -> None:
    s = make(cache_max_embedding_models="1", cache_ttl_seconds="-1")
    assert s.embed("emb-a") == 200
    cache = s.runtime.cache
    with cache.lease(s.runtime.entry("emb-a")):  # as in-flight requests hold them
        with cache.lease(s.runtime.entry("emb-b")):
            assert s.embed("emb-b") == 200
            assert sorted(s.loaded()) == ["emb-a", "emb-b"]  # over the cap, but nothing was torn down
        # emb-b is idle now and the cache over its cap: it trims back, sparing the model still in use.
        s.wait_for(lambda: s.loaded() == ["emb-a"])
    assert s.metric('mlx_serve_cache_evictions_total{reason="lru",type="embedding"}') == 1
    assert s.loaded() == ["emb-a"]


@pytest.mark.parametrize("layer", ["config.yaml", "environment", "cli"])
def test_preload_from_each_layer(make, home: Path, layer: str) -> None:
    from mlx_serve.cli import _cli_layer, parser

    cli = None
    if layer == "config.yaml":
        (home / ".mlx-serve").mkdir(exist_ok=True)
        (home / ".mlx-serve" / "config.yaml").write_text("preload_models: [emb-a, rr]\n")
        s = make()
    elif layer == "environment":
        s = make(preload_models="emb-a,rr")
    else:
        cli = _cli_layer(parser().parse_args(["start", "--preload", "emb-a", "--preload", "rr"]))
        s = make(cli=cli)
    assert s.settings.preload_models == ("emb-a", "rr")
    s.runtime.preload(s.settings.preload_models)
    assert sorted(s.loaded()) == ["emb-a", "rr"]


def test_preloaded_models_obey_the_ttl_unless_pinned(make) -> None:
    s = make(cache_ttl_seconds="1")
    s.runtime.preload(["emb-a"])
    s.wait_for(lambda: s.loaded() == [], timeout=4)
    pinned = make(cache_ttl_seconds="1", preload_pinned="true")
    pinned.runtime.preload(["emb-a"])
    time.sleep(2.0)
    assert pinned.loaded() == ["emb-a"]
    assert pinned.client.simulate_get("/api/ps").json["models"][0]["pinned"] is True


def test_unload_really_frees_memory(make) -> None:
    s = make(cache_ttl_seconds="-1")
    mx.clear_cache()
    before = mx.get_active_memory()
    assert s.embed(MINILM) == 200
    loaded = mx.get_active_memory()
    assert loaded - before > 80 * 2**20  # all-MiniLM-L6-v2 holds about 87 MiB of float32 weights
    assert s.client.simulate_post("/api/unload", json={"name": MINILM}).json == {"name": MINILM, "status": "unloading"}
    s.wait_for(lambda: s.loaded() == [])
    s.wait_for(lambda: mx.get_active_memory() - before < 4 * 2**20)


def test_metrics_after_a_scripted_sequence(make) -> None:
    s = make(cache_max_embedding_models="1", cache_ttl_seconds="-1")
    s.embed("emb-a")  # miss
    s.embed("emb-a")  # hit
    s.embed("emb-b")  # miss, emb-a evicted (lru)
    s.client.simulate_post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["d"]})  # reranker miss
    assert s.metric('mlx_serve_models_loaded{type="embedding"}') == 1
    s.client.simulate_post("/api/unload", json={"name": "emb-b"})
    s.wait_for(lambda: s.loaded() == ["rr"])
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
    assert {name: s.metric(name) for name in expected} == expected
    assert s.metric('mlx_serve_model_memory_bytes{model="rr"}') > 0
    assert s.metric('mlx_serve_model_memory_bytes{model="emb-b"}') is None


def test_keep_alive_sets_the_next_idle_ttl(make) -> None:
    s = make(cache_ttl_seconds="1800")
    assert s.embed("emb-a", keep_alive=0.5) == 200
    s.wait_for(lambda: s.loaded() == [], timeout=3)
    assert (
        s.client.simulate_post(
            "/v1/rerank", json={"model": "rr", "query": "q", "documents": ["d"], "keep_alive": -1}
        ).status_code
        == 200
    )
    assert s.client.simulate_get("/api/ps").json["models"][0]["expires_at"] is None


def test_unload_and_ps_endpoints(make) -> None:
    s = make(cache_ttl_seconds="600")
    assert s.client.simulate_get("/api/ps").json == {"models": []}
    s.embed("emb-a")
    (model,) = s.client.simulate_get("/api/ps").json["models"]
    assert model["name"] == "emb-a" and model["type"] == "embedding" and model["in_flight"] == 0
    assert model["size_bytes"] > 0 and model["expires_at"].endswith("Z")
    assert s.client.simulate_post("/api/unload", json={"name": "emb-b"}).json["status"] == "not_loaded"
    missing = s.client.simulate_post("/api/unload", json={"name": "nope"})
    assert missing.status_code == 404 and missing.json["error"]["code"] == "model_not_found"
    assert s.client.simulate_post("/api/unload", json={}).status_code == 400


def test_cli_ps_and_unload_against_a_running_server(home: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_SERVE_")}
    env["HOME"] = str(home)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlx_serve", *args, "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

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
    finally:
        cli("stop")
