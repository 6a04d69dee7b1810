"""API throughput and latency: `GET /api/v1/meetings/{id}` on one appliance process, with wrk.

Usage: python benchmarks/api_bench.py [--database sqlite|postgresql|both] [--seconds 15]
       [--connections 32] [--threads 1]

Starts `confmeet serve` (embedded defaults, or a scratch PostgreSQL database on 127.0.0.1),
creates an admin and a meeting, reports the appliance's idle memory, then drives the endpoint
with wrk on loopback and prints requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from appliance_server import start_appliance  # noqa: E402
from conftest import drop_pg_database, make_pg_database, stop  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wrk(url: str, token: str, seconds: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, check=True).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def latency(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * units[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency("50%"), "p90": latency("90%"), "p99": latency("99%"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run(database: str, seconds: int, connections: int, threads: int) -> None:
    settings: dict[str, str] = {}
    pg = None
    if database == "postgresql":
        pg, settings["database"] = make_pg_database()
    with tempfile.TemporaryDirectory() as tmp:
        app = start_appliance(Path(tmp), **settings)
        try:
            email, password = "bench@example.com", "bench password 1"
            app.cli("user", "add", email, "--admin", "--password-stdin", input=password + "\n")
            time.sleep(2)
            idle = rss_mb(app.proc.pid)
            token = httpx.post(f"{app.url}/api/v1/auth/login",
                               json={"email": email, "password": password}).json()["access_token"]
            meeting = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "bench"},
                                 headers={"Authorization": f"Bearer {token}"}).json()
            url = f"{app.url}/api/v1/meetings/{meeting['id']}"
            wrk(url, token, 3, connections, threads)  # warm-up
            result = wrk(url, token, seconds, connections, threads)
            after = rss_mb(app.proc.pid)
        finally:
            stop(app.proc)
            if pg:
                drop_pg_database(pg)
    print(f"| {database} | {connections} | {result['rps']:,.0f} | {result['p50']:.2f} | {result['p90']:.2f} "
          f"| {result['p99']:.2f} | {int(result['errors'])} | {idle:.0f} | {after:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    print("| database | connections | requests/s | p50 ms | p90 ms | p99 ms | non-2xx | idle RSS MB | RSS after MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for database in (["sqlite", "postgresql"] if args.database == "both" else [args.database]):
        run(database, args.seconds, args.connections, args.threads)


if __name__ == "__main__":
    main()
