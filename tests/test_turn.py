"""coturn as confmeet configures it (systemd/turnserver.conf.in), run for real: it relays to the
appliance's own media addresses, refuses every special-purpose address (the host's own services
on loopback, a cloud metadata endpoint, private and reserved ranges), and offers TURN over TLS
with the appliance's certificate. Only TURN requests travel (Allocate, ChannelBind over
loopback): a ChannelBind installs a permission and sends nothing to the peer."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from appliance.machine import tls, units
from appliance.turn import turn_credentials
from conftest import free_port, stop, wait_port

SECRET = "turn-test-secret"
# Where the SFU listens in this test: an address of this host's kind that the special-range list
# denies (private), so that only allowed-peer-ip lets coturn relay to it. Nothing is sent there.
SFU_ADDRESS = "10.213.0.2"
REFUSED = [("127.0.0.1", 22), ("169.254.169.254", 80), ("10.213.0.3", 20000), ("192.168.1.1", 80),
           ("100.64.0.1", 80), ("240.0.0.1", 80), ("0.0.0.1", 80), ("198.51.100.7", 80)]


class Quiet:
    def connection_made(self, transport: object) -> None:
        pass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if shutil.which("turnserver") is None:
        pytest.fail("coturn is missing: apt-get install coturn (make system-packages)")
    root = tmp_path_factory.mktemp("coturn")
    files = tls.ensure_certificates(root / "tls", ["127.0.0.1", "localhost"])
    port, tls_port = free_port(), free_port()
    conf = root / "turnserver.conf"
    units.write_turnserver_conf(conf, units.render_turnserver_conf(
        SECRET, "confmeet.test", port=port, tls_port=tls_port, cert=str(files.cert), pkey=str(files.key),
        relay_min=62000, relay_max=62999, listening_ips=["127.0.0.1"], allowed_peer_ips=[SFU_ADDRESS],
        syslog=False), group="root")
    with (root / "turnserver.log").open("w") as log:
        proc = subprocess.Popen(["turnserver", "-c", str(conf), f"--pidfile={root}/turnserver.pid",
                                 f"--userdb={root}/turndb", "--log-file=stdout", "--simple-log"],
                                stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc)
    wait_port(tls_port, proc)
    yield {"port": port, "tls_port": tls_port, "conf": conf, "ca": root / "tls/ca.pem", "log": root / "turnserver.log"}
    stop(proc)


async def bind(server: tuple[str, int], peers: list[tuple[str, int]], context: ssl.SSLContext | None = None
               ) -> dict[tuple[str, int], int]:
    """One allocation (UDP, or TLS with ``context``), then a ChannelBind to each peer: 0 when
    coturn grants it, else its error code."""
    username, password = turn_credentials(SECRET, "turn-test", 1)
    transport, _ = await create_turn_endpoint(Quiet, server, username, password, lifetime=60, ssl=context,
                                              transport="tcp" if context else "udp")
    inner = transport._TurnTransport__inner_protocol  # aioice's TURN client: its ChannelBind
    answers = {}
    try:
        for number, peer in enumerate(peers):
            try:
                await inner.channel_bind(0x4000 + number, peer)
                answers[peer] = 0
            except stun.TransactionFailed as exc:
                answers[peer] = exc.response.error_code
    finally:
        transport.close()
    return answers


def test_relays_to_the_appliance_and_refuses_special_addresses(coturn: dict) -> None:
    answers = asyncio.run(bind(("127.0.0.1", coturn["port"]), [(SFU_ADDRESS, 20000), *REFUSED]))
    assert answers.pop((SFU_ADDRESS, 20000)) == 0, answers  # allowed-peer-ip: the SFU's own address
    assert answers == {peer: 403 for peer in REFUSED}  # 403 Forbidden: every special-purpose address


def test_turn_over_tls_with_the_appliances_certificate(coturn: dict) -> None:
    context = ssl.create_default_context(cafile=str(coturn["ca"]))  # verifies the certificate and its name
    answers = asyncio.run(bind(("127.0.0.1", coturn["tls_port"]), [(SFU_ADDRESS, 20000), ("127.0.0.1", 22)],
                               context))
    assert answers == {(SFU_ADDRESS, 20000): 0, ("127.0.0.1", 22): 403}


def test_the_settings_are_readable_by_coturn_only(coturn: dict) -> None:
    mode = coturn["conf"].stat().st_mode
    assert stat.S_IMODE(mode) == 0o640
    text = coturn["conf"].read_text()
    for rule in ("denied-peer-ip=::ffff:0.0.0.0-::ffff:255.255.255.255", "denied-peer-ip=64:ff9b::-64:ff9b::ffff:ffff",
                 "denied-peer-ip=::", "denied-peer-ip=240.0.0.0-255.255.255.255",
                 f"allowed-peer-ip={SFU_ADDRESS}", "static-auth-secret=" + SECRET):
        assert rule in text.splitlines(), rule


def test_external_ip_from_the_public_address() -> None:
    text = units.render_turnserver_conf(SECRET, "meet.example.org", external_ips=["203.0.113.10/10.0.0.5"],
                                        allowed_peer_ips=["10.0.0.5"], cert="/c.pem", pkey="/k.pem")
    lines = text.splitlines()
    assert "external-ip=203.0.113.10/10.0.0.5" in lines and "allowed-peer-ip=10.0.0.5" in lines
    assert "tls-listening-port=5349" in lines and "cert=/c.pem" in lines and "no-tls" not in lines
    assert "no-tls" in units.render_turnserver_conf(SECRET, "meet.example.org").splitlines()
