#!/usr/bin/env python3
"""Install the stores a several-node install shares with --cluster-address, for real, and show
where each listens (docs/install.md, "Several nodes"): a private Docker Engine in a network
namespace of its own whose one non-loopback address, 10.78.0.1, is on a veth pair; the stand-in
images (tests/test_install.py); the installer run in that namespace. Expected: PostgreSQL, Redis,
MongoDB, MinIO and Triton on 10.78.0.1, Prometheus and the exporters on 127.0.0.1, install rc=0
(every component answers, the release opens every store). Not a CI test (about 2 minutes):

    .venv/bin/python scripts/check_cluster_address.py
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT / "tests"), str(PROJECT)]

import dockerd  # noqa: E402
from test_install import CACHE, ENV, Wheelhouse, free_port_block, standin_images  # noqa: E402

from appliance.machine import images  # noqa: E402

ADDRESS = "10.78.0.1"


def main() -> int:
    engine = dockerd.start(isolated=True)
    try:
        images.build_standins(engine.client(), CACHE)
        for argv in (["ip", "link", "add", "cm0", "type", "veth", "peer", "name", "cm1"], ["ip", "link", "set", "cm1", "up"],
                     ["ip", "addr", "add", f"{ADDRESS}/24", "dev", "cm0"], ["ip", "link", "set", "cm0", "up"]):
            subprocess.run(engine.command(argv), check=True)
        root = Path(tempfile.mkdtemp(prefix="cluster-address-"))
        recipe = images.StandinRecipe.load()
        exporters = [a for n in ("postgres_exporter", "redis_exporter") for a in ("--image", f"{n}={recipe.images[n].tag}")]
        args = [sys.executable, "-m", "cli", "install", "--mode", "containers", "--yes", "--root", str(root),
                "--docker-url", engine.url, "--components",
                "postgresql,redis,mongodb,minio,triton,prometheus,postgres_exporter,redis_exporter",
                "--port-offset", str(free_port_block()), "--listen", "127.0.0.1", "--public-host", "127.0.0.1",
                "--timeout", "180", "--wheelhouse", str(Wheelhouse().wait()), "--cluster-address", ADDRESS,
                *standin_images(), *exporters]
        started = time.monotonic()
        done = subprocess.run(engine.command(args), capture_output=True, text=True, env=ENV, cwd=PROJECT)
        print(f"install rc={done.returncode} in {time.monotonic() - started:.0f} s")
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:])
            return 1
        print(subprocess.run(engine.command(["ss", "-ltnp"]), capture_output=True, text=True).stdout)
        settings = (root / "etc/confmeet/confmeet.toml").read_text()
        shown = [re.sub(r":[^:@/]+@", ":***@", line) for line in settings.splitlines()
                 if line.startswith(("database", "bus", "documents", "objects", "inference", "node_"))]
        print("\n".join(shown))
        return 0
    finally:
        engine.stop()


if __name__ == "__main__":
    sys.exit(main())
