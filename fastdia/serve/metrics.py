"""Prometheus metrics of the server, one set per app.

Each `Metrics` owns its own `CollectorRegistry` (unless given one), so two apps in one process
(tests, several servers) never collide on prometheus-client's global default registry. The engine
writes the scheduler metrics (queue depth, active rows, occupancy, steps, time to first audio); the
app writes the per-request ones (duration, requests, errors).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: first audio is expected well under a second on a GPU, a few seconds on a CPU.
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_OCCUPANCY_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class Metrics:
    """The server's metrics.

    Args:
        registry: where to register them; a fresh `CollectorRegistry` when None.

    Attributes:
        queue_depth: Gauge[model], requests waiting for a batch row.
        active_rows: Gauge[model], batch rows generating now.
        batch_occupancy: Histogram[model], rows used / slots, one observation per decode step.
        decode_steps: Counter[model], batched decode steps run (rate() gives steps/s).
        time_to_first_audio: Histogram[model], seconds from submit to the first audio chunk.
        request_duration: Histogram[model, status], seconds per speech request.
        requests: Counter[model, status], speech requests by HTTP status.
        errors: Counter[type], error responses by OpenAI error type.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("fastdia_queue_depth", "Requests waiting for a batch row", ["model"], registry=r)
        self.active_rows = Gauge("fastdia_active_rows", "Batch rows generating now", ["model"], registry=r)
        self.batch_occupancy = Histogram("fastdia_batch_occupancy", "Rows used / slots, per decode step",
                                         ["model"], buckets=_OCCUPANCY_BUCKETS, registry=r)
        self.decode_steps = Counter("fastdia_decode_steps", "Batched decode steps run", ["model"], registry=r)
        self.time_to_first_audio = Histogram("fastdia_time_to_first_audio_seconds",
                                             "Seconds from submit to the first audio chunk", ["model"],
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.request_duration = Histogram("fastdia_request_duration_seconds", "Seconds per speech request",
                                          ["model", "status"], buckets=_DURATION_BUCKETS, registry=r)
        self.requests = Counter("fastdia_requests", "Speech requests by HTTP status", ["model", "status"],
                                registry=r)
        self.errors = Counter("fastdia_errors", "Error responses by OpenAI error type", ["type"], registry=r)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
