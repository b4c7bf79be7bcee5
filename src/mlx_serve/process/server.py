"""gunicorn as a library: one worker (one copy of each model in memory), threads for concurrency.

The app, its runtime and any preloaded models are built inside the worker, never in the master: MLX
state does not survive a fork. The master binds the socket first, so early requests wait in the
backlog until the worker is ready.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from mlx_serve.cpu import blas
from mlx_serve.logs import configure, formatter, get_logger
from mlx_serve.process import lifecycle
from mlx_serve.process.worker import BOOT_ERROR
from mlx_serve.serving import memory
from mlx_serve.serving.readiness import Readiness
from mlx_serve.settings import Settings, home_dir


def _gunicorn_logger(fmt: str) -> type[glogging.Logger]:
    class StructuredLogger(glogging.Logger):
        """gunicorn's own lines through the same structlog formatter as ours."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for handler in self.error_log.handlers:
                handler.setFormatter(formatter(fmt))  # type: ignore[arg-type]

    return StructuredLogger


class Server(BaseApplication):
    def __init__(self, settings: Settings, home: Path) -> None:
        self.settings = settings
        self.home = home
        self.runtime = None
        self.readiness: Readiness | None = None  # the worker's, once its app is built
        self.metrics: Any = None  # the worker's, once its app is built
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"],
            "workers": 1,
            # gthread, reading each request in full before a thread takes it (see worker.py)
            "worker_class": "mlx_serve.process.worker.Worker",
            "threads": s.threads,
            "graceful_timeout": s.graceful_timeout,
            # The worker heartbeats from its main loop while requests run on threads; preloads run on a
            # thread of their own after it listens (Server._preload), so nothing blocks the heartbeat.
            "timeout": 120,
            "keepalive": 5,
            "loglevel": s.log_level,
            "errorlog": "-",
            "accesslog": None,  # our middleware logs one structured line per request
            "logger_class": _gunicorn_logger(s.log_format),
            "proc_name": f"mlx-serve:{s.port}",
            "worker_exit": self._worker_exit,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
            # gunicorn 24+ opens a control socket at one path per user: instances on several ports would
            # fight over it, and we manage processes through PID files and signals instead.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:  # control_socket_disable only exists in newer gunicorn
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported here so the master process never imports MLX.
        from mlx_serve import cpu
        from mlx_serve.engine.loader import stream_count
        from mlx_serve.http.app import create_app
        from mlx_serve.metrics import Metrics
        from mlx_serve.serving.runtime import Runtime
        from mlx_serve.store.store import ModelStore

        configure(self.settings.log_level, self.settings.log_format)
        log = get_logger("mlx_serve.process.server")
        # The inference thread gives the GIL up while the device works and wants it back at once to queue
        # the next batch; with 64 request threads parsing and tokenizing, the default 5 ms switch
        # interval kept it waiting that long each time.
        sys.setswitchinterval(0.001)
        if blas.STATUS.needs_warning:
            log.warning("slow_blas", reason=blas.STATUS.reason, hint=blas.STATUS.hint)
        kernels = cpu.configure(stream_count())  # once, before any model compiles a kernel
        if kernels.needs_warning:
            log.warning("slow_kernels", reason=kernels.reason, hint=kernels.hint)
        metrics = self.metrics = Metrics()
        metrics.memory.limits = memory.configure(self.settings.mlx_cache_limit, self.settings.mlx_memory_limit)
        store = ModelStore(self.settings.models_dir, self.settings.model_aliases)
        for leftover in store.clean_leftovers():  # what killed pulls left behind (none is running now)
            log.info("pull_leftover_removed", path=str(leftover))
        _warn_if_exposed(self.settings, log)
        runtime = Runtime(self.settings, store, metrics)
        self.runtime = runtime
        self.readiness = Readiness("preloading" if self.settings.preload_models else "ready")
        details = {
            "url": f"http://{self.settings.host}:{self.settings.port}",
            "blas": blas.STATUS.path,
            "native_kernels": kernels.native,
            "mlx_cache_limit": metrics.memory.limits.cache,
            "mlx_memory_limit": metrics.memory.limits.memory,
        }
        if self.settings.preload_models:
            # Serving starts now (/health answers, /ready says 503) and the models load meanwhile: a load
            # balancer sees a node that is up but not ready, instead of one that does not answer.
            threading.Thread(target=self._preload, args=(details,), name="mlx-preload", daemon=True).start()
        else:
            log.info("ready", **details, preloaded=[])
        return create_app(self.settings, runtime, metrics, self.readiness, runtime.scheduler.max_batch_tokens)

    def _preload(self, details: dict[str, Any]) -> None:
        log = get_logger("mlx_serve.process.server")
        assert self.runtime is not None
        try:
            self.runtime.preload(self.settings.preload_models)
        except Exception as exc:  # one line; then the worker exits as failed to boot, and gunicorn stops
            log.error("preload_failed", error=str(exc))
            self.exit_worker(BOOT_ERROR)
        self.readiness.set("ready")
        log.info("ready", **details, preloaded=list(self.settings.preload_models))

    def connections_closed(self, reason: str) -> None:
        """The worker closed a connection on its client (e.g. an answer not taken within send_timeout)."""
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def begin_drain(self) -> float:
        """A graceful stop begins: /ready says 503 from now on. Seconds to go on serving (`drain_seconds`),
        so that a load balancer's health checks take this node out before it stops accepting."""
        self.readiness.set("draining")
        get_logger("mlx_serve.process.server").info("draining", seconds=self.settings.drain_seconds)
        return float(self.settings.drain_seconds)

    def exit_worker(self, code: int) -> None:
        """End the worker process: finish queued and running inference, flush the logs, and exit without
        running C++ static destructors. MLX's stream threads are never joined (they live as long as the
        thread that made them), and their destructors abort the process ("terminate called without an
        active exception", SIGABRT) on every exit, CPU and CUDA alike."""
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
        get_logger("mlx_serve.process.server").info("worker_exit", code=code)
        logging.shutdown()  # flushes every handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        # Only reached when the worker failed (a boot error or an exception gunicorn caught): a stop
        # ends in exit_worker. Keep gunicorn's meaning: 3 = failed to boot, so the master gives up.
        self.exit_worker(3 if not worker.booted else 1)

    def _when_ready(self, server: Any) -> None:
        # The master listens now: record it, so start/stop/status can find this instance.
        lifecycle.write_pid_file(self.home, self.settings.port, self.settings.host)

    def _on_exit(self, server: Any) -> None:
        lifecycle.remove_pid_file(self.home, self.settings.port, pid=os.getpid())


def _warn_if_exposed(settings: Settings, log: Any) -> None:
    """On a network-facing bind without a key, say exactly what anyone who can reach the port may do."""
    if settings.loopback or settings.resolved_api_key() is not None:
        return
    log.warning(
        "exposed_without_api_key",
        host=settings.host,
        port=settings.port,
        exposed=(
            "anyone who can reach this port can embed and rerank, pull models from the Hugging Face Hub or "
            "from folders on this machine into the store (filling its disk), unload and delete models"
        ),
        hint="set api_key (or api_key_file), or bind 127.0.0.1",
    )


def serve(settings: Settings, home: Path | None = None) -> None:
    """Run in the foreground until SIGTERM (graceful) or SIGINT (quick)."""
    home = home or home_dir()
    rotated = lifecycle.rotate_log(lifecycle.log_file(home, settings.port), settings.log_max_bytes)
    configure(settings.log_level, settings.log_format)
    log = get_logger("mlx_serve.process.server")
    if rotated:
        log.info("log_rotated", previous=str(lifecycle.log_file(home, settings.port)) + ".1")
    soft, hard = raise_open_files(lifecycle.OPEN_FILES)
    log.info("open_files_limit", soft=soft, hard=hard)
    Server(settings, home).run()


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Raise the soft limit on open files to `wanted` (at most the hard limit): every connection takes one,
    and a launchd agent starts with 256. Returns the limits in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS caps it at kern.maxfilesperproc: keep what we have
            pass
    return soft, hard
