"""What a pull may read from a model folder, and how it copies it.

A folder pulled into the store may come from anyone (a download, a shared drive, a user's home). It may
hold links to `/etc/shadow` or `/dev/zero`, a FIFO named `config.json` that blocks whoever opens it, or
files that change while they are read. So before anything is opened, the whole folder is scanned: only
regular files are taken, a link is followed only if it ends inside the folder's boundary (the folder
itself, or for the Hugging Face cache the repo's folder, whose snapshots link into its blobs). Then every
file is opened from the boundary's descriptor one path component at a time, none through a link
(openat with O_NOFOLLOW), and checked again on its open descriptor: a folder swapped for a link after
the scan cannot lead the copy outside.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Never copied: version control, download caches, weights in formats this server does not read.
NOT_COPIED = (".git", ".cache", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "onnx", "openvino")
# Pickles are never copied (the weights come as safetensors), but BGE-M3's two heads exist only as pickles:
# they are copied, then read at pull without running them (store/torch_pickle.py) and converted.
HEAD_PICKLES = ("sparse_linear.pt", "colbert_linear.pt")


class RefusedFolder(Exception):
    """A folder the store will not take; the message is one sentence naming the file and why."""


@dataclass(frozen=True)
class ModelFile:
    relative: Path  # where it goes in the model folder
    real: Path  # what is read (a link's target inside the boundary)
    size: int
    boundary: Path  # `real` is opened beneath it, component by component


def scan(folder: Path, boundary: Path | None = None, skip: tuple[str, ...] = NOT_COPIED) -> list[ModelFile]:
    """Every file to copy from `folder`, or RefusedFolder. Nothing is opened, only looked at."""
    folder = Path(os.path.realpath(folder))
    limit = Path(os.path.realpath(boundary or folder))
    if not folder.is_dir():
        raise RefusedFolder(f"{folder} is not a folder")
    files: list[ModelFile] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            rel = (here / name).relative_to(folder)
            if skipped(rel, skip):
                dirnames.remove(name)
            elif (here / name).is_symlink():
                raise RefusedFolder(f"{rel} is a link to a folder: copy the files themselves into the model folder")
        for name in filenames:
            path = here / name
            rel = path.relative_to(folder)
            if skipped(rel, skip):
                continue
            files.append(_checked(path, rel, limit))
    return sorted(files, key=lambda f: str(f.relative))


def skipped(rel: Path, skip: tuple[str, ...]) -> bool:
    if rel.as_posix() in HEAD_PICKLES:
        return False
    return any(fnmatch.fnmatch(part, pattern) for part in rel.parts for pattern in skip)


def _checked(path: Path, rel: Path, limit: Path) -> ModelFile:
    info = os.lstat(path)
    real = path
    if stat.S_ISLNK(info.st_mode):
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(limit):
            raise RefusedFolder(f"{rel} is a link to {real}, outside the model folder: refused")
        try:
            info = os.stat(real)
        except OSError:
            raise RefusedFolder(f"{rel} is a link to nothing ({real})") from None
    if not stat.S_ISREG(info.st_mode):
        raise RefusedFolder(f"{rel} is not a regular file ({_kind(info.st_mode)}): refused")
    return ModelFile(rel, real, info.st_size, limit)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a socket" if stat.S_ISSOCK(mode) else "not a plain file"


def open_regular(path: Path) -> int:
    """A read descriptor of a regular file: never through a link, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedFolder(f"{path.name} became a link while it was read: refused") from None
        raise
    return _regular(fd, path.name)


def _regular(fd: int, name: object) -> int:
    """`fd` in blocking mode if it is a regular file; else closed, and RefusedFolder (a FIFO, a device)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RefusedFolder(f"{name} is not a regular file: refused")
    os.set_blocking(fd, True)
    return fd


def open_beneath(item: ModelFile) -> int:
    """A read descriptor of a scanned file, opened from its boundary one component at a time, none
    through a link: a part of its path swapped for a link since the scan is refused, not followed."""
    parts = item.real.relative_to(item.boundary).parts
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        folder = os.open(item.boundary, flags | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=folder)
                os.close(folder)
                folder = inner
            fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RefusedFolder(
                f"{item.relative} (or a folder above it) became a link while it was read: refused"
            ) from None
        raise
    return _regular(fd, item.relative)


def read_text(path: Path | ModelFile) -> str:
    """A small file's text (config.json), read safely."""
    fd = open_beneath(path) if isinstance(path, ModelFile) else open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(16 * 2**20).decode("utf-8", "replace")


def copy(files: list[ModelFile], target: Path, copied: Callable[[int, int], None] | None = None) -> None:
    """Copy the scanned files into `target`, each read through open_beneath; `copied(bytes done, total)`
    is told after each MiB."""
    total, done = sum(f.size for f in files), 0
    chunk = 1 << 20
    for item in files:
        dest = target / item.relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_beneath(item), "rb") as src, dest.open("wb") as out:
            while block := src.read(chunk):
                out.write(block)
                done += len(block)
                if copied is not None:
                    copied(done, total)
    if copied is not None and done < total:  # files that shrank after the scan: still a finished copy
        copied(total, total)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse before copying what would not fit, with a margin (conversion writes metadata, logs...)."""
    free = shutil.disk_usage(folder).free
    margin = 64 * 2**20 + needed // 50
    if needed + margin > free:
        raise RefusedFolder(
            f"not enough disk space in {folder}: the model needs {_gb(needed + margin)}, {_gb(free)} are free"
        )


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"


# safetensors dtypes and their sizes in bytes (the format's own list).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
HEADER_LIMIT = 100 * 2**20  # the format's own limit on a header


def safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensors a .safetensors file says it holds (name -> dtype, shape, data_offsets), once every
    promise its header makes has been checked against the file: a header length within the file, a JSON
    object, known dtypes, non-negative shapes, and each tensor's bytes exactly where its offsets say,
    inside the file. A file that lies (a 2^40 header length, a tensor claiming 100 billion rows, a
    truncated download) is refused in one sentence naming it."""
    name = path.name
    with os.fdopen(open_regular(path), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise RefusedFolder(f"{name} is not a safetensors file: it is {size} bytes long")
        length = int.from_bytes(head, "little")
        if length > min(HEADER_LIMIT, size - 8):
            raise RefusedFolder(f"{name}'s header says it is {length} bytes long, but the file has {size}")
        try:
            header = json.loads(fh.read(length))
        except ValueError as exc:
            raise RefusedFolder(f"{name}'s header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RefusedFolder(f"{name}'s header is not a JSON object")
    data = size - 8 - length
    tensors = {}
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise RefusedFolder(f"{name}: tensor {key!r} has no description")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise RefusedFolder(f"{name}: tensor {key!r} has the unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise RefusedFolder(f"{name}: tensor {key!r} has the shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data
        ):
            raise RefusedFolder(
                f"{name}: tensor {key!r}'s data_offsets {offsets!r} lie outside the file's {data} bytes"
            )
        count = 1
        for d in shape:
            count *= d
        if count * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise RefusedFolder(
                f"{name}: tensor {key!r} of shape {shape} ({dtype}) needs {count * DTYPE_BYTES[dtype]} bytes, "
                f"and its offsets give {offsets[1] - offsets[0]}"
            )
        tensors[key] = spec
    return tensors


def parameter_count(model_dir: Path) -> int | None:
    """The values in the folder's weights (model*.safetensors), from their headers; None if unreadable."""
    total = 0
    try:
        for file in sorted(model_dir.glob("*.safetensors")):
            for spec in safetensors_header(file).values():
                count = 1
                for d in spec["shape"]:
                    count *= d
                total += count
    except (OSError, RefusedFolder):
        return None
    return total or None


def digest(model_dir: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 of the folder's content: each file's path and sha256, in path order. Two pulls of the same
    files give the same digest, and any changed byte another one."""
    outer = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir)
        if rel.name in skip or rel.parts[0].startswith("."):
            continue
        inner = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                inner.update(chunk)
        outer.update(f"{rel.as_posix()}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()
