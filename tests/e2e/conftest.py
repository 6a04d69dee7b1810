"""The appliance (media on loopback) with three accounts, and one Debian Chromium with a fake
camera (a synthetic picture) and microphone (Chromium's beep), shared by the browser tests."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from appliance_server import Appliance, start_appliance
from conftest import stop

from .fake_camera import write_y4m
from .meeting_page import PEOPLE

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


# A deadline for what a person waits for (a page to load, a join on a busy machine), not a timing
# under test: those are asserted with their own numbers.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """One Playwright for the package: a second one beside it cannot start (each runs an event
    loop in this thread)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    with sync_playwright() as playwright:
        yield playwright


def chromium_with_camera(playwright: Playwright, **size: int) -> Iterator[Browser]:
    """A Chromium whose fake camera plays write_y4m's picture (``width``/``height``: its size)."""
    # The file's path is the camera's name in the device list: keep it short.
    camera = write_y4m(Path(tempfile.mkdtemp(prefix="cam-")) / "camera.y4m", **size)
    try:
        with chromium_behind(playwright, [], camera.parent, camera) as browser:
            yield browser
    finally:
        shutil.rmtree(camera.parent)


@contextmanager
def chromium_behind(playwright: Playwright, prefix: list[str], scratch: Path, camera: Path,
                    origin: str | None = None) -> Iterator[Browser]:
    """A Chromium run behind ``prefix`` (``nice``, a network namespace's command, ...; none: as
    it is), its fake camera playing ``camera`` (a y4m file); ``origin``: a plain-http origin on
    an address other than loopback, where getUserMedia would otherwise be refused."""
    executable = Path(CHROMIUM)
    if prefix:
        executable = Path(tempfile.mkdtemp(prefix="chromium-", dir=scratch)) / "chromium"
        executable.write_text("#!/bin/sh\nexec " + " ".join(prefix) + f' {CHROMIUM} "$@"\n')
        executable.chmod(0o755)
    browser = playwright.chromium.launch(executable_path=str(executable), args=[
        *CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}",
        *([f"--unsafely-treat-insecure-origin-as-secure={origin}"] if origin else [])])
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    yield from chromium_with_camera(playwright)


@pytest.fixture(scope="package")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("e2e"), media_loopback="true")
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


@pytest.fixture(scope="package")
def host(appliance: Appliance) -> httpx.Client:
    """Ada's REST client: she sets the appliance up as its first administrator, makes the others'
    accounts and hosts the meeting."""
    person = PEOPLE["ada"]
    setup_token = re.search(r"#setup=(\S+)", (appliance.data_dir / "setup-link").read_text()).group(1)
    r = httpx.post(f"{appliance.url}/api/v1/setup", json={"token": setup_token, "email": person.email,
                                                          "password": person.password, "name": person.name})
    assert r.status_code in (200, 201), r.text
    tokens = httpx.post(f"{appliance.url}/api/v1/auth/login",
                        json={"email": person.email, "password": person.password}).json()
    client = httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    for other in (PEOPLE["grace"], PEOPLE["linus"]):
        r = client.post("/api/v1/users", json={"email": other.email, "password": other.password, "name": other.name})
        assert r.status_code == 201, r.text
    return client

