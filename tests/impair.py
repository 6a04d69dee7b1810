"""An impaired network link for tests: a network namespace joined to the host by a point-to-point
link whose packets a relay process delays, jitters, drops and rate-limits, each direction on its
own — what ``tc qdisc add ... netem`` does, which this kernel cannot (no ``sch_netem``, see
field-notes). Programs started in the namespace reach the host at HOST_ADDRESS (and the host's
other addresses: the namespace's default route is the link); the host reaches them at NS_ADDRESS.
The impairment applies to each direction alike, or, given ``uplink``, the first one to the host's
packets towards the namespace (the downlink) and ``uplink`` to the other way.

    host: HOST_ADDRESS on TUN cmh<pid>  <-- relay process -->  TUN tun0 with NS_ADDRESS: namespace

The relay reads each IP packet from one TUN device and writes it to the other when it is due:
dropped with probability ``loss``; with a ``rate_kbps`` cap, queued behind the packets before it
(dropped when it would wait more than ``queue_ms``); then held ``delay_ms`` ± ``jitter_ms``
(uniform), never overtaking the packet before it (a real link keeps order; netem reorders). The
relay runs at a raised priority (nice -10), so that a busy machine adds little to the delays. Both
devices go when the relay exits; the namespace goes in ``close``. ``traffic()`` counts, each
direction on its own, the packets and bytes offered to the link and those it dropped (loss, full
queue): what a sender put on a weak link, whatever reached the other end.

Run as a script, this module is the relay:
``python impair.py NETNS_PATH HOST_DEVICE DOWNLINK_JSON UPLINK_JSON TRAFFIC_FILE``.
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
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from netns import Namespace

T = TypeVar("T")
HOST_ADDRESS, NS_ADDRESS = "10.213.3.1", "10.213.3.2"
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
READY_TIMEOUT = 10.0
TRAFFIC_EVERY = 0.2  # seconds between the relay's writes of its counters


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


@dataclass
class Traffic:
    """What one direction of the link was offered and dropped, since it started."""

    packets: int = 0
    bytes: int = 0
    lost_packets: int = 0  # dropped at random (``loss``)
    overflow_packets: int = 0  # dropped by a full queue (``rate_kbps``, ``queue_ms``)
    # When each dropped RTP packet was dropped, by its SSRC (SRTP leaves the header clear; padded
    # packets, probes, are left out), and each dropped RTCP packet (time.monotonic(): the clock of every process on the machine)
    rtp_dropped_at: dict[str, list[float]] = field(default_factory=dict)
    rtcp_dropped_at: list[float] = field(default_factory=list)

    @property
    def delivered_packets(self) -> int:
        return self.packets - self.lost_packets - self.overflow_packets


class ImpairedLink:
    """A namespace (``prefix``-PID) behind an impaired link to the host; a context manager.
    ``impairment`` applies to both directions, or only to the downlink (host to namespace) when
    ``uplink`` is given."""

    def __init__(self, prefix: str, impairment: Impairment, uplink: Impairment | None = None) -> None:
        self.impairment = impairment
        self.uplink = uplink if uplink is not None else impairment
        self.namespace = Namespace(prefix, None)
        self.host_device = f"cmh{os.getpid()}"[:15]
        self.relay: subprocess.Popen | None = None
        self._traffic_dir = tempfile.TemporaryDirectory(prefix="impair-")
        self.traffic_file = os.path.join(self._traffic_dir.name, "traffic.json")
        self.control_file = os.path.join(self._traffic_dir.name, "impairment.json")  # see change
        try:
            self.relay = subprocess.Popen(
                [sys.executable, __file__, str(self.namespace.path), self.host_device,
                 json.dumps(asdict(impairment)), json.dumps(asdict(self.uplink)), self.traffic_file],
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

    def traffic(self) -> dict[str, Traffic]:
        """The counters of each direction, ``"down"`` (host to namespace) and ``"up"``, as the relay
        wrote them last (at most TRAFFIC_EVERY s ago while packets flow)."""
        try:
            with open(self.traffic_file) as fh:
                counters = json.load(fh)
        except FileNotFoundError:  # nothing has crossed the link yet
            return {"down": Traffic(), "up": Traffic()}
        return {direction: Traffic(**counters[direction]) for direction in ("down", "up")}

    def change(self, downlink: Impairment, uplink: Impairment | None = None) -> None:
        """Impair the link otherwise from now on (``uplink``: as before unless given); packets
        already queued leave as they were due."""
        self.impairment = downlink
        self.uplink = uplink if uplink is not None else self.uplink
        with open(f"{self.control_file}.new", "w") as fh:
            json.dump({"down": asdict(downlink), "up": asdict(self.uplink)}, fh)
        os.replace(f"{self.control_file}.new", self.control_file)
        self.relay.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            self.relay.wait(5)
        self.namespace.delete()
        self._traffic_dir.cleanup()

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
        self.traffic = Traffic()

    def due(self, now: float, packet: bytes) -> float | None:
        """When ``packet`` (an IP packet) arriving ``now`` leaves; None: it is dropped."""
        link = self.impairment
        size = len(packet)
        self.traffic.packets += 1
        self.traffic.bytes += size
        if self.rng.random() < link.loss:
            self.traffic.lost_packets += 1
            self._drop(now, packet)
            return None
        sent = now
        if link.rate_kbps:
            start = max(now, self.free_at)
            if start - now > link.queue_ms / 1000:
                self.traffic.overflow_packets += 1
                self._drop(now, packet)
                return None
            self.free_at = sent = start + size * 8 / (link.rate_kbps * 1000)
        delay = (link.delay_ms + self.rng.uniform(-link.jitter_ms, link.jitter_ms)) / 1000
        self.last_due = max(sent + delay, self.last_due)
        return self.last_due

    def _drop(self, now: float, packet: bytes) -> None:
        """Note when an RTP packet without padding or an RTCP packet (IPv4, UDP, version 2) was dropped."""
        if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 17:
            return
        rtp = packet[(packet[0] & 0x0F) * 4 + 8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            return
        if 192 <= rtp[1] <= 223:  # RTCP's packet types (RFC 5761)
            self.traffic.rtcp_dropped_at.append(now)
        elif not rtp[0] & 0x20:  # a packet with padding is a probe: not noted
            self.traffic.rtp_dropped_at.setdefault(str(int.from_bytes(rtp[8:12], "big")), []).append(now)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _write_traffic(path: str, directions: dict[str, Direction]) -> None:
    with open(f"{path}.new", "w") as fh:
        json.dump({name: asdict(direction.traffic) for name, direction in directions.items()}, fh)
    os.replace(f"{path}.new", path)


def relay_main(netns_path: str, host_device: str, downlink: Impairment, uplink: Impairment,
               traffic_file: str) -> None:
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
    # Packets read from the host's device are the host's towards the namespace: the downlink.
    directions = {host: Direction(inner, downlink, rng), inner: Direction(host, uplink, rng)}
    named = {"down": directions[host], "up": directions[inner]}
    poller = select.epoll()
    for device in directions:
        poller.register(device, select.EPOLLIN)
    pending: list[tuple[float, int, int, bytes]] = []
    order = itertools.count()
    written = 0.0
    changed: list[bool] = []
    signal.signal(signal.SIGHUP, lambda *_: changed.append(True))  # ImpairedLink.change
    print("ready", flush=True)
    while True:
        if changed:
            changed.clear()
            with open(os.path.join(os.path.dirname(traffic_file), "impairment.json")) as fh:
                new = json.load(fh)
            for name, direction in named.items():
                direction.impairment = Impairment(**new[name])
        timeout = min(TRAFFIC_EVERY, max(0.0, pending[0][0] - time.monotonic())) if pending else TRAFFIC_EVERY
        if time.monotonic() - written >= TRAFFIC_EVERY:
            _write_traffic(traffic_file, named)
            written = time.monotonic()
        for device, _ in poller.poll(timeout):
            direction = directions[device]
            while True:
                try:
                    packet = os.read(device, 65535)
                except BlockingIOError:
                    break
                due = direction.due(time.monotonic(), packet)
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
    relay_main(sys.argv[1], sys.argv[2], Impairment(**json.loads(sys.argv[3])),
               Impairment(**json.loads(sys.argv[4])), sys.argv[5])
