"""Middleware: what every request goes through before and after its resource."""

from __future__ import annotations

import random
import time

import falcon
import structlog

from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics

log = get_logger("mlx_serve.access")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class RequestLog:
    """Request id, timing, metrics and one log line per request."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        # A correlation id, not a secret: random's generator, since uuid4 reads os.urandom, a system call
        # that gives the interpreter lock up (and under load waits to get it back).
        rid = (req.get_header("X-Request-ID") or "")[:64] or f"{random.getrandbits(128):032x}"
        req.context.request_id = rid
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool) -> None:
        elapsed = time.perf_counter() - req.context.get("started", time.perf_counter())
        status = resp.status_code
        # Unrouted paths share one label, so a scanner cannot blow up the metric's cardinality.
        route = req.uri_template or "unmatched"
        # Known methods only: each new method name was a new series (20,000 random ones: 3.9 MB of metrics).
        method = req.method if req.method in METHODS else "other"
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.latency.labels(route, str(status)).observe(elapsed)
        resp.set_header("X-Request-ID", req.context.get("request_id", ""))
        log.info(
            "request",
            method=req.method,
            path=req.path,
            status=status,
            ms=round(elapsed * 1000, 2),
            model=req.context.get("model"),
            tokens=req.context.get("tokens"),
        )
        structlog.contextvars.clear_contextvars()
