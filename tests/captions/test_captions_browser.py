"""Captions end to end in Chromium: espeak-ng speech is Grace's microphone (Chromium's fake audio
capture plays the WAV in a loop); Ada, the host, turns captions on and reads them on her page and
in the stored transcript. With a real Triton (killed and restarted mid-meeting: the page says
captions are unavailable, then they come back) and with local:// inference."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from appliance_server import Appliance, start_appliance
from conftest import stop
from e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from e2e.meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, poll
from triton_server import Triton

from .conftest import SCRIPT, speak, word_error_rate

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    # A long pause after the last sentence, so that the loop's restart is an utterance boundary.
    wav = speak(SCRIPT, tmp_path_factory.mktemp("mic") / "speech.wav", pause_ms=1500)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
        yield browser
        browser.close()


@pytest.fixture(scope="module", params=["triton", "local"])
def appliance(request: pytest.FixtureRequest, model_repository: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    inference = request.getfixturevalue("triton").url if request.param == "triton" else "local://"
    app = start_appliance(tmp_path_factory.mktemp(f"captions-ui-{request.param}"), media_loopback="true",
                          inference=inference, model_repository=str(model_repository))
    for i, name in enumerate(("ada", "grace")):
        app.add_user(PEOPLE[name].email, PEOPLE[name].password, admin=i == 0)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def transcript_panel(page: MeetingPage) -> list[str]:
    return page.page.locator("#transcript-list li").all_inner_texts()


def complete_sentences(lines: list[str]) -> list[str]:
    """The captions after the first (which may start mid-sentence: captions came on while Grace
    was talking), without the speaker's name."""
    return [line.split(": ", 1)[1] for line in lines[1:]]


def test_captions_on_the_page_and_in_the_transcript(browser: Browser, appliance: Appliance,
                                                    request: pytest.FixtureRequest) -> None:
    ada_token = appliance.login(PEOPLE["ada"].email, PEOPLE["ada"].password)["access_token"]
    api = httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {ada_token}"}, timeout=10)
    meeting = api.post("/api/v1/meetings", json={"title": "Captions"}).json()
    ada, grace = MeetingPage(browser, appliance.url, PEOPLE["ada"]), MeetingPage(browser, appliance.url, PEOPLE["grace"])
    try:
        ada.open(meeting["code"])
        ada.page.locator("#pre-mic").click()  # Ada listens: only Grace speaks
        ada.type_name()
        ada.click_join()
        expect(ada.page.get_by_role("button", name="Leave")).to_be_visible()
        grace.join(meeting["code"])

        ada.page.get_by_role("button", name="Captions").click()  # the host turns them on, in English
        expect(ada.page.get_by_role("button", name="Captions")).to_have_attribute("aria-pressed", "true")
        expect(grace.page.get_by_role("button", name="Captions")).to_have_attribute("aria-pressed", "false")
        line = ada.page.locator("#caption-line")
        expect(line).to_contain_text("Grace Hopper", timeout=30_000)
        ada.page.get_by_role("button", name="Transcript").click()
        # One full loop of the script after the first (partial) caption.
        poll(lambda: len(complete_sentences(transcript_panel(ada))) >= len(SCRIPT), "a full script of captions",
             timeout=60, interval=0.5)
        lines = transcript_panel(ada)
        assert all(line.startswith("Grace Hopper: ") for line in lines), lines
        heard = complete_sentences(lines)[:len(SCRIPT)]
        start = min(range(len(SCRIPT)), key=lambda i: word_error_rate(SCRIPT[i], heard[0]))
        script = " ".join(SCRIPT[(start + i) % len(SCRIPT)] for i in range(len(SCRIPT)))
        assert word_error_rate(script, " ".join(heard)) <= 0.15, (script, heard)
        assert grace.page.locator("#caption-line").is_hidden()  # Grace did not turn them on
        ada.page.screenshot(path=SCREENSHOTS / f"captions-{request.node.callspec.id}.png")

        stored = api.get(f"/api/v1/meetings/{meeting['id']}/transcript").json()["segments"]
        assert {s["name"] for s in stored} == {"Grace Hopper"}
        stored_text = [s["text"] for s in stored]
        for sentence in heard:
            assert sentence in stored_text

        if "triton" in request.node.callspec.id:
            triton: Triton = request.getfixturevalue("triton")
            triton.kill()
            try:
                status = ada.page.locator("#captions-status")
                expect(status).to_contain_text("Captions are unavailable", timeout=15_000)
                assert grace.remote_tiles()[0]["audio_packets"] >= 0  # the meeting goes on
                expect(grace.page.get_by_text("2 participants")).to_be_visible()
                before = len(transcript_panel(ada))
                time.sleep(3)
            finally:
                triton.start()
            expect(status).to_be_hidden(timeout=20_000)
            poll(lambda: len(transcript_panel(ada)) > before + 1, "captions after Triton came back",
                 timeout=40, interval=0.5)
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        ada.close()
        grace.close()
        api.close()
