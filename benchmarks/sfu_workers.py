"""SFU worker processes: the same load on one worker and on two, in turns, measured by
`confmeet loadtest` (issue 15's scaling figure).

Usage: python benchmarks/sfu_workers.py [--rooms 2] [--subscribers 16] [--duration 20] [--repeat 2]

For each round, ``confmeet serve`` from this tree is started twice on a fresh data directory,
media on loopback: once with ``sfu.workers = 1`` and once with 2. Against each, ``confmeet loadtest
--rooms R --publishers 1 --subscribers S --json`` (decode-free subscribers but two per load-test
worker) loads R meetings at once; the signaling side places each meeting's room on the least
loaded SFU worker. Printed for each run: packets forwarded per second, the appliance's CPU (its
own process and its workers) per forwarded packet, each SFU worker's share of a core, packets
and CPU per packet (from ``confmeet_sfu_worker_*``), and the load generator's CPU — on a 2-core
machine the generator shares the cores with the SFU, and which of them is the limit shows there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfu_vs_janus import EMAIL, PASSWORD, ROOT, serve  # noqa: E402

CLI = [sys.executable, "-m", "cli"]


def run_once(scratch: Path, workers: int, rooms: int, subscribers: int, duration: float) -> dict[str, Any]:
    server, url = serve(scratch, workers=workers)
    try:
        run = subprocess.run([*CLI, "loadtest", "--url", url, "--email", EMAIL, "--password-env", "BENCH_PASSWORD",
                              "--rooms", str(rooms), "--publishers", "1", "--subscribers", str(subscribers),
                              "--duration", str(duration), "--json"],
                             cwd=ROOT, env={**os.environ, "BENCH_PASSWORD": PASSWORD}, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"loadtest failed ({run.returncode}): {run.stderr[-2000:]}")
        return json.loads(run.stdout)
    finally:
        server.terminate()
        server.wait(30)


def describe(workers: int, report: dict[str, Any]) -> str:
    sfu, generator, summary = report["sfu"], report["generator"], report["summary"]
    per_worker = "; ".join(f"worker {w}: {f['cpu_percent']:.1f} %, {f['forwarded_packets_per_s']:,.0f} pkt/s, "
                           f"{f['cpu_us_per_forwarded_packet']:.1f} µs/pkt" for w, f in sfu["workers"].items())
    return (f"{workers} worker(s): {sfu['forwarded_packets_per_s']:,.0f} pkt/s forwarded, appliance "
            f"{sfu['cpu_percent']:.1f} % ({sfu['cpu_us_per_forwarded_packet']:.1f} µs/pkt); {per_worker}; "
            f"generator {generator['cpu_percent']:.1f} % of {generator['cores']} cores; "
            f"{summary['subscribers_ok']} subscribers ok, fps min {summary['video_fps_min']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rooms", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=16, help="per room")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each runs one worker, then two")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sfu-workers-"))
    print(f"{args.rooms} rooms, each 1 publisher and {args.subscribers} subscribers; {args.duration:.0f} s windows; "
          f"{os.cpu_count()} cores", flush=True)
    try:
        for round_ in range(1, args.repeat + 1):
            for workers in (1, 2):
                report = run_once(scratch, workers, args.rooms, args.subscribers, args.duration)
                print(f"round {round_}  {describe(workers, report)}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
