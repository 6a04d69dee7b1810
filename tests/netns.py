"""Network namespaces that a test creates and removes: loopback, plus a veth pair whose one end
holds a test address (what a server's own network card is to the programs on it). Traffic to
that address never leaves the namespace. (tests/impair.py joins a namespace to the host instead.)"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Namespace:
    def __init__(self, prefix: str, address: str | None) -> None:
        """``address``: ADDR/PREFIXLEN on the namespace's ``eth0``; None: loopback only (the caller
        adds its own links)."""
        self.name = f"{prefix}-{os.getpid()}"
        self.address = address.split("/")[0] if address else None
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            if address:
                _ip("-n", self.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
                _ip("-n", self.name, "addr", "add", address, "dev", "eth0")
                for link in ("eth0", "eth1"):
                    _ip("-n", self.name, "link", "set", link, "up")
        except RuntimeError:
            self.delete()
            raise

    def add_bridge(self, bridge: str, address: str) -> None:
        """A Linux bridge here holding ``address`` (ADDR/PREFIXLEN): the switch of a test LAN whose
        other hosts are namespaces joined to it with ``plug_into``."""
        _ip("-n", self.name, "link", "add", bridge, "type", "bridge")
        _ip("-n", self.name, "addr", "add", address, "dev", bridge)
        _ip("-n", self.name, "link", "set", bridge, "up")

    def plug_into(self, lan: Namespace, bridge: str, address: str) -> None:
        """This namespace's ``eth0`` holding ``address`` (ADDR/PREFIXLEN), cabled to ``bridge`` in
        ``lan``: a veth pair whose other end, a port of the bridge, is named after this namespace
        (so each host of the LAN has its own). Deleting this namespace removes both ends."""
        port = self.name[:15]  # the longest name Linux gives a network device
        _ip("-n", self.name, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", lan.name)
        _ip("-n", self.name, "addr", "add", address, "dev", "eth0")
        _ip("-n", self.name, "link", "set", "eth0", "up")
        _ip("-n", lan.name, "link", "set", port, "master", bridge)
        _ip("-n", lan.name, "link", "set", port, "up")
        self.address = address.split("/")[0]

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` in a thread that has entered the namespace (its sockets are there)."""
        result: dict[str, object] = {}

        def inside() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {self.path}")
            finally:
                os.close(fd)
            try:
                result["value"] = work()
            except BaseException as exc:  # handed to the caller's thread
                result["error"] = exc

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return result["value"]  # type: ignore[return-value]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
