"""Pulling models: from a hub (a local server that behaves like it, through HF_ENDPOINT) or a directory;
interrupted downloads, concurrent pulls, quantization, aliases, and the Ollama-style store endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.core.intents import EmbedIntent
from mlx_serve.metrics import Metrics
from mlx_serve.serving.runtime import Runtime
from mlx_serve.settings import load_settings
from mlx_serve.store.store import ModelStore

from . import tiny_models
from .conftest import MINILM, App, hold_inference_thread, run_cli
from .fake_hub import SHA, FakeHub


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repos")
    return {
        "acme/Tiny-Embedding": tiny_models.qwen3(root / "emb", "embedding", seed=21),
        "acme/Tiny-Reranker": tiny_models.qwen3(root / "rr", "reranker", seed=22),
        "acme/Tiny-CrossEncoder": tiny_models.bert_cross_encoder(root / "ce", seed=23),
    }


@pytest.fixture
def hub(repos, monkeypatch, tmp_path: Path) -> Iterator[FakeHub]:
    server = FakeHub()
    for repo_id, path in repos.items():
        server.add(repo_id, path)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cache shared with anything else
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


cli = run_cli


def models_dir(home: Path) -> Path:
    return home / ".mlx-serve" / "models"


@pytest.mark.process
def test_pull_from_the_hub_detects_type_and_records_metadata(home: Path, hub: FakeHub) -> None:
    out = cli(home, "pull", "acme/Tiny-Embedding")
    assert out.returncode == 0, out.stderr
    meta = json.loads((models_dir(home) / "Tiny-Embedding" / "mlx-serve.json").read_text())
    assert meta["type"] == "embedding" and meta["source"] == "hf:acme/Tiny-Embedding" and meta["revision"] == SHA
    assert meta["dimensions"] == 64 and meta["max_length"] == 128 and meta["quantization"] is None
    assert meta["size"] > 0 and meta["pulled_at"].endswith("Z") and meta["architecture"] == "Qwen3ForCausalLM"
    assert cli(home, "pull", "acme/Tiny-Reranker").returncode == 0
    assert cli(home, "pull", "acme/Tiny-CrossEncoder", "--name", "ce").returncode == 0
    listed = {m["name"]: m["type"] for m in json.loads(cli(home, "list", "--json").stdout)}
    assert listed == {"Tiny-Embedding": "embedding", "Tiny-Reranker": "reranker", "ce": "reranker", MINILM: "embedding"}
    shown = json.loads(cli(home, "show", "Tiny-Reranker", "--json").stdout)
    assert shown["type"] == "reranker" and shown["source"] == "hf:acme/Tiny-Reranker"
    # Nothing but the models is left behind: no staging or download folders.
    assert sorted(p.name for p in models_dir(home).iterdir() if not p.name.startswith(".locks")) == [
        "Tiny-Embedding",
        "Tiny-Reranker",
        "ce",
    ]


@pytest.mark.process
def test_hub_and_directory_pulls_serve_the_same_vectors(home: Path, hub: FakeHub, repos) -> None:
    assert cli(home, "pull", "acme/Tiny-Embedding", "--name", "from-hub").returncode == 0
    assert cli(home, "pull", str(repos["acme/Tiny-Embedding"]), "--name", "from-dir").returncode == 0
    settings = load_settings().settings
    runtime = Runtime(settings, ModelStore(settings.models_dir), Metrics())
    try:
        a, b = (runtime.embed(EmbedIntent(n, ["same text"])).dense for n in ("from-hub", "from-dir"))
        np.testing.assert_allclose(a, b, atol=1e-6)
    finally:
        runtime.close()


@pytest.mark.process
def test_a_dropped_connection_is_resumed(home: Path, hub: FakeHub, repos) -> None:
    hub.cuts["model.safetensors"] = 1
    out = cli(home, "pull", "acme/Tiny-Embedding")
    assert out.returncode == 0, out.stderr
    stored = models_dir(home) / "Tiny-Embedding" / "model.safetensors"
    assert stored.stat().st_size > 0 and hub.cuts["model.safetensors"] == 0


@pytest.mark.process
def test_a_failed_download_leaves_nothing_and_a_retry_succeeds(home: Path, hub: FakeHub) -> None:
    hub.cuts["model.safetensors"] = 1000  # every attempt is cut: huggingface_hub gives up
    failed = cli(home, "pull", "acme/Tiny-Embedding")
    assert failed.returncode == 1 and "could not download" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert [p.name for p in models_dir(home).iterdir() if p.name != ".locks"] == []  # no half model, no staging
    hub.cuts.clear()
    assert cli(home, "pull", "acme/Tiny-Embedding").returncode == 0
    assert (models_dir(home) / "Tiny-Embedding" / "mlx-serve.json").exists()


MOVE_CHECK = """
import json, sys
from pathlib import Path
from mlx_serve.engine.verify import prepare
from mlx_serve.store.pull import pull
from mlx_serve.store.store import ModelStore

store = ModelStore(Path(sys.argv[1]))
downloaded = []

def report(progress):
    if progress.status == "converting":  # the download is complete here
        (folder,) = store.root.glob(".download~*")
        downloaded.append([folder.stat().st_ino, (folder / "tokenizer.json").stat().st_ino])

entry, _ = pull(store, "acme/Tiny-Embedding", prepare=prepare, report=report)
stored = [entry.path.stat().st_ino, (entry.path / "tokenizer.json").stat().st_ino]
print(json.dumps({"downloaded": downloaded, "stored": stored}))
"""


@pytest.mark.process
def test_a_hub_pull_moves_the_download_into_place_instead_of_copying_it(home: Path, hub: FakeHub) -> None:
    # A copy would need twice the model's size on disk (16 GB more for an 8B model in bf16). The folder and
    # the files conversion leaves alone must be the very ones downloaded (the weights of this decoder are
    # rewritten by conversion, so their inode proves nothing). In a child process, because huggingface_hub
    # reads HF_ENDPOINT when it is imported.
    out = subprocess.run(
        [sys.executable, "-c", MOVE_CHECK, str(models_dir(home))], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    inodes = json.loads(out.stdout)
    assert inodes["downloaded"] == [inodes["stored"]]
    assert not list(models_dir(home).glob(".download~*"))
    assert not (models_dir(home) / "Tiny-Embedding" / ".cache").exists()


@pytest.mark.process
def test_offline_pulls_come_from_the_local_hugging_face_cache(home: Path, hub: FakeHub, tmp_path: Path) -> None:
    # Another tool filled the Hugging Face cache (HF_HOME) earlier...
    fill = "from huggingface_hub import snapshot_download; snapshot_download('acme/Tiny-Reranker')"
    subprocess.run([sys.executable, "-c", fill], check=True, env=os.environ.copy(), capture_output=True, timeout=60)
    hub.close()  # ...and now there is no network at all
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    out = cli(home, "pull", "acme/Tiny-Reranker", env=offline)
    assert out.returncode == 0, out.stderr
    meta = json.loads((models_dir(home) / "Tiny-Reranker" / "mlx-serve.json").read_text())
    assert meta["type"] == "reranker" and meta["source"] == "hf:acme/Tiny-Reranker"
    assert meta["revision"] == SHA  # the cached snapshot's commit
    missing = cli(home, "pull", "acme/Tiny-Embedding", env=offline)
    assert missing.returncode == 1 and "could not download" in missing.stderr
    # The cache belongs to the user's other tools: it was copied from, never moved.
    assert cli(home, "pull", "acme/Tiny-Reranker", "--name", "again", env=offline).returncode == 0


@pytest.mark.process
def test_a_hub_repo_that_moved_on_is_updated_by_pulling_again(home: Path, hub: FakeHub, tmp_path: Path) -> None:
    """Pulled again at the same commit: nothing downloaded; after a new commit: the new weights."""
    assert cli(home, "pull", "acme/Tiny-CrossEncoder", "--name", "ce").returncode == 0
    first = json.loads((models_dir(home) / "ce" / "mlx-serve.json").read_text())
    again = cli(home, "pull", "acme/Tiny-CrossEncoder", "--name", "ce")
    assert again.returncode == 0 and "already pulled" in again.stdout
    assert hub.downloads["model.safetensors"] == 1
    hub.add("acme/Tiny-CrossEncoder", tiny_models.bert_cross_encoder(tmp_path / "ce2", seed=99), sha="f" * 40)
    updated = cli(home, "pull", "acme/Tiny-CrossEncoder", "--name", "ce")
    assert updated.returncode == 0 and "already pulled" not in updated.stdout
    second = json.loads((models_dir(home) / "ce" / "mlx-serve.json").read_text())
    assert second["revision"] == "f" * 40 and second["digest"] != first["digest"]


@pytest.mark.process
def test_concurrent_pulls_of_one_model_do_the_work_once(home: Path, hub: FakeHub) -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: cli(home, "pull", "acme/Tiny-Reranker"), range(3)))
    assert [r.returncode for r in results] == [0, 0, 0]
    assert hub.downloads["model.safetensors"] == 1
    assert sum("already pulled" in r.stdout for r in results) == 2


@pytest.mark.process
def test_quantized_pull(home: Path, hub: FakeHub) -> None:
    assert cli(home, "pull", "acme/Tiny-Embedding", "--name", "q8", "--quantize", "8").returncode == 0
    assert cli(home, "pull", "acme/Tiny-Embedding", "--name", "full").returncode == 0
    assert json.loads((models_dir(home) / "q8" / "mlx-serve.json").read_text())["quantization"] == 8
    settings = load_settings().settings
    runtime = Runtime(settings, ModelStore(settings.models_dir), Metrics())
    try:
        q, f = (runtime.embed(EmbedIntent(n, ["quantized text"])).dense[0] for n in ("q8", "full"))
        assert float(q @ f) > 0.99
    finally:
        runtime.close()
    bad = cli(home, "pull", "acme/Tiny-CrossEncoder", "--quantize", "4")
    assert bad.returncode == 1 and "decoder" in bad.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no/such-repo", "could not download"),
        ("no-slash-here", "neither a model directory"),
        ("acme/Tiny-Embedding --name ../x", "invalid model name"),
    ],
)
def test_pull_errors_are_clear(home: Path, hub: FakeHub, source: str, message: str) -> None:
    out = cli(home, "pull", *source.split(" "))
    assert out.returncode in (1, 2) and message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.process
def test_aliases_resolve_wherever_a_name_is_accepted(home: Path, repos, make_app) -> None:
    client = make_app(
        models={"tiny-ce": repos["acme/Tiny-CrossEncoder"]},
        model_aliases='{mini = "all-MiniLM-L6-v2", ce = "tiny-ce"}',
    ).client
    emb = client.simulate_post("/v1/embeddings", json={"model": "mini", "input": "x"})
    assert emb.status_code == 200 and emb.json["model"] == MINILM
    assert (
        client.simulate_post("/v1/rerank", json={"model": "ce", "query": "q", "documents": ["d"]}).json["model"]
        == "tiny-ce"
    )
    assert client.simulate_post("/api/show", json={"name": "ce"}).json["name"] == "tiny-ce"
    assert (
        json.loads(
            cli(home, "show", "mini", "--json", env={"MLX_SERVE_MODEL_ALIASES": '{mini = "all-MiniLM-L6-v2"}'}).stdout
        )["name"]
        == MINILM
    )


@pytest.fixture
def app(make_app, repos) -> App:
    return make_app(models={"emb": repos["acme/Tiny-Embedding"]})


@pytest.mark.process
def test_api_pull_streams_ndjson_progress(app, hub: FakeHub) -> None:
    client = app.client
    result = client.simulate_post("/api/pull", json={"model": "acme/Tiny-Reranker"})
    assert result.status_code == 200 and result.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in result.text.splitlines()]
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    downloads = [line for line in lines if "total" in line]
    assert downloads and all(0 <= d["completed"] <= d["total"] for d in downloads)
    assert any(d["completed"] == d["total"] for d in downloads)
    tags = {m["name"]: m for m in client.simulate_get("/api/tags").json["models"]}
    assert tags["Tiny-Reranker"]["type"] == "reranker" and tags["Tiny-Reranker"]["size"] > 0
    assert tags["Tiny-Reranker"]["modified_at"].endswith("Z")
    failed = client.simulate_post("/api/pull", json={"model": "no/such-repo"})
    assert "error" in [json.loads(line) for line in failed.text.splitlines()][-1]
    once = client.simulate_post("/api/pull", json={"name": "acme/Tiny-Reranker", "stream": False})
    assert once.json == {"status": "success"}


def test_progress_counts_come_a_few_a_second_and_always_the_last() -> None:
    """A copy reports each MiB it copies: a 1 GB folder once streamed 1,000 lines. Counts are written at
    most every 0.2 s per download; the first, the last and every change of status always are."""
    import io

    from mlx_serve.store.progress import LineWriter, Progress

    now = [0.0]
    out = io.BytesIO()
    writer = LineWriter(out, clock=lambda: now[0])  # type: ignore[arg-type]
    writer.progress(Progress("pulling manifest"))
    for mib in range(1, 1001):  # a gigabyte copied in one second, a MiB a millisecond
        now[0] += 0.001
        writer.progress(Progress("copying", mib * 2**20, 1000 * 2**20))
        if mib == 500:  # a second file of another size, at the same time
            writer.progress(Progress("copying", 10, 100))
    writer.progress(Progress("converting"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    counts = [line["completed"] for line in lines if line.get("total") == 1000 * 2**20]
    assert counts[0] == 2**20 and counts[-1] == 1000 * 2**20  # the first and the last
    assert 5 <= len(counts) <= 7  # one every 0.2 s of the second
    assert {"status": "copying", "completed": 10, "total": 100} in lines  # another file's count is its own
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "converting"}


def test_api_show_tags_and_models(app) -> None:
    client = app.client
    shown = client.simulate_post("/api/show", json={"name": "emb"}).json
    assert shown["type"] == "embedding" and shown["dimensions"] == 64 and shown["name"] == "emb"
    assert client.simulate_post("/api/show", json={"model": MINILM}).json["type"] == "embedding"
    assert client.simulate_post("/api/show", json={"name": "nope"}).status_code == 404
    assert client.simulate_post("/api/show", json={"name": "../../etc"}).status_code == 404
    assert {m["name"] for m in client.simulate_get("/api/tags").json["models"]} == {"emb", MINILM}
    assert {(m["id"], m["type"]) for m in client.simulate_get("/v1/models").json["data"]} == {
        ("emb", "embedding"),
        (MINILM, "embedding"),
    }


def test_api_delete_waits_for_a_running_request(app) -> None:
    client, runtime = app.client, app.runtime
    assert client.simulate_post("/v1/embeddings", json={"model": "emb", "input": "load"}).status_code == 200
    release = hold_inference_thread(runtime)
    running: dict = {}
    request = threading.Thread(
        target=lambda: running.setdefault(
            "r", client.simulate_post("/v1/embeddings", json={"model": "emb", "input": "in flight"})
        )
    )
    request.start()
    deleting: dict = {}
    delete = threading.Thread(
        target=lambda: deleting.setdefault("r", client.simulate_delete("/api/delete", json={"name": "emb"}))
    )
    delete.start()
    delete.join(timeout=0.3)
    assert delete.is_alive(), "delete must wait for the in-flight request"
    assert (runtime.store.root / "emb").exists()
    release.set()
    request.join()
    delete.join(timeout=30)
    assert running["r"].status_code == 200
    assert deleting["r"].json == {"status": "success", "name": "emb"}
    assert not (runtime.store.root / "emb").exists() and runtime.cache.loaded() == []
    assert client.simulate_post("/v1/embeddings", json={"model": "emb", "input": "x"}).status_code == 404
    assert client.simulate_delete("/api/delete", json={"name": "emb"}).status_code == 404
    builtin = client.simulate_delete("/api/delete", json={"name": MINILM})
    assert builtin.status_code == 400 and "built in" in builtin.json["error"]


@pytest.mark.process
def test_cli_show_and_remove(home: Path, repos) -> None:
    ModelStore(models_dir(home)).import_dir(repos["acme/Tiny-CrossEncoder"], "ce")
    table = cli(home, "show", "ce")
    assert table.returncode == 0 and "reranker" in table.stdout
    assert cli(home, "remove", "ce").returncode == 0
    assert not (models_dir(home) / "ce").exists()
    missing = cli(home, "remove", "ce")
    assert missing.returncode == 1 and "no model" in missing.stderr


@pytest.mark.process
def test_a_name_that_means_another_model_is_taken_only_with_replace(home: Path, repos) -> None:
    """Pulling under the built-in model's name (or over a model from elsewhere) would silently change
    every client's vectors: refused, unless --replace says so."""
    folder = str(repos["acme/Tiny-CrossEncoder"])
    out = cli(home, "pull", folder, "--name", MINILM)
    assert out.returncode == 1 and "the built-in model" in out.stderr and "--replace" in out.stderr
    assert '"replace": true on /api/pull' in out.stderr  # the HTTP field too, for /api/pull users
    listed = json.loads(cli(home, "list", "--json").stdout)
    assert [m["type"] for m in listed if m["name"] == MINILM] == ["embedding"]

    assert cli(home, "pull", folder, "--name", "ranker").returncode == 0
    other = cli(home, "pull", str(repos["acme/Tiny-Reranker"]), "--name", "ranker")
    assert other.returncode == 1 and "the model pulled from" in other.stderr
    assert cli(home, "pull", folder, "--name", "ranker").returncode == 0  # the same source again: fine

    replaced = cli(home, "pull", folder, "--name", MINILM, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    listed = json.loads(cli(home, "list", "--json").stdout)
    assert [m["type"] for m in listed if m["name"] == MINILM] == ["reranker"]


@pytest.mark.process
def test_a_type_the_model_cannot_serve_is_refused_at_pull(home: Path, tmp_path: Path, repos) -> None:
    """A plain BertModel as a reranker would answer cosines where rerankers answer probabilities."""
    import shutil as sh

    from mlx_serve.store.store import builtin_model_dir

    plain = tmp_path / "plain-bert"
    sh.copytree(builtin_model_dir(), plain)  # BertModel: no classification head
    out = cli(home, "pull", str(plain), "--type", "reranker")
    assert out.returncode == 1 and "cannot rerank" in out.stderr and "BertModel" in out.stderr
    ce = cli(home, "pull", str(repos["acme/Tiny-CrossEncoder"]), "--type", "embedding")
    assert ce.returncode == 1 and "does not embed" in ce.stderr
    assert cli(home, "pull", str(plain), "--type", "embedding").returncode == 0


@pytest.mark.process
def test_ctrl_c_during_a_pull_is_one_line_and_keeps_nothing(home: Path, hub: FakeHub) -> None:
    import signal

    from .conftest import clean_env

    hub.hold = threading.Event()
    pull = subprocess.Popen(
        [sys.executable, "-m", "mlx_serve", "pull", "acme/Tiny-CrossEncoder"],
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert hub.downloading.wait(60), "the pull never started downloading"
        pull.send_signal(signal.SIGINT)
        _, err = pull.communicate(timeout=60)
    finally:
        hub.hold.set()
    assert pull.returncode == 130
    assert "Traceback" not in err and "interrupted" in err and len(err.strip().splitlines()) == 1, err
    assert not (models_dir(home) / "Tiny-CrossEncoder").exists()


@pytest.mark.process
def test_pulling_again_updates_a_model_whose_files_changed(make_app, tmp_path: Path) -> None:
    """The same source under the same name: a no-op while its files are the same, an update (served at
    once, by a running server too) when they changed. Hub repos move on the same way."""
    from safetensors.numpy import load_file, save_file

    folder = tiny_models.bert_cross_encoder(tmp_path / "ce", seed=31)
    app = make_app()
    client = app.client

    def pull() -> list[dict]:
        answer = client.simulate_post("/api/pull", json={"model": str(folder), "name": "ce"})
        return [json.loads(line) for line in answer.text.splitlines()]

    def score() -> float:
        ranked = client.simulate_post("/v1/rerank", json={"model": "ce", "query": "q", "documents": ["a doc"]})
        return ranked.json["results"][0]["relevance_score"]

    assert pull()[-1] == {"status": "success"}
    before, stored = score(), app.runtime.store.metadata("ce")
    assert pull()[-1] == {"status": "success"}
    assert app.runtime.store.metadata("ce") == stored  # nothing changed: nothing done
    weights_file = next(folder.glob("*.safetensors"))
    weights = load_file(weights_file)
    key = next(k for k in weights if k.endswith("classifier.bias"))
    weights[key] = weights[key] + np.float32(3.0)
    save_file(weights, weights_file, metadata={"format": "pt"})
    assert pull()[-1] == {"status": "success"}
    assert app.runtime.store.metadata("ce")["source_digest"] != stored["source_digest"]
    assert abs(score() - before) > 0.01  # the running server serves the new weights


@pytest.mark.process
def test_remove_without_port_goes_through_the_only_running_server(home: Path, repos, start_server) -> None:
    """As ps and unload do: the server on another port than the settings' must unload what is removed."""
    assert cli(home, "pull", str(repos["acme/Tiny-Embedding"]), "--name", "emb").returncode == 0
    server = start_server()  # on a free port, not the settings' 8000
    body = json.dumps({"model": "emb", "input": "x"}).encode()
    request = urllib.request.Request(server.url + "/v1/embeddings", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
    removed = cli(home, "remove", "emb")
    assert removed.returncode == 0, removed.stderr
    with urllib.request.urlopen(server.url + "/api/ps", timeout=10) as resp:
        assert "emb" not in [m["name"] for m in json.load(resp)["models"]]
    assert not (models_dir(home) / "emb").exists()


def test_a_read_only_store_refuses_a_delete_with_a_400_that_says_so(
    make_app, minilm_dir, tmp_path, monkeypatch
) -> None:
    """A models folder on a read-only volume gave a 500 (EROFS from the lock file). A read-only mount
    cannot be made here: the file system's answer is given at the edge, os.replace."""
    import errno
    import shutil

    folder = tmp_path / "mine"
    shutil.copytree(minilm_dir, folder)
    client = make_app(models={"mine": folder}).client

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("mlx_serve.store.store.os.replace", read_only)
    refused = client.simulate_delete("/api/delete", json={"model": "mine"})
    assert refused.status_code == 400 and refused.json["code"] == "cannot_delete"
    assert "read-only" in refused.json["error"]


@pytest.mark.process
def test_a_folder_pull_shows_its_copy_as_a_hub_pull_shows_its_download(home: Path, tmp_path: Path) -> None:
    """`--progress json` (what /api/pull relays) has the copy's bytes, then converting, then success; on a
    terminal the copy is a progress bar."""
    import fcntl
    import pty
    import struct
    import termios

    from .conftest import clean_env

    folder = tiny_models.bert_cross_encoder(tmp_path / "folder-ce", seed=5)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    out = run_cli(home, "pull", "--progress", "json", str(folder))
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    copying = [line for line in lines if line["status"] == "copying folder-ce"]
    assert copying and copying[-1]["completed"] == copying[-1]["total"] == size
    assert [line["completed"] for line in copying] == sorted(line["completed"] for line in copying)
    after = [line["status"] for line in lines[lines.index(copying[-1]) + 1 :]]
    assert after == ["converting", "success"], lines
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    child = subprocess.Popen(
        [sys.executable, "-m", "mlx_serve", "pull", "--name", "on-a-terminal", str(folder)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=clean_env(home, None),
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert child.wait(60) == 0
    text = seen.decode(errors="replace")
    assert "copying folder-ce" in text and "100%" in text and "pulled on-a-terminal" in text
