"""The SFU on every core: rooms hosted by worker processes, behind the room-host interface.

:class:`SfuWorkers` is what signaling holds: the same ``request(room, message)``,
``subscribe_events()``, ``stats``, ``rooms`` and ``close()`` as :class:`RoomHost` (host.py has
the messages), with each room placed on one of N worker processes. A worker is this module run
as a child process (``python -m appliance.sfu.workers``) hosting a RoomHost of its own, on its
own slice of the media UDP port range, with its own sinks (a room's captions and recording run
where its media is). Parent and worker talk over a Unix socket pair in frames: a 4-byte
big-endian length, then JSON.

Placement: a room goes to the worker with the fewest participants when its first participant
joins, and stays there until it empties. A worker that dies takes only its rooms down: every
participant of those rooms gets a ``media_lost`` event (their seats in signaling stay; they join
the SFU again, which places the room on a live worker, and negotiate afresh), and a new worker
takes the dead one's place. Each worker reports its counters and CPU time every second; ``stats``
adds them up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import pickle
import resource
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .. import logs, process_metrics
from .errors import SfuError
from .host import EventStream, RoomHost
from .ice import IceServer, IceSettings
from .peer import quiet_closed_peer_races
from .stats import SfuStats

log = logging.getLogger("confmeet.sfu")

FRAME = struct.Struct("!I")
MAX_FRAME = 16 * 1024 * 1024
REPORT_INTERVAL = 1.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# Makes a worker's RoomHost from its ICE settings (the worker's slice of the port range) and the
# pool's ``factory_argument`` (the appliance's settings, say); named "module:function" so that the
# worker process can import it.
HostFactory = Callable[[IceSettings, Any], RoomHost]


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def port_slices(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """The inclusive range [low, high] split into ``count`` contiguous slices (0/0: any port)."""
    if low == high == 0:
        return [(0, 0)] * count
    size = (high - low + 1) // count
    if size < 2:
        raise ValueError(f"the media UDP port range {low}-{high} is too small for {count} SFU workers: "
                         f"give each at least 2 ports (media_udp_min/max) or use fewer workers")
    return [(low + i * size, low + (i + 1) * size - 1 if i < count - 1 else high) for i in range(count)]


async def write_frame(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    writer.write(FRAME.pack(len(data)) + data)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at the end of the stream."""
    try:
        (length,) = FRAME.unpack(await reader.readexactly(FRAME.size))
        if length > MAX_FRAME:
            raise ValueError(f"a frame of {length} bytes")
        return json.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def plain_host(ice: IceSettings, argument: Any) -> RoomHost:
    """A worker's RoomHost without sinks (tests, benchmarks)."""
    return RoomHost(ice)


def _import(path: str) -> HostFactory:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(eq=False)
class Worker:
    """One worker process, seen from the parent."""

    index: int
    ice: IceSettings
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    rooms: dict[str, set[str]] = field(default_factory=dict)  # room -> participants
    stats: dict[str, Any] = field(default_factory=lambda: SfuStats().snapshot())
    room_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: process_metrics.Snapshot = field(default_factory=list)  # the worker's process_metrics
    cpu_seconds: float = 0.0
    alive: bool = True
    task: asyncio.Task[None] | None = None

    @property
    def load(self) -> int:
        return sum(len(participants) for participants in self.rooms.values())


class SfuWorkers:
    """Rooms on N worker processes, with RoomHost's interface (see the module doc)."""

    def __init__(self, ice: IceSettings, workers: int, host_factory: str = "appliance.sfu.workers:plain_host",
                 factory_argument: Any = None) -> None:
        if workers < 1:
            raise ValueError("there must be at least one SFU worker")
        self.ice = ice
        self.count = workers
        self.host_factory = host_factory
        # Pickled: it crosses to a process of the same code (the worker), nothing else reads it.
        self._factory_argument = base64.b64encode(pickle.dumps(factory_argument)).decode()
        self.workers: list[Worker] = []
        self.restarts = 0
        self._slices = port_slices(ice.udp_port_min, ice.udp_port_max, workers)
        self._placement: dict[str, Worker] = {}
        self._streams: set[EventStream] = set()
        self._ids = 0
        self._closed = False
        self._dead: dict[int, SfuStats] = {}  # counters of workers that died, kept in the totals
        self._dead_metrics: list[process_metrics.Snapshot] = []

    async def start(self) -> None:
        """Start every worker and wait until each hosts rooms."""
        self.workers = list(await asyncio.gather(*(self._start_worker(i) for i in range(self.count))))

    async def _start_worker(self, index: int) -> Worker:
        low, high = self._slices[index]
        ice = replace(self.ice, udp_port_min=low, udp_port_max=high)
        parent, child = socket.socketpair()
        config = {"index": index, "host_factory": self.host_factory, "factory_argument": self._factory_argument,
                  "ice": {**asdict(ice), "ice_servers": [asdict(s) for s in ice.ice_servers]}}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance.sfu.workers", "--fd", str(child.fileno()),
            pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=MAX_FRAME)
        await write_frame(writer, config)
        ready = await asyncio.wait_for(read_frame(reader), START_TIMEOUT)
        if ready is None or ready.get("type") != "ready":
            process.kill()
            raise SfuError("internal", f"SFU worker {index} did not start (exit code {await process.wait()})")
        worker = Worker(index, ice, process, writer, reader)
        worker.task = asyncio.get_running_loop().create_task(self._read(worker), name=f"sfu-worker-{index}")
        log.info("SFU worker %d started (pid %d, UDP ports %s)", index, process.pid,
                 f"{low}-{high}" if high else "any")
        return worker

    # ------------------------------------------------------------------ RoomHost's interface
    async def request(self, room: str, message: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            return SfuError("closed", "the SFU is shutting down").reply()
        kind = message.get("type") if isinstance(message, dict) else None
        worker = self._placement.get(room) if isinstance(room, str) else None
        if worker is None:
            if kind != "join":
                # The worker answers this as RoomHost would (bad message, unknown room, ...).
                worker = self.workers[0]
            else:
                worker = min((w for w in self.workers if w.alive), key=lambda w: w.load, default=None)
                if worker is None:
                    return SfuError("sfu_failed", "no SFU worker is running").reply()
                self._placement[room] = worker
                worker.rooms.setdefault(room, set())
        reply = await self._call(worker, room, message)
        if kind == "stats" and reply.get("type") == "stats":
            reply["sfu_worker"] = {"index": worker.index, "pid": worker.process.pid}
        if kind == "join" and reply.get("type") == "joined" and worker.alive:
            worker.rooms.setdefault(room, set()).add(message.get("participant"))
            self._placement[room] = worker
        elif worker.rooms.get(room) == set() and self._placement.get(room) is worker:
            self._forget(worker, room)  # placed for a join that failed
        return reply

    async def _call(self, worker: Worker, room: str, message: dict[str, Any]) -> dict[str, Any]:
        if not worker.alive:
            return SfuError("sfu_failed", f"the SFU worker of room {room!r} stopped").reply()
        self._ids += 1
        request_id = self._ids
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        worker.pending[request_id] = future
        try:
            await write_frame(worker.writer, {"id": request_id, "room": room, "message": message})
            return await future
        except (ConnectionError, TypeError, ValueError) as exc:
            return SfuError("internal" if not isinstance(exc, ConnectionError) else "sfu_failed",
                            f"cannot hand the request to the SFU worker: {exc}").reply()
        finally:
            worker.pending.pop(request_id, None)

    def subscribe_events(self) -> EventStream:
        stream = EventStream(self._streams.discard)
        self._streams.add(stream)
        return stream

    @property
    def rooms(self) -> list[str]:
        return list(self._placement)

    @property
    def stats(self) -> SfuStats:
        return SfuStats.total([*(w.stats for w in self.workers), *(s.snapshot() for s in self._dead.values())])

    def room_reports(self) -> dict[str, dict[str, Any]]:
        """Each room's figures, as its worker last reported them (at most a second old)."""
        return {room: report for w in self.workers if w.alive for room, report in w.room_reports.items()}

    def worker_metrics(self) -> list[process_metrics.Snapshot]:
        """Each worker's process metrics as it last reported them, and the counters of dead ones."""
        return [*(w.metrics for w in self.workers if w.alive), *self._dead_metrics]

    def worker_usage(self) -> dict[int, tuple[float, int]]:
        """Each worker process's CPU seconds and the packets it forwarded, as it last reported
        them (both start again from zero in a worker that replaced a dead one)."""
        return {w.index: (w.cpu_seconds, sum(w.stats["forwarded_packets"].values())) for w in self.workers}

    async def close(self) -> None:
        self._closed = True
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(ConnectionError):
                    await write_frame(worker.writer, {"close": True})
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("SFU worker %d did not stop in %.0f s; killed", worker.index, STOP_TIMEOUT)
                worker.process.kill()
                await worker.process.wait()
            if worker.task is not None:
                await worker.task
        for stream in list(self._streams):
            stream.close()

    # ------------------------------------------------------------------ from the workers
    def _emit(self, event: dict[str, Any]) -> None:
        for stream in self._streams:
            stream.put(event)

    def _forget(self, worker: Worker, room: str) -> None:
        worker.rooms.pop(room, None)
        if self._placement.get(room) is worker:
            del self._placement[room]

    async def _read(self, worker: Worker) -> None:
        while (frame := await read_frame(worker.reader)) is not None:
            if "re" in frame:
                future = worker.pending.get(frame["re"])
                if future is not None and not future.done():
                    future.set_result(frame["reply"])
            elif "event" in frame:
                event = frame["event"]
                if event.get("type") == "participant_left":
                    participants = worker.rooms.get(event.get("room"), set())
                    participants.discard(event.get("participant_id"))
                    if not participants:
                        self._forget(worker, event.get("room"))
                self._emit(event)
            elif "stats" in frame:
                worker.stats, worker.cpu_seconds = frame["stats"], frame["cpu_seconds"]
                worker.room_reports = frame["rooms"]
                worker.metrics = frame.get("metrics", [])
        await self._lost(worker)

    async def _lost(self, worker: Worker) -> None:
        worker.alive = False
        code = await worker.process.wait()
        for future in worker.pending.values():
            if not future.done():
                future.set_result(SfuError("sfu_failed", "the SFU worker handling this room stopped").reply())
        if self._closed:
            return
        log.error("SFU worker %d (pid %d) exited with %s; its rooms %s lose their media and move",
                  worker.index, worker.process.pid, code, ", ".join(worker.rooms) or "(none)")
        self._dead[id(worker)] = SfuStats.total([worker.stats], gauges=False)
        self._dead_metrics.append(process_metrics.monotonic_only(worker.metrics))
        lost = dict(worker.rooms)
        for room in lost:
            self._forget(worker, room)
        try:
            replacement = await self._start_worker(worker.index)
        except Exception:
            log.exception("SFU worker %d could not be restarted", worker.index)
        else:
            self.workers[self.workers.index(worker)] = replacement
            self.restarts += 1
        for room, participants in lost.items():
            self._emit({"type": "media_lost", "room": room, "to": None, "participants": sorted(participants)})


# ---------------------------------------------------------------------------- the worker process
async def serve_worker(fd: int) -> None:
    quiet_closed_peer_races(asyncio.get_running_loop())
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
    config = await read_frame(reader)
    if config is None:
        return
    ice_fields = config["ice"]
    ice = IceSettings(**{**ice_fields, "announced_addresses": tuple(ice_fields["announced_addresses"]),
                         "ice_servers": tuple(IceServer(**{**s, "urls": tuple(s["urls"])})
                                              for s in ice_fields["ice_servers"])})
    argument = pickle.loads(base64.b64decode(config["factory_argument"]))
    host = _import(config["host_factory"])(ice, argument)
    lock = asyncio.Lock()  # one writer at a time on the socket

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            await write_frame(writer, message)

    async def forward_events() -> None:
        async for event in host.subscribe_events():
            await send({"event": event})

    async def report() -> None:
        while True:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            await send({"stats": host.stats.snapshot(), "rooms": host.room_reports(),
                        "metrics": process_metrics.snapshot(), "cpu_seconds": usage.ru_utime + usage.ru_stime})
            await asyncio.sleep(REPORT_INTERVAL)

    async def answer(frame: dict[str, Any]) -> None:
        # What this request starts (a peer's tasks, a room's) logs the meeting and participant.
        participant = frame["message"].get("participant") if isinstance(frame["message"], dict) else None
        logs.bind(meeting_id=frame["room"], participant_id=participant if isinstance(participant, str) else None)
        reply = await host.request(frame["room"], frame["message"])
        await send({"re": frame["id"], "reply": reply})

    tasks = {asyncio.create_task(forward_events()), asyncio.create_task(report())}
    await send({"type": "ready", "pid": os.getpid()})
    while (frame := await read_frame(reader)) is not None and not frame.get("close"):
        task = asyncio.create_task(answer(frame))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await host.close()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="An SFU worker process (started by SfuWorkers).")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the parent")
    args = parser.parse_args()
    logs.configure()  # until the host factory configures it from the appliance's settings
    try:  # the event loop Sanic runs the appliance on: its datagram sends are C, not Python
        import uvloop
    except ImportError:
        asyncio.run(serve_worker(args.fd))
    else:
        uvloop.run(serve_worker(args.fd))


if __name__ == "__main__":
    main()
