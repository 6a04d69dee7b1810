"""ICE for the SFU's peer connections: which servers, which addresses, which UDP ports.

aioice gathers host candidates on every non-loopback address with a random UDP port, and aiortc
uses a public STUN server unless told otherwise. An appliance needs the opposite: no outside
servers unless configured, ports inside a firewall-friendly range, the public address of a 1:1
NAT announced instead of the private one, and (for tests) loopback candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from aioice import Candidate, Connection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate
from aioice.turn import UDP_SOCKET_BUFFER_SIZE
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
)
from aiortc import sdp as aiortc_sdp

from . import aiortc_private

log = logging.getLogger("confmeet.sfu")

LOOPBACK = "127.0.0.1"
# Linux's number, which Python's socket module does not name.
SIOCGSTAMPNS = 0x8907
TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
NO_TIME = bytes(TIMESPEC.size)


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server, as both aiortc and browsers take it."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def for_client(self) -> dict[str, Any]:
        """The RTCIceServer dictionary a browser's RTCPeerConnection takes."""
        server: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            server["username"] = self.username
        if self.credential is not None:
            server["credential"] = self.credential
        return server

    def for_aiortc(self) -> RTCIceServer:
        return RTCIceServer(urls=list(self.urls), username=self.username, credential=self.credential)


@dataclass(frozen=True)
class IceSettings:
    """ICE configuration of the SFU.

    ``announced_addresses``: public IPs of a 1:1 NAT; they replace the IP of every host candidate
    of the same address family in the SDP the server sends. ``udp_port_min``/``udp_port_max``:
    the inclusive range host candidates bind in (0/0: any port). ``ice_servers``: given to the
    clients and used by the server; empty by default, never a public server. ``loopback``: gather
    on 127.0.0.1 only (tests; aioice skips loopback otherwise).
    """

    announced_addresses: tuple[str, ...] = ()
    udp_port_min: int = 0
    udp_port_max: int = 0
    ice_servers: tuple[IceServer, ...] = ()
    loopback: bool = False

    def __post_init__(self) -> None:
        for address in self.announced_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"announced address {address!r} is not an IP address") from None
        if (self.udp_port_min, self.udp_port_max) != (0, 0) and not (
                1024 <= self.udp_port_min <= self.udp_port_max <= 65535):
            raise ValueError(
                f"UDP port range {self.udp_port_min}-{self.udp_port_max} is invalid: set "
                "1024 <= udp_port_min <= udp_port_max <= 65535, or both to 0 for any port")

    @property
    def port_range(self) -> range | None:
        if self.udp_port_min == 0:
            return None
        return range(self.udp_port_min, self.udp_port_max + 1)

    def rtc_configuration(self) -> RTCConfiguration:
        # An explicit (possibly empty) server list: aiortc's default is a public STUN server.
        return RTCConfiguration(iceServers=[s.for_aiortc() for s in self.ice_servers],
                                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)

    def client_ice_servers(self) -> list[dict[str, Any]]:
        return [s.for_client() for s in self.ice_servers]


class UdpPorts:
    """Hands out the ports of a range round-robin, so closed sessions' ports rest a while."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self._next = 0

    def order(self) -> Iterator[int]:
        """Every port of the range once, starting after the last one taken."""
        for i in range(len(self.ports)):
            yield self.ports[(self._next + i) % len(self.ports)]

    def taken(self, port: int) -> None:
        self._next = (self.ports.index(port) + 1) % len(self.ports)


class CandidateGatherer:
    """Applies IceSettings to peer connections: where host candidates bind, and what the SDP
    the server sends announces."""

    def __init__(self, settings: IceSettings) -> None:
        self.settings = settings
        ports = settings.port_range
        self._ports = UdpPorts(ports) if ports is not None else None
        self._prepared: weakref.WeakSet[Connection] = weakref.WeakSet()

    def prepare(self, pc: RTCPeerConnection) -> None:
        """Call before each setLocalDescription: it takes over host-candidate gathering of any
        transport that has not gathered yet."""
        if not self.settings.loopback and self._ports is None:
            return
        for connection in aiortc_private.ice_connections(pc):
            if connection not in self._prepared:
                self._prepared.add(connection)
                aiortc_private.wrap_component_gathering(connection, partial(self._bind_gathering, connection))

    def _bind_gathering(self, connection: Connection,
                        original: aiortc_private.ComponentGatherer) -> aiortc_private.ComponentGatherer:
        return partial(self._gather_component, connection, original)

    async def _gather_component(self, connection: Connection, original: aiortc_private.ComponentGatherer,
                                component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        if self.settings.loopback:
            addresses = [LOOPBACK]
        protocols = [p for p in [await self._bind(connection, component, a) for a in addresses] if p]
        aiortc_private.add_host_protocols(connection, protocols)
        candidates: list[Candidate] = [p.local_candidate for p in protocols]
        lookups = []
        if connection.stun_server is not None:
            lookups = [asyncio.ensure_future(server_reflexive_candidate(p, connection.stun_server))
                       for p in protocols if ipaddress.ip_address(p.local_candidate.host).version == 4]
        # The original, given no addresses, only allocates on the TURN server (if any).
        relayed = asyncio.ensure_future(original(component, [], timeout))
        if lookups:
            done, pending = await asyncio.wait(lookups, timeout=timeout)
            for task in pending:
                task.cancel()
            candidates += [t.result()[0] for t in done if t.exception() is None]
        return candidates + await relayed

    async def _bind(self, connection: Connection, component: int, address: str) -> StunProtocol | None:
        sock = self._reserve(address)
        if sock is None:
            return None
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: stamp_arrivals(sock, StunProtocol(connection)), sock=sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        host, bound_port = transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host), component=component,
            transport="udp", priority=candidate_priority(component, "host"), host=host,
            port=bound_port, type="host")
        return protocol

    def _reserve(self, address: str) -> socket.socket | None:
        """A UDP socket bound on ``address`` in the port range. Bound here, synchronously, so
        two gatherings running at once never race for the same port."""
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                address, 0, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
        except socket.gaierror as exc:
            log.warning("ICE: cannot bind UDP on %s: %s", address, exc)
            return None
        for port in self._ports.order() if self._ports is not None else [0]:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE and self._ports is not None:
                    continue
                log.warning("ICE: cannot bind UDP on %s: %s", address, exc)
                return None
            if self._ports is not None:
                self._ports.taken(port)
            return sock
        log.error("ICE: every UDP port in %d-%d is in use on %s: widen udp_port_min/udp_port_max",
                  self.settings.udp_port_min, self.settings.udp_port_max, address)
        return None

    def announce(self, sdp: str) -> str:
        """The SDP with host candidates' IPs replaced by the announced addresses (1:1 NAT)."""
        announced = [ipaddress.ip_address(a) for a in self.settings.announced_addresses]
        if not announced:
            return sdp
        description = aiortc_sdp.SessionDescription.parse(sdp)
        for media in description.media:
            candidates: list[RTCIceCandidate] = []
            for candidate in media.ice_candidates:
                version = ipaddress.ip_address(candidate.ip).version
                public = [a for a in announced if candidate.type == "host" and a.version == version]
                if not public:
                    candidates.append(candidate)
                for i, address in enumerate(public):
                    foundation = f"{candidate.foundation}{i}" if i else candidate.foundation
                    candidates.append(replace(candidate, ip=str(address), priority=candidate.priority - i,
                                              foundation=foundation))
            media.ice_candidates = candidates
            if candidates:
                media.host = candidates[0].ip
        return str(description)


class Datagram(bytes):
    """A datagram, with when the kernel received it: ``arrival_us``, µs since the NTP epoch
    (aiortc's clock)."""

    arrival_us: int | None = None


def stamp_arrivals(sock: socket.socket, protocol: StunProtocol) -> StunProtocol:
    """Hand ``protocol`` each datagram as a Datagram with the time the kernel received it.

    ``SIOCGSTAMPNS`` reads the time the kernel stamped on the socket's latest datagram (the first
    call turns stamping on), which is the one being handed over: both asyncio's and uvloop's
    datagram transports call ``datagram_received`` right after receiving each datagram. (Not
    ``SO_TIMESTAMPNS``: with it the kernel puts the stamp in a control message that neither
    transport reads, and no longer keeps it for the ioctl.)
    One system call per received packet (the SFU sends far more than it receives); the
    transports, and their sending in C under uvloop, stay as they are.

    Once the peer connection is up, ``protocol.srtp_received`` (set by
    ``aiortc_private.receive_srtp_directly``) takes each SRTP/SRTCP datagram (first byte
    128-191, RFC 7983), past aioice's STUN parsing and queue, with the function that reads its
    stamp (called for RTP only: RTCP's arrival is never read)."""
    protocol.srtp_received = None  # type: ignore[attr-defined]
    if not sys.platform.startswith("linux"):
        return protocol
    fd, received = sock.fileno(), protocol.datagram_received
    with contextlib.suppress(OSError):  # the first call turns stamping on (and has no stamp yet)
        fcntl.ioctl(fd, SIOCGSTAMPNS, NO_TIME)

    def stamp() -> int | None:
        try:
            seconds, nanoseconds = TIMESPEC.unpack(fcntl.ioctl(fd, SIOCGSTAMPNS, NO_TIME))
        except OSError:
            return None
        return (seconds + aiortc_private.NTP_OFFSET_S) * 1_000_000 + nanoseconds // 1000

    def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
        direct = protocol.srtp_received  # type: ignore[attr-defined]
        if direct is not None and data and 127 < data[0] < 192:
            direct(data, stamp)
            return
        arrival = stamp()
        if arrival is None:
            received(data, addr)
            return
        datagram = Datagram(data)
        datagram.arrival_us = arrival
        received(datagram, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign]
    return protocol


def is_mdns_candidate(candidate: str) -> bool:
    """Whether an SDP candidate ("candidate:..." or its value) names a ``.local`` mDNS host."""
    bits = candidate.split()
    return len(bits) > 4 and bits[4].lower().endswith(".local")


def drop_mdns_candidates(sdp: str) -> str:
    """Browsers hide host IPs behind ``<uuid>.local`` names; resolving them costs aioice about a
    second per name and fails on a server anyway, so they are dropped."""
    lines = [line for line in sdp.splitlines()
             if not (line.startswith("a=candidate:") and is_mdns_candidate(line))]
    return "\r\n".join(lines) + "\r\n"


def parse_candidate(value: str) -> RTCIceCandidate:
    """An RTCIceCandidate from a trickled ``candidate:...`` string; ValueError if malformed."""
    try:
        return aiortc_sdp.candidate_from_sdp(value.removeprefix("candidate:"))
    except (AssertionError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed ICE candidate {value!r}") from exc
