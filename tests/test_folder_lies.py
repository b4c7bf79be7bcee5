"""Model folders that lie (issue "Hostile clients, third round", item 6): each promise a folder's files make
is checked at pull, and a folder that breaks one is refused in one sentence naming the file and the field,
with nothing stored. Each case once crashed the worker (SIGSEGV), answered 200 with a wrong or NaN
vector, or was stored and then failed every request with a 500.

The cases run on a tiny BERT in all-MiniLM-L6-v2's layout (tests/tiny_models.bert). Reproduce any of them by
hand: copy the packaged MiniLM, make the change below, `mlx-serve pull FOLDER`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from mlx_serve.engine.verify import prepare
from mlx_serve.store.pull import pull
from mlx_serve.store.store import ModelStore, StoreError

from . import tiny_models

WEIGHTS = "model.safetensors"
TABLE = "embeddings.word_embeddings.weight"


def edit_config(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


def edit_weights(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        tensors = load_file(str(folder / WEIGHTS))
        change(tensors)
        save_file(tensors, str(folder / WEIGHTS))

    return edit


def cut_table(rows: int) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda t: t.update({TABLE: np.ascontiguousarray(t[TABLE][:rows])})


def drop_layers(keep: int) -> Callable[[dict[str, np.ndarray]], None]:
    def change(t: dict[str, np.ndarray]) -> None:
        for name in [n for n in t if n.startswith("encoder.layer.") and int(n.split(".")[2]) >= keep]:
            del t[name]

    return change


def poison(value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def change(t: dict[str, np.ndarray]) -> None:
        t["encoder.layer.0.attention.self.query.weight"] = np.full_like(
            t["encoder.layer.0.attention.self.query.weight"], value
        )

    return change


def header_length(length: int) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(length.to_bytes(8, "little") + data[8:])

    return edit


def claimed_rows(rows: int) -> Callable[[Path], None]:
    """The header of the embedding table claims `rows` rows; the bytes stay as they are."""

    def edit(folder: Path) -> None:
        data = (folder / WEIGHTS).read_bytes()
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        header[TABLE]["shape"][0] = rows
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        (folder / WEIGHTS).write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])

    return edit


def truncate(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def malformed_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordPiece"')


LIES = {
    "a tokenizer with more ids than the table has rows": (
        lambda f: (edit_config(vocab_size=100)(f), edit_weights(cut_table(100))(f)),
        "tokenizer.json has {ids} token ids, but the embedding table has 100 rows",
    ),
    "a table cut to 100 rows": (edit_weights(cut_table(100)), "vocab_size is 300, but the embedding table has 100"),
    "NaN weights": (edit_weights(poison(float("nan"))), "NaN or infinite outputs"),
    "inf weights": (edit_weights(poison(float("inf"))), "NaN or infinite outputs"),
    "3e38 weights": (edit_weights(poison(3e38)), "NaN or infinite outputs"),
    "hidden_size 64 over 32-wide weights": (edit_config(hidden_size=64), "64"),
    "truncated safetensors": (truncate, "model.safetensors"),
    "a 2^40 header length": (header_length(2**40), "model.safetensors's header says it is 1099511627776 bytes"),
    "a tensor claiming 100 billion rows": (claimed_rows(100_000_000_000), "model.safetensors"),
    "a malformed tokenizer.json": (malformed_tokenizer, "tokenizer.json cannot be read"),
    "5 heads for 32 dims": (edit_config(num_attention_heads=5), "not divisible by num_attention_heads 5"),
    "4 layers configured, 2 stored": (
        edit_config(num_hidden_layers=4),
        "num_hidden_layers is 4, but the weights hold 2",
    ),
    'hidden_size "32"': (edit_config(hidden_size="32"), "hidden_size is '32', not a whole number"),
    "a false max_position_embeddings": (
        edit_config(max_position_embeddings=4096),
        "max_position_embeddings is 4096, but the position table has 128 rows",
    ),
    "2 layers configured, 1 stored": (edit_weights(drop_layers(1)), "num_hidden_layers is 2, but the weights hold 1"),
}


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_models.bert(tmp_path_factory.mktemp("honest") / "bert", seed=3)
    store = ModelStore(folder.parent / "models")
    assert pull(store, str(folder), name="honest", prepare=prepare)[0].name == "honest"  # the folder before a lie
    return folder


@pytest.mark.parametrize("lie", list(LIES))
def test_a_folder_that_lies_is_refused_naming_the_file_and_field(lie: str, honest: Path, tmp_path: Path) -> None:
    edit, words = LIES[lie]
    words = words.format(ids=Tokenizer.from_file(str(honest / "tokenizer.json")).get_vocab_size())
    folder = tmp_path / "liar"
    shutil.copytree(honest, folder)
    edit(folder)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(StoreError) as refused:
        pull(store, str(folder), name="liar", prepare=prepare)
    message = str(refused.value)
    assert words in message, message
    assert "\n" not in message and str(tmp_path) not in message.replace(str(folder), "")
    assert store.get("liar") is None
