"""The pull progress protocol: NDJSON, one JSON object per line, as Ollama's `/api/pull` streams it.

`mlx-serve pull --progress json` writes it (the server runs that as a child for `/api/pull`), and the
server relays it to its client. A line is `{"status": ...}`, with `completed` and `total` bytes while
downloading, and the last line is `{"status": "success"}` or `{"error": "one sentence"}`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO


@dataclass(frozen=True)
class Progress:
    status: str
    completed: int | None = None
    total: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.total is not None:
            out.update(completed=self.completed or 0, total=self.total)
        return out


def encode(progress: Progress) -> bytes:
    return json.dumps(progress.to_dict()).encode() + b"\n"


def encode_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line as a dict; a line that is not a JSON object (a stray print) reads as a status."""
    try:
        value = json.loads(line)
    except ValueError:
        return {"status": line.decode("utf-8", "replace").strip()}
    return value if isinstance(value, dict) else {"status": str(value)}


def error_of(line: bytes) -> str | None:
    """The error a line reports, or None for a progress line."""
    error = decode(line).get("error")
    return None if error is None else str(error)


class LineWriter:
    """Writes whole lines from any thread: huggingface_hub downloads files on several threads at once, and
    two unlocked writes could interleave into one unreadable line.

    A download's or a copy's byte counts are written at most every `interval` seconds (a copy counts each
    MiB: a thousand lines a gigabyte for a client to parse); its first and last counts, and every other
    line, are always written."""

    def __init__(self, stream: BinaryIO, interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._interval = interval
        self._clock = clock
        self._written: dict[tuple[str, int], float] = {}  # (status, total) -> when its count was last written

    def write(self, line: bytes) -> None:
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def progress(self, progress: Progress) -> None:
        if progress.total is not None and (progress.completed or 0) < progress.total:
            key, now = (progress.status, progress.total), self._clock()
            with self._lock:
                last = self._written.get(key)
                if last is not None and now - last < self._interval:
                    return
                self._written[key] = now
        self.write(encode(progress))

    def error(self, message: str) -> None:
        self.write(encode_error(message))
