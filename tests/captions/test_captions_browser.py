"""Captions end to end in Chromium: espeak-ng speech is Grace's microphone (Chromium's fake audio
capture plays the WAV in a loop); Ada, the host, turns captions on and reads them on her page and
in the stored transcript. With a real Triton (killed and restarted mid-meeting: the page says
captions are unavailable, then they come back) and with local:// inference. Then: interim text
replaced by the final on the caption line, finals only in the transcript, the transcript searched
in the meeting page and on the home page after the meeting (jump to a time, download); Mandarin
captions in Simplified characters, in a CJK font (Debian's fonts-noto-cjk for the screenshot).
Accuracy with a CPU hog on one core is a stress run, not a test: benchmarks/captions_busy_machine.py."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opencc import OpenCC
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from appliance_server import Appliance, start_appliance
from conftest import stop
from e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from e2e.meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, poll
from triton_server import Triton

from .conftest import SCRIPT, mandarin_wav, speak, word_error_rate

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """One Playwright for the module: each test launches the browsers it needs (a fake microphone
    file is a browser's launch option)."""
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="module")
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    # A long pause after the last sentence, so that the loop's restart is an utterance boundary.
    browser = launch(playwright, speak(SCRIPT, tmp_path_factory.mktemp("mic") / "speech.wav", pause_ms=1500))
    yield browser
    browser.close()


@pytest.fixture(scope="module", params=["triton", "local"])
def appliance(request: pytest.FixtureRequest, model_repository: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    if request.param == "local":  # the same appliance as the tests below (each test has its own meeting)
        yield request.getfixturevalue("local_appliance")
        return
    app = start_appliance(tmp_path_factory.mktemp(f"captions-ui-{request.param}"), media_loopback="true",
                          inference=request.getfixturevalue("triton").url, model_repository=str(model_repository))
    for i, name in enumerate(("ada", "grace")):
        app.add_user(PEOPLE[name].email, PEOPLE[name].password, admin=i == 0)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def transcript_panel(page: MeetingPage) -> list[str]:
    """The transcript panel's lines, without the time each starts with."""
    return [line.split(" ", 1)[1] for line in page.page.locator("#transcript-list li").all_inner_texts()]


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


# ---------------------------------------------------------------------- interim text, the transcript in the page,
# and Chinese (local:// inference only: the backends are the same above)
# Ada's page keeps every caption message with the wall-clock time it arrived, and every state of
# the caption line (interim lines and final lines, by utterance).
WATCH_CAPTIONS = """(() => {
  window.captionsHeard = [];
  window.captionLines = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.signalingSocket = this;
      this.addEventListener("message", (event) => {
        if (typeof event.data !== "string" || !event.data.includes('"caption"')) return;
        const message = JSON.parse(event.data);
        if (message.type === "caption") window.captionsHeard.push({ at: Date.now() / 1000, message });
      });
    }
  };
  new MutationObserver(() => {
    const line = document.querySelector("#caption-line");
    if (!line) return;
    const of = (selector) => [...line.querySelectorAll(selector)].map((p) => [p.dataset.id, p.querySelector(".caption-text").textContent]);
    window.captionLines.push({ interim: of(".caption.interim"), final: of(".caption:not(.interim)") });
    const interim = line.querySelector(".caption.interim");
    if (interim && !window.interimStyle) window.interimStyle = [getComputedStyle(interim).color, getComputedStyle(interim).fontStyle];
  }).observe(document, { childList: true, subtree: true, characterData: true });
})();"""


@pytest.fixture(scope="module")
def local_appliance(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("captions-ui"), media_loopback="true", inference="local://",
                          model_repository=str(model_repository))
    for i, name in enumerate(("ada", "grace")):
        app.add_user(PEOPLE[name].email, PEOPLE[name].password, admin=i == 0)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def launch(playwright: Playwright, wav: Path) -> Browser:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    return playwright.chromium.launch(executable_path=CHROMIUM,
                                      args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])


def captioned_meeting(app: Appliance, browser: Browser, title: str, language: str = "en"
                      ) -> tuple[httpx.Client, dict, MeetingPage, MeetingPage]:
    """Ada (host, listening, watching her page) turns captions on; then Grace joins and speaks."""
    token = app.login(PEOPLE["ada"].email, PEOPLE["ada"].password)["access_token"]
    api = httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    meeting = api.post("/api/v1/meetings", json={"title": title}).json()
    ada, grace = MeetingPage(browser, app.url, PEOPLE["ada"]), MeetingPage(browser, app.url, PEOPLE["grace"])
    ada.page.add_init_script(WATCH_CAPTIONS)
    ada.open(meeting["code"])
    ada.page.locator("#pre-mic").click()
    ada.type_name()
    ada.click_join()
    expect(ada.page.get_by_role("button", name="Leave")).to_be_visible()
    ada.page.locator("#captions-language").select_option(language)
    ada.page.get_by_role("button", name="Captions").click()
    expect(ada.page.get_by_role("button", name="Captions")).to_have_attribute("aria-pressed", "true")
    grace.join(meeting["code"])
    return api, meeting, ada, grace


def heard(page: MeetingPage) -> list[dict]:
    return [h["message"] for h in page.page.evaluate("window.captionsHeard")]


def finals(page: MeetingPage) -> list[dict]:
    return [m for m in heard(page) if m["final"] and m["text"]]


def test_interim_text_is_replaced_by_the_final_and_the_transcript_is_searched_in_the_page(
        local_appliance: Appliance, playwright: Playwright, tmp_path: Path) -> None:
    browser = launch(playwright, speak(SCRIPT, tmp_path / "speech.wav", pause_ms=1500))
    api, meeting, ada, grace = captioned_meeting(local_appliance, browser, "Interim captions")
    try:
        poll(lambda: len(finals(ada)) >= len(SCRIPT) + 1, "a full script of final captions", timeout=60,
             interval=0.5)
        # On the caption line, an utterance's interim text came first, lighter, and its final
        # text took its place.
        lines = ada.page.evaluate("window.captionLines")
        replaced = [m["id"] for m in finals(ada)
                    if any(m["id"] in dict(s["interim"]) for s in lines)
                    and any(m["id"] in dict(s["final"]) and m["id"] not in dict(s["interim"]) for s in lines)]
        assert len(replaced) >= len(SCRIPT), (replaced, lines[-5:])
        first_seen = {k: i for i, s in reversed(list(enumerate(lines))) for k in dict(s["interim"])}
        final_seen = {k: i for i, s in reversed(list(enumerate(lines))) for k in dict(s["final"])}
        assert all(first_seen[k] < final_seen[k] for k in replaced)
        # The style of the first interim line, read by the observer while it was in the page (an
        # interim line can be replaced between two calls from here, and a detached one has no
        # computed style: seen in CI as ['', '']).
        style = ada.page.evaluate("window.interimStyle")
        normal = ada.page.evaluate("""() => { const p = document.createElement("p"); p.className = "caption";
            document.querySelector("#caption-line").append(p); const c = getComputedStyle(p).color; p.remove(); return c; }""")
        assert style[0] != normal and style[1] == "italic", (style, normal)  # a lighter style
        ada.page.screenshot(path=SCREENSHOTS / "captions-interim.png")
        # A busy server turns interim text off: the page says so (the state as signaling sends it).
        ada.page.evaluate("""() => window.signalingSocket.dispatchEvent(new MessageEvent("message", {data: JSON.stringify({
            type: "captions_state", enabled: true, language: "en", state: "available", detail: "", interim: false,
            interim_detail: "the server is too busy for interim captions; final captions go on", speakers: {}})}))""")
        expect(ada.page.locator("#captions-status")).to_contain_text("Live text while people speak is paused")
        expect(ada.page.locator("#captions-status")).to_have_attribute("data-state", "interim-off")

        # The stored transcript has the final text only.
        stored = api.get(f"/api/v1/meetings/{meeting['id']}/transcript").json()["segments"]
        final_texts = [m["text"] for m in finals(ada)]
        interim_only = {m["text"] for m in heard(ada) if not m["final"]} - set(final_texts)
        assert interim_only and [s["text"] for s in stored] == final_texts[:len(stored)]
        assert not interim_only & {s["text"] for s in stored}

        # Search in the meeting page, jump to the time, download.
        ada.page.get_by_role("button", name="Transcript").click()
        ada.page.get_by_label("Search the transcript").fill("budget")
        ada.page.get_by_label("Search the transcript").press("Enter")
        expect(ada.page.locator("#transcript-matches")).to_contain_text("with “budget”")
        matches = ada.page.locator("#transcript-list li")
        expect(matches.first).to_contain_text("budget")
        assert all("budget" in t.lower() for t in matches.all_inner_texts())
        expect(matches.first.locator("mark")).to_have_text(re.compile("budget", re.I))
        matches.first.locator(".transcript-time").click()
        current = ada.page.locator("#transcript-list li.current")
        expect(current).to_contain_text("budget")
        assert ada.page.locator("#transcript-list li").count() > 1  # the whole transcript again, at that moment
        assert current.evaluate("li => { const r = li.getBoundingClientRect(), p = li.parentElement.getBoundingClientRect();"
                                " return r.top >= p.top && r.bottom <= p.bottom; }")
        with ada.page.expect_download() as download:
            ada.page.locator(".transcript-downloads button[data-format=vtt]").click()
        vtt = Path(download.value.path()).read_text(encoding="utf-8")
        assert vtt.startswith("WEBVTT") and "Grace Hopper: " in vtt and "budget" in vtt
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        ada.close()
        grace.close()

    # After the meeting, on the home page: the meeting's transcript, searched, with a time to jump to.
    assert api.post(f"/api/v1/meetings/{meeting['id']}/end").status_code in (200, 204)
    home = MeetingPage(browser, local_appliance.url, PEOPLE["ada"])
    try:
        home.page.goto("/")
        signin = home.page.locator("#signin-form")
        signin.get_by_label("E-mail").fill(PEOPLE["ada"].email)
        signin.get_by_label("Password", exact=True).fill(PEOPLE["ada"].password)
        signin.get_by_role("button", name="Sign in").click()
        home.page.get_by_role("button", name="Transcript of Interim captions").click()
        panel = home.page.get_by_label("Transcript of Interim captions", exact=True).last
        expect(panel.locator("li").first).to_contain_text("Grace Hopper:")
        total = panel.locator(".transcript-list li").count()
        panel.get_by_label("Search the transcript").fill("FRIDAY")
        panel.get_by_role("button", name="Search").click()
        expect(panel.locator(".transcript-matches")).to_contain_text("with “FRIDAY”")
        expect(panel.locator(".transcript-list li").first).to_contain_text("Friday")
        panel.locator(".transcript-list li .transcript-time").first.click()
        expect(panel.locator(".transcript-list li.current")).to_contain_text("Friday")
        assert panel.locator(".transcript-list li").count() == total
        home.page.screenshot(path=SCREENSHOTS / "transcript-after-the-meeting.png")
        assert not home.errors, home.errors
    finally:
        home.close()
        api.close()
        browser.close()


def test_mandarin_captions_in_the_page(local_appliance: Appliance, playwright: Playwright, tmp_path: Path) -> None:
    """Grace says she speaks Simplified Chinese; Ada's page shows her captions in Simplified
    characters, in a font that has them, and finds a two-character word in the transcript."""
    if "Noto Sans CJK" not in subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True).stdout:
        pytest.fail("no Chinese font for the screenshots: apt-get install -y fonts-noto-cjk (make system-packages)")
    browser = launch(playwright, mandarin_wav(tmp_path / "mandarin.wav", pause=1.2))
    api, meeting, ada, grace = captioned_meeting(local_appliance, browser, "普通话会议")
    try:
        grace.page.get_by_label("I speak").select_option("zh-CN")
        expect(ada.page.locator("#caption-line .caption[lang=zh-Hans]").first).to_be_visible(timeout=30_000)
        poll(lambda: len(finals(ada)) >= 4, "four Mandarin captions", timeout=60, interval=0.5)
        texts = [m["text"] for m in finals(ada)]
        assert {m["language"] for m in finals(ada)} == {"zh-CN"}
        assert all(OpenCC("t2s").convert(t) == t for t in texts), texts  # Simplified
        font = ada.page.locator("#caption-line .caption").first.evaluate("p => getComputedStyle(p).fontFamily")
        assert "Noto Sans CJK SC" in font and "Microsoft YaHei" in font and "PingFang SC" in font, font
        ada.page.get_by_role("button", name="Transcript").click()
        poll(lambda: any("预算" in t for t in [m["text"] for m in finals(ada)]), "the sentence with 预算", timeout=60,
             interval=0.5)
        ada.page.get_by_label("Search the transcript").fill("预算")
        ada.page.get_by_label("Search the transcript").press("Enter")
        expect(ada.page.locator("#transcript-list li").first).to_contain_text("预算")
        expect(ada.page.locator("#transcript-list li mark").first).to_have_text("预算")
        ada.page.screenshot(path=SCREENSHOTS / "captions-mandarin.png")
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        ada.close()
        grace.close()
        api.close()
        browser.close()
