"""The meeting page in Debian's Firefox ESR beside Chromium: a Firefox participant joins a meeting
in progress, hosts one, leaves and comes back, shares a screen, is recorded and captioned. Each
time media must flow both ways (a late-joining Firefox used to get none: the SFU's DTLS role
flipped on its answer)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance.inference.models import import_models
from appliance_server import Appliance, start_appliance
from captions.conftest import SCRIPT, speak, word_error_rate
from conftest import stop
from recording.accounts import add_users
from recording.media import audio_samples, decode_all, ffprobe, rms_dbfs, video_frames

from .firefox import Firefox, FirefoxMeetingPage
from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, media_flows, poll

pytestmark = pytest.mark.browser

REJOIN_ROUNDS = 3
RECORD_SECONDS = 8.0
# The large view's picture of a screen share: its size and the frames it has shown.
SCREEN_VIDEO = """() => {
  const v = document.querySelector('#screens:not([hidden]) video:not([hidden])');
  return v && {width: v.videoWidth, frames: v.getVideoPlaybackQuality().totalVideoFrames};
}"""


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    firefox = Firefox()
    yield firefox
    firefox.close()


def new_meeting(host: httpx.Client, title: str) -> str:
    r = host.post("/api/v1/meetings", json={"title": title})
    assert r.status_code == 201, r.text
    return r.json()["code"]


def test_firefox_joins_a_meeting_in_progress(browser: Browser, firefox: Firefox, appliance: Appliance,
                                             host: httpx.Client) -> None:
    code = new_meeting(host, "Firefox joins late")
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    grace = FirefoxMeetingPage(firefox, appliance.url, PEOPLE["grace"])
    try:
        ada.join(code)
        grace.join(code)
        media_flows(grace, ada)
        media_flows(ada, grace)
        grace.screenshot("firefox-late-joiner.png")
        assert grace.page.errors() == [] and not ada.errors
    finally:
        grace.close()
        ada.close()


def test_firefox_hosts_and_comes_back_after_leaving(browser: Browser, firefox: Firefox, appliance: Appliance,
                                                    host: httpx.Client) -> None:
    """Ada (Firefox) opens the meeting alone, Grace (Chromium) joins; Ada leaves and rejoins three
    times while Grace stays: media both ways every time."""
    code = new_meeting(host, "Firefox hosts")
    ada = FirefoxMeetingPage(firefox, appliance.url, PEOPLE["ada"])
    grace = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    try:
        ada.join(code)
        grace.join(code)
        media_flows(ada, grace)
        media_flows(grace, ada)
        for _ in range(REJOIN_ROUNDS):
            before = ada.participant_id
            ada.leave()
            poll(lambda: before not in {t["participant"] for t in grace.remote_tiles()},
                 "Grace drops Ada's tile", timeout=10)
            ada.page.click("#rejoin")
            ada.type_name()
            ada.page.click("#join")
            ada.wait_joined()
            assert ada.participant_id != before
            media_flows(ada, grace)
            media_flows(grace, ada)
        assert ada.page.errors() == [] and not grace.errors
    finally:
        ada.close()
        grace.close()


def test_a_screen_shared_from_firefox_is_shown_in_chromium(browser: Browser, firefox: Firefox,
                                                           appliance: Appliance, host: httpx.Client) -> None:
    code = new_meeting(host, "Firefox presents")
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    grace = FirefoxMeetingPage(firefox, appliance.url, PEOPLE["grace"])
    try:
        ada.join(code)
        grace.join(code)
        media_flows(ada, grace)
        grace.click("Share screen")  # Firefox shares its (Xvfb) screen: no picker with permissions off
        poll(lambda: grace.page.evaluate("() => document.querySelector('#share').ariaPressed") == "true",
             "Grace presents", timeout=10)
        share = ada.page.get_by_role("region", name="Screen share")
        expect(share).to_contain_text("Grace Hopper is presenting")
        first = poll(lambda: (v := ada.page.evaluate(SCREEN_VIDEO)) and v["width"] == 1280 and v,
                     "Ada shows Grace's whole screen", timeout=15)
        poll(lambda: ada.page.evaluate(SCREEN_VIDEO)["frames"] > first["frames"], "the screen keeps coming", timeout=10)
        media_flows(ada, grace)  # the camera goes on beside the screen
        grace.click("Share screen")
        expect(share).to_be_hidden()
        assert grace.page.errors() == [] and not ada.errors
    finally:
        grace.close()
        ada.close()


@pytest.fixture(scope="module")
def captioning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """An appliance that transcribes in-process (the models imported from their packages)."""
    models = tmp_path_factory.mktemp("models") / "model_repository"
    import_models("packages", models)
    app = start_appliance(tmp_path_factory.mktemp("firefox-captions"), media_loopback="true",
                          inference="local://", model_repository=str(models))
    add_users(app, {name: (PEOPLE[name].email, PEOPLE[name].password) for name in ("ada", "grace")})
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def test_a_firefox_participant_is_recorded_and_captioned(browser: Browser, firefox: Firefox, captioning: Appliance,
                                                         tmp_path: Path) -> None:
    """Grace speaks in Firefox (espeak-ng through its microphone), Ada (Chromium, listening)
    records and turns captions on: Grace's words are captioned, her tracks are playable."""
    token = captioning.login(PEOPLE["ada"].email, PEOPLE["ada"].password)["access_token"]
    api = httpx.Client(base_url=captioning.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    meeting = api.post("/api/v1/meetings", json={"title": "Firefox on the record"}).json()
    ada = MeetingPage(browser, captioning.url, PEOPLE["ada"])
    grace = FirefoxMeetingPage(firefox, captioning.url, PEOPLE["grace"])
    grace.speak(speak(SCRIPT, tmp_path / "speech.wav", pause_ms=1500))
    try:
        ada.open(meeting["code"])
        ada.page.locator("#pre-mic").click()  # Ada listens: only Grace speaks
        ada.type_name()
        ada.click_join()
        expect(ada.page.get_by_role("button", name="Leave")).to_be_visible()
        grace.join(meeting["code"])
        media_flows(ada, grace)

        ada.page.get_by_role("button", name="Record", exact=True).click()
        started = time.monotonic()
        ada.page.get_by_role("button", name="Captions").click()
        expect(ada.page.locator("#caption-line")).to_contain_text("Grace Hopper", timeout=30_000)
        ada.page.get_by_role("button", name="Transcript").click()

        def heard() -> list[str]:  # the captions after the first, which may start mid-sentence
            return [line.split(": ", 1)[1] for line in ada.page.locator("#transcript-list li").all_inner_texts()[1:]]

        def one_pass_captioned() -> float | str:
            """The word error rate of the first run of len(SCRIPT) captions, one pass of the looped
            script, that is within 0.15; else what was heard. Speech the captions skipped
            (the "[…]" marker: on a busy machine, while the first utterances wait for the model)
            is left out — the script loops, so a later pass has the words."""
            sentences = [line for line in heard() if line != "[…]"]
            for first in range(len(sentences) - len(SCRIPT) + 1):
                window = sentences[first:first + len(SCRIPT)]
                start = min(range(len(SCRIPT)), key=lambda i: word_error_rate(SCRIPT[i], window[0]))
                script = " ".join(SCRIPT[(start + i) % len(SCRIPT)] for i in range(len(SCRIPT)))
                if (wer := word_error_rate(script, " ".join(window))) <= 0.15:
                    return max(wer, 1e-9)
            return ""

        try:
            poll(one_pass_captioned, "one pass of the script captioned with a word error rate <= 0.15",
                 timeout=90, interval=0.5)
        except AssertionError as failed:
            raise AssertionError(f"{failed}; heard: {heard()}") from None

        time.sleep(max(0.0, started + RECORD_SECONDS - time.monotonic()))
        ada.page.get_by_role("button", name="Stop recording").click()
        length = time.monotonic() - started
        expect(ada.page.get_by_role("status").filter(has_text="Recording")).to_be_hidden()
        assert grace.page.errors() == [] and not ada.errors
    finally:
        grace.close()
        ada.close()

    [recording] = api.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"]
    recording = poll(lambda: (r := api.get(f"/api/v1/recordings/{recording['id']}").json())["status"] == "ready" and r,
                     "the recording is stored", timeout=30)
    tracks = {t["kind"]: t for t in recording["tracks"] if t["name"] == "Grace Hopper"}
    assert set(tracks) == {"audio", "video"}
    for kind, track in tracks.items():
        link = api.get(f"/api/v1/recordings/{recording['id']}/files/{track['file']}").json()["url"]
        response = httpx.get(link, timeout=30)
        assert response.status_code == 200
        path = tmp_path / track["file"]
        path.write_bytes(response.content)
        [stream] = ffprobe(path)["streams"]
        assert stream["codec_name"] == ("opus" if kind == "audio" else "vp8")
        decode_all(path)
        real = length - float(stream["start_time"])
        if kind == "audio":
            samples, _ = audio_samples(path)
            assert len(samples) / 48000 == pytest.approx(real, rel=0.15)
            assert rms_dbfs(samples) > -45, "Grace's speech is not in her audio track"
        else:
            times = [t for t, _ in video_frames(path)]
            assert times[-1] - times[0] == pytest.approx(real, rel=0.15)
    api.close()
