"""Metrics counted in whichever process does the work — the main process or an SFU worker (the
captions' inference runs where a room's media is). Each process counts into its own
:data:`REGISTRY`; a worker sends :func:`snapshot` with its SFU counters every second
(sfu/workers.py), and the main process's /metrics shows the sum over itself and its workers
(:func:`merged`), the counters of workers that died included. No Prometheus multiprocess mode:
the figures travel the same way as the rooms' reports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

REGISTRY = CollectorRegistry(auto_describe=True)
MONOTONIC = ("counter", "histogram")  # what a dead worker's last report still adds to the totals

Snapshot = list[dict[str, Any]]


def snapshot(registry: CollectorRegistry = REGISTRY) -> Snapshot:
    """This process's figures as plain data (JSON), one entry per metric family."""
    return [{"name": family.name, "type": family.type, "help": family.documentation,
             "samples": [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]}
            for family in registry.collect()]


def monotonic_only(families: Snapshot) -> Snapshot:
    """The counters and histograms of a snapshot (a process that ended has no gauges left)."""
    return [family for family in families if family["type"] in MONOTONIC]


def merged(snapshots: Iterable[Snapshot]) -> Iterator[Metric]:
    """Metric families whose samples are the sums of the snapshots' samples of the same name and
    labels."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for families_of_one in snapshots:
        for family in families_of_one:
            _, _, samples = families.setdefault(family["name"], (family["type"], family["help"], {}))
            for name, labels, value in family["samples"]:
                key = (name, tuple(sorted(labels.items())))
                samples[key] = samples.get(key, 0.0) + value
    for name, (kind, documentation, samples) in sorted(families.items()):
        metric = Metric(name, documentation, kind)
        for (sample, labels), value in samples.items():
            metric.add_sample(sample, dict(labels), value)
        yield metric
