"""Device memory: MLX's limits from the settings, its memory in /health, /api/ps and /metrics, and its
buffer cache handed back once the server is idle."""

from __future__ import annotations

import json
import urllib.request

import pytest

from mlx_serve.serving.memory import parse_size
from mlx_serve.settings import SettingsError, load_settings

from .conftest import MINILM, wait_for


@pytest.mark.parametrize(
    ("text", "size"),
    [("auto", None), ("2GiB", 2 * 2**30), ("512 MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), (1024, 1024), ("0", 0)],
)
def test_sizes(text, size) -> None:
    assert parse_size(text) == size


def test_a_bad_size_is_a_settings_error(home, monkeypatch) -> None:
    monkeypatch.setenv("MLX_SERVE_MLX_CACHE_LIMIT", "lots")
    with pytest.raises(SettingsError, match="mlx_cache_limit = 'lots'"):
        load_settings()


def test_the_buffer_cache_goes_back_once_idle(make_app, monkeypatch) -> None:
    from mlx_serve.serving import memory

    monkeypatch.setattr(memory, "IDLE_RELEASE_SECONDS", 0.3)  # the wait, shortened; the release is real
    app = make_app()
    client = app.client
    body = {"model": MINILM, "input": ["a text long enough to leave buffers behind " * 20] * 16}
    assert client.simulate_post("/v1/embeddings", json=body).status_code == 200
    wait_for(lambda: client.simulate_get("/health").json["memory"]["cache_bytes"] == 0, timeout=6)
    assert client.simulate_get("/api/ps").json["memory"]["active_bytes"] > 80 * 2**20  # the weights stay


def test_on_a_gpu_the_bound_is_mlx_memory_limit_above_the_loaded_weights(make_app, monkeypatch) -> None:
    """Where MLX encodes ahead of the device (a GPU), MLX's memory limit is the loaded weights plus
    max_inflight_bytes, as models load and unload; MLX's eval waits on it. The vectors do not change."""
    import mlx.core as mx

    from mlx_serve.serving import memory

    configured = mx.get_memory_limit()
    body = {"model": MINILM, "input": ["a text long enough to take some memory " * 10] * 8, "keep_alive": 0}
    plain = make_app().client.simulate_post("/v1/embeddings", json=body).json["data"]
    monkeypatch.setattr(memory, "throttles", lambda: True)  # the device: this machine has no GPU
    app = make_app(max_inflight_bytes="64MiB")
    from mlx_serve.serving import runtime

    real_load, while_loading = runtime.load_model, []

    def load_model(*args, **kwargs):  # the real load; the limit it runs under is noted
        while_loading.append(mx.get_memory_limit())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(runtime, "load_model", load_model)
    try:
        result = app.client.simulate_post("/v1/embeddings", json={**body, "keep_alive": "5m"})
        assert result.json["data"] == plain
        weights = app.runtime.cache.snapshot()[0].size_bytes
        assert mx.get_memory_limit() == weights + 64 * 2**20
        on_disk = sum(f.stat().st_size for f in app.runtime.entry(MINILM).path.rglob("*.safetensors"))
        assert while_loading[0] == on_disk + 64 * 2**20  # the weights count while they are read
        health = app.client.simulate_get("/health").json["memory"]
        assert 0 <= health["inflight_bytes"] <= health["active_bytes"]
        assert app.client.simulate_post("/v1/embeddings", json=body).status_code == 200  # keep_alive 0
        wait_for(lambda: mx.get_memory_limit() == 64 * 2**20)  # unloaded: the bound alone
        app.runtime.close()
        assert mx.get_memory_limit() == configured  # closed: the limit as configured
    finally:
        mx.set_memory_limit(configured)


@pytest.mark.process
def test_the_server_applies_its_limits(start_server) -> None:
    server = start_server(env={"MLX_SERVE_MLX_CACHE_LIMIT": "64MiB", "MLX_SERVE_MLX_MEMORY_LIMIT": "8GiB"})
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'mlx_serve_mlx_limit_bytes{kind="cache"} 6.7108864e+07' in text
    assert 'mlx_serve_mlx_limit_bytes{kind="memory"} 8.589934592e+09' in text
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as resp:
        assert set(json.load(resp)["memory"]) == {"active_bytes", "cache_bytes", "peak_bytes", "inflight_bytes"}
    assert server.stop() == 0


def test_metal_keeps_the_loaded_weights_wired_and_other_devices_nothing() -> None:
    from mlx_serve.serving.memory import set_wired, wired_target

    mac = {"max_recommended_working_set_size": 10 * 2**30, "memory_size": 16 * 2**30}  # a 16 GB Mac
    assert wired_target(None, 600 * 2**20, mac) == 600 * 2**20  # auto: the weights
    assert wired_target(None, 40 * 2**30, mac) == 9 * 2**30  # at most 90% of what the system allows
    assert wired_target(2**30, 600 * 2**20, mac) == 2**30  # a set size
    assert wired_target(0, 600 * 2**20, mac) == 0  # none
    assert wired_target(None, 600 * 2**20, {"device_name": "cpu"}) is None  # CPU, CUDA: MLX wires nothing
    assert set_wired(None, 600 * 2**20) is None  # this machine (no Metal): left alone


@pytest.mark.process
def test_a_bert_model_loads_without_mlx_lm_or_transformers() -> None:
    """mlx-lm brings transformers: some 2 s and 200 MB of a process that serves only BERT-family models
    never needs them. They are imported for the first decoder model only."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from mlx_serve.engine import load_model\n"
        "from mlx_serve.store.store import builtin_model_dir\n"
        "model = load_model('m', builtin_model_dir(), type='embedding')\n"
        "assert model.embed(['hello'], max_batch_tokens=4096).vectors.shape == (1, 384)\n"
        "print(sorted(m for m in ('mlx_lm', 'transformers', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
