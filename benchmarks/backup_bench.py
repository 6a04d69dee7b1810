"""Backup and restore throughput, and the confmeet process's peak memory, on a large object store.

Usage: python benchmarks/backup_bench.py [--size-mb 1024] [--object-mb 64] [--objects file|s3]
       [--encrypt]

Builds an install with SIZE MB of random objects (in OBJECT MB pieces) in a file store, or in an
S3 server started here (rclone serve s3), plus a few users, meetings and documents in the embedded
SQLite stores. Then runs, as an operator would,

    confmeet backup create --to DIR        the backup
    confmeet backup verify ARCHIVE         reading it all back
    confmeet backup restore ARCHIVE        into a fresh install with the same kind of object store

sampling each command's peak resident memory (VmHWM, every 20 ms) and printing MB/s: object bytes
over the command's whole wall time (interpreter start included) and over the time the command
itself reports. A restore reads the archive twice (it verifies it first): its MB/s counts the
object bytes once. Everything lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from appliance_server import CONFMEET, appliance_env  # noqa: E402
from conftest import BIN, S3_KEY, S3_SECRET, free_port, stop, wait_port  # noqa: E402

from appliance.accounts import create_user  # noqa: E402
from appliance.stores.documents import open_documents  # noqa: E402
from appliance.stores.objects import open_objects  # noqa: E402
from appliance.stores.relational import Meeting, Relational  # noqa: E402

MiB = 1024 * 1024


def run_measured(env: dict[str, str], *args: str) -> tuple[dict, float, float]:
    """(the command's --json output, wall seconds, peak RSS in MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([*CONFMEET, *args, "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"confmeet {' '.join(args)} failed:\n{err}")
    return json.loads(out), wall, peak


async def fill(data_dir: Path, objects_url: str, size_mb: int, object_mb: int) -> int:
    db = Relational(f"sqlite:///{data_dir / 'confmeet.db'}")
    await db.open()
    owner = await create_user(db, "bench@example.org", "a long enough password", "Bench", "admin")
    await db.run(lambda: [Meeting.create(code=f"ben-{i:04d}-chm", title=f"meeting {i}", owner=owner)
                          for i in range(100)])
    await db.close()
    docs = open_documents(f"sqlite:///{data_dir / 'documents.db'}")
    await docs.open()
    for i in range(1000):
        await docs.insert("transcripts", {"n": i, "text": "words " * 40})
    await docs.close()
    objects = open_objects(objects_url)
    await objects.open()
    written = 0
    for i in range(max(1, size_mb // object_mb)):
        async def chunks(mb: int = object_mb):
            for _ in range(mb):
                yield os.urandom(MiB)

        await objects.put(f"recordings/{i:04d}/track.webm", chunks(), content_type="video/webm")
        written += object_mb * MiB
    await objects.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--object-mb", type=int, default=64)
    parser.add_argument("--objects", choices=("file", "s3"), default="file")
    parser.add_argument("--encrypt", action="store_true", help="encrypt the whole archive")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="confmeet-backup-bench-") as tmp:
        root = Path(tmp)
        s3 = None
        urls = {"source": f"file://{root / 'source' / 'objects'}", "target": f"file://{root / 'target' / 'objects'}"}
        if options.objects == "s3":
            port = free_port()
            (root / "s3").mkdir()
            s3 = subprocess.Popen([shutil.which("rclone", path=str(BIN)) or "rclone", "serve", "s3", str(root / "s3"),
                                   "--addr", f"127.0.0.1:{port}", "--auth-key", f"{S3_KEY},{S3_SECRET}",
                                   "--etag-hash", "MD5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port, s3)
            urls = {name: f"s3://{S3_KEY}:{S3_SECRET}@127.0.0.1:{port}/bench-{name}" for name in urls}
        try:
            source_dir, target_dir = root / "source", root / "target"
            source_dir.mkdir()
            target_dir.mkdir()
            size = asyncio.run(fill(source_dir, urls["source"], options.size_mb, options.object_mb))
            source = appliance_env(source_dir, free_port(), objects=urls["source"])
            target = appliance_env(target_dir, free_port(), objects=urls["target"])
            extra: list[str] = []
            if options.encrypt:
                (root / "pass").write_text("benchmark passphrase\n")
                extra = ["--passphrase-file", str(root / "pass")]
            created, wall, peak = run_measured(source, "backup", "create", "--to", str(root / "archives"), *extra,
                                               *(["--encrypt-archive"] if options.encrypt else []))
            archive = str(root / "archives" / created["archive"])
            results = [("backup create", wall, created["seconds"], peak)]
            _, wall, peak = run_measured(source, "backup", "verify", archive, *extra)
            results.append(("backup verify", wall, None, peak))
            restored, wall, peak = run_measured(target, "backup", "restore", archive, *extra)
            results.append(("backup restore", wall, restored["seconds"], peak))
        finally:
            if s3 is not None:
                stop(s3)

    print(f"{size / 1e6:.0f} MB of objects in {options.size_mb // options.object_mb} objects ({options.objects} store"
          f"{', archive encrypted' if options.encrypt else ''}); archive {created['size'] / 1e6:.0f} MB")
    print(f"{'command':<16}{'wall s':>8}{'MB/s':>8}{'own s':>8}{'MB/s':>8}{'peak RSS MB':>13}")
    for name, wall, own, peak in results:
        own_text = f"{own:>8.1f}{size / 1e6 / own:>8.0f}" if own else f"{'':>16}"
        print(f"{name:<16}{wall:>8.1f}{size / 1e6 / wall:>8.0f}{own_text}{peak:>13.0f}")


if __name__ == "__main__":
    main()
