"""The meeting page in real Chromium against the real appliance: people join through /m/<code> by
driving the UI, see and hear each other, come and go. The tests run in order and share one meeting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .flaky_proxy import FlakyProxy
from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, live, media_flows, poll

pytestmark = pytest.mark.browser

SILENCE_DBOV = -127


@dataclass
class Room:
    """The shared meeting: its pages by person and when the first two had both joined."""

    meeting: dict
    pages: dict[str, MeetingPage] = field(default_factory=dict)
    both_joined_at: float = 0.0


@pytest.fixture(scope="module")
def proxy(appliance: Appliance) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(int(appliance.url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def room(host: httpx.Client) -> Iterator[Room]:
    r = host.post("/api/v1/meetings", json={"title": "Design review"})
    assert r.status_code == 201, r.text
    room = Room(r.json())
    yield room
    for page in room.pages.values():
        page.close()


def speaking(participant: dict) -> bool:
    """The server receives this participant's microphone, and it is not silence."""
    packets = sum(t["packets"] for t in participant["published"] if t["kind"] == "audio")
    level = participant.get("audio_level_dbov")
    return packets > 0 and level is not None and level > SILENCE_DBOV


def test_two_people_join_and_see_and_hear_each_other(browser: Browser, appliance: Appliance, proxy: FlakyProxy,
                                                     host: httpx.Client, room: Room) -> None:
    code = room.meeting["code"]
    ada = room.pages["ada"] = MeetingPage(browser, proxy.url, PEOPLE["ada"])  # through a network that can blip
    ada.open(code)
    page = ada.page
    expect(page.get_by_role("heading", name="Design review")).to_be_visible()
    expect(page.get_by_label("Your name")).to_have_value("Ada Lovelace")
    for device in ("Camera", "Microphone"):
        expect(page.get_by_role("combobox", name=device)).to_be_enabled()
    expect(page.get_by_label("Meeting password")).to_be_hidden()
    poll(ada.preview_running, "the camera preview", timeout=10)
    page.screenshot(path=SCREENSHOTS / "prejoin.png")
    ada.type_name()
    ada.click_join()
    expect(page.get_by_role("button", name="Leave")).to_be_visible()

    grace = room.pages["grace"] = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    grace.join(code)
    room.both_joined_at = time.monotonic()

    media_flows(ada, grace)
    media_flows(grace, ada)
    for me in (ada, grace):
        expect(me.page.get_by_text("2 participants")).to_be_visible()
        for control in ("Microphone", "Camera"):
            expect(me.page.get_by_role("button", name=control, exact=True)).to_have_attribute("aria-pressed", "true")
    ids = {ada.participant_id, grace.participant_id}
    poll(lambda: (now := live(host, room.meeting)).keys() == ids and all(speaking(p) for p in now.values()),
         "the server receives both microphones, not silent", timeout=10)

    # Grace mutes herself: her button says so, and Ada sees it on Grace's tile.
    grace.page.get_by_role("button", name="Microphone", exact=True).click()
    expect(grace.page.get_by_role("button", name="Microphone", exact=True)).to_have_attribute("aria-pressed", "false")
    grace_tile = page.get_by_role("listitem", name="Grace Hopper")
    expect(grace_tile.get_by_role("img", name="Microphone off")).to_be_visible()

    page.locator(".tile.speaking").first.wait_for()
    page.screenshot(path=SCREENSHOTS / "meeting-two-people.png")
    grace.page.get_by_role("button", name="Microphone", exact=True).click()
    expect(grace_tile.get_by_role("img", name="Microphone off")).to_be_hidden()
    assert ada.errors == [] and grace.errors == []


def test_network_blip_resumes_the_same_seat(host: httpx.Client, proxy: FlakyProxy, room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    ada_id = ada.participant_id
    tile_on_grace = grace.page.locator(f'.tile[data-participant="{ada_id}"]')
    tile_on_grace.evaluate("tile => { tile.dataset.before = 'blip'; }")  # a re-created tile would lose it

    proxy.drop(2.0)
    notice = ada.page.get_by_role("status").filter(has_text="Reconnecting…")
    expect(notice).to_be_visible(timeout=3000)
    expect(notice).to_be_hidden(timeout=15000)

    assert ada.participant_id == ada_id
    assert live(host, room.meeting)[ada_id]["connected"] is True
    expect(tile_on_grace).to_have_attribute("data-before", "blip")
    media_flows(grace, ada)
    media_flows(ada, grace)


def test_late_joiner_sees_everyone_within_2_s(browser: Browser, appliance: Appliance, room: Room) -> None:
    linus = room.pages["linus"] = MeetingPage(browser, appliance.url, PEOPLE["linus"])
    linus.open(room.meeting["code"])
    linus.type_name()
    time.sleep(max(0.0, room.both_joined_at + 20 - time.monotonic()))

    # Timed in the page from the click event, so that the automation's own latency is not counted.
    clicked_at = linus.click_timed("Join")
    took_ms = linus.page.wait_for_function(
        """() => { const videos = [...document.querySelectorAll('.tile:not(.self) video')];
                   return videos.length === 2 && videos.every((v) => v.videoWidth > 0) && Date.now(); }""",
        polling=20, timeout=10_000).json_value() - clicked_at
    print(f"late joiner: the others' video showed {took_ms:.0f} ms after the click on Join")
    assert took_ms < 2000, f"the others' video took {took_ms:.0f} ms to show"
    names = {t["name"] for t in linus.remote_tiles()}
    assert names == {"Ada Lovelace", "Grace Hopper"}
    for other in ("ada", "grace"):
        media_flows(linus, room.pages[other])
    expect(linus.page.get_by_text("3 participants")).to_be_visible()


def test_leaving_removes_the_tile_within_2_s(room: Room) -> None:
    linus = room.pages["linus"]
    linus_id = linus.participant_id
    others = [room.pages["ada"], room.pages["grace"]]
    for page in others:
        assert linus_id in page.tile_ids()
        page.watch_tile(linus_id)

    clicked_at = linus.click_timed("Leave")
    for page in others:
        took_ms = page.tile_gone_at(linus_id) - clicked_at
        print(f"leave: {page.person.name} dropped the tile {took_ms:.0f} ms after the click on Leave")
        assert took_ms < 2000, f"{page.person.name} dropped the leaver's tile {took_ms:.0f} ms after the click"
    expect(linus.page.get_by_role("heading", name="You left the meeting")).to_be_visible()
    for page in others:
        expect(page.page.get_by_text("2 participants")).to_be_visible()
    assert linus.errors == []


def test_closed_tab_frees_its_seat_within_5_s(host: httpx.Client, room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    grace_id = grace.participant_id
    ada.watch_tile(grace_id)

    closed = time.monotonic()
    closed_at = time.time() * 1000
    grace.page.close()
    poll(lambda: grace_id not in live(host, room.meeting), "the server frees the closed tab's seat",
         deadline=closed + 5.0)
    print(f"closed tab: gone from /live after {time.monotonic() - closed:.2f} s")
    took_ms = ada.tile_gone_at(grace_id) - closed_at
    print(f"closed tab: Ada dropped the tile after {took_ms:.0f} ms")
    assert took_ms < 5000, f"the others dropped the closed tab's tile after {took_ms:.0f} ms"
    expect(ada.page.get_by_text("1 participant", exact=True)).to_be_visible()
    assert ada.errors == []


def test_tracks_published_during_a_blip_arrive_after_resume(host: httpx.Client, proxy: FlakyProxy,
                                                            room: Room) -> None:
    ada, linus = room.pages["ada"], room.pages["linus"]
    proxy.drop()
    notice = ada.page.get_by_role("status").filter(has_text="Reconnecting…")
    expect(notice).to_be_visible()

    linus.page.get_by_role("button", name="Rejoin").click()
    linus.type_name()
    linus.click_join()
    expect(linus.page.get_by_role("button", name="Leave")).to_be_visible()
    poll(lambda: (me := live(host, room.meeting).get(linus.participant_id)) and speaking(me),
         "the server receives the newcomer's microphone", timeout=10)

    proxy.restore()
    expect(notice).to_be_hidden()
    media_flows(ada, linus)
