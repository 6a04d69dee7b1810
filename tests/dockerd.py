"""A real Docker Engine for tests: ``dockerd`` with its own data root, exec root and socket.

It runs without iptables or a bridge (containers use the host network, and tests talk to
127.0.0.1 only), with the ulimits this sandbox allows. ``isolated=True`` starts it in a new
network namespace that has nothing but loopback: whatever runs there (``Engine.run``) provably
reaches no network, which is how the offline-bundle test proves "no network access".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

MISSING = ("dockerd is missing: install Debian's docker.io (apt-get install docker.io debootstrap, "
           "or 'make test-setup' as root), then run the tests again")


@dataclass
class Engine:
    directory: Path
    process: subprocess.Popen
    isolated: bool
    clients: list[docker.DockerClient] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.directory / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> docker.DockerClient:
        client = docker.DockerClient(base_url=self.url, timeout=300)
        self.clients.append(client)
        return client

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run in the engine's network namespace (unchanged when it is not isolated)."""
        if not self.isolated:
            return argv
        return ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--", *argv]

    def log(self) -> str:
        try:
            return (self.directory / "dockerd.log").read_text()[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._unmount_leftovers()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _unmount_leftovers(self) -> None:
        """A killed dockerd can leave mounts (its netns file, overlays) under its directories."""
        prefix = f"{self.directory}/"
        with open("/proc/mounts") as fh:
            mounts = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def start(isolated: bool = False, timeout: float = 30.0) -> Engine:
    """Start a private dockerd (ready in about a second); RuntimeError with its log if it fails."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise FileNotFoundError(MISSING)
    # A short path: the socket's must fit in 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="dockerd-", dir="/tmp"))
    argv = [dockerd, f"--data-root={directory / 'data'}", f"--exec-root={directory / 'exec'}",
            f"--pidfile={directory / 'dockerd.pid'}", f"-H=unix://{directory / 'docker.sock'}",
            "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
            "--default-ulimit=nofile=20000:20000", "--default-ulimit=nproc=32768:32768"]
    if isolated:
        argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    log = (directory / "dockerd.log").open("w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "DOCKER_HOST": ""})
    engine = Engine(directory, process, isolated)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            engine.stop()
            raise RuntimeError(f"dockerd exited with {process.returncode}:\n{engine.log()}")
        if engine.socket.exists():
            try:
                docker.DockerClient(base_url=engine.url, timeout=2).ping()
                return engine
            except Exception:  # not answering yet
                pass
        time.sleep(0.05)
    log_text = engine.log()
    engine.stop()
    raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{log_text}")
