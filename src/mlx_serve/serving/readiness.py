"""Readiness, apart from liveness: whether a load balancer should send this node requests.

/health says the process is up. /ready answers 503 while the models in `preload_models` load, and from
the moment a graceful stop begins: a balancer that checks it takes the node out of rotation before the
node stops accepting connections (the worker keeps serving for `drain_seconds` after SIGTERM, so that the
balancer's checks see the 503 first).
"""

from __future__ import annotations

import threading
from typing import Literal

State = Literal["preloading", "ready", "draining"]


class Readiness:
    def __init__(self, state: State = "preloading") -> None:
        self._state: State = state
        self._lock = threading.Lock()

    @property
    def state(self) -> State:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def set(self, state: State) -> None:
        with self._lock:
            if self._state != "draining":  # a stop, once begun, is never undone
                self._state = state
