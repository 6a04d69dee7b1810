"""End-to-end encrypted meetings in real Chromium (and Firefox) against the real appliance
(docs/meetings.md, "End-to-end encryption").

Ada and Grace meet in an encrypted meeting: each sees and hears the other, and every frame they
show went through the decryption of e2ee-worker.js (its counters). What the SFU forwards of Ada's
camera, taken by a participant without a key (the project's own client, cli/client, decoding VP8
with libvpx through aiortc as a recorder would), no longer shows her picture, while the same
pipeline shows it in a meeting without encryption. Recording and captions are refused, and their
buttons say why. People joining and leaving (new keys: a ratchet, then a fresh key) do not stop the
media. A Firefox participant meets a Chromium one, and Chromium's older encoded-streams path works."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from playwright.sync_api import Browser, expect

from appliance_server import Appliance
from cli.client.participant import Participant
from cli.client.received import ReceivedTrack

from .fake_camera import _plane
from .firefox import Firefox, FirefoxMeetingPage
from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, media_flows, poll

pytestmark = pytest.mark.browser

CAMERA = (640, 360)  # conftest's fake camera (write_y4m's default size)
E2EE = "() => window.confmeet.e2ee"


class KeptPictures(ReceivedTrack):
    """A received track decoded as ReceivedTrack does, keeping the luma of the last pictures."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pictures: deque[np.ndarray] = deque(maxlen=20)

    async def consume(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self.frames += 1
                if isinstance(frame, VideoFrame):
                    self.sizes.add((frame.width, frame.height))
                    self.pictures.append(frame.to_ndarray(format="gray").astype(np.float64))
        except MediaStreamError:
            pass


class Tap(Participant):
    """A participant without a key: what the SFU forwards, decoded by libvpx (aiortc)."""

    def _on_track(self, track: Any) -> None:
        if self.pc is None:
            return
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        received = KeptPictures(track, transceiver, self.frame_arrived.set)
        self.received.append(received)
        self._task(self._receive(received, transceiver))


def likeness(picture: np.ndarray) -> float:
    """How much a decoded picture looks like the fake camera's (the correlation of its luma with
    write_y4m's picture at the same size: about 1 for the real thing, about 0 for noise)."""
    height, width = picture.shape
    expected = np.frombuffer(_plane(width, height, 1, width / 2, 0), np.uint8).reshape(height, width)
    a, b = picture.ravel() - picture.mean(), expected.ravel().astype(np.float64) - expected.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator else 0.0


def tap(appliance: Appliance, code: str, publisher: str) -> dict[str, Any]:
    """Linus's client joins the meeting for a few seconds and decodes ``publisher``'s camera."""
    async def run() -> dict[str, Any]:
        linus = PEOPLE["linus"]
        client = Tap(appliance.url, appliance.login(linus.email, linus.password)["access_token"], name="Tap")
        await client.connect()
        try:
            await client.join(code, check=True)
            await client.offer(check=True)

            def camera() -> KeptPictures | None:
                return next((r for r in client.video() if r.stream_id == publisher), None)

            await client.wait_until(lambda: camera() is not None, timeout=10)
            track = camera()
            assert track is not None
            packets_at_start = await track.packets_received()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 8
            while loop.time() < deadline and track.frames < 40 and track.decode_errors.count < 40:
                await asyncio.sleep(0.1)
            return {"packets": await track.packets_received() - packets_at_start, "frames": track.frames,
                    "decode_errors": track.decode_errors.count, "sizes": track.sizes,
                    "likeness": [round(likeness(p), 3) for p in track.pictures]}
        finally:
            await client.leave()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop owns this thread
        return pool.submit(asyncio.run, run()).result()


def counters(page: MeetingPage) -> dict[str, int]:
    return page.page.evaluate(E2EE)


def decrypting(me: MeetingPage, other: MeetingPage) -> None:
    """``me`` shows ``other`` (picture and sound), and the frames shown went through decryption."""
    before = counters(me)
    media_flows(me, other)
    tile = next(t for t in me.remote_tiles() if t["participant"] == other.participant_id)
    after = poll(lambda: (c := counters(me))["decrypted"] > before["decrypted"] + 50 and c,
                 f"{me.person.name} decrypts frames", timeout=5)
    # Every video frame decoded came out of the worker's decryption (audio frames besides).
    assert after["decrypted"] >= tile["frames"], (after, tile)
    assert counters(other)["encrypted"] > 0


@pytest.fixture
def pages(browser: Browser, appliance: Appliance) -> Iterator[dict[str, MeetingPage]]:
    pages = {who: MeetingPage(browser, appliance.url, PEOPLE[who]) for who in ("ada", "grace")}
    yield pages
    for page in pages.values():
        page.close()


def test_the_home_page_says_what_encryption_turns_off_before_it_is_chosen(browser: Browser, appliance: Appliance,
                                                                          host: httpx.Client) -> None:
    ada = PEOPLE["ada"]
    context = browser.new_context(viewport={"width": 1280, "height": 720}, base_url=appliance.url)
    page = context.new_page()
    try:
        page.goto("/")
        form = page.locator("#signin-form")
        form.get_by_label("E-mail").fill(ada.email)
        form.get_by_label("Password", exact=True).fill(ada.password)
        form.get_by_role("button", name="Sign in").click()
        option = page.get_by_role("checkbox", name="End-to-end encryption")
        expect(option).not_to_be_checked()
        expect(option).to_have_accessible_description(re.compile("Recording and live captions are then not available"))
        page.get_by_label("Title").fill("Quarterly numbers")
        option.check()
        page.screenshot(path=SCREENSHOTS / "e2ee-option.png")
        page.get_by_role("button", name="Create meeting").click()
        item = page.get_by_role("list", name="My meetings").get_by_role("listitem").filter(has_text="Quarterly numbers")
        expect(item).to_contain_text("End-to-end encrypted")
    finally:
        context.close()


def test_the_same_tap_shows_the_camera_of_a_meeting_without_encryption(
        appliance: Appliance, host: httpx.Client, pages: dict[str, MeetingPage]) -> None:
    """The baseline of the next test: what the SFU forwards decodes to Ada's picture."""
    meeting = host.post("/api/v1/meetings", json={"title": "Plain"}).json()
    assert meeting["e2ee"] is False
    ada = pages["ada"]
    ada.join(meeting["code"])
    assert ada.page.evaluate(E2EE) is None
    expect(ada.page.locator("#e2ee-badge")).to_have_count(0)
    seen = tap(appliance, meeting["code"], ada.participant_id)
    ada.button("Leave").click()
    assert seen["frames"] >= 40 and all(w * CAMERA[1] == h * CAMERA[0] for w, h in seen["sizes"]), seen
    assert min(seen["likeness"]) > 0.8, seen


def test_an_encrypted_meeting_is_seen_and_heard_by_its_participants_only(
        appliance: Appliance, host: httpx.Client, pages: dict[str, MeetingPage]) -> None:
    meeting = host.post("/api/v1/meetings", json={"title": "Board", "e2ee": True}).json()
    assert meeting["e2ee"] is True
    ada, grace = pages["ada"], pages["grace"]
    ada.join(meeting["code"])
    grace.join(meeting["code"])

    # Both see and hear each other, through the decryption.
    decrypting(ada, grace)
    decrypting(grace, ada)
    for me, other in ((ada, grace), (grace, ada)):  # the whole picture, once the sender's rate has ramped up
        poll(lambda: any(t["participant"] == other.participant_id and t["width"] == CAMERA[0]
                         for t in me.remote_tiles()), f"{me.person.name} shows {other.person.name} at 640x360", timeout=15)

    # The meeting says it is encrypted, and what that rules out.
    badge = ada.page.get_by_role("button", name="End-to-end encrypted")
    expect(badge).to_be_visible()
    badge.click()
    expect(ada.page.locator("#e2ee-info")).to_contain_text("recording and live captions are off")
    for button, why in (("#record", "Recording is not available"), ("#captions", "Live captions are not available")):
        expect(ada.page.locator(button)).to_be_disabled()
        expect(ada.page.locator(button)).to_have_attribute("title", f"{why}: this meeting is end-to-end encrypted"
                                                           + (", and the server cannot see or hear it"
                                                              if button == "#record" else ", and the server cannot hear it"))
    ada.close_panels()
    ada.screenshot("e2ee.png")
    for request in ("recording_start", "set_captions"):
        refused = ada.page.evaluate("""async (type) => {
          try { await window.confmeet.signaling.request(type, type === "set_captions" ? {enabled: true} : {}); return null; }
          catch (error) { return error.code; }
        }""", request)
        assert refused == "e2ee", request

    # Ada came first: her key moved one step on (a ratchet) when Grace joined.
    generation, index = divmod(counters(ada)["key_id"], 256)
    assert index == 1

    # What the SFU forwards of Ada's camera: packets aplenty, and no picture of her in them.
    seen = tap(appliance, meeting["code"], ada.participant_id)
    assert seen["packets"] > 100, seen
    assert seen["decode_errors"] > 0, seen  # libvpx refuses the frames,
    assert all(value < 0.5 for value in seen["likeness"]), seen  # and what it shows, if anything, is not her

    # Linus's client came (every sender's key moved on) and went (every sender drew a fresh one):
    # Ada and Grace go on seeing and hearing each other.
    poll(lambda: counters(ada)["key_id"] // 256 != generation, "Ada sends with a fresh key", timeout=5)
    decrypting(ada, grace)
    decrypting(grace, ada)
    assert not ada.errors and not grace.errors


def test_firefox_and_chromium_meet_encrypted(browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    """Firefox encrypts through its own RTCRtpScriptTransform; each side decrypts the other."""
    meeting = host.post("/api/v1/meetings", json={"title": "Across browsers", "e2ee": True}).json()
    firefox = Firefox()
    ada = FirefoxMeetingPage(firefox, appliance.url, PEOPLE["ada"])
    grace = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    try:
        ada.join(meeting["code"])
        grace.join(meeting["code"])
        for me, other in ((ada, grace), (grace, ada)):
            media_flows(me, other)
            poll(lambda m=me: (m.page.evaluate(E2EE) or {}).get("decrypted", 0) > 50,
                 f"{me.person.name} decrypts frames", timeout=5)
        assert ada.page.errors() == [] and not grace.errors
    finally:
        grace.close()
        ada.close()
        firefox.close()


def test_the_encoded_streams_of_an_older_chromium_work_too(browser: Browser, appliance: Appliance,
                                                         host: httpx.Client) -> None:
    """Without RTCRtpScriptTransform (Chromium before 141) the page hands createEncodedStreams()'s
    streams to the worker instead."""
    meeting = host.post("/api/v1/meetings", json={"title": "Older browsers", "e2ee": True}).json()
    pages = [MeetingPage(browser, appliance.url, PEOPLE[who]) for who in ("ada", "grace")]
    try:
        for page in pages:
            page.context.add_init_script("delete window.RTCRtpScriptTransform")
            page.join(meeting["code"])
        ada, grace = pages
        assert ada.page.evaluate("() => window.confmeet.pc.getConfiguration().encodedInsertableStreams") is True
        decrypting(ada, grace)
        decrypting(grace, ada)
        assert not ada.errors and not grace.errors
    finally:
        for page in pages:
            page.close()
