"""Recording a real two-person meeting in Chromium (acceptance of issue 8): the host records ten
seconds through the meeting page, everyone sees the indicator and the notice, the per-track files
land in a real S3 server, and the composite export made from the home page shows both cameras
and carries both microphones."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from appliance.recording.service import INTERRUPTED
from appliance.stores.relational import Recording, Relational
from appliance_server import Appliance, start_appliance
from conftest import stop
from e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from e2e.fake_camera import ycbcr
from e2e.meeting_page import PEOPLE, MeetingPage, poll

from .accounts import add_users
from .media import audio_samples, close_to, decode_all, ffprobe, mean_colour, rms_dbfs, video_frames

pytestmark = pytest.mark.browser

RED, BLUE = (210, 40, 40), (40, 60, 210)
RECORD_SECONDS = 10.0
TIMEOUT_MS = 15_000


def write_camera(path: Path, rgb: tuple[int, int, int], width: int = 640, height: int = 360, fps: int = 15) -> Path:
    """A y4m camera of one colour with a white bar sliding down it (so the encoder keeps working)."""
    y, cb, cr = ycbcr(rgb)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(fps * 2):
            bar = (i * 12) % height
            luma = b"".join(bytes([255 if bar <= row < bar + 8 else y]) * width for row in range(height))
            out.write(b"FRAME\n" + luma + bytes([cb]) * (width * height // 4) + bytes([cr]) * (width * height // 4))
    return path


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def cameras(playwright: Playwright) -> Iterator[dict[str, Browser]]:
    """One Chromium per camera colour (the fake camera is a browser-wide switch)."""
    folder = Path(tempfile.mkdtemp(prefix="cams-"))
    browsers = {name: playwright.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={write_camera(folder / f'{name}.y4m', rgb)}"])
        for name, rgb in (("red", RED), ("blue", BLUE))}
    yield browsers
    for browser in browsers.values():
        browser.close()
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, s3_url: str) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("rec-e2e"), media_loopback="true", objects=s3_url)
    add_users(app, {name: (person.email, person.password) for name, person in PEOPLE.items()})
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


@pytest.fixture(scope="module")
def s3_url(s3_server: dict) -> str:  # one bucket for the module
    return f"s3://{s3_server['key']}:{s3_server['secret']}@127.0.0.1:{s3_server['port']}/rec-e2e"


def fetch(url: str, path: Path) -> Path:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def test_a_recorded_meeting_plays_back_per_track_and_as_a_composite(
        appliance: Appliance, cameras: dict[str, Browser], tmp_path: Path) -> None:
    ada_person, grace_person, linus_person = PEOPLE["ada"], PEOPLE["grace"], PEOPLE["linus"]
    tokens = appliance.login(ada_person.email, ada_person.password)
    api = httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {tokens['access_token']}"},
                       timeout=30)
    meeting = api.post("/api/v1/meetings", json={"title": "Recorded review"}).json()
    ada = MeetingPage(cameras["red"], appliance.url, ada_person)
    grace = MeetingPage(cameras["blue"], appliance.url, grace_person)
    linus = MeetingPage(cameras["blue"], appliance.url, linus_person)
    try:
        ada.join(meeting["code"])
        grace.join(meeting["code"])
        for page in (ada, grace):
            poll(lambda p=page: (tiles := p.remote_tiles()) and tiles[0]["frames"] > 10 and tiles[0]["audio_packets"] > 10,
                 f"{page.person.name} sees and hears the other", timeout=20)
        expect(grace.page.get_by_role("button", name="Record")).to_be_hidden()  # a participant has none

        ada.page.get_by_role("button", name="Record", exact=True).click()
        started = time.monotonic()
        for page in (ada, grace):  # the indicator and the consent notice
            expect(page.page.get_by_role("status").filter(has_text="Recording")).to_be_visible(timeout=TIMEOUT_MS)
            notice = page.page.get_by_role("alertdialog").filter(has_text="This meeting is being recorded")
            expect(notice).to_contain_text("started by Ada Lovelace", timeout=TIMEOUT_MS)
        stop_button = ada.page.get_by_role("button", name="Stop recording")
        expect(stop_button).to_be_visible()

        # A late joiner (camera and microphone off) is told as the stage opens.
        linus.open(meeting["code"])
        linus.page.locator("#pre-cam").click()
        linus.page.locator("#pre-mic").click()
        linus.type_name()
        linus.click_join()
        expect(linus.page.get_by_role("alertdialog").filter(has_text="This meeting is being recorded")).to_be_visible(
            timeout=TIMEOUT_MS)
        expect(linus.page.get_by_role("status").filter(has_text="Recording")).to_be_visible()
        linus.page.get_by_role("alertdialog").get_by_role("button", name="OK").click()
        expect(linus.page.get_by_role("alertdialog")).to_be_hidden()

        time.sleep(max(0.0, started + RECORD_SECONDS - time.monotonic()))
        stop_button.click()
        length = time.monotonic() - started
        for page in (ada, grace, linus):
            expect(page.page.get_by_role("status").filter(has_text="Recording")).to_be_hidden(timeout=TIMEOUT_MS)
            expect(page.page.locator("#notice")).to_contain_text("The recording stopped: stopped by Ada Lovelace")
        assert not (ada.errors or grace.errors or linus.errors)
    finally:
        for page in (ada, grace, linus):
            page.close()

    [recording] = api.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"]
    recording = poll(lambda: (r := api.get(f"/api/v1/recordings/{recording['id']}").json())["status"] == "ready" and r,
                     "the recording reaches S3", timeout=30)
    assert recording["duration_s"] == pytest.approx(length, rel=0.1)
    tracks = {(t["name"], t["kind"]): t for t in recording["tracks"]}
    # Linus joined with his microphone off: the page still sends it (silent), so it is recorded too.
    assert set(tracks) - {("Linus Torvalds", "audio")} == {
        (n, k) for n in ("Ada Lovelace", "Grace Hopper") for k in ("audio", "video")}
    for (name, kind), track in tracks.items():
        if name == "Linus Torvalds":
            continue
        link = api.get(f"/api/v1/recordings/{recording['id']}/files/{track['file']}").json()["url"]
        assert re.match(r"http://127\.0\.0\.1:\d+/rec-e2e/recordings/", link)  # straight from S3
        path = fetch(link, tmp_path / track["file"])
        assert path.stat().st_size == track["size"]
        [stream] = ffprobe(path)["streams"]
        assert stream["codec_name"] == ("opus" if kind == "audio" else "vp8")
        decode_all(path)
        real = length - float(stream["start_time"])  # each track from its first packet to the stop
        if kind == "audio":
            samples, _ = audio_samples(path)
            assert len(samples) / 48000 == pytest.approx(real, rel=0.1), (name, kind)
            assert rms_dbfs(samples) > -45, f"{name}'s microphone is silent"
        else:
            times = [t for t, _ in video_frames(path)]
            assert times[-1] - times[0] == pytest.approx(real, rel=0.1), (name, kind)

    # The composite, asked for on the home page.
    home = MeetingPage(cameras["red"], appliance.url, ada_person)
    try:
        home.page.goto("/")
        signin = home.page.locator("#signin-form")
        signin.get_by_label("E-mail").fill(ada_person.email)
        signin.get_by_label("Password", exact=True).fill(ada_person.password)
        signin.get_by_role("button", name="Sign in").click()
        home.page.get_by_role("button", name="Recordings of Recorded review").click()
        panel = home.page.get_by_role("listitem", name="Recordings of Recorded review")
        expect(panel.get_by_role("button", name="Grace Hopper camera")).to_be_visible(timeout=TIMEOUT_MS)
        panel.get_by_label("Resolution").select_option(label="360p")
        panel.get_by_role("button", name="Export video").click()
        expect(panel.get_by_role("button", name="Download MP4 Grid 640×360")).to_be_visible(timeout=60_000)
        assert not home.errors
    finally:
        home.close()

    [export] = api.get(f"/api/v1/recordings/{recording['id']}").json()["exports"]
    link = api.get(f"/api/v1/recordings/{recording['id']}/exports/{export['id']}/download").json()["url"]
    out = fetch(link, tmp_path / "composite.mp4")
    probe = ffprobe(out)
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    assert float(probe["format"]["duration"]) == pytest.approx(length, rel=0.1)
    decode_all(out)
    frames = video_frames(out)
    assert len(frames) == pytest.approx(math.ceil(recording["duration_s"] * 25), abs=2)
    # Ada published first, so her tile is on the left; the middle of each tile shows its camera.
    left, right = (0.1, 0.4, 0.4, 0.6), (0.6, 0.4, 0.9, 0.6)
    seen = [(close_to(mean_colour(image, left), RED, 45), close_to(mean_colour(image, right), BLUE, 45))
            for t, image in frames if 2.0 < t < length - 1.0]
    assert sum(a and b for a, b in seen) > 0.8 * len(seen), "both participants' cameras are not in the picture"
    samples, _ = audio_samples(out)
    assert rms_dbfs(samples) > -45


def test_the_home_page_says_what_an_interrupted_recording_kept(appliance: Appliance, cameras: dict[str, Browser]) -> None:
    ada_person = PEOPLE["ada"]
    tokens = appliance.login(ada_person.email, ada_person.password)
    api = httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    meeting = api.post("/api/v1/meetings", json={"title": "Cut off"}).json()

    async def stored() -> None:  # as start-up recovery stores a recording the appliance died under
        db = Relational(f"sqlite:///{appliance.data_dir / 'confmeet.db'}")
        await db.open()
        await db.run(lambda: Recording.create(
            meeting=meeting["id"], status="ready", duration_s=39.5, stop_reason=INTERRUPTED, tracks=[{
                "file": "p-camera-1.webm", "key": "recordings/r/p-camera-1.webm", "participant": "p", "name": "Ada",
                "kind": "video", "source": "camera", "codec": "VP8", "start_s": 0.2, "end_s": 39.5, "size": 1}]))
        await db.close()

    with ThreadPoolExecutor(1) as thread:  # Playwright's event loop runs on this one
        thread.submit(asyncio.run, stored()).result()
    [listed] = api.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"]
    assert listed["interrupted"] is True
    home = MeetingPage(cameras["red"], appliance.url, ada_person)
    try:
        home.page.goto("/")
        signin = home.page.locator("#signin-form")
        signin.get_by_label("E-mail").fill(ada_person.email)
        signin.get_by_label("Password", exact=True).fill(ada_person.password)
        signin.get_by_role("button", name="Sign in").click()
        home.page.get_by_role("button", name="Recordings of Cut off").click()
        panel = home.page.get_by_role("listitem", name="Recordings of Cut off")
        expect(panel.get_by_text("Interrupted: the appliance stopped during this recording; 0:40 were kept")
               ).to_be_visible(timeout=TIMEOUT_MS)
        assert not home.errors
    finally:
        home.close()
