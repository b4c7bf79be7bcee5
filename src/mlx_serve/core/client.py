"""Whether the client of the request this thread serves is still connected.

The worker (process/worker.py) knows the connection; the runtime does not, and must not: it only asks
`gone()` while a request waits, so that work whose client has left is dropped before it runs (a request
still queued) or stopped (a pull's child process). A thread that serves no connection (a test calling the
app, the CLI) has no watch, and its client is never gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def watch(check: Callable[[], bool]) -> Iterator[None]:
    """While the block runs, `gone()` on this thread is `check()`."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def watcher() -> Callable[[], bool]:
    """This thread's check, to be asked from another thread (a pull's monitor)."""
    return getattr(_local, "check", None) or _never


def gone() -> bool:
    return watcher()()


def _never() -> bool:
    return False
