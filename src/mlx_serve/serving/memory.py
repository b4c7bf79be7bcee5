"""Device memory: MLX's limits, what it holds, and giving its buffer cache back when the server is idle.

MLX keeps freed buffers in a cache for reuse, by default up to its whole memory limit (on an H100 a
server with 1.2 GB of weights held 78.5 GB after a burst of requests; on a Mac the cache is the
machine's RAM). mlx-serve sets a cache limit (`mlx_cache_limit`, auto: a sixteenth of MLX's memory
limit, at most 2 GiB), and empties the cache once no batch has run for a moment, so that a long-running
server stays near its working set between bursts while a burst still reuses its buffers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

AUTO_CACHE_CAP = 2 * 2**30
IDLE_RELEASE_SECONDS = 2.0  # no batch for this long: the buffer cache goes back to the system
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(value: Any) -> int | None:
    """Bytes from an int or a text such as "2GiB", "512 MB", "1.5g"; None for "auto"."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, bool):
        raise ValueError("must be a size such as 2GiB, a number of bytes, or auto")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return int(value)
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a size (examples: 2GiB, 512MB, 1073741824, auto)")
    number, unit = float(match.group(1)), match.group(2).lower()
    binary = "i" in unit
    base = unit.replace("i", "").replace("b", "")
    scale = 1024 ** "kmgt".index(base) * 1024 if binary and base else _UNITS[base]
    return int(number * scale)


@dataclass(frozen=True)
class Limits:
    cache: int
    memory: int


def configure(cache_limit: int | None, memory_limit: int | None) -> Limits:
    """Apply the limits in this process (the worker, before any model loads)."""
    import mlx.core as mx

    if memory_limit is not None:
        mx.set_memory_limit(memory_limit)
    memory = mx.get_memory_limit()
    cache = cache_limit if cache_limit is not None else min(AUTO_CACHE_CAP, memory // 16)
    mx.set_cache_limit(cache)
    return Limits(cache, memory)


def wired_target(setting: int | None, loaded_bytes: int, device: dict[str, Any]) -> int | None:
    """The wired limit to set, or None to leave MLX's alone. Only Metal keeps memory wired (resident, never
    paged out or compressed under memory pressure): `auto` wires the loaded models' weights, so that a Mac
    busy with other work does not page the model out between requests; at most 90% of the system's wired
    limit (setting more is an error in MLX)."""
    if "max_recommended_working_set_size" not in device:  # not Metal: nothing to wire
        return None
    cap = int(device["max_recommended_working_set_size"] * 0.9)
    return min(loaded_bytes if setting is None else setting, cap)


def set_wired(setting: int | None, loaded_bytes: int) -> int | None:
    """Apply wired_target on this device; what was set, or None."""
    import mlx.core as mx

    target = wired_target(setting, loaded_bytes, mx.device_info() if mx.metal.is_available() else {})
    if target is not None:
        mx.set_wired_limit(target)
    return target


@dataclass(frozen=True)
class Usage:
    active: int  # in arrays now
    cache: int  # freed, kept for reuse
    peak: int  # the most active at once since start

    def to_dict(self) -> dict[str, int]:
        return {"active_bytes": self.active, "cache_bytes": self.cache, "peak_bytes": self.peak}


# 1.25 GiB: on an H100 under a burst, a cap of 1.5 GiB left nvidia-smi at Qwen3-0.6B's weights plus 3.26 GB
# (MLX overshoots its limit by a few kernels, and CUDA holds its own beside); 1.25 GiB, plus 2.91 GB at 95%
# of the unbounded throughput (docs/performance.md).
INFLIGHT_FLOOR, INFLIGHT_CAP = 512 * 2**20, 1280 * 2**20


def inflight_budget(setting: int | None) -> int | None:
    """The bound on the batches' activations at once: the setting (0: none), or for auto a sixteenth of
    MLX's memory limit, between 512 MiB and 1.25 GiB. On an H100 a Qwen3-0.6B server's peak was ten times
    its weights under a burst; on a 16 GB Mac such a peak is the machine's memory."""
    import mlx.core as mx

    if setting is not None:
        return setting or None
    return max(INFLIGHT_FLOOR, min(INFLIGHT_CAP, mx.get_memory_limit() // 16))


def throttles() -> bool:
    """Whether the bound is kept as MLX's memory limit (`throttle`) rather than by splitting batches: on a
    GPU. There MLX encodes a batch's kernels ahead of the device, allocating each output as it encodes it
    and freeing the inputs once the kernels have run; on an H100 a Qwen3-0.6B forward pass had all 28
    layers' activations alive at once (327 KB a token, a layer needing some 12 KB), and batches split to
    fit the bound lost 20-50% of the throughput. MLX's eval waits for the device whenever its active
    memory passes the memory limit, so a limit of the weights plus the bound holds the peak at no such
    cost. On a CPU each kernel runs as it is queued and waiting cost half the speed: batches are split
    there (engine/batching.py)."""
    import mlx.core as mx

    return mx.default_device() == mx.gpu


def throttle(configured: int, loaded: int, bound: int | None) -> int:
    """Set MLX's memory limit to the loaded weights plus the bound, never above the configured limit
    (`bound` None: the configured limit). The limit set."""
    import mlx.core as mx

    limit = configured if bound is None else min(configured, loaded + bound)
    mx.set_memory_limit(limit)
    return limit


def usage() -> Usage:
    import mlx.core as mx

    from mlx_serve.engine.batching import PEAK

    return Usage(mx.get_active_memory(), mx.get_cache_memory(), PEAK.since_start())


def release_cache() -> None:
    import mlx.core as mx

    mx.clear_cache()


class MemoryCollector:
    """Prometheus gauges read at scrape time: MLX's active, cache and peak memory, and the process's RSS."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits
        # The scheduler's in-flight bytes and their bound (the runtime sets both when it starts).
        self.inflight: Callable[[], int] | None = None
        self.inflight_limit: int | None = None

    def collect(self) -> Iterator[Any]:
        import psutil
        from prometheus_client.core import GaugeMetricFamily

        now = usage()
        mlx_memory = GaugeMetricFamily(
            "mlx_serve_mlx_memory_bytes",
            "MLX memory: in arrays (active), kept for reuse (cache), peak since start, and the estimated "
            "activations of the batches on the device now (inflight)",
            labels=["kind"],
        )
        kinds = [("active", now.active), ("cache", now.cache), ("peak", now.peak)]
        if self.inflight is not None:
            kinds.append(("inflight", self.inflight()))
        for kind, value in kinds:
            mlx_memory.add_metric([kind], value)
        yield mlx_memory
        if self.limits is not None:
            limit = GaugeMetricFamily("mlx_serve_mlx_limit_bytes", "MLX's memory and cache limits", labels=["kind"])
            limit.add_metric(["memory"], self.limits.memory)
            limit.add_metric(["cache"], self.limits.cache)
            if self.inflight_limit is not None:
                limit.add_metric(["inflight"], self.inflight_limit)
            yield limit
        yield GaugeMetricFamily(
            "mlx_serve_resident_memory_bytes",
            "Resident memory of the worker process",
            value=psutil.Process().memory_info().rss,
        )
