"""The recording sink: a room's tracks, each written to its own file under the recording's spool
directory while the recording runs (see writer.py).

The taps only queue each packet (they run inside the SFU's forwarding); a drain task hands the
queue to a worker thread every ``interval`` seconds, so reassembly, muxing and disk writes never
hold up forwarding. When the disk fills (or its free space falls under the configured minimum)
the sink stops writing and emits ``{"type": "sink_failed", "sink": "recording", "reason"}`` so
that the service stops the recording and says why; the files written so far are kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import errno
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiortc.rtp import RtpPacket

from ..fsutil import write_atomically
from ..sfu.forwarder import UpTrack
from .writer import TrackInfo, TrackWriter, UnsupportedCodec, container_for

log = logging.getLogger("confmeet.recording")

MANIFEST = "manifest.json"
DRAIN_INTERVAL = 0.2
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MB = 1024 * 1024

Emit = Callable[[str | None, dict[str, Any]], None]
# (writer, arrival seconds or None to close it, ssrc, sequence number, timestamp, payload)
Item = tuple[TrackWriter, float | None, int, int, int, bytes]


class DiskFull(Exception):
    """The disk holding the spool directory is full, or under the minimum free space."""


class RecordingSink:
    def __init__(self, recording_id: str, directory: Path, emit: Emit, min_free_bytes: int = 0,
                 interval: float = DRAIN_INTERVAL) -> None:
        self.recording_id = recording_id
        self.directory = directory
        self.min_free_bytes = min_free_bytes
        self.interval = interval
        self.started = time.monotonic()
        self.started_at = dt.datetime.now(dt.UTC)
        self.failure: str | None = None
        self._emit = emit
        self._queue: collections.deque[Item] = collections.deque()
        self._ups: dict[tuple[str, str], UpTrack] = {}
        self._writers: dict[tuple[str, str], TrackWriter] = {}
        self._all: list[TrackWriter] = []
        self._numbers: collections.Counter[tuple[str, str]] = collections.Counter()
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        directory.mkdir(parents=True, exist_ok=True)
        self._task = self._loop.create_task(self._drain_loop(), name=f"recording-{recording_id}")

    # ------------------------------------------------------------------ TrackSink
    def track_added(self, up: UpTrack) -> None:
        if self.failure is not None:
            return
        try:
            container_for(up.codec.name)
        except UnsupportedCodec as exc:
            log.warning("recording %s: track %s of %s is not recorded: %s", self.recording_id,
                        up.track_id, up.publisher, exc)
            return
        source = (up.publisher, up.source)
        self._numbers[source] += 1
        stem = self.directory / f"{up.publisher}-{up.source}-{self._numbers[source]}"
        info = TrackInfo(up.publisher, up.track_id, up.kind, up.source, up.codec)
        writer = TrackWriter(stem, info, lambda: self._loop.call_soon_threadsafe(up.request_keyframe))
        self._writers[up.key] = writer
        self._ups[up.key] = up
        self._all.append(writer)
        up.add_tap(self._tap)
        up.request_keyframe()

    def track_removed(self, up: UpTrack) -> None:
        up.remove_tap(self._tap)
        self._ups.pop(up.key, None)
        writer = self._writers.pop(up.key, None)
        if writer is not None:
            self._queue.append((writer, None, 0, 0, 0, b""))

    def _tap(self, up: UpTrack, packet: RtpPacket) -> None:
        writer = self._writers.get(up.key)
        if writer is not None:
            self._queue.append((writer, time.monotonic() - self.started, packet.ssrc,
                                packet.sequence_number, packet.timestamp, packet.payload))

    async def stop(self) -> dict[str, Any]:
        self._stopping.set()
        await asyncio.gather(self._task, return_exceptions=True)  # lets a drain under way finish
        for up in list(self._ups.values()):
            self.track_removed(up)
        return await asyncio.to_thread(self._finish)

    # ------------------------------------------------------------------ the worker thread
    def _drain(self) -> None:
        while self._queue:
            writer, arrival, ssrc, seq, timestamp, payload = self._queue.popleft()
            try:
                if arrival is None:
                    writer.close()
                else:
                    writer.write(arrival, ssrc, seq, timestamp, payload)
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise DiskFull(f"the disk holding {self.directory} is full") from None
                raise
            except Exception:
                # A stream the muxer refuses spoils that track only.
                log.exception("recording %s: writing %s failed; the track stops there",
                              self.recording_id, writer.path.name)
                self._abandon(writer)

    def _abandon(self, writer: TrackWriter) -> None:
        try:
            writer.close()
        except Exception:
            log.exception("recording %s: closing %s failed", self.recording_id, writer.path.name)

    def _check_space(self) -> None:
        free = shutil.disk_usage(self.directory).free
        if free < self.min_free_bytes:
            raise DiskFull(f"only {free // MB} MB are free on the disk holding {self.directory} "
                           f"(recordings stop under {self.min_free_bytes // MB} MB)")

    def _drain_and_check(self) -> None:
        self._drain()
        self._check_space()

    async def _drain_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.interval)
                if not self._stopping.is_set():
                    await asyncio.to_thread(self._drain_and_check)
        except (DiskFull, OSError) as exc:
            reason = str(exc) if isinstance(exc, DiskFull) else f"writing the recording failed: {exc}"
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        log.error("recording %s stops: %s", self.recording_id, reason)
        self.failure = reason
        for up in list(self._ups.values()):
            up.remove_tap(self._tap)
        self._queue.clear()
        self._emit(None, {"type": "sink_failed", "sink": "recording", "recording_id": self.recording_id,
                          "reason": reason})

    def _finish(self) -> dict[str, Any]:
        if self.failure is None:
            try:
                self._drain()
            except (DiskFull, OSError) as exc:
                self.failure = str(exc)
        self._queue.clear()
        for writer in self._all:
            try:
                writer.close()
            except OSError as exc:
                if self.failure is None:
                    self.failure = (f"the disk holding {self.directory} is full" if exc.errno in DISK_FULL
                                    else f"writing the recording failed: {exc}")
            except Exception:
                log.exception("recording %s: closing %s failed", self.recording_id, writer.path.name)
        tracks = [track for writer in self._all if (track := writer.describe()) is not None]
        result: dict[str, Any] = {
            "recording_id": self.recording_id,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "duration_s": round(time.monotonic() - self.started, 3),
            "tracks": tracks,
        }
        if self.failure is not None:
            result["error"] = self.failure
        try:
            write_manifest(self.directory, result)
        except OSError as exc:
            log.error("recording %s: its manifest could not be written (%s); the files are kept",
                      self.recording_id, exc)
        return result


def write_manifest(directory: Path, result: dict[str, Any]) -> None:
    write_atomically(directory / MANIFEST, json.dumps(result, indent=1).encode(), mode=0o644)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
