"""Several nodes: the same `confmeet loadtest --rooms` load through an nginx gateway in front of
1, 2 and 3 nodes, in turns, and the time a join takes straight to a node, relayed by another
node, and through the gateway (docs/benchmarks.md, "Several nodes").

Usage: python benchmarks/cluster_nodes.py [--rooms 3] [--subscribers 8] [--duration 15] [--repeat 1]
                                          [--nodes 1,2,3] [--probes 20]

For each round and each node count N, a fresh install: N ``confmeet serve`` from this tree sharing a
throwaway PostgreSQL database (tests/conftest.py make_pg_database) and Redis database 15 (emptied
before and after), the first node's secrets.toml copied to the others, each with its own node_name,
one SFU worker, media on loopback on its own UDP ports, and a real nginx gateway in front
(appliance/machine/gateway.py), as tests/e2e/test_cluster_ui.py runs them. Against the gateway,
``confmeet loadtest --rooms R --publishers 1 --subscribers S --decode 0 --json`` loads R meetings;
each meeting is placed on the least-loaded node when its publisher joins.

While it runs, each node's ``/metrics`` (served to loopback without a token) and the placements
in Redis (``confmeet:meeting:<id>``) are read once a second. Printed per run: the rooms each node
got, the packets forwarded per second, each node's SFU worker CPU and CPU per forwarded packet
(``confmeet_sfu_worker_*`` over the load test's own window) with the packets per second that
implies at 80 % of a core, the load generator's CPU, and join to first frame of the load test's
subscribers (all through the gateway).

Once every load-test participant has a peer connection, a probe meeting is opened (one seat holds
it on its node) and ``--probes`` joins of each kind are made in turns, one at a time: a signaling
connection opened and ``join`` answered, timed, then ``leave``. Kinds: straight to the meeting's own
node, to another node (which relays the socket to the owner), and to the gateway (round robin:
1/N of those reach the owner, the others are relayed). The ratio of those medians is the point:
the same load, the same minute. On a 2-core machine the load generator, not the nodes, is the
limit, so capacity is the per-node CPU per packet projected, not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
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
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from appliance_server import Appliance, start_appliance  # noqa: E402
from conftest import drop_pg_database, free_port, make_pg_database, stop  # noqa: E402

from appliance.machine.gateway import nginx_config  # noqa: E402
from cli.client.api import ApplianceApi  # noqa: E402
from cli.loadtest import MetricsSample  # noqa: E402

CLI = [sys.executable, "-m", "cli"]
BUS = "redis://127.0.0.1:6379/15"  # the benchmark's own Redis database, emptied before and after
EMAIL, PASSWORD = "bench@example.com", "bench password 1"
MEDIA_PORTS = 23000  # node i gets 23000 + 100 i .. + 99: away from the tests' 21000-21999
CORE_BUDGET = 0.8  # the share of a core a node's SFU worker may use, as in "SFU worker processes"
_ACTIVE_PEERS = re.compile(r"^confmeet_sfu_active_peers(?:\{[^}]*\})?\s+(\S+)", re.M)


def pick(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Sample:
    at: float  # time.time(), to compare with the load test's window
    metrics: MetricsSample
    active_peers: float


@dataclass
class Watcher:
    """Each node's /metrics and the meetings' placements, once a second, in a thread of its own."""

    nodes: dict[str, str]  # name -> URL
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    placements: dict[str, str] = field(default_factory=dict)  # meeting id -> node, as last seen
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        bus = redis.Redis.from_url(BUS)
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                for name, url in self.nodes.items():
                    try:
                        text = client.get(f"{url}/metrics").text
                    except httpx.HTTPError:
                        continue
                    now = time.time()
                    found = _ACTIVE_PEERS.search(text)
                    self.samples.setdefault(name, []).append(
                        Sample(now, MetricsSample.parse(text, now), float(found.group(1)) if found else 0.0))
                try:
                    keys = list(bus.scan_iter("confmeet:meeting:*"))
                    for key, owner in zip(keys, bus.mget(keys) if keys else []):
                        if owner is not None:
                            self.placements[key.decode().rsplit(":", 1)[1]] = owner.decode()
                except redis.RedisError:
                    pass
                self._stop.wait(1.0)
        bus.close()

    def active_peers(self) -> float:
        return sum(s[-1].active_peers for s in self.samples.values() if s)

    def window(self, name: str, start: float, end: float) -> tuple[Sample, Sample] | None:
        """The first sample of ``name`` inside [start, end] and the last one."""
        inside = [s for s in self.samples.get(name, []) if start <= s.at <= end]
        return (inside[0], inside[-1]) if len(inside) >= 2 else None


@dataclass
class Cluster:
    gateway_url: str
    nodes: list[Appliance]
    gateway: subprocess.Popen

    def urls(self) -> dict[str, str]:
        return {a.env["CONFMEET_NODE_NAME"]: a.url for a in self.nodes}


def start_cluster(scratch: Path, count: int, db_url: str, started: list[Any]) -> Cluster:
    """``count`` nodes and a gateway; every process goes into ``started`` as soon as it runs, so
    that the caller stops it whatever fails after."""
    apps: list[Appliance] = []
    for i in range(1, count + 1):
        data = scratch / f"n{i}"
        if apps:  # the install's secrets, as `confmeet install --join` brings them
            data.mkdir(parents=True)
            shutil.copy(apps[0].data_dir / "secrets.toml", data / "secrets.toml")
        low = MEDIA_PORTS + 100 * i  # each node its own media ports, as on its own machine
        app = start_appliance(data, node_name=f"n{i}", database=db_url, bus=BUS, media_loopback="true",
                              sfu_workers="1", media_udp_min=str(low), media_udp_max=str(low + 99))
        started.append(app.proc)
        apps.append(app)
    apps[0].add_user(EMAIL, PASSWORD, admin=True)
    port = free_port()
    prefix = scratch / "gateway"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(nginx_config([a.url.removeprefix("http://") for a in apps],
                                                    f"127.0.0.1:{port}", prefix=prefix, user="root"))
    gateway = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=open(prefix / "nginx.stderr", "w"))
    started.append(gateway)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Cluster(url, apps, gateway)
        except httpx.HTTPError:
            pass
        if gateway.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not serve: {(prefix / 'nginx.stderr').read_text()[-2000:]}")


async def probe_joins(cluster: Cluster, owner_of: Any, count: int) -> dict[str, list[float]]:
    """``count`` joins of each kind, in turns, one at a time; ms from opening the signaling
    connection to the ``joined`` reply."""
    from cli.client.participant import Participant

    api = ApplianceApi(cluster.gateway_url)
    await api.sign_in(EMAIL, PASSWORD)
    meeting = await api.create_meeting("cluster probe")
    anchor = Participant(cluster.gateway_url, api.token, name="anchor", receive=False)
    try:
        await anchor.connect()
        await anchor.join(meeting["code"], check=True)  # places the meeting, and holds it there
        owner = owner_of(meeting["id"])
        urls = cluster.urls()
        kinds = {"direct to owner": urls[owner]}
        other = next((name for name in sorted(urls) if name != owner), None)
        if other is not None:
            kinds["relayed by another node"] = urls[other]
        kinds["through the gateway"] = cluster.gateway_url
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for i in range(count):
            for kind, url in kinds.items():
                probe = Participant(url, api.token, name=f"probe-{i}", receive=False)
                t0 = time.perf_counter()
                try:
                    await probe.connect()
                    await probe.join(meeting["code"], check=True)
                    times[kind].append(1000 * (time.perf_counter() - t0))
                finally:
                    await probe.leave()
        return times
    finally:
        await anchor.leave()
        await api.end_meeting(meeting["id"])


def placement(bus: redis.Redis, meeting_id: str) -> str:
    owner = bus.get(f"confmeet:meeting:{meeting_id}")
    if owner is None:
        raise RuntimeError(f"meeting {meeting_id} has a seat but no placement in Redis ({BUS})")
    return owner.decode()


def run_once(scratch: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One install of ``count`` nodes, loaded; its figures."""
    load = os.getloadavg()[0]  # a shared machine: what else ran shows here
    bus = redis.Redis.from_url(BUS)
    bus.flushdb()
    db_name, db_url = make_pg_database()
    started: list[Any] = []
    loadtest: subprocess.Popen | None = None
    watcher: Watcher | None = None
    try:
        cluster = start_cluster(scratch, count, db_url, started)
        watcher = Watcher(cluster.urls())
        watcher.start()
        loadtest = subprocess.Popen(
            [*CLI, "loadtest", "--url", cluster.gateway_url, "--email", EMAIL, "--password-env", "BENCH_PASSWORD",
             "--rooms", str(args.rooms), "--publishers", "1", "--subscribers", str(args.subscribers),
             "--decode", "0", "--duration", str(args.duration), "--json"],
            cwd=ROOT, env={**os.environ, "BENCH_PASSWORD": PASSWORD}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        expected = args.rooms * (1 + args.subscribers)
        deadline = time.monotonic() + 90
        while watcher.active_peers() < expected and loadtest.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        probes: dict[str, list[float]] = {}
        probed = (0.0, 0.0)
        if loadtest.poll() is None:
            probed_from = time.time()
            probes = asyncio.run(probe_joins(cluster, lambda m: placement(bus, m), args.probes))
            probed = (probed_from, time.time())
        out, err = loadtest.communicate(timeout=args.duration + 180)
        if loadtest.returncode not in (0, 1):  # 1: the report says what went wrong
            raise RuntimeError(f"loadtest failed ({loadtest.returncode}): {err[-2000:]}")
        report = json.loads(out)
        watcher.stop()
        return {**figures(report, watcher, probes, probed, count), "load": load}
    finally:
        if watcher is not None:
            watcher.stop()
        if loadtest is not None and loadtest.poll() is None:
            stop(loadtest)
        for proc in reversed(started):
            stop(proc)
        try:
            drop_pg_database(db_name)
        finally:
            bus.flushdb()
            bus.close()
        for i in range(1, count + 1):
            shutil.rmtree(scratch / f"n{i}", ignore_errors=True)
        shutil.rmtree(scratch / "gateway", ignore_errors=True)


def figures(report: dict[str, Any], watcher: Watcher, probes: dict[str, list[float]],
            probed: tuple[float, float], count: int) -> dict[str, Any]:
    start, end = report["window"]["start"], report["window"]["end"]
    rooms_on: dict[str, int] = {name: 0 for name in watcher.nodes}
    for room in report["rooms"]:
        owner = watcher.placements.get(room["room"])
        if owner is not None:
            rooms_on[owner] = rooms_on.get(owner, 0) + 1
    nodes: dict[str, dict[str, float | None]] = {}
    for name in watcher.nodes:
        pair = watcher.window(name, start, end)
        if pair is None:
            nodes[name] = {"cpu_percent": None, "pkt_s": None, "us_per_pkt": None, "node_cpu_percent": None}
            continue
        first, last = pair
        span = last.at - first.at
        cpu = last.metrics.worker_cpu_seconds - first.metrics.worker_cpu_seconds
        packets = (sum(w.get("forwarded_packets", 0.0) for w in last.metrics.workers.values())
                   - sum(w.get("forwarded_packets", 0.0) for w in first.metrics.workers.values()))
        own = ((last.metrics.cpu_seconds or 0.0) - (first.metrics.cpu_seconds or 0.0))
        nodes[name] = {"cpu_percent": 100 * cpu / span, "pkt_s": packets / span,
                       "us_per_pkt": 1e6 * cpu / packets if packets > 0 else None,
                       "node_cpu_percent": 100 * (cpu + own) / span}
    first_frames = [r["first_frame_ms"] for r in report["subscriber_results"] if r["first_frame_ms"] is not None]
    return {"nodes": count, "rooms_on": rooms_on, "per_node": nodes,
            "pkt_s": sum(n["pkt_s"] or 0.0 for n in nodes.values()),
            "generator_percent": report["generator"]["cpu_percent"], "cores": report["generator"]["cores"],
            "subscribers_ok": report["summary"]["subscribers_ok"],
            "subscribers": report["subscribers"] * len(report["meetings"]),
            "fps_min": report["summary"]["video_fps_min"],
            "first_frame_ms": first_frames, "probes": probes,
            # The probes start once every load-test participant has a peer connection (before the
            # window: the load is the same from then on) and must end while the load is still on.
            "probes_under_load": 0 < probed[1] <= end, "probes_from_window_s": (probed[0] - start, probed[1] - start),
            "problems": report["problems"]}


def describe(round_: int, run: dict[str, Any]) -> str:
    per_node = "; ".join(
        f"{name} ({run['rooms_on'][name]} room{'s' if run['rooms_on'][name] != 1 else ''}): "
        + (f"SFU {f['cpu_percent']:.1f} % (node {f['node_cpu_percent']:.1f} %), {f['pkt_s']:,.0f} pkt/s"
           + (f", {f['us_per_pkt']:.1f} µs/pkt → {CORE_BUDGET * 1e6 / f['us_per_pkt']:,.0f} pkt/s at 80 %"
              if f["us_per_pkt"] else "")
           if f["cpu_percent"] is not None else "no metrics in the window")
        for name, f in run["per_node"].items())
    ff = run["first_frame_ms"]
    lines = [f"round {round_}  {run['nodes']} node(s): {run['pkt_s']:,.0f} pkt/s forwarded; {per_node}; "
             f"generator {run['generator_percent']:.1f} % of {run['cores']} cores; "
             f"{run['subscribers_ok']}/{run['subscribers']} subscribers ok, fps min {run['fps_min']}; "
             f"join → first frame via gateway p50 {statistics.median(ff) if ff else float('nan'):.0f} ms, "
             f"p95 {pick(ff, 0.95):.0f} ms; load average {run['load']:.1f} before"]
    direct = run["probes"].get("direct to owner", [])
    for kind, times in run["probes"].items():
        ratio = statistics.median(times) / statistics.median(direct) if times and direct else float("nan")
        lines.append(f"          join ({len(times)}) {kind:24} p50 {statistics.median(times):6.1f} ms  "
                     f"p95 {pick(times, 0.95):6.1f} ms  max {max(times):6.1f} ms (the first {times[0]:.1f})  ×{ratio:.2f} of direct")
    if run["probes"]:
        began, ended = run["probes_from_window_s"]
        lines.append(f"          (probe joins from {began:+.1f} s to {ended:+.1f} s of the load test's window"
                     + ("" if run["probes_under_load"] else "; they outlasted the load: compare with care") + ")")
    for problem in run["problems"]:
        lines.append(f"          problem: {problem}")
    return "\n".join(lines)


def summary(runs: list[dict[str, Any]], counts: list[int]) -> str:
    lines = ["\nnodes  SFU µs/pkt per node (median of rounds)  pkt/s per node at 80 % of a core  × nodes   "
             "join p50 direct / relayed / gateway (ms)"]
    for count in counts:
        mine = [r for r in runs if r["nodes"] == count]
        us = [f["us_per_pkt"] for r in mine for f in r["per_node"].values() if f["us_per_pkt"]]
        joins = {kind: [t for r in mine for t in r["probes"].get(kind, [])]
                 for kind in ("direct to owner", "relayed by another node", "through the gateway")}
        med = statistics.median(us) if us else float("nan")
        capacity = CORE_BUDGET * 1e6 / med if us else float("nan")
        p50 = " / ".join(f"{statistics.median(t):.1f}" if t else "—" for t in joins.values())
        lines.append(f"{count:5}  {med:38.1f}  {capacity:32,.0f}  {count * capacity:8,.0f}   {p50}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=8, help="per room, decode-free")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each runs every node count once")
    parser.add_argument("--nodes", default="1,2,3", help="node counts, in this order each round")
    parser.add_argument("--probes", type=int, default=20, help="timed joins of each kind per run")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    if shutil.which("nginx") is None:
        print("the gateway needs Debian's nginx: apt-get install -y nginx", file=sys.stderr)
        return 2
    # A SIGTERM (a CI timeout, kill) ends the run through the finally blocks, which stop every
    # process and drop the database, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="cluster-nodes-"))
    print(f"{args.rooms} rooms, each 1 publisher and {args.subscribers} decode-free subscribers, through the gateway; "
          f"{args.duration:.0f} s windows; {args.probes} timed joins of each kind; {os.cpu_count()} cores", flush=True)
    runs: list[dict[str, Any]] = []
    try:
        for round_ in range(1, args.repeat + 1):
            for count in counts:
                run = run_once(scratch, count, args)
                runs.append(run)
                print(describe(round_, run), flush=True)
        print(summary(runs, counts), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
