"""The inference requests' metrics, counted in the process that makes them (process_metrics.py):
``confmeet_inference_request_duration_seconds{backend,model}`` for each answered request and
``confmeet_inference_errors_total{backend,model,kind}`` for each failed one (kind: unavailable —
down, not ready, too slow; refused — bad input). A Triton pool (pool.py) adds, for each of its
servers, ``confmeet_inference_in_flight{member}``, the calls it is answering (summed over the
processes that ask), and ``confmeet_inference_member_up{member}``, as the main process's pool last
saw it: every process checks the servers on its own, and one view of them is the one to alert on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY as MAIN_PROCESS_REGISTRY
from prometheus_client import Counter, Gauge, Histogram

from ..process_metrics import REGISTRY
from .base import InferenceError, InferenceUnavailable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0)

DURATION = Histogram("confmeet_inference_request_duration_seconds", "inference requests answered, by how long they took",
                     ["backend", "model"], buckets=BUCKETS, registry=REGISTRY)
ERRORS = Counter("confmeet_inference_errors", "inference requests that failed (unavailable, refused)",
                 ["backend", "model", "kind"], registry=REGISTRY)

IN_FLIGHT = Gauge("confmeet_inference_in_flight", "calls a Triton server of the pool is answering now", ["member"],
                  registry=REGISTRY)
MEMBER_UP = Gauge("confmeet_inference_member_up", "1 when the Triton server of the pool takes calls (its last "
                  "health check passed, and no call found it unreachable since)", ["member"],
                  registry=MAIN_PROCESS_REGISTRY)


@contextmanager
def measured(backend: str, model: str) -> Iterator[None]:
    """Count the request the block makes of ``model``."""
    started = time.perf_counter()
    try:
        yield
    except InferenceUnavailable:
        ERRORS.labels(backend, model, "unavailable").inc()
        raise
    except InferenceError:
        ERRORS.labels(backend, model, "refused").inc()
        raise
    DURATION.labels(backend, model).observe(time.perf_counter() - started)
