"""Every shell and Python example in the README runs as printed, against a fresh server, as a newcomer
would paste it: the README is the user's manual, and a broken example is the first thing a user meets.

Each fenced block's info string says what it is: `sh` and `python` blocks run (the server's address is
the only thing changed: the test's server has a port of its own); `sh network` needs the internet (a hub
pull: the test stores what it would pull, a tiny cross-encoder under the same name); `sh setup` is the
installation and the test suite themselves; `yaml` is a config.yaml, which `mlx-serve config` must take;
`text` and `json` are synopses and sample output.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_serve.engine.verify import prepare
from mlx_serve.store.pull import pull
from mlx_serve.store.store import ModelStore

from . import tiny_models
from .conftest import ServerProcess, clean_env

pytestmark = pytest.mark.process

README = Path(__file__).resolve().parents[1] / "README.md"
KINDS = {"sh", "sh network", "sh setup", "python", "yaml", "json", "text"}
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for info, body in FENCE.findall(README.read_text()) if info.strip() == kind]


def test_every_block_says_what_it_is() -> None:
    infos = [info.strip() for info, _ in FENCE.findall(README.read_text())]
    assert infos and set(infos) <= KINDS, set(infos) - KINDS


@pytest.fixture(scope="module")
def server(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # What the `sh network` blocks' pulls (cross-encoder/ms-marco-MiniLM-L-6-v2, BAAI/bge-m3) would store.
    folder = tmp_path_factory.mktemp("readme")
    store = ModelStore(module_home / ".mlx-serve" / "models")
    store.import_dir(tiny_models.bert_cross_encoder(folder / "ce", seed=3), "ms-marco-MiniLM-L-6-v2")
    pull(store, str(tiny_models.bge_m3(folder / "bge-m3", seed=4)), prepare=prepare, name="bge-m3")
    # Two embedding models: TEI's requests, which name none, go to the default, as the README says.
    server = ServerProcess.start(module_home, [], {"MLX_SERVE_DEFAULT_EMBEDDING_MODEL": "all-MiniLM-L6-v2"})
    server.wait_healthy()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The user's shell: the install's bin on PATH, and tiktoken's table where langchain-openai looks
    (it downloads it on first use; this machine has no internet)."""
    import tiktoken_ext

    cache = tmp_path_factory.mktemp("tiktoken")
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shutil.copy(
        Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest()
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return clean_env(module_home, {"PATH": path, "TIKTOKEN_CACHE_DIR": str(cache)})


def here(text: str, server: ServerProcess) -> str:
    return text.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}").replace(
        "localhost:8000", f"localhost:{server.port}"
    )


@pytest.mark.parametrize("index", range(len(blocks("sh"))))
def test_shell_examples_run(server: ServerProcess, env: dict[str, str], index: int) -> None:
    script = here(blocks("sh")[index], server)
    out = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, f"{script}\n{out.stdout}\n{out.stderr}"
    assert '"error"' not in out.stdout, out.stdout  # curl -s exits 0 on an HTTP error: its body tells


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_run(server: ServerProcess, env: dict[str, str], index: int) -> None:
    script = here(blocks("python")[index], server)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, f"{script}\n{out.stderr}"


def test_the_example_config_is_valid(module_home: Path, env: dict[str, str], tmp_path: Path) -> None:
    (example,) = blocks("yaml")
    home = tmp_path / "home"
    (home / ".mlx-serve").mkdir(parents=True)
    (home / ".mlx-serve" / "config.yaml").write_text(example)
    out = subprocess.run(
        [sys.executable, "-m", "mlx_serve", "config"], capture_output=True, text=True, env={**env, "HOME": str(home)}
    )
    assert out.returncode == 0, out.stderr
    assert "config.yaml" in out.stdout  # its values are in force
