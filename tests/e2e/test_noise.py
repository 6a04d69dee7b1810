"""Noise suppression in Chromium (noise.js, issue 19): Ada's microphone is espeak-ng speech with
steady white noise under it (pauses between the sentences); she records the meeting with noise
suppression on (the default), turns it off in the meeting (the sender's track is swapped, nothing
renegotiated) and records again. The server's own recording of her microphone is decoded: with it
on, the noise in the pauses is at least 10 dB lower and the speech keeps its level. In both arms
Chromium's own audio processing is the same (meeting.js asks for echoCancellation,
noiseSuppression and autoGainControl): the only difference is RNNoise. In Firefox, whose fake
microphone is a tone, the same noisy speech is played into getUserMedia's track through Web Audio
(firefox.py), so Firefox's own processing does not touch it; there the track the page sends is
measured in the page, on and off. And where it cannot run (no AudioWorklet; the WebAssembly file
missing): the settings say so, and the microphone is sent as it is."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Playwright, expect

from appliance_server import Appliance
from recording.media import audio_samples

from .conftest import CHROMIUM, CHROMIUM_ARGS
from .firefox import Firefox, FirefoxMeetingPage
from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, poll
from .noisy_speech import levels, noisy_speech

pytestmark = pytest.mark.browser

RECORD_S = 9.0
MIN_GAIN_DB = 10.0    # how much lower the noise must be with suppression on

# The microphone's track as the page sends it (the audio sender's), and the SDP negotiated.
SENDER = """() => {
  const sender = window.confmeet.pc.getSenders().find((s) => s.track?.kind === "audio");
  return { label: sender?.track.label ?? null, id: sender?.track.id ?? null,
           sdp: window.confmeet.pc.localDescription?.sdp ?? "" };
}"""
# The level of the audio the page sends, in dBFS, every 40 ms for 8 s (a pause comes every 6.5 s):
# its 10th and 95th percentile.
SENT_LEVELS = """async () => {
  const track = window.confmeet.pc.getSenders().find((s) => s.track?.kind === "audio").track;
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const db = [];
  for (let i = 0; i < 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 40));
    analyser.getFloatTimeDomainData(samples);
    db.push(10 * Math.log10(samples.reduce((sum, x) => sum + x * x, 0) / samples.length + 1e-12));
  }
  const state = context.state;
  context.close();
  db.sort((a, b) => a - b);
  return { state, floor: db[20], speech: db[190] };
}"""


@pytest.fixture(scope="module")
def noisy_browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A Chromium whose fake microphone plays the noisy speech, in a loop."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    wav = noisy_speech(tmp_path_factory.mktemp("noisy") / "noisy.wav")
    browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                         args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
    yield browser
    browser.close()


def record(page: MeetingPage, api: httpx.Client, meeting: dict, path: Path) -> np.ndarray:
    """Record RECORD_S seconds of the meeting (the host's Record button) and return the server's
    recording of the host's microphone, decoded (mono, 48 kHz)."""
    before = len(api.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"])
    page.page.get_by_role("button", name="Record", exact=True).click()
    stop = page.page.get_by_role("button", name="Stop recording")
    expect(stop).to_be_visible()
    page.page.wait_for_timeout(RECORD_S * 1000)
    stop.click()
    expect(page.page.get_by_role("button", name="Record", exact=True)).to_be_visible()
    recordings = poll(lambda: (r := api.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"])
                      and len(r) > before and r, "the recording is listed", timeout=10)
    newest = max(recordings, key=lambda r: r["started_at"])
    done = poll(lambda: (r := api.get(f"/api/v1/recordings/{newest['id']}").json())["status"] == "ready" and r,
                "the recording is stored", timeout=30)
    [track] = [t for t in done["tracks"] if t["kind"] == "audio"]
    link = api.get(f"/api/v1/recordings/{done['id']}/files/{track['file']}").json()["url"]
    response = httpx.get(link, timeout=30)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    samples, _ = audio_samples(path)
    assert len(samples) > 48000 * (RECORD_S - 2), f"{path.name}: {len(samples) / 48000:.1f} s"
    return samples


def test_noise_suppression_lowers_the_noise_the_server_receives(
        appliance: Appliance, host: httpx.Client, noisy_browser: Browser, tmp_path: Path) -> None:
    meeting = host.post("/api/v1/meetings", json={"title": "Noisy room"}).json()
    ada = MeetingPage(noisy_browser, appliance.url, PEOPLE["ada"])
    try:
        ada.open(meeting["code"])
        ada.page.locator("#pre-cam").click()  # the microphone is what this is about
        setting = ada.page.get_by_role("checkbox", name="Noise suppression")
        expect(setting).to_be_checked()  # on by default
        expect(setting).to_be_enabled()
        # The microphone chosen again (a new track from getUserMedia): the worklet takes the new one.
        ada.page.locator("#microphone").dispatch_event("change")
        ada.type_name()
        ada.page.locator("#join-form").screenshot(path=SCREENSHOTS / "noise.png")
        ada.click_join()
        expect(ada.page.get_by_role("button", name="Leave")).to_be_visible()
        switch = ada.page.get_by_role("button", name="Noise suppression")
        expect(switch).to_have_attribute("aria-pressed", "true")
        expect(switch).to_have_attribute("title", "Noise suppression is on: the others hear your voice without the "
                                                  "background noise")
        box = switch.bounding_box()  # the button, pressed, between the connection bars and Low bandwidth
        ada.page.screenshot(path=SCREENSHOTS / "noise-switch.png", clip={
            "x": box["x"] - 60, "y": box["y"] - 14, "width": box["width"] + 130, "height": box["height"] + 28})
        # The click on Join let the page's AudioContext start: the worklet's output is sent.
        expect(switch).to_have_attribute("data-state", "running")
        suppressed = poll(lambda: (s := ada.page.evaluate(SENDER))["label"] and "Fake" not in s["label"] and s,
                          "the page sends the suppressed track", timeout=10)
        on = record(ada, host, meeting, tmp_path / "on.ogg")

        switch.click()
        expect(switch).to_have_attribute("aria-pressed", "false")
        raw = poll(lambda: (s := ada.page.evaluate(SENDER))["id"] != suppressed["id"] and s,
                   "the page sends the microphone as it is", timeout=5)
        assert raw["sdp"] == suppressed["sdp"]  # swapped on the sender: nothing renegotiated
        off = record(ada, host, meeting, tmp_path / "off.ogg")
        assert not ada.errors, ada.errors
        # Kept for the next meeting.
        assert ada.page.evaluate("localStorage.getItem('confmeet.noiseSuppression')") == "off"
    finally:
        ada.close()

    (floor_on, speech_on), (floor_off, speech_off) = levels(on), levels(off)
    print(f"noise floor on {floor_on:.1f} dBFS, off {floor_off:.1f}; speech on {speech_on:.1f}, off {speech_off:.1f}")
    assert floor_off - floor_on >= MIN_GAIN_DB, (floor_on, floor_off)
    assert speech_on >= speech_off - 6, (speech_on, speech_off)  # the voice itself is kept
    assert speech_on - floor_on >= speech_off - floor_off + MIN_GAIN_DB


@pytest.mark.parametrize("broken", ["no AudioWorklet", "no wasm"])
def test_where_it_cannot_run_the_settings_say_so_and_the_microphone_is_sent(
        appliance: Appliance, host: httpx.Client, noisy_browser: Browser, broken: str) -> None:
    """An old browser (no AudioWorkletNode), or RNNoise's WebAssembly not to be had (404)."""
    meeting = host.post("/api/v1/meetings", json={"title": "Old browser"}).json()
    ada = MeetingPage(noisy_browser, appliance.url, PEOPLE["ada"])
    if broken == "no AudioWorklet":
        ada.page.add_init_script("delete window.AudioWorkletNode;")
        hint = "Noise suppression is not available in this browser: your microphone is sent as it is."
    else:
        ada.page.route("**/*.wasm", lambda route: route.fulfill(status=404, body="not found"))
        hint = re.compile(r"^Noise suppression could not start \(.+\): your microphone is sent as it is\.$")
    try:
        ada.open(meeting["code"])
        setting = ada.page.get_by_role("checkbox", name="Noise suppression")
        expect(setting).to_be_disabled()
        expect(setting).not_to_be_checked()
        expect(ada.page.locator("#noise-hint")).to_have_text(hint)
        ada.type_name()
        ada.click_join()
        expect(ada.page.get_by_role("button", name="Leave")).to_be_visible()
        expect(ada.page.get_by_role("button", name="Noise suppression")).to_be_disabled()
        sent = poll(lambda: ada.page.evaluate(SENDER)["label"], "the page sends its microphone", timeout=10)
        assert "Fake" in sent, sent
        assert not ada.errors, ada.errors
    finally:
        ada.close()


def test_noise_suppression_in_firefox(appliance: Appliance, host: httpx.Client, tmp_path: Path) -> None:
    meeting = host.post("/api/v1/meetings", json={"title": "Noisy room, Firefox"}).json()
    firefox = Firefox()
    try:
        grace = FirefoxMeetingPage(firefox, appliance.url, PEOPLE["grace"])
        grace.speak(noisy_speech(tmp_path / "noisy.wav"))
        grace.join(meeting["code"])
        grace.page.wait_for("#noise-button[aria-pressed=true][data-state=running]")
        on = grace.page.evaluate(SENT_LEVELS)
        suppressed = grace.page.evaluate(SENDER)["id"]
        grace.page.click("#noise-button")
        grace.page.wait_for("#noise-button[aria-pressed=false]")
        poll(lambda: grace.page.evaluate(SENDER)["id"] != suppressed, "the page sends the microphone as it is",
             timeout=5)
        off = grace.page.evaluate(SENT_LEVELS)
        assert grace.page.errors() == []
        grace.close()
    finally:
        firefox.close()
    print(f"Firefox: sent on {on}, off {off}")
    assert on["state"] == off["state"] == "running", (on, off)
    assert off["floor"] - on["floor"] >= MIN_GAIN_DB, (on, off)
    assert on["speech"] >= off["speech"] - 6, (on, off)
