"""Two Chromium pages in a meeting whose media can only go through TURN: each page's
RTCPeerConnection uses ``iceTransportPolicy: "relay"``, so it gathers relay candidates alone and
its video and audio reach the SFU through a real coturn, configured as the installer configures
it (systemd/turnserver.conf.in: the appliance's own address allowed as a peer, every
special-purpose address denied). The same coturn refuses to relay to 127.0.0.1:22 and to
169.254.169.254 (the protocol-level check of tests/test_turn.py, reused).

Everything runs in a network namespace this test creates (loopback and one veth address, the
"server's" address): the appliance (its SFU gathers on that address, as in production, not on
loopback), coturn, and Chromium (started through ``ip netns exec``).

Relay is forced by the test, not by the product: an init script wraps RTCPeerConnection so that
every configuration the page passes (the constructor's and ``setConfiguration`` with the ICE
servers from ``joined``) carries ``iceTransportPolicy: "relay"``. The page's own code runs
unchanged; users keep every candidate type (direct media when it works, TURN when it does not).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright

from appliance.machine import units
from appliance_server import CONFMEET, appliance_env
from conftest import free_port, stop
from netns import Namespace
from test_turn import SECRET, bind

from .conftest import CHROMIUM, CHROMIUM_ARGS
from .fake_camera import write_y4m
from .meeting_page import PEOPLE, MeetingPage, media_flows, poll

pytestmark = pytest.mark.browser

ADDRESS = "10.213.2.2"  # the server's address inside the test's namespace

RELAY_ONLY = """(() => {
  const Native = window.RTCPeerConnection;
  const relay = (config) => ({ ...(config ?? {}), iceTransportPolicy: "relay" });
  class RelayOnly extends Native {
    constructor(config, ...rest) { super(relay(config), ...rest); }
    setConfiguration(config) { return super.setConfiguration(relay(config)); }
    static generateCertificate(...args) { return Native.generateCertificate(...args); }
  }
  window.RTCPeerConnection = RelayOnly;
})();"""

# The candidate pair each page's transport selected, the candidates it gathered, and its bytes.
SELECTED_PAIR = """async () => {
  const stats = new Map();
  (await window.confmeet.pc.getStats()).forEach((s) => stats.set(s.id, s));
  const transport = [...stats.values()].find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport && stats.get(transport.selectedCandidatePairId);
  const local = pair && stats.get(pair.localCandidateId), remote = pair && stats.get(pair.remoteCandidateId);
  return {local: local?.candidateType, relay_protocol: local?.relayProtocol, remote: remote?.candidateType,
          remote_address: remote?.address, sent: pair?.bytesSent ?? 0, received: pair?.bytesReceived ?? 0,
          gathered: [...stats.values()].filter((s) => s.type === "local-candidate").map((s) => s.candidateType)};
}"""


@dataclass
class Site:
    network: Namespace
    url: str
    turn_port: int
    browser: Browser
    meeting: dict


def _ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"the appliance is not ready:\n{log.read_text()}")


def _listening(address: str, port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"turnserver exited with {proc.returncode}"
        try:
            with socket.create_connection((address, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"coturn does not listen on {address}:{port}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, playwright: Playwright) -> Iterator[Site]:
    if shutil.which("turnserver") is None:
        pytest.fail("coturn is missing: apt-get install coturn (make system-packages)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    work = tmp_path_factory.mktemp("relay")
    network = Namespace("cm-relay", f"{ADDRESS}/24")
    processes: list[subprocess.Popen] = []
    try:
        turn_port, http_port = free_port(), free_port()
        conf = work / "turnserver.conf"
        units.write_turnserver_conf(conf, units.render_turnserver_conf(
            SECRET, "confmeet.test", port=turn_port, relay_min=62000, relay_max=62999, listening_ips=[ADDRESS],
            allowed_peer_ips=[ADDRESS], syslog=False), group="root")
        with (work / "turnserver.log").open("w") as log:
            processes.append(subprocess.Popen(network.command(
                ["turnserver", "-c", str(conf), f"--pidfile={work}/turnserver.pid", f"--userdb={work}/turndb",
                 "--log-file=stdout", "--simple-log"]), stdout=log, stderr=subprocess.STDOUT))
        (work / "data").mkdir()
        env = appliance_env(work / "data", http_port, ice_servers=f"turn:{ADDRESS}:{turn_port}", turn_secret=SECRET)
        log_path = work / "serve.log"
        with log_path.open("w") as log:
            processes.append(subprocess.Popen(network.command([*CONFMEET, "serve"]), env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{http_port}"
        network.run(lambda: _ready(url, processes[-1], log_path))
        network.run(lambda: _listening(ADDRESS, turn_port, processes[0]))
        for i, person in enumerate((PEOPLE["ada"], PEOPLE["grace"])):
            done = subprocess.run([*CONFMEET, "user", "add", person.email, "--name", person.name, "--password-stdin",
                                   *(["--admin"] if i == 0 else [])], input=person.password + "\n", env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr

        def make_meeting() -> dict:
            ada = PEOPLE["ada"]
            token = httpx.post(f"{url}/api/v1/auth/login", json={"email": ada.email, "password": ada.password}
                               ).json()["access_token"]
            r = httpx.post(f"{url}/api/v1/meetings", json={"title": "Through TURN"},
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 201, r.text
            return r.json()

        meeting = network.run(make_meeting)
        wrapper = work / "chromium"  # Chromium in the namespace (field notes: Chromium inside a namespace)
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {network.name} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        camera = write_y4m(Path(tempfile.mkdtemp(prefix="cam-")) / "camera.y4m")
        try:
            browser = playwright.chromium.launch(executable_path=str(wrapper), args=[
                *CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"])
            yield Site(network, url, turn_port, browser, meeting)
            browser.close()
        finally:
            shutil.rmtree(camera.parent)
    finally:
        for proc in reversed(processes):
            stop(proc)
        network.delete()
        serve_log = work / "serve.log"
        assert not serve_log.exists() or "Traceback" not in serve_log.read_text(), serve_log.read_text()


def selected_pair(page: MeetingPage) -> dict:
    return page.page.evaluate(SELECTED_PAIR)


def test_media_flows_both_ways_through_coturn_with_relay_forced(site: Site) -> None:
    pages = {}
    try:
        for name in ("ada", "grace"):
            page = pages[name] = MeetingPage(site.browser, site.url, PEOPLE[name])
            page.context.add_init_script(RELAY_ONLY)
            page.join(site.meeting["code"])
        ada, grace = pages["ada"], pages["grace"]
        assert ada.page.evaluate("new RTCPeerConnection().getConfiguration().iceTransportPolicy") == "relay"
        media_flows(ada, grace)
        media_flows(grace, ada)
        for page in (ada, grace):
            pair = poll(lambda: (p := selected_pair(page)) and p["local"] and p, "a selected candidate pair",
                        timeout=10)
            assert pair["local"] == "relay" and pair["relay_protocol"] == "udp", pair  # through coturn
            assert set(pair["gathered"]) == {"relay"}, pair  # host candidates: none at all
            assert (pair["remote"], pair["remote_address"]) == ("host", ADDRESS), pair  # the SFU's own address
            poll(lambda: (p := selected_pair(page))["sent"] > pair["sent"] and p["received"] > pair["received"],
                 "bytes keep flowing both ways on that pair", timeout=5)
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        for page in pages.values():
            page.close()


def test_the_same_coturn_refuses_loopback_and_metadata_peers(site: Site) -> None:
    peers = [(ADDRESS, 20000), ("127.0.0.1", 22), ("169.254.169.254", 80)]
    answers = site.network.run(lambda: asyncio.run(bind((ADDRESS, site.turn_port), peers)))
    assert answers == {(ADDRESS, 20000): 0, ("127.0.0.1", 22): 403, ("169.254.169.254", 80): 403}, answers
