"""What a pull may read and write: model folders with links out, FIFOs and devices, planted lock links,
disk space, staging folders of other names, leftovers of killed pulls, and sources that look like options."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mlx_serve.engine.verify import prepare
from mlx_serve.store.pull import pull
from mlx_serve.store.store import InvalidNameError, ModelStore, StoreError, validate_name

from . import tiny_models
from .conftest import MINILM, wait_for


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT in all-MiniLM-L6-v2's layout: what is checked here is the files, not the model."""
    return tiny_models.bert(tmp_path_factory.mktemp("bert") / "bert", seed=2)


@pytest.fixture
def folder(tmp_path: Path, bert: Path) -> Path:
    """A model in a folder of the user's."""
    path = tmp_path / "my-model"
    shutil.copytree(bert, path)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def stored_files(store: ModelStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def test_links_out_of_the_folder_are_refused_and_nothing_is_copied(store, folder: Path) -> None:
    (folder / "passwd.txt").symlink_to("/etc/passwd")
    with pytest.raises(StoreError, match=r"passwd.txt is a link to /etc/passwd, outside the model folder"):
        store.import_dir(folder, "leak")
    assert not (store.root / "leak").exists()
    assert not [p for p in store.root.glob("*") if p.name != ".locks"]


def test_a_link_to_a_device_is_refused(store, folder: Path) -> None:
    (folder / "weights.bin.safetensors").symlink_to("/dev/zero")
    with pytest.raises(StoreError, match="outside the model folder"):
        store.import_dir(folder, "zero")


def test_a_link_inside_the_folder_is_followed(store, folder: Path) -> None:
    (folder / "docs").mkdir()
    (folder / "docs" / "NOTES.md").write_text("about this model")
    (folder / "NOTES.md").symlink_to(folder / "docs" / "NOTES.md")
    entry = store.import_dir(folder, "linked")
    copied = entry.path / "NOTES.md"
    assert copied.read_text() == "about this model" and not copied.is_symlink()


def test_a_folder_swapped_for_a_link_after_the_scan_is_refused_not_followed(folder: Path, tmp_path: Path) -> None:
    """A subfolder replaced by a link once copying began put a mode-600 file from outside the pulled
    folder into the store: links were refused only in a path's last part. Now every component is opened
    without following links, from the folder's own descriptor."""
    from mlx_serve.store import files

    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "config.json").write_text("secret")
    (secret / "config.json").chmod(0o600)
    scanned = files.scan(folder)
    assert any(str(f.relative) == "1_Pooling/config.json" for f in scanned)
    shutil.rmtree(folder / "1_Pooling")
    (folder / "1_Pooling").symlink_to(secret)  # swapped after the scan, as in the middle of a copy
    target = tmp_path / "copy"
    with pytest.raises(files.RefusedFolder, match=r"1_Pooling/config\.json .*became a link"):
        files.copy(scanned, target)
    assert not any("secret" in p.read_text() for p in target.rglob("*") if p.is_file())


def test_a_fifo_named_config_json_is_refused_without_blocking(store, folder: Path) -> None:
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"config.json is not a regular file \(a FIFO\)"):
        store.import_dir(folder, "fifo")
    assert time.monotonic() - started < 2


def test_a_planted_lock_link_is_refused_and_its_target_untouched(store, folder: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (store.root / ".locks").mkdir(parents=True)
    (store.root / ".locks" / "planted.lock").symlink_to(victim)
    with pytest.raises(StoreError, match="is a link: refused"):
        pull(store, str(folder), prepare=prepare, name="planted")
    assert victim.read_text() == "precious"


def test_not_enough_disk_space_is_refused_before_copying(store, folder: Path) -> None:
    with (folder / "huge.safetensors").open("wb") as fh:  # sparse: ten terabytes that take no disk
        fh.truncate(10 * 10**12)
    with pytest.raises(StoreError, match=r"not enough disk space in .*: the model needs"):
        store.import_dir(folder, "huge")
    assert not (store.root / "huge").exists()


def test_cleanup_touches_only_its_own_names_staging(store, folder: Path) -> None:
    mine = store.scratch("pull", "race-a-b")  # a pull of race-a-b in progress (it holds its lock)...
    with store.lock("race-a-b"):
        pull(store, str(folder), prepare=prepare, name="race-a")  # ...is not disturbed by a pull of race-a
        assert mine.exists()
        assert store.clean_leftovers() == []  # nor by a general cleanup while its lock is held
    assert store.clean_leftovers() == [mine]  # a leftover once nobody holds the lock


@pytest.mark.process
def test_a_killed_pulls_staging_is_removed_by_a_later_pull_of_any_name(store, folder: Path) -> None:
    code = f"""
import time
from pathlib import Path
from mlx_serve.store.pull import pull
from mlx_serve.store.store import ModelStore
store = ModelStore(Path({str(store.root)!r}))
with store.lock("victim"):
    store.scratch("pull", "victim")
    print("ready", flush=True)
    time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.kill()  # as a pull killed mid-copy
    child.wait()
    assert [p.name.split("~")[1] for p in store.root.glob(".pull~*")] == ["victim"]
    pull(store, str(folder), prepare=prepare, name="another")
    assert not list(store.root.glob(".pull~*"))


@pytest.mark.parametrize("name", ["ok\n", "trailing\nnewline", "tab\tname", "~tilde", "a~b"])
def test_names_with_newlines_or_tildes_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


@pytest.mark.process  # /api/pull runs the pull in a child process
def test_api_pull_errors_reach_the_client_as_one_sentence(make_app, folder: Path) -> None:
    (folder / "shadow.json").symlink_to("/etc/shadow")
    client = make_app().client
    once = client.simulate_post("/api/pull", json={"model": str(folder), "stream": False})
    assert once.status_code == 400 and once.json["code"] == "pull_failed"
    assert once.json["error"] == "shadow.json is a link to /etc/shadow, outside the model folder: refused"
    streamed = client.simulate_post("/api/pull", json={"model": str(folder)})
    assert json.loads(streamed.text.splitlines()[-1]) == {"error": once.json["error"]}


@pytest.mark.process  # /api/pull runs the pull in a child process
def test_api_pull_errors_name_no_path_of_this_machine(make_app, folder: Path) -> None:
    (folder / "shadow.json").unlink(missing_ok=True)
    (folder / "config.json").write_text('{"model_type": "bert",')  # cut short
    once = make_app().client.simulate_post("/api/pull", json={"model": str(folder), "stream": False})
    assert once.status_code == 400
    assert str(folder.parent) not in once.json["error"] and "folder:my-model" in once.json["error"]


@pytest.mark.process  # /api/pull runs the pull in a child process
@pytest.mark.parametrize("source", ["--help", "-h", "--name=../../x"])
def test_a_source_is_never_read_as_an_option(make_app, source: str) -> None:
    client = make_app().client
    answer = client.simulate_post("/api/pull", json={"model": source, "stream": False})
    assert answer.status_code == 400
    assert "neither a model directory nor a Hugging Face repo id" in answer.json["error"]
    assert "usage" not in answer.text


@pytest.mark.process  # /api/pull runs the pull in a child process
def test_a_pull_that_outlives_its_timeout_is_stopped(make_app, folder: Path, monkeypatch) -> None:
    # A folder on a very slow disk, as far as the pull can tell: a FIFO it would wait on forever is
    # refused, so a hang is made by the pull of a hub repo whose server never answers.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    client = make_app(pull_timeout="3").client
    started = time.monotonic()
    answer = client.simulate_post("/api/pull", json={"model": "acme/slow", "stream": False})
    assert answer.status_code == 400
    assert "stopped after 3 s" in answer.json["error"]
    assert time.monotonic() - started < 20
    silent.close()


@pytest.fixture
def silent_hub(monkeypatch) -> Iterator[None]:
    """A hub whose server takes the connection and never answers: a pull from it hangs until stopped."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    silent.close()


def pull_children() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "pull" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE
    ]


@pytest.mark.process  # pulls run in a child process
def test_pulls_have_a_limit_of_their_own_and_a_pull_whose_client_left_is_killed(make_app, silent_hub) -> None:
    """64 concurrent pulls took all 64 request threads and kept /health down for 15 minutes, and a pull
    went on after its client had gone. Now: at most max_concurrent_pulls, and a pull is cancelled (its
    child killed) once its client has gone."""
    import threading

    from mlx_serve.core import client
    from mlx_serve.core.errors import Overloaded
    from mlx_serve.core.intents import PullIntent

    runtime = make_app(max_concurrent_pulls="1").runtime
    gone, lines = threading.Event(), []

    def first() -> None:
        with client.watch(gone.is_set):
            lines.extend(runtime.pull(PullIntent("acme/slow")))

    thread = threading.Thread(target=first)
    thread.start()
    wait_for(lambda: len(pull_children()) == 1, timeout=30)
    (child,) = pull_children()
    with pytest.raises(Overloaded, match="max_concurrent_pulls"):
        runtime.pull(PullIntent("acme/other"))
    gone.set()
    thread.join(10)
    assert json.loads(lines[-1]) == {"error": "the pull was cancelled: its client went away"}
    child.wait(10)  # raises if it is still running
    assert pull_children() == []

    # The slot is free again.
    runtime.pull(PullIntent("acme/slow")).close()
    runtime.pull(PullIntent("acme/slow")).close()


def test_the_builtin_name_is_fine(store) -> None:
    assert validate_name(MINILM) == MINILM


def test_a_folder_called_model_is_named_after_the_folder_above(store, bert: Path, tmp_path: Path) -> None:
    """Pulling `.../bge-m3/model` without --name stored a model called `model`; a Hugging Face cache
    snapshot would have been named after its commit hash."""
    from mlx_serve.store.pull import default_name

    folder = tmp_path / "my-minilm" / "model"
    shutil.copytree(bert, folder)
    entry, _ = pull(store, str(folder), prepare=prepare)
    assert entry.name == "my-minilm"
    snapshot = tmp_path / "hub" / "models--BAAI--bge-m3" / "snapshots" / ("0123456789abcdef" * 3)[:40]
    assert default_name(str(snapshot)) == "bge-m3"
    assert default_name("Qwen/Qwen3-Embedding-0.6B") == "Qwen3-Embedding-0.6B"
    assert default_name(str(tmp_path / "plain-name")) == "plain-name"
