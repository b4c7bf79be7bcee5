"""Prometheus metrics. Each app gets its own registry, so tests and several apps never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlx_serve.serving.memory import MemoryCollector

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlx_serve_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "mlx_serve_request_duration_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("mlx_serve_tokens", "Tokens processed, by model", ["model"], registry=r)
        self.inputs = Counter(
            "mlx_serve_inputs", "Inputs (texts or token arrays) processed, by model", ["model"], registry=r
        )
        self.inference_seconds = Histogram(
            "mlx_serve_inference_seconds",
            "Time on the inference thread per merged batch run, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mlx_serve_batch_size", "Sequences run together in one merged batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "mlx_serve_batch_requests", "Requests merged into one batch run", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "mlx_serve_queue_wait_seconds",
            "Time a request waited for the inference thread",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.models_loaded = Gauge("mlx_serve_models_loaded", "Models in memory, by type", ["type"], registry=r)
        self.cache_hits = Counter("mlx_serve_cache_hits", "Requests whose model was loaded", ["type"], registry=r)
        self.cache_misses = Counter(
            "mlx_serve_cache_misses", "Requests that had to load their model", ["type"], registry=r
        )
        self.cache_evictions = Counter(
            "mlx_serve_cache_evictions",
            "Models unloaded, by type and reason (lru, ttl, manual)",
            ["type", "reason"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "mlx_serve_model_load_seconds",
            "Time to load a model",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.model_memory_bytes = Gauge(
            "mlx_serve_model_memory_bytes", "Memory of each loaded model's weights", ["model"], registry=r
        )
        self.connections_closed = Counter(
            "mlx_serve_connections_closed",
            "Connections the server closed on a client, by reason (send_timeout: it did not take its answer; "
            "evicted: idle, closed to make room when every connection slot was taken)",
            ["reason"],
            registry=r,
        )
        self.numerical_overflows = Counter(
            "mlx_serve_numerical_overflows",
            "Outputs that came out NaN or infinite, by model and outcome (recomputed: served from a float32 run; "
            "failed: refused with numerical_overflow)",
            ["model", "outcome"],
            registry=r,
        )
        self.abandoned = Counter(
            "mlx_serve_abandoned_requests",
            "Requests whose client went away before the answer: dropped from the queue (queued) or stopped "
            "between batches once every client of the run had gone (running)",
            ["stage"],
            registry=r,
        )
        self.shapes_pending = Gauge(
            "mlx_serve_shapes_pending",
            "Batch shapes of loaded models still to be built in the background (on a GPU; 0 when all are)",
            registry=r,
        )
        self.memory = MemoryCollector()  # read at scrape time; the server gives it the limits it set
        r.register(self.memory)

    def render(self) -> bytes:
        return generate_latest(self.registry)
