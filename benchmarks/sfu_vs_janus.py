"""CPU per forwarded packet: confmeet's SFU and Janus's VideoRoom side by side, in one run.

Usage: python benchmarks/sfu_vs_janus.py [--subscribers 32] [--seconds 20] [--settle 5]
       [--repeat 2] [--targets confmeet,janus-2-loops,janus]
       python benchmarks/sfu_vs_janus.py --targets confmeet,confmeet-observed --repeat 3
       python benchmarks/sfu_vs_janus.py --targets confmeet,confmeet-simulcast --repeat 3
       python benchmarks/sfu_vs_janus.py --targets confmeet,confmeet@/tmp/before --repeat 5

Every target gets the same load, one after the other and repeated in turns (so that whatever
else the machine does falls on all of them alike): one publisher sending the load test's media
(VP8 640x480 at 30 fps, ~800 kbps, and Opus, encoded once and looped as packets, see
cli/client/clips.py) and ``--subscribers`` aiortc subscribers on loopback that receive it without
decoding (they count packets; aiortc still sends receiver reports, NACKs and REMB). After the
last subscriber's first frame and ``--settle`` seconds, a window of ``--seconds``: the SFU
process's CPU time (utime + stime from /proc) divided by the RTP packets the subscribers
received in it (receiver statistics) is the CPU per forwarded packet. The load generator (this
process) runs on the same 2 cores; its own CPU is printed beside, and the SFU's CPU over it: the
generator does the same work for every target, so that ratio cancels the machine's own speed
changing between rounds (on a shared host the generator's CPU for the same work drifted 1.6x
within 12 minutes, and the SFU's with it).

Targets:
  confmeet        ``confmeet serve`` from this tree, a fresh data directory, media on loopback, one
                  SFU worker process (the meeting's room lives on one worker anyway; the CPU
                  counted is the appliance's process and its worker's together).
  confmeet-simulcast
                  the same with the camera sent as a browser sends it with simulcast: three layers
                  (160x120 ~50 kbps, 320x240 ~200 kbps, and the 640x480 clip), each with its rid,
                  one chosen per subscriber (see cli/client/clips.py SimulcastCamera). Against
                  ``confmeet`` it is the cost of receiving three layers and choosing among them, per
                  packet forwarded; the video each subscriber got is printed, to show its layer.
  confmeet-observed
                  the same with the observability on, as an install runs it and harder: Debian's
                  Prometheus scraping /metrics every second (an install scrapes every 15 s), and
                  every trace sampled (trace_sample_ratio 1.0) and exported over OTLP/HTTP to a
                  sink in this process that accepts and discards them (Jaeger's place). Against
                  ``confmeet`` it is the cost of metrics and tracing together.
  confmeet@TREE   ``confmeet`` run from another source tree (for example ``git worktree add
                  /tmp/before HEAD~1``), with this tree's virtualenv: a change measured beside
                  the code before it, in the same run.
  janus-2-loops   Janus 1.1.2 (Debian package ``janus``), VideoRoom plugin, HTTP transport,
                  ``event_loops = 2`` (a fixed pool of two event-loop threads).
  janus           the same with Janus's default (no ``event_loops``: a thread per handle).
Janus never gathers a candidate on an interface flagged loopback (``ice_enforce_list = "lo"``
does not change that), so it runs with a small LD_PRELOAD shim, compiled here with gcc, that
clears IFF_LOOPBACK in what getifaddrs() returns.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli.client.api import ApplianceApi  # noqa: E402
from cli.client.clips import (EncodedClip, encode_audio_clip, encode_simulcast_clips,  # noqa: E402
                              encode_video_clip, send_looped)
from cli.client.participant import LOOPBACK, Participant  # noqa: E402
from cli.client.received import CountedTrack  # noqa: E402
from cli.loadtest import quiet_media_logs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JANUS_PLUGINS = "/usr/lib/x86_64-linux-gnu/janus/plugins"
JANUS_TRANSPORTS = "/usr/lib/x86_64-linux-gnu/janus/transports"
ROOM = 1234
TICKS = os.sysconf("SC_CLK_TCK")
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = 0;
    if (!real) real = (int (*)(struct ifaddrs **)) dlsym(RTLD_NEXT, "getifaddrs");
    int result = real(ifap);
    if (result == 0)
        for (struct ifaddrs *i = *ifap; i; i = i->ifa_next) i->ifa_flags &= ~IFF_LOOPBACK;
    return result;
}
"""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of a process, its threads and its child processes (the appliance's
    SFU workers), from /proc: all its CPU time, and the kernel's part of it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total, system = (int(fields[11]) + int(fields[12])) / TICKS, int(fields[12]) / TICKS
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            child_total, child_system = cpu_seconds(int(child))
            total, system = total + child_total, system + child_system
    return total, system


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    target: str
    subscribers_receiving: int
    window_s: float
    packets: int
    sfu_cpu_s: float
    sfu_system_s: float  # the kernel's part of sfu_cpu_s (system calls: sends, receives, polls)
    generator_cpu_s: float
    first_frame_ms: list[float] = field(default_factory=list)
    video_bytes: int = 0  # video payload the subscribers received in the window, all together

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.sfu_cpu_s / self.packets if self.packets else float("nan")

    @property
    def kernel_us_per_packet(self) -> float:
        return 1e6 * self.sfu_system_s / self.packets if self.packets else float("nan")

    @property
    def video_kbps(self) -> float:
        """The video each receiving subscriber got, kbit/s: which layer it was sent."""
        return 8 * self.video_bytes / self.window_s / 1000 / max(1, self.subscribers_receiving)

    @property
    def per_generator(self) -> float:
        """The SFU's CPU time over the generator's, for the same packets: what is left of the
        machine's own speed changing between rounds (the generator's work is the same each time)."""
        return self.sfu_cpu_s / self.generator_cpu_s if self.generator_cpu_s else float("nan")


class Subscriber:
    """An aiortc peer that takes what it is offered and counts it (no decoding)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.tracks: list[CountedTrack] = []
        self.frame = asyncio.Event()
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        self.tracks.append(CountedTrack(track, transceiver, self.frame.set))

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        answer = await self.pc.createAnswer()
        LOOPBACK.prepare(self.pc)
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    async def packets(self) -> int:
        return sum([await t.packets_received() for t in self.tracks])

    def video_bytes(self) -> int:
        return sum(t.media_bytes for t in self.tracks if t.kind == "video")

    def first_frame(self) -> float | None:
        return next((t.first_frame_at for t in self.tracks if t.kind == "video" and t.first_frame_at), None)


def publisher_pc(clips: tuple[EncodedClip, EncodedClip]) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    for clip in clips:
        send_looped(pc, clip)
    return pc


# ---------------------------------------------------------------------------- confmeet
EMAIL, PASSWORD = "bench@example.com", "bench password 1"


def serve(scratch: Path, tree: Path = ROOT, workers: int = 1,
          extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``confmeet serve`` from ``tree`` on a fresh data directory under ``scratch`` with one
    administrator (EMAIL, PASSWORD), media on loopback, ``workers`` SFU worker processes; returns
    the process and its URL once /readyz answers (or after 10 s)."""
    data = Path(tempfile.mkdtemp(dir=scratch, prefix="confmeet-"))
    (data / "confmeet.toml").touch()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONFMEET_")},
           "CONFMEET_DATA_DIR": str(data), "CONFMEET_PORT": str(port),
           "CONFMEET_CONFIG": str(data / "confmeet.toml"), "CONFMEET_MEDIA_LOOPBACK": "true",
           "CONFMEET_MEDIA_UDP_MIN": "21000", "CONFMEET_MEDIA_UDP_MAX": "21999",
           "CONFMEET_SFU_WORKERS": str(workers), **(extra_env or {})}
    cli = [sys.executable, "-m", "cli"]
    subprocess.run([*cli, "user", "add", EMAIL, "--admin", "--password-stdin"], cwd=tree,
                   env=env, input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    with open(data / "serve.log", "w") as log:
        proc = subprocess.Popen([*cli, "serve"], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return proc, url


class Confmeet:
    def __init__(self, scratch: Path, workers: int = 1, tree: Path = ROOT, name: str = "confmeet",
                 simulcast: list[EncodedClip] | None = None) -> None:
        self.scratch = scratch
        self.workers = workers
        self.tree = tree
        self.name = name if workers == 1 else f"{name}-{workers}-workers"
        self.extra_env: dict[str, str] = {}
        self.simulcast = simulcast  # the camera's layers, when it sends simulcast

    async def start(self) -> int:
        self.proc, self.url = serve(self.scratch, self.tree, self.workers, self.extra_env)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.api = ApplianceApi(self.url)
        await self.api.sign_in(EMAIL, PASSWORD)
        self.meeting = (await self.api.create_meeting("bench"))["code"]
        self.participants: list[Participant] = []
        return self.proc.pid

    async def publish(self, clips: tuple[EncodedClip, EncodedClip]) -> None:
        publisher = await self._joined("publisher", receive=False)
        if self.simulcast:
            publisher.publish_simulcast(self.simulcast)
            clips = clips[1:]
        for clip in clips:
            publisher.publish_clip(clip)
        await publisher.offer(check=True)
        await publisher.connected()

    async def subscribe(self) -> Any:
        subscriber = await self._joined(f"sub-{len(self.participants)}", decode=False)
        await subscriber.offer(check=True)
        return subscriber

    async def _joined(self, name: str, **options: bool) -> Participant:
        participant = Participant(self.api.url, self.api.token, name=name, **options)
        await participant.connect()
        self.participants.append(participant)
        await participant.join(self.meeting, check=True)
        return participant

    @staticmethod
    async def packets(subscriber: Participant) -> int:
        return sum([await t.packets_received() for t in subscriber.received])

    @staticmethod
    def video_bytes(subscriber: Participant) -> int:
        return sum(t.media_bytes for t in subscriber.video())

    @staticmethod
    def first_frame(subscriber: Participant) -> float | None:
        return next((t.first_frame_at for t in subscriber.video() if t.first_frame_at), None)

    async def stop(self) -> None:
        await asyncio.gather(*(p.leave() for p in self.participants), return_exceptions=True)
        self.proc.terminate()
        self.proc.wait(10)


class _Discard(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that takes every export and keeps nothing."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class ConfmeetObserved(Confmeet):
    """confmeet with Prometheus scraping it every second and every trace exported."""

    def __init__(self, scratch: Path) -> None:
        super().__init__(scratch)
        self.name = "confmeet-observed"

    async def start(self) -> int:
        self.sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
        threading.Thread(target=self.sink.serve_forever, daemon=True).start()
        self.extra_env = {"CONFMEET_TRACE_ENDPOINT": f"http://127.0.0.1:{self.sink.server_address[1]}",
                          "CONFMEET_TRACE_SAMPLE_RATIO": "1.0"}
        pid = await super().start()
        folder = Path(tempfile.mkdtemp(dir=self.scratch, prefix="prometheus-"))
        (folder / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            f"scrape_configs: [{{job_name: confmeet, static_configs: [{{targets: ['127.0.0.1:{self.port}']}}]}}]\n")
        self.prometheus_port = free_port()
        self.prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=open(folder / "prometheus.log", "w"))
        return pid

    async def packets_scraped(self) -> float:
        """Forwarded packets as Prometheus last saw them: proof the scrapes reach the appliance."""
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{self.prometheus_port}/api/v1/query",
                                 params={"query": "sum(confmeet_sfu_forwarded_packets_total)"})
        result = r.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    async def stop(self) -> None:
        scraped = await self.packets_scraped()
        if not scraped:
            print("  confmeet-observed: Prometheus scraped no forwarded packets; the figure is not valid",
                  file=sys.stderr)
        await super().stop()
        self.prometheus.terminate()
        self.prometheus.wait(10)
        self.sink.shutdown()


# ---------------------------------------------------------------------------- Janus
class Janus:
    def __init__(self, scratch: Path, event_loops: int | None) -> None:
        self.scratch = scratch
        self.event_loops = event_loops
        self.name = f"janus-{event_loops}-loops" if event_loops else "janus"

    def _configure(self, folder: Path) -> None:
        loops = f"\tevent_loops = {self.event_loops}\n" if self.event_loops else ""
        (folder / "janus.jcfg").write_text(
            "general: {\n"
            f'\tconfigs_folder = "{folder}"\n\tplugins_folder = "{JANUS_PLUGINS}"\n'
            f'\ttransports_folder = "{JANUS_TRANSPORTS}"\n\tdebug_level = 2\n{loops}'
            "\tsession_timeout = 120\n}\n"
            "media: {\n\trtp_port_range = \"30000-30999\"\n}\n"
            'nat: {\n\tice_enforce_list = "lo"\n\tfull_trickle = false\n}\n'
            'plugins: {\n\tdisable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,'
            'libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,'
            'libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"\n}\n'
            'transports: {\n\tdisable = "libjanus_websockets.so,libjanus_mqtt.so,libjanus_nanomsg.so,'
            'libjanus_pfunix.so,libjanus_rabbitmq.so"\n}\n'
            "events: {\n\tbroadcast = false\n}\n")
        (folder / "janus.transport.http.jcfg").write_text(
            'general: {\n\tjson = "compact"\n\tbase_path = "/janus"\n\thttp = true\n'
            f'\tport = {self.port}\n\tip = "127.0.0.1"\n\thttps = false\n}}\n'
            "admin: {\n\tadmin_http = false\n}\n")
        (folder / "janus.plugin.videoroom.jcfg").write_text(
            f'room-{ROOM}: {{\n\tdescription = "bench"\n\tpublishers = 1\n\tbitrate = 0\n'
            '\tfir_freq = 0\n\taudiocodec = "opus"\n\tvideocodec = "vp8"\n}\n')

    def _shim(self) -> Path:
        shim = self.scratch / "loopback-shim.so"
        if not shim.exists():
            source = self.scratch / "loopback-shim.c"
            source.write_text(SHIM)
            subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True)
        return shim

    async def start(self) -> int:
        folder = Path(tempfile.mkdtemp(dir=self.scratch, prefix="janus-"))
        self.port = free_port()
        self._configure(folder)
        self.proc = subprocess.Popen(["janus", "-F", str(folder), "-C", str(folder / "janus.jcfg")],
                                     env={**os.environ, "LD_PRELOAD": str(self._shim())},
                                     stdout=open(folder / "janus.log", "w"), stderr=subprocess.STDOUT)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}/janus", timeout=35)
        for _ in range(100):
            try:
                if (await self.http.post("", json={"janus": "info", "transaction": "i"})).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        reply = await self._request("", {"janus": "create"})
        self.session = reply["data"]["id"]
        self.events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self.poller = asyncio.get_running_loop().create_task(self._poll())
        self.pcs: list[RTCPeerConnection] = []
        return self.proc.pid

    async def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = (await self.http.post(path, json={**body, "transaction": os.urandom(6).hex()})).json()
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus: {reply['error']}")
        return reply

    async def _poll(self) -> None:
        while True:
            events = (await self.http.get(f"/{self.session}", params={"maxev": 20})).json()
            for event in events if isinstance(events, list) else [events]:
                sender = event.get("sender")
                if sender in self.events:
                    self.events[sender].put_nowait(event)

    async def _attach(self) -> int:
        handle = (await self._request(f"/{self.session}", {"janus": "attach",
                                                            "plugin": "janus.plugin.videoroom"}))["data"]["id"]
        self.events[handle] = asyncio.Queue()
        return handle

    async def _message(self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None) -> dict[str, Any]:
        """Send a plugin message and return the plugin's event that answers it (with its jsep)."""
        await self._request(f"/{self.session}/{handle}", {"janus": "message", "body": body,
                                                          **({"jsep": jsep} if jsep else {})})
        while True:
            event = await asyncio.wait_for(self.events[handle].get(), 30)
            if event.get("janus") == "event":
                data = event["plugindata"]["data"]
                if "error" in data:
                    raise RuntimeError(f"janus videoroom: {data['error']}")
                return event

    async def publish(self, clips: tuple[EncodedClip, EncodedClip]) -> None:
        handle = await self._attach()
        pc = publisher_pc(clips)
        self.pcs.append(pc)
        offer = await pc.createOffer()
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(offer)
        event = await self._message(handle, {"request": "joinandconfigure", "ptype": "publisher", "room": ROOM,
                                             "audio": True, "video": True},
                                    {"type": "offer", "sdp": pc.localDescription.sdp})
        while "jsep" not in event:
            event = await asyncio.wait_for(self.events[handle].get(), 30)
        self.feed = event["plugindata"]["data"]["id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=event["jsep"]["sdp"], type="answer"))
        for _ in range(150):  # Janus offers a feed to subscribers once its media is up
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

    async def subscribe(self) -> Subscriber:
        handle = await self._attach()
        subscriber = Subscriber()
        self.pcs.append(subscriber.pc)
        event = await self._message(handle, {"request": "join", "ptype": "subscriber", "room": ROOM,
                                             "streams": [{"feed": self.feed}]})
        answer = await subscriber.answer(event["jsep"]["sdp"])
        await self._message(handle, {"request": "start", "room": ROOM}, {"type": "answer", "sdp": answer})
        return subscriber

    @staticmethod
    async def packets(subscriber: Subscriber) -> int:
        return await subscriber.packets()

    @staticmethod
    def video_bytes(subscriber: Subscriber) -> int:
        return subscriber.video_bytes()

    @staticmethod
    def first_frame(subscriber: Subscriber) -> float | None:
        return subscriber.first_frame()

    async def stop(self) -> None:
        self.poller.cancel()
        await asyncio.gather(*(pc.close() for pc in self.pcs), return_exceptions=True)
        await self.http.aclose()
        self.proc.terminate()
        self.proc.wait(10)


# ---------------------------------------------------------------------------- the run
async def measure(target: Any, clips: tuple[EncodedClip, EncodedClip], subscribers: int, seconds: float,
                  settle: float) -> Result:
    pid = await target.start()
    try:
        await target.publish(clips)
        joined = []
        started = []
        for _ in range(subscribers):
            started.append(time.monotonic())
            joined.append(await target.subscribe())
        deadline = time.monotonic() + 30
        while any(target.first_frame(s) is None for s in joined) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        first = [1000 * (target.first_frame(s) - t0) for s, t0 in zip(joined, started) if target.first_frame(s)]
        await asyncio.sleep(settle)
        packets_0 = sum([await target.packets(s) for s in joined])
        bytes_0 = sum(map(target.video_bytes, joined))
        cpu_0, own_0, t_0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu_1, own_1, t_1 = cpu_seconds(pid), time.process_time(), time.monotonic()
        packets_1 = sum([await target.packets(s) for s in joined])
        bytes_1 = sum(map(target.video_bytes, joined))
        return Result(target.name, len(first), t_1 - t_0, packets_1 - packets_0, cpu_1[0] - cpu_0[0],
                      cpu_1[1] - cpu_0[1], own_1 - own_0, first, bytes_1 - bytes_0)
    finally:
        await target.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the last first frame and the window")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each round runs every target once")
    parser.add_argument("--targets", default="confmeet,janus-2-loops,janus")
    args = parser.parse_args()
    quiet_media_logs()
    targets = args.targets.split(",")
    unknown = [name for name in targets if name not in ("confmeet", "confmeet-simulcast", "confmeet-observed",
                                                          "janus-2-loops", "janus")
               and not (name.startswith("confmeet@") and (Path(name[len("confmeet@"):]) / "cli").is_dir())]
    if unknown:
        print(f"unknown target(s), or no confmeet tree there: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if any(name.startswith("janus") for name in targets) and (shutil.which("janus") is None or shutil.which("gcc") is None):
        print("the janus targets need Debian's janus and gcc: apt-get install -y janus gcc", file=sys.stderr)
        return 2
    if "confmeet-observed" in targets and shutil.which("prometheus") is None:
        print("confmeet-observed needs Debian's prometheus: apt-get install -y prometheus", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="sfu-vs-janus-"))
    makers = {"confmeet": lambda: Confmeet(scratch), "confmeet-observed": lambda: ConfmeetObserved(scratch),
              "janus-2-loops": lambda: Janus(scratch, 2), "janus": lambda: Janus(scratch, None),
              **{name: (lambda name=name: Confmeet(scratch, tree=Path(name[len("confmeet@"):]), name=name))
                 for name in targets if name.startswith("confmeet@")}}
    clips = (encode_video_clip(), encode_audio_clip())
    simulcast = encode_simulcast_clips()
    makers["confmeet-simulcast"] = lambda: Confmeet(scratch, name="confmeet-simulcast", simulcast=simulcast)
    print(f"publisher: VP8 640x480@30 {clips[0].bitrate / 1000:.0f} kbps + Opus {clips[1].bitrate / 1000:.0f} kbps; "
          f"{args.subscribers} subscribers, {args.seconds:.0f} s windows, {os.cpu_count()} cores", flush=True)
    results: list[Result] = []
    for round_ in range(1, args.repeat + 1):
        for name in targets:
            result = await measure(makers[name](), clips, args.subscribers, args.seconds, args.settle)
            results.append(result)
            print(f"round {round_} {name:14} {result.subscribers_receiving:3}/{args.subscribers} receiving  "
                  f"{result.packets / result.window_s:8,.0f} pkt/s  SFU {100 * result.sfu_cpu_s / result.window_s:5.1f} %"
                  f"  {result.us_per_packet:5.1f} µs/pkt (kernel {result.kernel_us_per_packet:4.1f})  generator {100 * result.generator_cpu_s / result.window_s:5.1f} %"
                  f"  SFU/generator {result.per_generator:.3f}  video {result.video_kbps:4.0f} kbit/s each"
                  f"  first frame p50 {statistics.median(result.first_frame_ms) if result.first_frame_ms else float('nan'):4.0f} ms",
                  flush=True)
    print("\ntarget          µs per forwarded packet (each round)   median   vs confmeet")
    medians = {name: statistics.median([r.us_per_packet for r in results if r.target == name]) for name in targets}
    for name in targets:
        runs = ", ".join(f"{r.us_per_packet:.1f}" for r in results if r.target == name)
        ratio = medians["confmeet"] / medians[name] if "confmeet" in medians else float("nan")
        print(f"{name:14}  {runs:36}   {medians[name]:5.1f}   confmeet/{name} = {ratio:.2f}")
    print("\ntarget          of which in the kernel, µs (each round)   median")
    for name in targets:
        kernel = [r.kernel_us_per_packet for r in results if r.target == name]
        print(f"{name:14}  {', '.join(f'{k:.1f}' for k in kernel):36}   {statistics.median(kernel):5.1f}")
    # The machine's speed may drift between rounds (a shared host): the generator's CPU for the
    # same work shows it, and the SFU's CPU over the generator's cancels it.
    relative = {name: statistics.median([r.per_generator for r in results if r.target == name]) for name in targets}
    print("\ntarget          SFU CPU / generator CPU (each round)   median")
    for name in targets:
        print(f"{name:14}  {', '.join(f'{r.per_generator:.3f}' for r in results if r.target == name):36}   "
              f"{relative[name]:.3f}")
    base = [r for r in results if r.target == "confmeet"]
    for name in (n for n in targets if n in ("confmeet-observed", "confmeet-simulcast") or n.startswith("confmeet@")):
        if not base:
            break
        what = {"confmeet-observed": "metrics scraped every 1 s and tracing on",
                "confmeet-simulcast": "simulcast on (three layers received, one chosen per subscriber)"}.get(
                    name, f"{name[len('confmeet@'):]} against this tree")
        other = [r for r in results if r.target == name]
        paired = ", ".join(f"{100 * (o.us_per_packet / c.us_per_packet - 1):+.1f} %" for c, o in zip(base, other))
        paired_relative = ", ".join(f"{100 * (o.per_generator / c.per_generator - 1):+.1f} %"
                                    for c, o in zip(base, other))
        print(f"\n{what}: {100 * (medians[name] / medians['confmeet'] - 1):+.1f} % CPU per forwarded packet "
              f"(medians; rounds paired: {paired}); relative to the generator "
              f"{100 * (relative[name] / relative['confmeet'] - 1):+.1f} % (rounds paired: {paired_relative})")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
