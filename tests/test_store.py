"""The models directory: importing a model directory, listing, and names that try to escape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.store.store import InvalidNameError, ModelStore, StoreError, validate_name

from .conftest import run_cli


@pytest.mark.parametrize(
    "name", ["..", "../x", "a/b", "/etc", "a\\b", ".hidden", "a\x00b", "a\nb", "", "x" * 200, "ok..no"]
)
def test_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


def test_import_copies_atomically_and_lists(tmp_path: Path, minilm_dir: Path) -> None:
    store = ModelStore(tmp_path / "models")
    entry = store.import_dir(minilm_dir, "mini")
    assert entry.type == "embedding" and entry.path == tmp_path / "models" / "mini"
    assert (entry.path / "model.safetensors").stat().st_size == (minilm_dir / "model.safetensors").stat().st_size
    meta = json.loads((entry.path / "mlx-serve.json").read_text())
    assert meta["type"] == "embedding" and meta["source"] == str(minilm_dir.resolve())
    assert [e.name for e in store.list()] == ["all-MiniLM-L6-v2", "mini"]
    # Nothing but the model itself is left in the store: no staging folders.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["mini"]


def test_only_a_scratch_folder_of_the_store_is_adopted_never_a_users_directory(
    tmp_path: Path, minilm_dir: Path
) -> None:
    users = tmp_path / "my-model"
    shutil.copytree(minilm_dir, users)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(StoreError, match="not a scratch folder"):
        store.import_dir(users, "mine", adopt=True)
    assert sorted(p.name for p in users.iterdir()) == sorted(p.name for p in minilm_dir.iterdir())
    scratch = tmp_path / "models" / ".download~mine~1"
    shutil.copytree(minilm_dir, scratch)
    entry = store.import_dir(scratch, "mine", adopt=True)
    assert not scratch.exists() and (entry.path / "model.safetensors").exists()


def test_import_detects_a_cross_encoder_as_reranker(tmp_path: Path, minilm_dir: Path) -> None:
    src = tmp_path / "ce"
    shutil.copytree(minilm_dir, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    assert ModelStore(tmp_path / "models").import_dir(src, "ce").type == "reranker"


def test_import_refuses_a_directory_without_weights(tmp_path: Path, minilm_dir: Path) -> None:
    src = tmp_path / "noweights"
    src.mkdir()
    shutil.copy(minilm_dir / "config.json", src)
    with pytest.raises(StoreError, match="safetensors"):
        ModelStore(tmp_path / "models").import_dir(src, "x")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.process
def test_cli_pull_then_list_then_serve(home: Path, minilm_dir: Path, make_app) -> None:
    out = run_cli(home, "pull", str(minilm_dir), "--name", "my-minilm", "--type", "embedding")
    assert out.returncode == 0, out.stderr
    listing = run_cli(home, "list", "--json")
    names = {m["name"]: m["type"] for m in json.loads(listing.stdout)}
    assert names == {"all-MiniLM-L6-v2": "embedding", "my-minilm": "embedding"}
    assert "my-minilm" in run_cli(home, "list").stdout

    client = make_app().client
    vectors = [
        client.simulate_post("/v1/embeddings", json={"model": m, "input": "same"}).json["data"][0]["embedding"]
        for m in ("my-minilm", "all-MiniLM-L6-v2")
    ]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert {m["id"] for m in client.simulate_get("/v1/models").json["data"]} == {"my-minilm", "all-MiniLM-L6-v2"}


@pytest.mark.process
def test_cli_pull_refuses_an_escaping_name(home: Path, minilm_dir: Path) -> None:
    out = run_cli(home, "pull", str(minilm_dir), "--name", "../outside")
    assert out.returncode == 1 and "invalid model name" in out.stderr
    assert not (home / ".mlx-serve" / "outside").exists()
