"""What Prometheus reads of the appliance's health beside its traffic: refreshed every
``PROBE_SECONDS`` by one task (each store and the inference backend answering, the data disk's
free space, the TLS certificate's expiry, recordings waiting for their upload, the event loop's
lag), and, at scrape time, the captions' state in each meeting. docs/operations.md lists every
series; bundles/observability/ has the alerts and dashboards built on them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from .machine.tls import certificate_expiry
from .inference import Inference
from .settings import Settings
from .signaling.captions import Captions
from .stores import Stores
from .stores.relational import Recording, utcnow

log = logging.getLogger("confmeet.monitoring")

PROBE_SECONDS = 15.0
LAG_INTERVAL = 0.5

STORE_UP = Gauge("confmeet_store_up", "1 when the store answered the last probe", ["store"])
STORE_ERRORS = Counter("confmeet_store_errors", "probes the store failed to answer (down, refusing, too slow)",
                       ["store"])
STORE_LATENCY = Gauge("confmeet_store_latency_seconds", "how long the store took to answer the last probe",
                      ["store"])
INFERENCE_UP = Gauge("confmeet_inference_up", "1 when the inference backend and all its models are ready",
                     ["backend"])
MODEL_READY = Gauge("confmeet_inference_model_ready", "1 when the model is ready", ["model"])
DISK_FREE = Gauge("confmeet_data_disk_free_ratio", "free fraction of the file system of the data directory")
CERTIFICATE_EXPIRY = Gauge("confmeet_tls_certificate_expiry_timestamp_seconds",
                           "when the appliance's TLS certificate expires (absent without TLS)")
UPLOADS_WAITING = Gauge("confmeet_recording_uploads_waiting", "recordings whose files are not all stored yet")
UPLOAD_BACKLOG = Gauge("confmeet_recording_upload_backlog_seconds",
                       "how long the oldest recording waiting for its upload has waited (0: none waits)")
SPOOL_BYTES = Gauge("confmeet_recording_spool_bytes",
                    "bytes under <data_dir>/recordings: recordings being written or waiting for their upload")
LOOP_LAG = Gauge("confmeet_event_loop_lag_seconds",
                 "how late the appliance's event loop woke a task up, the largest of the last probe period")


def _tree_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(OSError):  # removed while we walk: an upload finished
            if item.is_file():
                total += item.stat().st_size
    return total


def _expiry(path: str) -> float | None:
    try:
        return certificate_expiry(Path(path)).timestamp()
    except (OSError, ValueError):  # unreadable now: the last value stays
        return None


class CaptionsCollector:
    """Meetings with captions on, by state (available, degraded, unavailable), at scrape time."""

    def __init__(self, captions: Captions) -> None:
        self.captions = captions

    def collect(self):
        family = GaugeMetricFamily("confmeet_captions_meetings", "meetings with captions on, by state", labels=["state"])
        counts = {"available": 0, "degraded": 0, "unavailable": 0}
        for meeting in list(self.captions.meetings.values()):
            if meeting.enabled and meeting.state in counts:
                counts[meeting.state] += 1
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


class Monitor:
    def __init__(self, settings: Settings, stores: Stores, inference: Inference, captions: Captions) -> None:
        self.settings = settings
        self.stores = stores
        self.inference = inference
        self.collector = CaptionsCollector(captions)
        self._lag = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        REGISTRY.register(self.collector)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._probe_forever(), name="monitoring-probe"),
                       loop.create_task(self._measure_lag(), name="monitoring-loop-lag")]

    async def close(self) -> None:
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.collector)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:
                log.exception("the health probe failed")
            await asyncio.sleep(PROBE_SECONDS)

    async def probe(self) -> None:
        for name, result in (await self.stores.check()).items():
            STORE_UP.labels(name).set(1 if result["ok"] else 0)
            STORE_ERRORS.labels(name).inc(0 if result["ok"] else 1)
            if result["ok"]:
                STORE_LATENCY.labels(name).set(result["latency_ms"] / 1000)
        health = await self.inference.health()
        INFERENCE_UP.labels(health.backend).set(1 if health.ready else 0)
        for model, ready in health.models.items():
            MODEL_READY.labels(model).set(1 if ready else 0)
        usage = await asyncio.to_thread(shutil.disk_usage, self.settings.data_dir)
        DISK_FREE.set(usage.free / usage.total)
        if self.settings.tls_cert:
            expiry = await asyncio.to_thread(_expiry, self.settings.tls_cert)
            if expiry is not None:
                CERTIFICATE_EXPIRY.set(expiry)
        waiting = await self.stores.db.run(lambda: [r.ended_at or r.started_at for r in Recording.select(
            Recording.started_at, Recording.ended_at).where(Recording.status == "uploading")])
        UPLOADS_WAITING.set(len(waiting))
        SPOOL_BYTES.set(await asyncio.to_thread(_tree_size, self.settings.data_dir / "recordings"))
        now = utcnow()
        UPLOAD_BACKLOG.set(max((now - since).total_seconds() for since in waiting) if waiting else 0.0)
        LOOP_LAG.set(self._lag)
        self._lag = 0.0

    async def _measure_lag(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            self._lag = max(self._lag, time.monotonic() - asked - LAG_INTERVAL)
