"""The recording sink: a room's tracks, each written to its own file under the recording's spool
directory while the recording runs (see writer.py).

The taps only queue each packet (they run inside the SFU's forwarding); a drain task hands the
queue to a worker thread every ``interval`` seconds, so reassembly, muxing and disk writes never
hold up forwarding. When the disk fills (or its free space falls under the configured minimum)
the sink stops writing and emits ``{"type": "sink_failed", "sink": "recording", "reason"}`` so
that the service stops the recording and says why; the files written so far are kept.

What survives a crash: the manifest (``manifest.json``) is written when the recording starts and
again whenever a track appears, before its file is created, with ``"state": "recording"``; each
file is valid up to its last cluster (writer.py) and the files and their directory are synced
every ``sync_interval`` seconds. ``recover`` turns such a directory back into a stopped
recording's manifest. A stopped sink writes the final manifest, ``"state": "stopped"``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiortc.rtp import RtpPacket

from ..fsutil import write_atomically
from ..settings import Settings
from ..sfu.errors import SfuError
from ..sfu.forwarder import UpTrack
from .writer import SUFFIX_FORMATS, TrackInfo, TrackWriter, UnsupportedCodec, container_for, finish_interrupted

log = logging.getLogger("confmeet.recording")

MANIFEST = "manifest.json"
RECORDING, STOPPED = "recording", "stopped"  # the manifest's state
DRAIN_INTERVAL = 0.2
SYNC_INTERVAL = 1.0
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MB = 1024 * 1024

Emit = Callable[[str | None, dict[str, Any]], None]
RECORDING_ID = re.compile(r"[0-9a-f]{32}")
SINK = "recording"  # the sink's name in the SFU
# (writer, arrival seconds or None to close it, ssrc, sequence number, timestamp, payload)
Item = tuple[TrackWriter, float | None, int, int, int, bytes]


class DiskFull(Exception):
    """The disk holding the spool directory is full, or under the minimum free space."""


def recording_sink_factory(settings: Settings) -> Callable[[str, dict[str, Any], Emit], RecordingSink]:
    """The SFU's ``recording`` sink; its options: ``{"recording_id": "<32 hex digits>"}``. Made
    from the settings alone, so that an SFU worker process makes the same sinks as the appliance."""
    spool = settings.data_dir / "recordings"

    def make(room: str, options: dict[str, Any], emit: Emit) -> RecordingSink:
        recording_id = options.get("recording_id")
        if not isinstance(recording_id, str) or not RECORDING_ID.fullmatch(recording_id):
            raise SfuError("bad_message", "'recording_id' must be a recording's id")
        return RecordingSink(recording_id, spool / recording_id, emit, settings.recording_min_free_mb * MB,
                             sync_interval=settings.recording_sync_seconds)

    return make


class RecordingSink:
    keeps_room = True  # stopped by signaling when the meeting empties, not when one room does

    def __init__(self, recording_id: str, directory: Path, emit: Emit, min_free_bytes: int = 0,
                 interval: float = DRAIN_INTERVAL, sync_interval: float = SYNC_INTERVAL) -> None:
        self.recording_id = recording_id
        self.directory = directory
        self.min_free_bytes = min_free_bytes
        self.interval = interval
        self.sync_interval = sync_interval
        self.started = time.monotonic()
        self.started_at = dt.datetime.now(dt.UTC)
        self.failure: str | None = None
        self._emit = emit
        self._queue: collections.deque[Item] = collections.deque()
        self._ups: dict[tuple[str, str], UpTrack] = {}
        self._writers: dict[tuple[str, str], TrackWriter] = {}
        self._all: list[TrackWriter] = []
        self._numbers: collections.Counter[tuple[str, str]] = collections.Counter()
        self._listed = -1  # how many tracks the manifest on disk lists (-1: none written yet)
        self._synced = time.monotonic()
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
        up.request_keyframe(urgent=True)

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
        self._list_new_tracks()
        while self._queue:
            writer, arrival, ssrc, seq, timestamp, payload = self._queue.popleft()
            self._list_new_tracks()  # the packet's track may be newer than the manifest
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

    def _list_new_tracks(self) -> None:
        """(Re)write the manifest of the recording under way when tracks were added since it was
        written: what recover() needs to find the tracks, on disk before their files are."""
        if self._listed == len(self._all):
            return
        writers = list(self._all)
        write_manifest(self.directory, {**self._header(), "state": RECORDING,
                                        "tracks": [writer_entry(w) for w in writers]})
        self._listed = len(writers)

    def _sync(self) -> None:
        for writer in self._all:
            if not writer.closed:
                writer.sync()
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._synced = time.monotonic()

    def _drain_and_check(self) -> None:
        self._drain()
        if time.monotonic() - self._synced >= self.sync_interval:
            self._sync()
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
        result: dict[str, Any] = {**self._header(), "duration_s": round(time.monotonic() - self.started, 3),
                                  "tracks": tracks}
        if self.failure is not None:
            result["error"] = self.failure
        try:
            write_manifest(self.directory, {**result, "state": STOPPED})
        except OSError as exc:
            log.error("recording %s: its manifest could not be written (%s); the files are kept",
                      self.recording_id, exc)
        return result

    def _header(self) -> dict[str, Any]:
        return {"recording_id": self.recording_id, "started_at": self.started_at.isoformat().replace("+00:00", "Z")}


def writer_entry(writer: TrackWriter) -> dict[str, Any]:
    """A track as the manifest of a recording under way lists it (its file may not exist yet)."""
    info = writer.info
    return {"file": writer.path.name, "participant": info.participant, "track_id": info.track_id,
            "kind": info.kind, "source": info.source, "codec": info.codec_name}


def write_manifest(directory: Path, result: dict[str, Any]) -> None:
    write_atomically(directory / MANIFEST, json.dumps(result, indent=1).encode(), mode=0o644)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def recover(directory: Path) -> dict[str, Any] | None:
    """The stopped recording's manifest of a spool directory a dead process left: a recording it
    had stopped as it was; one under way with every track file finished up to its last complete
    frame (writer.finish_interrupted), its duration the end of the longest track. None when the
    directory is gone. The result is written as the directory's manifest, so this runs once."""
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("state") == STOPPED:
        return manifest
    if not directory.is_dir():
        return None
    listed = {track["file"]: track for track in (manifest or {}).get("tracks", [])}
    for path in sorted(directory.iterdir()):
        if path.suffix in SUFFIX_FORMATS and path.name not in listed:  # written before the manifest
            participant, _, source = path.stem.rpartition("-")[0].rpartition("-")  # <participant>-<source>-<n>
            listed[path.name] = {"file": path.name, "participant": participant, "track_id": "", "source": source}
    tracks = []
    for name, track in listed.items():
        finished = finish_interrupted(directory / name) if (directory / name).is_file() else None
        if finished is not None:
            tracks.append({**track, **finished})
    result = {"recording_id": directory.name, **(manifest or {}),
              "duration_s": max((t["end_s"] for t in tracks), default=0.0), "tracks": tracks, "state": STOPPED}
    write_manifest(directory, result)
    return result
