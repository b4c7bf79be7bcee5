"""Pulling a model into the store: from the Hugging Face Hub or a local directory, converted to what
the engine loads.

The hub path is huggingface_hub's own, so HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE work as everywhere.
Files download into a staging folder inside the models directory and are removed whatever happens; the
store installs the result with a rename, so a failed or interrupted pull leaves nothing half-written.
Pulls of one name take a lock: a second pull of the same source waits, then finds the work done.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlx_serve.store import files as model_files
from mlx_serve.store import progress as pull_progress
from mlx_serve.store.progress import Progress
from mlx_serve.store.store import BUILTIN_NAME, ModelEntry, ModelStore, ModelType, StoreError, validate_name

# What a model directory needs; nothing else is downloaded (no .bin/.onnx duplicates of the weights).
HUB_FILES = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.py",
    "1_Pooling/*",
    "2_Normalize/*",
    "1_SpladePooling/*",
    *model_files.HEAD_PICKLES,
]
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+\Z")


Report = Callable[[Progress], None]
# What the engine does to a staged folder before it is stored: checks that it can run the model as its files
# describe it (else StoreError, in one sentence), converts it if its family needs that, and returns
# metadata to add. Given by the caller (the CLI), so that the store knows nothing of model families.
Prepare = Callable[[Path, ModelType, int | None], dict[str, Any]]
BUILTIN = "the built-in model"
CHECK_SECONDS = 0.25  # how often a pull's monitor looks at its deadline and its client


GENERIC_FOLDERS = frozenset({"model", "models", "snapshot", "weights", "checkpoint", "final", "."})
_COMMIT = re.compile(r"[0-9a-f]{40}\Z")


def default_name(source: str) -> str:
    """`Qwen/Qwen3-Embedding-0.6B` -> `Qwen3-Embedding-0.6B`; a directory -> its own name, unless that name
    says nothing (`model`, `.`, a Hugging Face cache snapshot's commit hash): then the first folder above it
    that does (`.../bge-m3/model` -> `bge-m3`; `.../models--BAAI--bge-m3/snapshots/<hash>` -> `bge-m3`)."""
    path = Path(source.rstrip("/") or "/")
    if _REPO_ID.match(source) and not path.exists():
        return path.name
    for part in reversed(path.expanduser().absolute().parts):
        if part.startswith("models--"):  # the Hugging Face cache: models--ORG--NAME
            return part.split("--")[-1]
        if part.lower() not in GENERIC_FOLDERS and part != "snapshots" and not _COMMIT.match(part) and part != "/":
            return part
    return path.name


def pull(
    store: ModelStore,
    source: str,
    *,
    name: str | None = None,
    type: ModelType | None = None,
    quantize: int | None = None,
    report: Report | None = None,
    show_bars: bool = False,
    replace: bool = False,
    prepare: Prepare | None = None,
) -> tuple[ModelEntry, bool]:
    """Pull `source` into the store as `name`. Returns the entry and whether any work was done.

    A name that already means another model (the built-in one, or one pulled from elsewhere) is taken
    over only with `replace`: every client naming it would silently get different vectors."""
    report = report or (lambda _p: None)
    local = Path(source).expanduser()
    if local.is_dir():
        label, repo_id = str(local.resolve()), None
    elif _REPO_ID.match(source):
        label, repo_id = f"hf:{source}", source
    else:
        raise StoreError(f"{source!r} is neither a model directory nor a Hugging Face repo id (owner/name)")
    name = validate_name(name or default_name(source))
    if quantize not in (None, 4, 8):
        raise StoreError(f"quantize must be 4 or 8, not {quantize}")
    store.root.mkdir(parents=True, exist_ok=True)
    with store.lock(name):
        store.clean_leftovers(name)
        store.clean_leftovers()  # and what killed pulls of other names left (their locks are free)
        existing = store.metadata(name)
        current = existing.get("source") if existing else (BUILTIN if name == BUILTIN_NAME else None)
        if current is not None and current != label and not replace:
            what = current if current == BUILTIN else f"the model pulled from {current}"
            raise StoreError(
                f"{name!r} is {what}; pulling {source} under that name would replace it for every client. "
                'Choose another name (--name; "as" on /api/pull), '
                'or replace it (--replace; "replace": true on /api/pull)'
            )
        same_form = (
            existing is not None
            and existing.get("quantization") == quantize
            and (type is None or existing.get("type") == type)
        )
        download = store.scratch("download", name)
        try:
            revision, boundary = None, None
            if repo_id is not None:
                report(Progress("pulling manifest"))
                have = existing.get("revision") if same_form and existing else None
                fetched, revision = _download(repo_id, download, report, show_bars, store.root, have)
                if fetched is None:  # the repo has not moved since it was pulled
                    report(Progress("success"))
                    entry = store.get(name)
                    assert entry is not None
                    return entry, False
                local = fetched
                if local != download:  # a snapshot of the Hugging Face cache links into the repo's blobs
                    boundary = local.parents[1]
            # Pulling again updates: only files identical to those stored last time (and the same
            # quantization and type) make it a no-op. The source label alone says nothing: a folder's
            # weights change in place, and a hub repo moves on.
            report(Progress("verifying sha256 digest"))
            fresh = model_files.digest(local)
            if same_form and existing and existing.get("source_digest") == fresh:
                report(Progress("success"))
                entry = store.get(name)
                assert entry is not None
                return entry, False
            copying = None
            if local == download:
                report(Progress("converting"))
            else:  # a folder is copied into the store first; "converting" follows the copy
                copying = _copy_reporter(report, show_bars, f"copying {local.name}")
            entry = store.import_dir(
                local,
                name,
                type,
                source_label=label,
                revision=revision,
                source_digest=fresh,
                convert=(lambda staging, detected: prepare(staging, detected, quantize)) if prepare else None,
                adopt=local == download,  # offline pulls read the Hugging Face cache, which must stay
                boundary=boundary,
                copied=copying,
            )
        except OSError as exc:  # the download's own disk errors (the store's are StoreErrors already)
            raise StoreError(f"could not pull {source}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(download, ignore_errors=True)
        report(Progress("success"))
        return entry, True


def _download(
    repo_id: str, target: Path, report: Report, show_bars: bool, store_root: Path, have: str | None = None
) -> tuple[Path | None, str | None]:
    """The repo's files in a local folder, and the revision pulled (offline: the cached snapshot's). No
    folder when the repo is still at `have`, the revision stored: nothing to download."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from tqdm.auto import tqdm

    class Reporting(tqdm):  # huggingface_hub's progress bars, relayed to our report
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # A disabled bar keeps no counts of its own: keep ours.
            self._bytes = kwargs.get("unit") == "B"
            self._total = kwargs.get("total")
            self._done = kwargs.get("initial", 0) or 0
            kwargs["disable"] = not show_bars
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += n or 0
            total = getattr(self, "total", None) or self._total
            if self._bytes and total:
                report(Progress(f"pulling {repo_id}", int(self._done), int(total)))
            return super().update(n)

    try:
        if constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE: what the local Hugging Face cache holds, no network
            snapshot = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
            return snapshot, snapshot.name  # snapshots are named by their commit
        info = HfApi().repo_info(repo_id, files_metadata=True)
        sizes = [f.size for f in info.siblings or [] if _wanted(f.rfilename)]
        if sizes and all(size is not None for size in sizes):
            model_files.check_free_space(store_root, sum(sizes))  # before a byte is downloaded
        revision = info.sha
        if have is not None and revision == have:
            return None, revision
        snapshot_download(repo_id, revision=revision, local_dir=target, allow_patterns=HUB_FILES, tqdm_class=Reporting)
    except model_files.RefusedFolder as exc:
        raise StoreError(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"the disk is full: could not download {repo_id}") from None
        raise StoreError(f"could not download {repo_id}: {exc}") from exc
    except Exception as exc:  # HTTP, transport (dropped connections), offline misses and file errors alike
        raise StoreError(f"could not download {repo_id}: {exc}") from exc
    return target, revision


def _copy_reporter(report: Report, show_bars: bool, label: str) -> Callable[[int, int], None]:
    """Progress of a folder's copy into the store: lines for `--progress json` and /api/pull, a bar on a
    terminal (as a hub download shows one)."""
    from tqdm.auto import tqdm

    bar: list[Any] = []
    finished: list[bool] = []

    def copied(done: int, total: int) -> None:
        if finished:
            return
        report(Progress(label, min(done, total), total))
        if show_bars:
            if not bar:
                bar.append(tqdm(total=total, unit="B", unit_scale=True, desc=label))
            bar[0].update(min(done, total) - bar[0].n)
        if done >= total:
            finished.append(True)
            if bar:
                bar[0].close()
            report(Progress("converting"))

    return copied


def _wanted(filename: str) -> bool:
    return any(fnmatch.fnmatch(filename, pattern) for pattern in HUB_FILES)


def pull_in_child(
    source: str,
    *,
    name: str | None = None,
    type: str | None = None,
    quantize: int | None = None,
    timeout: float | None = None,
    replace: bool = False,
    abandoned: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """Run `mlx-serve pull --progress json` as a child and yield its progress lines (see pull_progress).

    A child keeps the download and the conversion (which may need much memory) out of the server, and
    the memory goes back to the system when it exits. The last line is always `success` or an error.
    The child is killed when the pull outlives `timeout`, when `abandoned()` says its client has gone, or
    when the consumer stops reading (closes this generator); its staging is cleared by the next pull."""
    args = [sys.executable, "-m", "mlx_serve", "pull", "--progress", "json"]
    if name is not None:
        args += ["--name", name]
    if replace:
        args.append("--replace")
    if type is not None:
        args += ["--type", type]
    if quantize is not None:
        args += ["--quantize", str(quantize)]
    args += ["--", source]  # a source is never read as an option, whatever it starts with
    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=os.environ.copy()
    )
    assert child.stdout is not None
    stopped: list[str] = []  # why the monitor killed the child
    monitor = threading.Thread(
        target=_watch_child, args=(child, timeout, abandoned, stopped), name="pull-monitor", daemon=True
    )
    monitor.start()
    failed = False
    try:
        for line in child.stdout:
            if line.strip():
                failed = pull_progress.error_of(line) is not None
                yield line
    except GeneratorExit:  # the consumer stopped reading (its client went away): the pull is cancelled
        child.kill()
        threading.Thread(target=child.wait, name="pull-reaper", daemon=True).start()
        raise
    code = child.wait()
    if stopped == ["timeout"]:
        yield pull_progress.encode_error(f"the pull was stopped after {timeout:g} s (the pull_timeout setting)")
    elif stopped == ["abandoned"]:
        yield pull_progress.encode_error("the pull was cancelled: its client went away")
    elif code != 0 and not failed:
        yield pull_progress.encode_error(f"the pull failed (exit code {code})")


def _watch_child(
    child: subprocess.Popen[bytes], timeout: float | None, abandoned: Callable[[], bool] | None, why: list[str]
) -> None:
    """Kill the pull's child once it outlives `timeout` or its client has gone, whichever comes first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            child.wait(timeout=CHECK_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            why.append("timeout")
        elif abandoned is not None and abandoned():
            why.append("abandoned")
        else:
            continue
        child.kill()
        return
