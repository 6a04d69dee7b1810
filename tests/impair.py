"""An impaired network link for tests: a network namespace joined to the host by a point-to-point
link whose packets a relay process delays, jitters, drops and rate-limits, each direction on its
own — what ``tc qdisc add ... netem`` does, which this kernel cannot (no ``sch_netem``, see
field-notes). Programs started in the namespace reach the host at HOST_ADDRESS (and the host's
other addresses: the namespace's default route is the link); the host reaches them at NS_ADDRESS.

    host: HOST_ADDRESS on TUN cmh<pid>  <-- relay process -->  TUN tun0 with NS_ADDRESS: namespace

The relay reads each IP packet from one TUN device and writes it to the other when it is due:
dropped with probability ``loss``; with a ``rate_kbps`` cap, queued behind the packets before it
(dropped when it would wait more than ``queue_ms``); then held ``delay_ms`` ± ``jitter_ms``
(uniform), never overtaking the packet before it (a real link keeps order; netem reorders). The
relay runs at a raised priority (nice -10), so that a busy machine adds little to the delays. Both
devices go when the relay exits; the namespace goes in ``close``.

Run as a script, this module is the relay: ``python impair.py NETNS_PATH HOST_DEVICE IMPAIRMENT_JSON``.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import itertools
import json
import os
import random
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from netns import Namespace

T = TypeVar("T")
HOST_ADDRESS, NS_ADDRESS = "10.213.3.1", "10.213.3.2"
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0  # one way, in each direction
    jitter_ms: float = 0.0  # each packet's delay is uniform in delay_ms ± jitter_ms
    loss: float = 0.0  # probability that a packet is dropped, each direction on its own
    rate_kbps: float = 0.0  # capacity of each direction in IP bytes (0: no cap)
    queue_ms: float = 200.0  # with a cap: a packet that would wait longer to be sent is dropped

    def __post_init__(self) -> None:
        if not (0 <= self.jitter_ms <= self.delay_ms):
            raise ValueError(f"jitter {self.jitter_ms} ms must be between 0 and the delay {self.delay_ms} ms")
        if not (0 <= self.loss < 1) or self.rate_kbps < 0 or self.queue_ms <= 0:
            raise ValueError(f"impossible impairment {self}")


class ImpairedLink:
    """A namespace (``prefix``-PID) behind an impaired link to the host; a context manager."""

    def __init__(self, prefix: str, impairment: Impairment) -> None:
        self.impairment = impairment
        self.namespace = Namespace(prefix, None)
        self.host_device = f"cmh{os.getpid()}"[:15]
        self.relay: subprocess.Popen | None = None
        try:
            self.relay = subprocess.Popen(
                [sys.executable, __file__, str(self.namespace.path), self.host_device, json.dumps(asdict(impairment))],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready, _, _ = select.select([self.relay.stdout], [], [], READY_TIMEOUT)
            line = self.relay.stdout.readline() if ready else ""  # type: ignore[union-attr]
            if line.strip() != "ready":
                self.relay.kill()
                raise RuntimeError(f"the link relay did not start: {line}{self.relay.stderr.read()}")  # type: ignore[union-attr]
        except BaseException:
            self.close()
            raise

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run in the namespace."""
        return self.namespace.command(argv)

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` in a thread in the namespace."""
        return self.namespace.run(work)

    def close(self) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            self.relay.wait(5)
        self.namespace.delete()

    def __enter__(self) -> ImpairedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- the relay process
class Direction:
    """One direction of the link: when each packet comes out of it, if it does."""

    def __init__(self, out: int, impairment: Impairment, rng: random.Random) -> None:
        self.out = out
        self.impairment = impairment
        self.rng = rng
        self.free_at = 0.0  # with a cap: when the packets queued so far have been sent
        self.last_due = 0.0

    def due(self, now: float, size: int) -> float | None:
        """When a packet of ``size`` bytes arriving ``now`` leaves; None: it is dropped."""
        link = self.impairment
        if self.rng.random() < link.loss:
            return None
        sent = now
        if link.rate_kbps:
            start = max(now, self.free_at)
            if start - now > link.queue_ms / 1000:
                return None
            self.free_at = sent = start + size * 8 / (link.rate_kbps * 1000)
        delay = (link.delay_ms + self.rng.uniform(-link.jitter_ms, link.jitter_ms)) / 1000
        self.last_due = max(sent + delay, self.last_due)
        return self.last_due


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def relay_main(netns_path: str, host_device: str, impairment: Impairment) -> None:
    host = _open_tun(host_device)
    _ip("addr", "add", HOST_ADDRESS, "peer", NS_ADDRESS, "dev", host_device)
    _ip("link", "set", host_device, "up")
    # This process moves into the namespace for good: the inner device is made there, and the
    # `ip` commands it runs from now on configure the namespace.
    fd = os.open(netns_path, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {netns_path}")
    os.close(fd)
    inner = _open_tun("tun0")
    _ip("addr", "add", NS_ADDRESS, "peer", HOST_ADDRESS, "dev", "tun0")
    _ip("link", "set", "tun0", "up")
    _ip("route", "add", "default", "dev", "tun0")
    os.setpriority(os.PRIO_PROCESS, 0, -10)

    rng = random.Random()
    directions = {host: Direction(inner, impairment, rng), inner: Direction(host, impairment, rng)}
    poller = select.epoll()
    for device in directions:
        poller.register(device, select.EPOLLIN)
    pending: list[tuple[float, int, int, bytes]] = []
    order = itertools.count()
    print("ready", flush=True)
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else -1
        for device, _ in poller.poll(timeout):
            direction = directions[device]
            while True:
                try:
                    packet = os.read(device, 65535)
                except BlockingIOError:
                    break
                due = direction.due(time.monotonic(), len(packet))
                if due is not None:
                    heapq.heappush(pending, (due, next(order), direction.out, packet))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, out, packet = heapq.heappop(pending)
            try:
                os.write(out, packet)
            except OSError:  # the device is down (shutting down)
                pass


if __name__ == "__main__":
    relay_main(sys.argv[1], sys.argv[2], Impairment(**json.loads(sys.argv[3])))
