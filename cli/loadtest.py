"""``confmeet loadtest``: load a meeting of any confmeet appliance with publishers and
subscribers, and measure what its SFU forwards, at what cost, and what the subscribers receive.

* Publishers (in this process) send a 640x480 VP8 camera at ~800 kbps, 30 fps, and an Opus
  microphone. Both are encoded once at start and looped as packets, so sending costs no
  encoding; a keyframe request (PLI/FIR) restarts the video loop at its keyframe, as a browser
  answers one with a fresh keyframe.
* Subscribers publish nothing and receive every publisher of their room. A few per worker
  (``--decode``) decode it as a browser would, counting frames and decode errors; the others
  count packets, keyframes and frames (VP8 frames end at the RTP marker bit) from the RTP
  headers without decoding, the way ``lk load-test`` does, so that the load generator does not
  become what is measured. The subscribers are spread over worker processes (``--workers``);
  each worker is this module run as a child process, talking JSON lines on its standard input
  and output, and reports the CPU it used in the window beside the SFU's.
* ``--rooms R`` loads R meetings at once, each with the publishers and subscribers asked for.
* The appliance's ``/metrics`` is sampled before anyone joins and at the start and end of the
  steady-state window (which opens ``--settle`` seconds after every subscriber has seen a frame
  of every publisher, so that joining stays out of it):
  SFU process CPU per forwarded packet, forwarded packets per second, memory per participant.
* Each room's downlink as its subscribers measure it in the window — loss from their receivers'
  packet counters, jitter (the mean of what their RTCP receiver reports said), the round trip to
  the SFU over the media path (the median of an ICE consent check a second), media bitrate — beside what the
  appliance's metrics say of it. The report's ``window`` (unix seconds) is there to query a Prometheus that scrapes the
  appliance over exactly that window.

The publishers and subscribers are participants of the client library (cli/client/). They offer
once, first thing after joining; the server offers only after answering that, so the glare the
protocol describes cannot happen to them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .client import ClientError
from .client.api import ApplianceApi

# aiortc and PyAV take half a second to import: only a load test pays it (the functions that run
# one import the client library's participant and media modules themselves).
if TYPE_CHECKING:
    from .client.clips import EncodedClip
    from .client.participant import Participant
    from .client.received import LinkSample
    from .client.signaling import SignalingError

FIRST_FRAME_TIMEOUT = 20.0  # from a subscriber's join to a frame of every publisher
PROGRESS_INTERVAL = 0.5
LINK_SAMPLE_INTERVAL = 1.0  # each subscriber's round trip, in the window


class LoadTestError(ClientError):
    """A problem of the load test the operator can act on; the command prints it on one line and
    exits non-zero, as it does the client library's."""


# ---------------------------------------------------------------------------- /metrics
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_KIND = re.compile(r'kind="([^"]*)"')
_ROOM = re.compile(r'room="([^"]*)"')
FORWARDED = ("confmeet_sfu_forwarded_packets_total", "confmeet_sfu_forwarded_packets")
WORKER_CPU = ("confmeet_sfu_worker_cpu_seconds_total", "confmeet_sfu_worker_cpu_seconds")
WORKER_FORWARDED = ("confmeet_sfu_worker_forwarded_packets_total", "confmeet_sfu_worker_forwarded_packets")
_WORKER = re.compile(r'worker="([^"]*)"')
ROOM_SERIES = {"confmeet_room_forwarded_bytes_total": "forwarded_bytes",
               "confmeet_room_downlink_packets_sent_total": "downlink_packets_sent",
               "confmeet_room_downlink_packets_lost_total": "downlink_packets_lost",
               "confmeet_room_downlink_jitter_seconds": "downlink_jitter_seconds",
               "confmeet_room_rtt_seconds": "rtt_seconds"}


@dataclass
class MetricsSample:
    at: float
    cpu_seconds: float | None = None
    rss_bytes: float | None = None
    forwarded: dict[str, float] | None = None  # packets by kind; None: no such counter
    workers: dict[str, dict[str, float]] = field(default_factory=dict)  # worker -> cpu_seconds, forwarded_packets
    rooms: dict[str, dict[str, float]] = field(default_factory=dict)  # room -> ROOM_SERIES values

    @property
    def worker_cpu_seconds(self) -> float:
        """The SFU's worker processes, all together."""
        return sum(figures.get("cpu_seconds", 0.0) for figures in self.workers.values())

    @classmethod
    def parse(cls, text: str, at: float) -> MetricsSample:
        """Read the few series a load test needs from Prometheus text, ignoring the rest."""
        sample = cls(at)
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, labels, raw = match.groups()
            try:
                value = float(raw)
            except ValueError:
                continue
            if name == "process_cpu_seconds_total":
                sample.cpu_seconds = value
            elif name == "process_resident_memory_bytes":
                sample.rss_bytes = value
            elif name in WORKER_CPU or name in WORKER_FORWARDED:
                worker = _WORKER.search(labels or "")
                if worker:  # the appliance labels each worker's series
                    figure = "cpu_seconds" if name in WORKER_CPU else "forwarded_packets"
                    sample.workers.setdefault(worker.group(1), {})[figure] = value
            elif name in ROOM_SERIES:
                room = _ROOM.search(labels or "")
                if room:
                    sample.rooms.setdefault(room.group(1), {})[ROOM_SERIES[name]] = value
            elif name in FORWARDED:
                kind = _KIND.search(labels or "")
                forwarded = sample.forwarded if sample.forwarded is not None else {}
                key = kind.group(1) if kind else "all"
                forwarded[key] = forwarded.get(key, 0.0) + value
                sample.forwarded = forwarded
        return sample


def sfu_figures(before: MetricsSample | None, start: MetricsSample | None, end: MetricsSample | None,
                participants: int) -> dict[str, Any]:
    """CPU per forwarded packet, packets per second and memory per participant, from three
    samples of /metrics; a figure whose series is missing is None."""
    figures: dict[str, Any] = {
        "metrics_available": start is not None and end is not None, "window_s": None,
        "cpu_seconds": None, "cpu_percent": None, "forwarded_packets": None,
        "forwarded_packets_per_s": None, "cpu_us_per_forwarded_packet": None,
        "rss_bytes_before": before.rss_bytes if before else None,
        "rss_bytes_during": end.rss_bytes if end else None, "memory_per_participant_bytes": None,
        "workers": {},
    }
    if start is None or end is None:
        return figures
    window = end.at - start.at
    figures["window_s"] = round(window, 3)
    if start.cpu_seconds is not None and end.cpu_seconds is not None:
        # The appliance's process and its SFU worker processes.
        cpu = end.cpu_seconds + end.worker_cpu_seconds - start.cpu_seconds - start.worker_cpu_seconds
        figures["cpu_seconds"] = round(cpu, 3)
        figures["cpu_percent"] = round(100 * cpu / window, 1) if window > 0 else None
    if start.forwarded is not None and end.forwarded is not None:
        by_kind = {k: int(end.forwarded.get(k, 0) - start.forwarded.get(k, 0)) for k in end.forwarded}
        total = sum(by_kind.values())
        figures["forwarded_packets"] = by_kind
        figures["forwarded_packets_per_s"] = round(total / window, 1) if window > 0 else None
        if figures["cpu_seconds"] is not None and total > 0:
            figures["cpu_us_per_forwarded_packet"] = round(1e6 * figures["cpu_seconds"] / total, 2)
    if before and before.rss_bytes is not None and end.rss_bytes is not None and participants:
        figures["memory_per_participant_bytes"] = int((end.rss_bytes - before.rss_bytes) / participants)
    figures["workers"] = worker_figures(start, end, window)
    return figures


def worker_figures(start: MetricsSample, end: MetricsSample, window: float) -> dict[str, dict[str, float | None]]:
    """Each SFU worker process's CPU, packets forwarded per second and CPU per forwarded packet
    over the window (a worker missing from either sample, or restarted in between, is left out)."""
    out: dict[str, dict[str, float | None]] = {}
    for worker, last in sorted(end.workers.items()):
        first = start.workers.get(worker, {})
        if window <= 0 or any(k not in last or k not in first or last[k] < first[k]
                              for k in ("cpu_seconds", "forwarded_packets")):
            continue
        cpu = last["cpu_seconds"] - first["cpu_seconds"]
        packets = last["forwarded_packets"] - first["forwarded_packets"]
        out[worker] = {"cpu_percent": round(100 * cpu / window, 1),
                       "forwarded_packets_per_s": round(packets / window, 1),
                       "cpu_us_per_forwarded_packet": round(1e6 * cpu / packets, 2) if packets else None}
    return out


async def sample_metrics(api: ApplianceApi) -> MetricsSample | None:
    """The appliance's own counters now; None when it exports none."""
    text = await api.metrics()
    return None if text is None else MetricsSample.parse(text, time.monotonic())


# ---------------------------------------------------------------------------- subscriber workers
@dataclass
class SubscriberResult:
    name: str
    worker: int
    room: int = 0
    decoded: bool = True
    error: str | None = None
    first_frame_ms: float | None = None
    video_tracks: int = 0
    video_fps: list[float] = field(default_factory=list)  # per video track, in the window
    video_frames: int = 0  # in the window, all tracks
    decode_errors: int = 0  # since joining
    audio_packets: int = 0  # in the window
    window_s: float = 0.0
    # The downlink as the subscriber's receivers saw it in the window, all tracks together.
    packets_lost: int = 0
    packets_received: int = 0
    payload_bytes: int = 0
    jitter_ms: float | None = None  # the mean of what its receiver reports said (one a second per track)
    rtt_ms: float | None = None  # the median of its media round trips (ICE consent checks), one a second


class SubscriberSession:
    def __init__(self, name: str, worker: int, room: int, meeting: str, decode: bool) -> None:
        self.result = SubscriberResult(name, worker, room, decode)
        self.meeting = meeting
        self.participant: Participant | None = None
        self._marked_at: float | None = None
        self._start_frames: list[int] = []
        self._start_audio = 0
        self._start_links: list[LinkSample] = []
        self._reports_at_mark: list[int] = []
        self._round_trips: list[float] = []
        self._sampler: asyncio.Task[None] | None = None

    async def run(self, config: dict[str, Any], emit: Any) -> None:
        from .client.participant import Participant
        from .client.signaling import SignalingError

        try:
            participant = Participant(config["url"], config["token"], name=self.result.name,
                                      decode=self.result.decoded)
            await participant.connect()
            self.participant = participant
            await participant.join(self.meeting, check=True)
            emit({"type": "joined", "subscriber": self.result.name})
            await participant.offer(check=True)
            self.result.first_frame_ms = round(
                await participant.wait_for_video(config["publishers"], FIRST_FRAME_TIMEOUT), 1)
            emit({"type": "first_frame", "subscriber": self.result.name, "ms": self.result.first_frame_ms})
        except Exception as exc:  # whatever stops one subscriber is its result, not the run's end
            self.result.error = str(exc) if isinstance(exc, (ClientError, SignalingError)) else repr(exc)
            emit({"type": "failed", "subscriber": self.result.name, "error": self.result.error})

    def video_frames(self) -> int:
        return sum(r.frames for r in self.participant.video()) if self.participant else 0

    async def _audio_packets(self) -> int:
        assert self.participant is not None
        counts = [await r.packets_received() for r in self.participant.received if r.kind == "audio"]
        return sum(counts)

    async def mark(self) -> None:
        if self.participant is None:
            return
        self._marked_at = time.monotonic()
        self._start_frames = [r.frames for r in self.participant.video()]
        self._start_audio = await self._audio_packets()
        self._start_links = [await r.link.sample() for r in self.participant.received]
        self._reports_at_mark = [len(r.link.reported_jitters) for r in self.participant.received]
        self._sampler = asyncio.get_running_loop().create_task(self._sample_link())

    async def _sample_link(self) -> None:
        """Every second of the window, the round trip to the SFU over the media path: an ICE
        check goes through the SFU process's event loop, as the RTCP the appliance measures its
        round trips with does."""
        assert self.participant is not None
        next_at = time.monotonic()
        while True:
            next_at += LINK_SAMPLE_INTERVAL
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            round_trip = await self.participant.media_round_trip()
            if round_trip is not None:
                self._round_trips.append(round_trip)

    async def finish(self) -> SubscriberResult:
        from .client.received import LinkSample

        result = self.result
        if self.participant is None or self._marked_at is None:
            return result
        window = time.monotonic() - self._marked_at
        if self._sampler is not None:
            self._sampler.cancel()
        video = self.participant.video()
        starts = self._start_frames + [0] * (len(video) - len(self._start_frames))
        result.window_s = round(window, 3)
        result.video_tracks = len(video)
        result.video_fps = [round((r.frames - start) / window, 2) for r, start in zip(video, starts)]
        result.video_frames = sum(r.frames - start for r, start in zip(video, starts))
        result.decode_errors = sum(r.decode_errors.count for r in video if r.decode_errors)
        result.audio_packets = await self._audio_packets() - self._start_audio
        ends = [await r.link.sample() for r in self.participant.received]
        starts_link = self._start_links + [LinkSample()] * (len(ends) - len(self._start_links))
        result.packets_lost = sum(max(0, e.lost - b.lost) for e, b in zip(ends, starts_link))
        result.packets_received = sum(e.packets - b.packets for e, b in zip(ends, starts_link))
        result.payload_bytes = sum(e.payload_bytes - b.payload_bytes for e, b in zip(ends, starts_link))
        # The jitter the receiver reports of the window told the SFU: the values the appliance's
        # metrics average too (a mean of the latest report of each down track).
        reported = [jitter for r, mark in zip(self.participant.received, self._reports_at_mark)
                    for jitter in r.link.reported_jitters[mark:]]
        result.jitter_ms = round(1000 * statistics.fmean(reported), 3) if reported else None
        result.rtt_ms = round(1000 * statistics.median(self._round_trips), 3) if self._round_trips else None
        if result.error is None and self.participant.failure:
            result.error = self.participant.failure
        return result


class SubscriberWorker:
    """The subscribers of one worker process; commands arrive on stdin, reports leave on ``out``."""

    def __init__(self, config: dict[str, Any], out: TextIO) -> None:
        self.config = config
        self.index: int = config["worker"]
        self.out = out
        self.sessions = [SubscriberSession(name, self.index, room, config["meetings"][room], n < config["decode"])
                         for n, (_, name, room) in enumerate(config["subscribers"])]
        self._cpu_at_mark: float | None = None

    def emit(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps({**message, "worker": self.index}) + "\n")
        self.out.flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def read_commands() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, {"type": "stop"})

        threading.Thread(target=read_commands, daemon=True).start()
        self.emit({"type": "ready"})
        start = await commands.get()
        if start["type"] != "start":
            return
        joins = [loop.create_task(self._join_at(session, start["at"] + position / self.config["join_rate"]))
                 for (position, _, _), session in zip(self.config["subscribers"], self.sessions)]
        progress = loop.create_task(self._report_progress())
        while (command := await commands.get())["type"] != "stop":
            if command["type"] == "mark":
                self._cpu_at_mark = time.process_time()
                await asyncio.gather(*(session.mark() for session in self.sessions))
        cpu = None if self._cpu_at_mark is None else round(time.process_time() - self._cpu_at_mark, 3)
        results = [asdict(await session.finish()) for session in self.sessions]
        self.emit({"type": "results", "subscribers": results, "cpu_seconds": cpu})
        progress.cancel()
        for task in joins:
            task.cancel()
        await asyncio.gather(*(s.participant.leave() for s in self.sessions if s.participant),
                             return_exceptions=True)
        self.emit({"type": "done"})

    async def _join_at(self, session: SubscriberSession, wall_time: float) -> None:
        await asyncio.sleep(max(0.0, wall_time - time.time()))
        await session.run(self.config, self.emit)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self.emit({"type": "progress", "video_frames": sum(s.video_frames() for s in self.sessions)})


def quiet_media_logs() -> None:
    """aiortc logs each decode failure as a warning: a load test counts them instead."""
    import logging

    for name in ("aiortc", "aioice", "websockets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def worker_main() -> None:
    """Entry point of a subscriber worker process (see WorkerProcess)."""
    reports = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else writes to stdout lands on stderr, never in the reports
    quiet_media_logs()
    config = json.loads(sys.stdin.readline())
    asyncio.run(SubscriberWorker(config, reports).run())


class WorkerProcess:
    """A subscriber worker, seen from the main process."""

    def __init__(self, index: int, process: asyncio.subprocess.Process, on_report: Any) -> None:
        self.index = index
        self.process = process
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._on_report = on_report
        self._readers = [asyncio.get_running_loop().create_task(self._read_reports()),
                         asyncio.get_running_loop().create_task(self._read_stderr())]

    @classmethod
    async def start(cls, index: int, config: dict[str, Any], on_report: Any) -> WorkerProcess:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from cli.loadtest import worker_main; worker_main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env)
        worker = cls(index, process, on_report)
        await worker.send(config)
        return worker

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        if self.process.returncode is None:
            try:
                self.process.stdin.write((json.dumps(message) + "\n").encode())
                await self.process.stdin.drain()
            except ConnectionError:
                pass

    async def _read_reports(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self._on_report(json.loads(line))
        await self.process.wait()
        self._on_report({"type": "exited", "worker": self.index, "code": self.process.returncode})

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    async def stop(self, timeout: float) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


# ---------------------------------------------------------------------------- the run
@dataclass
class Plan:
    url: str
    email: str
    password: str
    meeting: str | None
    publishers: int
    subscribers: int
    workers: int
    duration: float
    join_rate: float
    settle: float = 5.0  # seconds between the last first frame and the steady-state window
    metrics_token: str | None = None
    rooms: int = 1
    decode: int = 2  # subscribers per worker that decode; the others count without decoding
    simulcast: bool = False  # cameras send three layers, as a browser's does

    @property
    def all_subscribers(self) -> int:
        return self.subscribers * self.rooms


@dataclass
class LiveState:
    """What the progress display shows."""

    plan: Plan
    phase: str = "starting"
    joined: int = 0
    first_frames: int = 0
    failed: int = 0
    window_started: float | None = None
    frames_by_worker: dict[int, int] = field(default_factory=dict)
    fps_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=8))

    def add_frames(self, worker: int, frames: int) -> None:
        self.frames_by_worker[worker] = frames
        self.fps_samples.append((time.monotonic(), sum(self.frames_by_worker.values())))

    def fps_now(self) -> float | None:
        """Frames per second per received video track, over the last few reports."""
        if len(self.fps_samples) < 2 or self.joined == 0:
            return None
        (t0, f0), (t1, f1) = self.fps_samples[0], self.fps_samples[-1]
        tracks = max(1, (self.first_frames or self.joined) * self.plan.publishers)
        return (f1 - f0) / (t1 - t0) / tracks if t1 > t0 else None

    def render(self) -> Table:
        plan = self.plan
        table = Table.grid(padding=(0, 2))
        table.add_row(Text(self.phase, style="bold"),
                      f"subscribers joined {self.joined}/{plan.all_subscribers}",
                      f"first frames {self.first_frames}/{plan.all_subscribers}",
                      Text(f"failed {self.failed}", style="red" if self.failed else ""))
        fps = self.fps_now()
        window = ""
        if self.window_started is not None:
            elapsed = min(plan.duration, time.monotonic() - self.window_started)
            window = f"window {elapsed:4.1f}/{plan.duration:.0f} s"
        table.add_row("", f"video {fps:5.1f} fps per track" if fps is not None else "", window, "")
        return table


def join_failure(meeting: str, exc: SignalingError) -> str:
    reasons = {
        "not_found": f"meeting {meeting!r} not found",
        "wrong_password": f"meeting {meeting!r} has a password; sign in as its host to load it",
        "forbidden": f"you may not join meeting {meeting!r}: {exc.message}",
        "meeting_ended": f"meeting {meeting!r} has ended",
        "unauthorized": f"the appliance refused our access token: {exc.message}",
    }
    return reasons.get(exc.code, f"cannot join meeting {meeting!r}: {exc}")


async def run_load_test(plan: Plan, state: LiveState) -> dict[str, Any]:
    from .client.clips import encode_audio_clip, encode_simulcast_clips, encode_video_clip
    from .client.participant import Participant
    from .client.signaling import SignalingError

    api = ApplianceApi(plan.url, plan.metrics_token)
    state.phase = "signing in"
    await api.sign_in(plan.email, plan.password)
    if plan.meeting:
        meeting = await api.meeting(plan.meeting)
        if meeting.get("status") == "ended":
            raise LoadTestError(f"meeting {plan.meeting!r} has ended: start another, or leave out --meeting")
        meetings, created = [meeting], []
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        meetings = [await api.create_meeting(f"confmeet loadtest {stamp}" + (f" room {r + 1}" if plan.rooms > 1 else ""))
                    for r in range(plan.rooms)]
        created = meetings
    before = await sample_metrics(api)

    state.phase = "encoding media"
    clips = await asyncio.to_thread(lambda: (encode_video_clip(), encode_audio_clip()))
    layers = await asyncio.to_thread(encode_simulcast_clips) if plan.simulcast else None

    publishers: list[Participant] = []
    workers: list[WorkerProcess] = []
    try:
        state.phase = "publishing"
        cameras = []
        for room, meeting in enumerate(meetings):
            for number in range(1, plan.publishers + 1):
                name = f"loadtest-pub-{number}" + (f"-room-{room + 1}" if plan.rooms > 1 else "")
                publisher = Participant(api.url, api.token, name=name, receive=False)
                await publisher.connect()
                publishers.append(publisher)
                try:
                    await publisher.join(meeting["code"], check=True)
                except SignalingError as exc:
                    raise LoadTestError(join_failure(meeting["code"], exc)) from None
                if layers:
                    camera = publisher.publish_simulcast(layers)
                    publisher.publish_clip(clips[1])
                else:
                    camera, _ = [publisher.publish_clip(clip) for clip in clips]
                try:
                    await publisher.offer(check=True)
                except SignalingError as exc:
                    raise LoadTestError(f"the appliance refused {publisher.name}'s media: {exc}") from None
                await publisher.connected()
                cameras.append(camera)
        measured = await run_subscribers(plan, api, [m["code"] for m in meetings], state, workers, cameras)
    finally:
        state.phase = "leaving"
        await asyncio.gather(*(w.stop(timeout=20) for w in workers), return_exceptions=True)
        await asyncio.gather(*(p.leave() for p in publishers), return_exceptions=True)
        for meeting in created:
            await api.end_meeting(meeting["id"])
    problems = [f"{p.name}: {p.failure}" for p in publishers if p.failure]
    problems += [f"worker {w.index} exited with {w.process.returncode}: " + " / ".join(list(w.stderr_tail)[-3:])
                 for w in workers if w.process.returncode]
    return build_report(plan, meetings, clips, before, measured, problems, layers)


@dataclass
class Measured:
    results: list[SubscriberResult]
    start: MetricsSample | None
    end: MetricsSample | None
    camera_fps: list[float]  # what each publisher sent during the window
    generator_cpu_seconds: float | None  # this process and the workers, in the window
    window: tuple[float, float]  # unix seconds: from telling the subscribers to start measuring to telling them to stop


async def run_subscribers(plan: Plan, api: ApplianceApi, meetings: list[str], state: LiveState,
                          workers: list[WorkerProcess], cameras: list[Any]) -> Measured:
    """Start the worker processes, let the subscribers join, measure the window, collect."""
    from .client.participant import CONNECT_TIMEOUT

    changed = asyncio.Event()
    ready: set[int] = set()
    exited: dict[int, int | None] = {}
    settled: dict[str, str | None] = {}  # subscriber -> None (media flows) or its error
    reported: dict[int, list[dict[str, Any]]] = {}
    worker_cpu: dict[int, float | None] = {}

    def on_report(message: dict[str, Any]) -> None:
        kind, worker = message["type"], message["worker"]
        if kind == "ready":
            ready.add(worker)
        elif kind == "joined":
            state.joined += 1
        elif kind == "first_frame":
            settled[message["subscriber"]] = None
            state.first_frames += 1
        elif kind == "failed":
            settled[message["subscriber"]] = message["error"]
            state.failed += 1
        elif kind == "progress":
            state.add_frames(worker, message["video_frames"])
        elif kind == "results":
            reported[worker] = message["subscribers"]
            worker_cpu[worker] = message.get("cpu_seconds")
        elif kind == "exited":
            exited[worker] = message["code"]
        changed.set()

    async def until(condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            crashed = [w for w in workers if w.index in exited and w.index not in reported]
            if crashed:
                tail = "\n  ".join(crashed[0].stderr_tail) or "(no output)"
                raise LoadTestError(f"subscriber worker {crashed[0].index} exited with "
                                    f"{exited[crashed[0].index]} while {what}:\n  {tail}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadTestError(f"timed out after {timeout:.0f} s {what}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    state.phase = "starting workers"
    total = plan.all_subscribers
    names = [f"loadtest-sub-{n}" for n in range(1, total + 1)]
    for index in range(plan.workers):
        # [join position, name, room]: rooms take turns, so every worker serves every room.
        mine = [[position, names[position], position % len(meetings)]
                for position in range(index, total, plan.workers)]
        config = {"worker": index, "url": api.url, "token": api.token, "meetings": meetings,
                  "publishers": plan.publishers, "subscribers": mine,
                  "join_rate": plan.join_rate, "decode": plan.decode}
        workers.append(await WorkerProcess.start(index, config, on_report))
    await until(lambda: len(ready) == len(workers), 60, "starting the worker processes")

    state.phase = "joining"
    at = time.time() + 0.2
    for worker in workers:
        await worker.send({"type": "start", "at": at})
    join_time = total / plan.join_rate + CONNECT_TIMEOUT + FIRST_FRAME_TIMEOUT + 10
    await until(lambda: len(settled) == total, join_time, "waiting for the subscribers' first frames")
    errors = [error for error in settled.values() if error]
    if len(errors) == total:
        raise LoadTestError(f"no subscriber received media; the first said: {errors[0]}")

    await asyncio.sleep(plan.settle)
    state.phase = "measuring"
    start = await sample_metrics(api)
    sent_at_start = [(time.monotonic(), camera.sent) for camera in cameras]
    cpu_at_start = time.process_time()
    window_start = time.time()
    for worker in workers:
        await worker.send({"type": "mark"})
    state.window_started = time.monotonic()
    await asyncio.sleep(plan.duration)
    end = await sample_metrics(api)
    camera_fps = [round((camera.sent - sent) / (time.monotonic() - t0), 2)
                  for camera, (t0, sent) in zip(cameras, sent_at_start)]
    own_cpu = time.process_time() - cpu_at_start
    window_end = time.time()
    for worker in workers:
        await worker.send({"type": "stop"})
    state.phase = "collecting"
    await until(lambda: len(reported) == len(workers), 30, "collecting the results")
    results = sorted((SubscriberResult(**r) for rs in reported.values() for r in rs),
                     key=lambda r: names.index(r.name))
    cpus = list(worker_cpu.values())
    generator = None if None in cpus else round(own_cpu + sum(cpus), 3)  # type: ignore[arg-type]
    return Measured(results, start, end, camera_fps, generator, (window_start, window_end))


def build_report(plan: Plan, meetings: list[dict[str, Any]], clips: tuple[EncodedClip, EncodedClip],
                 before: MetricsSample | None, measured: Measured, problems: list[str],
                 layers: list[EncodedClip] | None = None) -> dict[str, Any]:
    from .client.clips import VIDEO_FPS, VIDEO_HEIGHT, VIDEO_WIDTH

    results = measured.results
    fps = [value for r in results for value in r.video_fps]
    first_frames = [r.first_frame_ms for r in results if r.first_frame_ms is not None]
    windows = [r for r in results if r.window_s > 0]
    summary = {
        "subscribers_ok": sum(1 for r in results if r.error is None),
        "subscribers_failed": sum(1 for r in results if r.error is not None),
        "subscribers_decoding": sum(1 for r in results if r.decoded),
        "video_fps_mean": round(statistics.fmean(fps), 2) if fps else None,
        "video_fps_min": min(fps) if fps else None,
        "decode_errors": sum(r.decode_errors for r in results),
        "first_frame_ms_p50": round(statistics.median(first_frames), 1) if first_frames else None,
        "first_frame_ms_max": max(first_frames) if first_frames else None,
        "audio_packets": sum(r.audio_packets for r in results),
        "audio_packets_per_s_mean": round(statistics.fmean(r.audio_packets / r.window_s for r in windows), 1)
        if windows else None,
    }
    sfu = sfu_figures(before, measured.start, measured.end,
                      (plan.publishers + plan.subscribers) * len(meetings))
    rooms = [room_figures(index, meeting, results, measured.start, measured.end)
             for index, meeting in enumerate(meetings)]
    window = sfu["window_s"] or plan.duration
    generator = measured.generator_cpu_seconds
    return {
        "url": plan.url, "meetings": [m["code"] for m in meetings],
        "publishers": plan.publishers, "subscribers": plan.subscribers, "workers": plan.workers,
        "decode_per_worker": plan.decode, "duration_s": plan.duration,
        "window": {"start": round(measured.window[0], 3), "end": round(measured.window[1], 3)},
        "published_media": {"video": f"VP8 {VIDEO_WIDTH}x{VIDEO_HEIGHT}@{VIDEO_FPS}",
                            "video_kbps": round(clips[0].bitrate / 1000), "audio": "Opus",
                            "audio_kbps": round(clips[1].bitrate / 1000),
                            "video_fps_sent": measured.camera_fps,
                            "simulcast_kbps": [round(layer.bitrate / 1000) for layer in layers] if layers else None},
        "summary": summary,
        "sfu": sfu,
        "rooms": rooms,
        "generator": {"cpu_seconds": generator,
                      "cpu_percent": None if generator is None else round(100 * generator / window, 1),
                      "cores": os.cpu_count()},
        "subscriber_results": [asdict(r) for r in results],
        "problems": problems,
    }


def room_figures(index: int, meeting: dict[str, Any], results: list[SubscriberResult],
                 start: MetricsSample | None, end: MetricsSample | None) -> dict[str, Any]:
    """One room's downlink as its subscribers measured it in the window, beside what the
    appliance's metrics say of the same room over the same window (None where a series is
    missing): loss from packet counters, jitter and round trip as the means over subscribers
    (the metrics: at the end of the window), bitrate of the media payload."""
    mine = [r for r in results if r.room == index and r.window_s > 0]
    window = statistics.fmean(r.window_s for r in mine) if mine else None
    expected = sum(r.packets_received + r.packets_lost for r in mine)
    jitters = [r.jitter_ms for r in mine if r.jitter_ms is not None]
    rtts = [r.rtt_ms for r in mine if r.rtt_ms is not None]
    measured = {
        "loss": round(sum(r.packets_lost for r in mine) / expected, 4) if expected else None,
        "jitter_ms": round(statistics.fmean(jitters), 3) if jitters else None,
        "rtt_ms": round(statistics.fmean(rtts), 3) if rtts else None,
        "kbps": round(8 * sum(r.payload_bytes for r in mine) / window / 1000, 1) if window else None,
    }
    reported: dict[str, float | None] = {"loss": None, "jitter_ms": None, "rtt_ms": None, "kbps": None}
    first, last = (start.rooms.get(meeting["id"], {}) if start else {}), (end.rooms.get(meeting["id"], {}) if end else {})
    if last:
        jitter, rtt = last.get("downlink_jitter_seconds"), last.get("rtt_seconds")
        reported["jitter_ms"] = None if jitter is None else round(1000 * jitter, 3)
        reported["rtt_ms"] = None if rtt is None else round(1000 * rtt, 3)

        def change(key: str) -> float | None:
            return last[key] - first[key] if key in first and key in last else None

        sent, lost = change("downlink_packets_sent"), change("downlink_packets_lost")
        if sent and lost is not None:
            reported["loss"] = round(lost / sent, 4)
        forwarded = change("forwarded_bytes")
        if forwarded is not None and start and end and end.at > start.at:
            reported["kbps"] = round(8 * forwarded / (end.at - start.at) / 1000, 1)
    return {"meeting": meeting["code"], "room": meeting["id"], "subscribers": measured, "appliance": reported}


# ---------------------------------------------------------------------------- output
def _number(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def render_report(report: dict[str, Any], console: Console) -> None:
    rooms = f"{len(report['meetings'])} meetings ({', '.join(report['meetings'])}), each with" \
        if len(report["meetings"]) > 1 \
        else f"meeting {report['meetings'][0]}:"
    results = Table(title=f"{rooms} {report['publishers']} publisher(s), {report['subscribers']} subscriber(s)")
    results.add_column("subscriber", no_wrap=True)
    for column in ("room", "worker", "decodes", "first frame", "fps mean / min", "decode errors", "audio packets"):
        results.add_column(column, justify="right")
    problems = []
    for r in report["subscriber_results"]:
        fps = r["video_fps"]
        name = r["name"].removeprefix("loadtest-")
        results.add_row(Text(name, style="red" if r["error"] else ""), str(r["room"] + 1), str(r["worker"]),
                        "yes" if r["decoded"] else "no",
                        _number(r["first_frame_ms"], 0, " ms"),
                        f"{statistics.fmean(fps):.1f} / {min(fps):.1f}" if fps else "n/a",
                        Text(str(r["decode_errors"]), style="red" if r["decode_errors"] else "")
                        if r["decoded"] else "-",
                        f"{r['audio_packets']:,}")
        if r["error"]:
            problems.append(f"{name}: {r['error']}")
    s, sfu, media = report["summary"], report["sfu"], report["published_media"]
    summary = Table(title="results", show_header=False)
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    rows = [
        ("each publisher sends", f"{media['video']} {media['video_kbps']} kbps, "
                                 + (f"simulcast with layers of {' + '.join(map(str, media['simulcast_kbps'][:-1]))} kbps, "
                                    if media.get("simulcast_kbps") else "")
                                 + f"{media['audio']} {media['audio_kbps']} kbps"),
        ("video frames sent per second", ", ".join(f"{v:.1f}" for v in media["video_fps_sent"])),
        ("subscribers receiving / failed", f"{s['subscribers_ok']} / {s['subscribers_failed']}"),
        ("received video fps, mean / min", f"{_number(s['video_fps_mean'])} / {_number(s['video_fps_min'])}"),
        ("decode errors", f"{s['decode_errors']} (in the {s['subscribers_decoding']} subscribers that decode)"),
        ("join to first frame, p50 / max",
         f"{_number(s['first_frame_ms_p50'], 0, ' ms')} / {_number(s['first_frame_ms_max'], 0, ' ms')}"),
        ("audio packets received", f"{s['audio_packets']:,} ({_number(s['audio_packets_per_s_mean'])}/s each)"),
    ]
    if sfu["metrics_available"]:
        forwarded = sfu["forwarded_packets"] or {}
        rows += [
            ("SFU forwarded packets/s", _number(sfu["forwarded_packets_per_s"]) + "".join(
                f", {kind} {count / sfu['window_s']:,.0f}" for kind, count in sorted(forwarded.items()))),
            ("SFU process CPU", _number(sfu["cpu_percent"], 1, " % of a core")),
            ("SFU CPU per forwarded packet", _number(sfu["cpu_us_per_forwarded_packet"], 1, " µs")),
            *((f"SFU worker {worker}: CPU, packets/s, CPU per packet",
               f"{_number(w['cpu_percent'], 1, ' %')}, {_number(w['forwarded_packets_per_s'])}, "
               f"{_number(w['cpu_us_per_forwarded_packet'], 1, ' µs')}") for worker, w in sfu["workers"].items()),
            ("appliance memory per participant",
             _number(None if sfu["memory_per_participant_bytes"] is None
                     else sfu["memory_per_participant_bytes"] / 1e6, 2, " MB")),
        ]
    else:
        rows.append(("SFU figures", "n/a: cannot read the appliance's /metrics (from another machine: "
                                    "--metrics-token-env)"))
    generator = report["generator"]
    rows.append(("load generator CPU (this machine)",
                 f"{_number(generator['cpu_percent'], 1, ' % of a core')} of {generator['cores']} cores"))
    for measure, value in rows:
        summary.add_row(measure, value)
    links = Table(title="each room's downlink: the subscribers' receivers / the appliance's metrics")
    for column in ("meeting", "loss", "jitter", "round trip", "media kbit/s"):
        links.add_column(column, justify="right")
    for room in report["rooms"]:
        ours, theirs = room["subscribers"], room["appliance"]
        links.add_row(room["meeting"],
                      f"{_number(ours['loss'], 4)} / {_number(theirs['loss'], 4)}",
                      f"{_number(ours['jitter_ms'], 2, ' ms')} / {_number(theirs['jitter_ms'], 2, ' ms')}",
                      f"{_number(ours['rtt_ms'], 1, ' ms')} / {_number(theirs['rtt_ms'], 1, ' ms')}",
                      f"{_number(ours['kbps'], 0)} / {_number(theirs['kbps'], 0)}")
    console.print(results)
    console.print(summary)
    console.print(links)
    for problem in problems + report["problems"]:
        console.print(f"[bold yellow]problem:[/] {problem}", highlight=False)


def read_password(password_stdin: bool, password_env: str | None) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise LoadTestError(f"the environment variable {password_env} (--password-env) is not set")
        return value
    if sys.stdin.isatty():
        return typer.prompt("Password", hide_input=True)
    raise LoadTestError("give the password with --password-stdin or --password-env VAR")


def loadtest(
    url: Annotated[str, typer.Option(help="The appliance's base URL.")] = "http://127.0.0.1:8800",
    email: Annotated[Optional[str], typer.Option(help="Sign in as this account.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from standard input.")] = False,
    password_env: Annotated[Optional[str], typer.Option(
        "--password-env", metavar="VAR", help="Read the password from this environment variable.")] = None,
    meeting: Annotated[Optional[str], typer.Option(
        metavar="CODE", help="Join this meeting (default: create one, and end it afterwards).")] = None,
    publishers: Annotated[int, typer.Option(
        min=1, help="Participants sending a camera (VP8 640x480, 30 fps, ~800 kbps) and a microphone.")] = 1,
    subscribers: Annotated[int, typer.Option(
        min=1, help="Participants receiving every publisher (of their meeting).")] = 1,
    rooms: Annotated[int, typer.Option(
        min=1, help="Meetings loaded at once, each with --publishers and --subscribers.")] = 1,
    decode: Annotated[int, typer.Option(
        min=0, help="Subscribers per worker that decode what they receive (fps, decode errors); the "
                    "others count frames from the RTP headers, so the generator stays light.")] = 2,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Processes the subscribers are spread over (default: min(subscribers, CPUs)).")] = None,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of steady state to measure.")] = 20.0,
    join_rate: Annotated[float, typer.Option(min=0.1, help="Subscribers joining per second.")] = 10.0,
    settle: Annotated[float, typer.Option(
        min=0, help="Seconds to wait after the last subscriber's first frame before measuring, so that "
                    "joining (ICE, DTLS, bandwidth ramp-up) stays out of the steady-state figures.")] = 5.0,
    metrics_token_env: Annotated[Optional[str], typer.Option(
        "--metrics-token-env", metavar="VAR",
        help="Read the appliance's metrics_token from this environment variable (needed for its /metrics "
             "unless this machine's address is in its metrics_addresses).")] = None,
    simulcast: Annotated[bool, typer.Option(
        help="Send each camera as a browser sends simulcast: three layers (160x120, 320x240 and the "
             "640x480 one), each subscriber given the one the SFU chooses.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON for scripts.")] = False,
) -> None:
    """Load meetings with publishers and subscribers and measure the SFU (like `lk load-test`).

    SFU figures come from the appliance's /metrics: load an otherwise idle appliance. The load
    generator's own CPU is reported beside them: on the same machine, it competes with the SFU."""
    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        if email is None:
            raise LoadTestError("give --email (and the password) of an account of the appliance")
        if meeting and rooms > 1:
            raise LoadTestError("--meeting loads one meeting: leave it out to load --rooms new ones")
        metrics_token = None
        if metrics_token_env:
            metrics_token = os.environ.get(metrics_token_env)
            if metrics_token is None:
                raise LoadTestError(f"the environment variable {metrics_token_env} (--metrics-token-env) is not set")
        plan = Plan(url, email, read_password(password_stdin, password_env), meeting, publishers,
                    subscribers, min(workers or os.cpu_count() or 1, subscribers * rooms), duration, join_rate,
                    settle, metrics_token, rooms, decode, simulcast)
        quiet_media_logs()
        state = LiveState(plan)
        if as_json:
            report = asyncio.run(run_load_test(plan, state))
        else:
            with Live(get_renderable=state.render, console=err, refresh_per_second=4, transient=True):
                report = asyncio.run(run_load_test(plan, state))
    except ClientError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render_report(report, out)
    if report["summary"]["subscribers_failed"] or report["problems"]:
        raise typer.Exit(1)
