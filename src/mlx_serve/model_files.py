"""What a pull may read from a model folder, and how it copies it.

A folder pulled into the store may come from anyone (a download, a shared drive, a user's home). It may
hold links to `/etc/shadow` or `/dev/zero`, a FIFO named `config.json` that blocks whoever opens it, or
files that change while they are read. So before anything is opened, the whole folder is scanned: only
regular files are taken, a link is followed only if it ends inside the folder's boundary (the folder
itself, or for the Hugging Face cache the repo's folder, whose snapshots link into its blobs), and every
file is opened without following links and checked again on its open descriptor.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

# Never copied: version control, download caches, weights in formats this server does not read.
NOT_COPIED = (".git", ".cache", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "onnx", "openvino")


class RefusedFolder(Exception):
    """A folder the store will not take; the message is one sentence naming the file and why."""


@dataclass(frozen=True)
class ModelFile:
    relative: Path  # where it goes in the model folder
    real: Path  # what is read (a link's target inside the boundary)
    size: int


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
    return ModelFile(rel, real, info.st_size)


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
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RefusedFolder(f"{path.name} is not a regular file: refused")
    os.set_blocking(fd, True)
    return fd


def read_text(path: Path) -> str:
    """A small file's text (config.json), read safely."""
    with os.fdopen(open_regular(path), "rb") as fh:
        return fh.read(16 * 2**20).decode("utf-8", "replace")


def copy(files: list[ModelFile], target: Path) -> None:
    """Copy the scanned files into `target`, each read through open_regular."""
    for item in files:
        dest = target / item.relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_regular(item.real), "rb") as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


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
