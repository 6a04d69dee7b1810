from __future__ import annotations

import pytest
from aiortc import RTCBundlePolicy
from aiortc import sdp as aiortc_sdp

from appliance.sfu import IceServer, IceSettings
from appliance.sfu.ice import (
    CandidateGatherer,
    UdpPorts,
    drop_mdns_candidates,
    is_mdns_candidate,
    parse_candidate,
)

from .chrome_sdp import CHROME_OFFER

ANSWER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=audio 50000 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 10.0.0.5",
    "a=mid:0", "a=recvonly", "a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
    "a=candidate:a1 1 udp 2130706431 10.0.0.5 50000 typ host",
    "a=candidate:b1 1 udp 2130706431 fd00::5 50002 typ host",
    "a=candidate:c1 1 udp 1694498815 198.51.100.1 61000 typ srflx raddr 10.0.0.5 rport 50000",
    "a=end-of-candidates", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["CD"] * 32), "a=setup:active",
]) + "\r\n"


def test_defaults_use_no_ice_server_at_all() -> None:
    settings = IceSettings()
    configuration = settings.rtc_configuration()
    assert configuration.iceServers == []  # not None: aiortc would use a public STUN server
    assert configuration.bundlePolicy == RTCBundlePolicy.MAX_BUNDLE
    assert settings.client_ice_servers() == []
    assert settings.port_range is None


def test_configured_servers_reach_both_clients_and_aiortc() -> None:
    turn = IceServer(urls=("turn:turn.example.org:3478?transport=udp",), username="u", credential="p")
    settings = IceSettings(ice_servers=(IceServer(urls=("stun:stun.example.org",)), turn))
    assert settings.client_ice_servers() == [
        {"urls": ["stun:stun.example.org"]},
        {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": "u", "credential": "p"}]
    servers = settings.rtc_configuration().iceServers or []
    assert [s.urls for s in servers] == [list(s.urls) for s in settings.ice_servers]
    assert servers[1].username == "u" and servers[1].credential == "p"


@pytest.mark.parametrize("kwargs", [
    {"udp_port_min": 50000}, {"udp_port_min": 50010, "udp_port_max": 50000},
    {"udp_port_min": 80, "udp_port_max": 90}, {"announced_addresses": ("my.host.example",)}])
def test_wrong_settings_are_refused_with_the_fix(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        IceSettings(**kwargs)


def test_ports_are_handed_out_round_robin() -> None:
    ports = UdpPorts(range(40000, 40004))
    assert list(ports.order()) == [40000, 40001, 40002, 40003]
    ports.taken(40001)
    assert list(ports.order()) == [40002, 40003, 40000, 40001]
    ports.taken(40003)
    assert next(ports.order()) == 40000


def test_announced_addresses_replace_host_candidates_of_their_family() -> None:
    gatherer = CandidateGatherer(IceSettings(announced_addresses=("203.0.113.7",)))
    media = aiortc_sdp.SessionDescription.parse(gatherer.announce(ANSWER)).media[0]
    assert [(c.type, c.ip, c.port) for c in media.ice_candidates] == [
        ("host", "203.0.113.7", 50000), ("host", "fd00::5", 50002), ("srflx", "198.51.100.1", 61000)]
    assert media.host == "203.0.113.7"
    assert CandidateGatherer(IceSettings()).announce(ANSWER) == ANSWER


def test_two_announced_addresses_give_two_candidates() -> None:
    gatherer = CandidateGatherer(IceSettings(announced_addresses=("203.0.113.7", "2001:db8::7")))
    media = aiortc_sdp.SessionDescription.parse(gatherer.announce(ANSWER)).media[0]
    assert [(c.ip, c.port) for c in media.ice_candidates if c.type == "host"] == [
        ("203.0.113.7", 50000), ("2001:db8::7", 50002)]


def test_mdns_candidates_are_dropped() -> None:
    cleaned = drop_mdns_candidates(CHROME_OFFER)
    assert ".local" in CHROME_OFFER and ".local" not in cleaned
    assert cleaned.count("a=candidate:") == CHROME_OFFER.count("a=candidate:") - 1
    assert is_mdns_candidate("candidate:2 1 udp 1 abc.local 5000 typ host")
    assert not is_mdns_candidate("candidate:2 1 udp 1 10.0.0.1 5000 typ host")


def test_trickled_candidates_are_parsed_or_refused() -> None:
    candidate = parse_candidate("candidate:842163049 1 udp 1677729535 198.51.100.9 61234 typ srflx "
                                "raddr 10.0.0.9 rport 61234 generation 0 ufrag abcd")
    assert (candidate.ip, candidate.port, candidate.type, candidate.relatedPort) == (
        "198.51.100.9", 61234, "srflx", 61234)
    with pytest.raises(ValueError):
        parse_candidate("candidate:1 1 udp")
    with pytest.raises(ValueError):
        parse_candidate("candidate:1 one udp 5 1.2.3.4 5 typ host")


def test_busy_ports_are_skipped_and_never_handed_out_twice() -> None:
    """Ports are bound synchronously, so busy ones are skipped whatever the event loop (uvloop
    reports a busy port without errno) and concurrent gatherings never pick the same one."""
    import random
    import socket

    from appliance.sfu.ice import CandidateGatherer

    base = random.randrange(25000, 30000, 8)
    gatherer = CandidateGatherer(IceSettings(udp_port_min=base, udp_port_max=base + 3, loopback=True))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", base + 1))
        reserved = [gatherer._reserve("127.0.0.1") for _ in range(3)]
        try:
            assert all(s is not None for s in reserved)
            assert sorted(s.getsockname()[1] for s in reserved) == [base, base + 2, base + 3]
            assert gatherer._reserve("127.0.0.1") is None  # the whole range is taken
        finally:
            for s in reserved:
                if s is not None:
                    s.close()


@pytest.mark.parametrize("event_loop_kind", ["asyncio", "uvloop"])
def test_datagrams_carry_the_kernels_arrival_time_however_late_the_loop_reads_them(event_loop_kind: str) -> None:
    """Three datagrams 50 ms apart arrive while the event loop is busy for 300 ms: read late, and
    together, each still carries the time it arrived (what transport-cc feedback reports). Both
    event loops the SFU runs on."""
    import asyncio
    import socket
    import time

    from aioice.ice import StunProtocol

    from appliance.sfu.aiortc_private import NTP_OFFSET_S
    from appliance.sfu.ice import stamp_arrivals

    received: list[tuple[bytes, int | None, float]] = []

    class Recorder(StunProtocol):
        def __init__(self) -> None:  # no ICE connection behind it
            self.receiver = None

        def datagram_received(self, data: bytes | str, addr: tuple) -> None:
            received.append((bytes(data), getattr(data, "arrival_us", None), time.time()))

        def connection_lost(self, exc: Exception | None) -> None:
            pass

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: stamp_arrivals(sock, Recorder()), sock=sock)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sent = []
                for n in range(3):
                    sent.append(time.time())
                    sender.sendto(b"%d" % n, sock.getsockname())
                    time.sleep(0.05)  # the loop is blocked all along
                time.sleep(0.2)
                while len(received) < 3:
                    await asyncio.sleep(0.01)
        finally:
            transport.close()
        for (data, arrival_us, handled), at in zip(received, sent):
            assert arrival_us is not None, data
            arrived = arrival_us / 1e6 - NTP_OFFSET_S
            assert at <= arrived < at + 0.01 and handled - arrived > 0.1, (data, at, arrived, handled)

    if event_loop_kind == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
