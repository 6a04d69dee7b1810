"""Meeting controls in the meeting page, in real Chromium against the real appliance: the waiting
room, chat and shared files, hands and reactions, moderation and screen sharing. The tests run in
order and share one meeting with a waiting room: Ada hosts, Grace and later Linus come in through
the lobby."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, media_flows, poll

pytestmark = pytest.mark.browser

# A message that would run script, were it ever rendered as HTML.
NO_VIDEO = re.compile(r"(^|\s)no-video(\s|$)")  # the tile's other classes (speaking) come and go
HOSTILE = ('Agenda <script>window.pwned = "script"</script><img src=x onerror="window.pwned = \'img\'"> '
           "is at https://example.org/plan?week=12.")
# The large view's picture: its size and whether frames keep coming.
SCREEN_VIDEO = """() => {
  const v = document.querySelector('#screens:not([hidden]) video:not([hidden])');
  return v && {width: v.videoWidth, shown: v.getBoundingClientRect().width,
               frames: v.getVideoPlaybackQuality().totalVideoFrames};
}"""

# Record each reaction shown, as (the tile's name, the emoji), however briefly it stays.
WATCH_REACTIONS = """() => {
  window.reactions = [];
  new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((node) => {
    if (node.classList?.contains('tile-reaction')) {
      window.reactions.push([node.closest('.tile').getAttribute('aria-label'), node.textContent]);
    }
  }))).observe(document.querySelector('#grid'), {childList: true, subtree: true});
}"""


@dataclass
class Room:
    meeting: dict
    pages: dict[str, MeetingPage] = field(default_factory=dict)

    @property
    def everyone(self) -> list[MeetingPage]:
        return list(self.pages.values())


@pytest.fixture(scope="module")
def room(host: httpx.Client) -> Iterator[Room]:
    r = host.post("/api/v1/meetings", json={"title": "Launch review", "lobby": True})
    assert r.status_code == 201, r.text
    room = Room(r.json())
    yield room
    for page in room.pages.values():
        page.close()


def admit(host: MeetingPage, guest: MeetingPage, code: str) -> None:
    """``guest`` knocks; the host sees the knock, counted, and lets them in."""
    guest.knock(code)
    lobby = host.page.get_by_role("complementary", name="Waiting to join")
    expect(lobby).to_be_visible()
    expect(lobby).to_contain_text(guest.person.name)
    expect(host.page.locator("#people-badge")).to_have_text("1")
    lobby.get_by_role("button", name=f"Admit {guest.person.name}").click()
    expect(guest.button("Leave")).to_be_visible()
    expect(lobby).to_be_hidden()
    expect(host.page.locator("#people-badge")).to_be_hidden()


def test_knock_admit_and_media_flows(browser: Browser, appliance: Appliance, room: Room) -> None:
    code = room.meeting["code"]
    ada = room.pages["ada"] = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    ada.join(code)
    grace = room.pages["grace"] = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    grace.knock(code)

    lobby = ada.page.get_by_role("complementary", name="Waiting to join")
    expect(lobby).to_be_visible()
    expect(lobby.get_by_role("listitem")).to_contain_text("Grace Hopper")
    expect(ada.page.get_by_role("alert")).to_have_text("Grace Hopper wants to join.")
    expect(ada.page.locator("#people-badge")).to_have_text("1")
    ada.page.screenshot(path=SCREENSHOTS / "lobby.png")

    lobby.get_by_role("button", name="Admit Grace Hopper").click()
    expect(grace.button("Leave")).to_be_visible()
    expect(lobby).to_be_hidden()
    media_flows(ada, grace)
    media_flows(grace, ada)
    for me in (ada, grace):
        expect(me.page.get_by_text("2 participants")).to_be_visible()


def test_a_shared_file_reaches_members_only(appliance: Appliance, host: httpx.Client, room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    content = b"launch checklist\n" + os.urandom(4096)
    chat = grace.open_panel("Chat")
    with grace.page.expect_file_chooser() as chooser:
        chat.get_by_role("button", name="Share a file").click()
    chooser.value.set_files({"name": "checklist.bin", "mimeType": "application/octet-stream", "buffer": content})
    expect(chat.get_by_role("link", name="Download checklist.bin")).to_be_visible()

    expect(ada.page.locator("#chat-badge")).to_have_text("1")  # unread while her chat is closed
    link = ada.open_panel("Chat").get_by_role("link", name="Download checklist.bin")
    expect(link).to_contain_text("4.1 kB")  # 4113 bytes (i18n.js byteSize: decimal units)
    expect(ada.page.locator("#chat-badge")).to_be_hidden()
    with ada.page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "checklist.bin"
    assert Path(download.value.path()).read_bytes() == content

    # Linus has never been in this meeting: its files are not his to list or fetch.
    files = host.get(f"/api/v1/meetings/{room.meeting['id']}/files").json()["files"]
    assert [f["name"] for f in files] == ["checklist.bin"]
    linus = PEOPLE["linus"]
    outsider = httpx.Client(base_url=appliance.url, headers={
        "Authorization": f"Bearer {appliance.login(linus.email, linus.password)['access_token']}"})
    base = f"/api/v1/meetings/{room.meeting['id']}/files"
    assert outsider.get(base).status_code == 403
    assert outsider.get(f"{base}/{files[0]['id']}").status_code == 403
    assert outsider.post(f"{base}?name=x.txt", content=b"x").status_code == 403


def test_chat_both_ways_as_plain_text_with_history_for_a_late_joiner(browser: Browser, appliance: Appliance,
                                                                     room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    ada.send_chat(HOSTILE)
    shown = grace.page.get_by_role("log", name="Chat messages").get_by_role("listitem").last
    expect(shown.locator(".chat-text")).to_have_text(HOSTILE)
    link = shown.get_by_role("link", name="https://example.org/plan?week=12")
    expect(link).to_have_attribute("href", "https://example.org/plan?week=12")  # the full stop is the sentence's
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    grace.send_chat("Looks good to me")
    grace.send_chat("Can we talk after?", to="Ada Lovelace")
    expect(ada.page.get_by_role("log", name="Chat messages").get_by_role("listitem")).to_have_count(4)
    assert ada.chat_messages()[1:] == [
        {"from": "You", "private": None, "text": HOSTILE},
        {"from": "Grace Hopper", "private": None, "text": "Looks good to me"},
        {"from": "Grace Hopper", "private": "Privately to you", "text": "Can we talk after?"}]
    expect(ada.page.get_by_role("textbox", name="Message")).to_have_attribute("maxlength", "4000")

    linus = room.pages["linus"] = MeetingPage(browser, appliance.url, PEOPLE["linus"])
    admit(ada, linus, room.meeting["code"])
    linus.open_panel("Chat")
    expect(linus.page.get_by_role("log", name="Chat messages").get_by_role("listitem")).to_have_count(3)
    assert linus.chat_messages() == [  # the meeting's history, without Grace's private message to Ada
        {"from": "Grace Hopper", "private": None, "text": "checklist.bin"},
        {"from": "Ada Lovelace", "private": None, "text": HOSTILE},
        {"from": "Grace Hopper", "private": None, "text": "Looks good to me"}]
    linus.send_chat("Hi all, sorry I'm late")
    for page in (ada, grace):
        expect(page.page.get_by_role("log", name="Chat messages").get_by_role("listitem").last) \
            .to_contain_text("Hi all, sorry I'm late")
    grace.screenshot("chat.png")

    for page in room.everyone:
        assert page.page.evaluate("window.pwned") is None
        assert page.page.locator("#chat-log script, #chat-log img").count() == 0
        assert page.dialogs == [] and page.errors == []


def test_raised_hands_in_order_and_reactions(room: Room) -> None:
    ada, grace, linus = room.pages["ada"], room.pages["grace"], room.pages["linus"]
    for page in room.everyone:
        page.close_panels()
    for page in (grace, linus):  # Grace first, then Linus
        page.button("Raise hand").click()
        expect(page.button("Raise hand")).to_have_attribute("aria-pressed", "true")

    people = ada.open_panel("People")
    poll(lambda: ada.people() == ["Grace Hopper", "Linus Torvalds", "Ada Lovelace (You)"],
         "the host's list puts the raised hands first, in order", timeout=5)
    rows = people.get_by_role("listitem")
    expect(rows.nth(0).get_by_role("img", name="Hand raised, 1st")).to_be_visible()
    expect(rows.nth(1).get_by_role("img", name="Hand raised, 2nd")).to_be_visible()
    expect(rows.nth(2)).to_contain_text("Host")
    expect(ada.tile("Grace Hopper").get_by_role("img", name="Hand raised, 1st")).to_be_visible()
    expect(ada.tile("Linus Torvalds").get_by_role("img", name="Hand raised, 2nd")).to_be_visible()
    ada.screenshot("participants-hand.png")

    grace.button("Raise hand").click()  # lowers it
    expect(grace.button("Raise hand")).to_have_attribute("aria-pressed", "false")
    poll(lambda: ada.people() == ["Linus Torvalds", "Ada Lovelace (You)", "Grace Hopper"],
         "Linus's hand moves up", timeout=5)
    expect(rows.nth(0).get_by_role("img", name="Hand raised, 1st")).to_be_visible()
    expect(ada.tile("Grace Hopper").get_by_role("img", name="Hand raised, 1st")).to_be_hidden()
    ada.page.get_by_role("button", name="More actions for Linus Torvalds").click()
    ada.page.get_by_role("menuitem", name="Lower hand").click()
    expect(linus.button("Raise hand")).to_have_attribute("aria-pressed", "false")

    for page in room.everyone:
        page.page.evaluate(WATCH_REACTIONS)
    grace.button("Reactions").click()
    grace.page.get_by_role("menuitem", name="Clap").click()
    for page in room.everyone:  # on Grace's tile, everywhere, for a few seconds
        name = "Grace Hopper (You)" if page is grace else "Grace Hopper"
        poll(lambda: page.page.evaluate("window.reactions") == [[name, "👏"]],
             f"{page.person.name} shows Grace's reaction on her tile", timeout=5)
    for page in room.everyone:
        expect(page.page.get_by_role("img", name="Reaction 👏")).to_have_count(0, timeout=5000)


def test_the_host_mutes_someone_asks_them_to_unmute_and_stops_a_camera(room: Room) -> None:
    ada, grace, linus = room.pages["ada"], room.pages["grace"], room.pages["linus"]
    people = ada.open_panel("People")
    people.get_by_role("button", name="Mute Grace Hopper").click()

    expect(grace.button("Microphone")).to_have_attribute("aria-pressed", "false")
    expect(grace.page.get_by_role("alert")).to_have_text("Ada Lovelace turned your microphone off.")
    expect(grace.tile("Grace Hopper (You)").get_by_role("img", name="Microphone off")).to_be_visible()
    for page in (ada, linus):
        expect(page.tile("Grace Hopper").get_by_role("img", name="Microphone off")).to_be_visible()
    row = people.get_by_role("listitem").filter(has_text="Grace Hopper")
    expect(row.get_by_role("img", name="Microphone off")).to_be_visible()

    ada.page.get_by_role("button", name="More actions for Grace Hopper").click()
    ada.page.get_by_role("menuitem", name="Ask to unmute").click()
    request = grace.page.get_by_role("alertdialog")
    expect(request).to_contain_text("Ada Lovelace asks you to unmute your microphone.")
    expect(grace.button("Microphone")).to_have_attribute("aria-pressed", "false")  # asked, never forced
    request.get_by_role("button", name="Unmute").click()
    expect(grace.button("Microphone")).to_have_attribute("aria-pressed", "true")
    for page in (ada, linus):
        expect(page.tile("Grace Hopper").get_by_role("img", name="Microphone off")).to_be_hidden()

    ada.page.get_by_role("button", name="More actions for Grace Hopper").click()
    ada.page.get_by_role("menuitem", name="Stop camera").click()
    expect(grace.button("Camera")).to_have_attribute("aria-pressed", "false")
    expect(ada.tile("Grace Hopper")).to_have_class(NO_VIDEO)
    expect(row.get_by_role("img", name="Camera off")).to_be_visible()
    grace.button("Camera").click()  # she may turn it on again, and the others see her again
    expect(ada.tile("Grace Hopper")).not_to_have_class(NO_VIDEO)
    media_flows(ada, grace)


def test_a_screen_share_is_shown_large_beside_the_speaker_strip(room: Room) -> None:
    ada, grace, linus = room.pages["ada"], room.pages["grace"], room.pages["linus"]
    for page in room.everyone:
        page.close_panels()
    grace.button("Share screen").click()
    expect(grace.button("Share screen")).to_have_attribute("aria-pressed", "true")
    expect(grace.page.get_by_text("You are presenting your screen to everyone")).to_be_visible()

    for page in (ada, linus):
        share = page.page.get_by_role("region", name="Screen share")
        expect(share).to_be_visible()
        expect(share).to_contain_text("Grace Hopper is presenting")
        poll(lambda: (v := page.page.evaluate(SCREEN_VIDEO)) and v["width"] > 0 and v["shown"] > 800,
             f"{page.person.name} shows Grace's screen large", timeout=10)
        widths = page.page.eval_on_selector_all(".tile", "tiles => tiles.map((t) => t.getBoundingClientRect().width)")
        assert len(widths) == 3 and max(widths) < 260, widths  # the camera tiles: a strip beside the share
        # Grace's tile keeps her camera: the screen is not a second picture in it.
        tracks = page.tile("Grace Hopper").evaluate("t => t.querySelector('video').srcObject.getVideoTracks().length")
        assert tracks == 1
    ada.page.locator(".tile.speaking").first.wait_for()
    ada.screenshot("screen-share.png")

    # A second presenter: the latest share is shown, the other one is a click away.
    linus.button("Share screen").click()
    tabs = ada.page.get_by_role("group", name="Shared screens")
    expect(tabs.get_by_role("button", name="Linus Torvalds’s screen")).to_have_attribute("aria-pressed", "true")
    expect(ada.page.get_by_role("region", name="Screen share")).to_contain_text("Linus Torvalds is presenting")
    tabs.get_by_role("button", name="Grace Hopper’s screen").click()
    expect(ada.page.get_by_role("region", name="Screen share")).to_contain_text("Grace Hopper is presenting")
    first = poll(lambda: (v := ada.page.evaluate(SCREEN_VIDEO)) and v["width"] > 0 and v, "Grace's screen", timeout=5)
    poll(lambda: ada.page.evaluate(SCREEN_VIDEO)["frames"] > first["frames"], "Grace's screen keeps moving", timeout=5)

    # Stopping unpublishes: the share leaves every page; sharing again publishes anew.
    linus.button("Share screen").click()
    expect(tabs).to_be_hidden()
    linus.button("Share screen").click()
    expect(ada.page.get_by_role("region", name="Screen share")).to_contain_text("Linus Torvalds is presenting")
    poll(lambda: (v := ada.page.evaluate(SCREEN_VIDEO)) and v["width"] > 0, "Linus's second share", timeout=10)
    linus.button("Share screen").click()
    expect(tabs).to_be_hidden()
    grace.page.get_by_role("button", name="Stop presenting").click()
    expect(grace.button("Share screen")).to_have_attribute("aria-pressed", "false")
    for page in (ada, linus):
        expect(page.page.get_by_role("region", name="Screen share")).to_be_hidden()
    assert all(not page.errors for page in room.everyone)


def cameras_arriving(page: MeetingPage, seconds: float = 2.0) -> set[str]:
    """The names on the remote tiles whose camera frames the page decodes over ``seconds``."""
    before = {t["name"]: t["frames"] for t in page.remote_tiles()}
    page.page.wait_for_timeout(seconds * 1000)
    return {t["name"] for t in page.remote_tiles() if t["frames"] > before.get(t["name"], 0)}


def test_a_camera_not_shown_is_not_received(room: Room) -> None:
    """Low-bandwidth mode: Ada's page receives only the camera of whoever spoke last, the other
    tile shows the name; the camera follows the floor. A tile scrolled out of the presenter strip
    receives nothing either. Each comes back within a second and a half of being shown."""
    ada, grace, linus = room.pages["ada"], room.pages["grace"], room.pages["linus"]
    for page in (ada, linus):  # only Grace's microphone (Chromium's beep) is on: she has the floor
        page.button("Microphone").click()
        expect(page.button("Microphone")).to_have_attribute("aria-pressed", "false")
    expect(ada.tile("Grace Hopper")).to_have_class(re.compile(r"(^|\s)speaking(\s|$)"))
    assert cameras_arriving(ada) == {"Grace Hopper", "Linus Torvalds"}

    low = ada.page.get_by_role("button", name="Low bandwidth")
    low.click()
    expect(low).to_have_attribute("aria-pressed", "true")
    expect(ada.tile("Linus Torvalds")).to_have_class(NO_VIDEO)
    expect(ada.tile("Grace Hopper")).not_to_have_class(NO_VIDEO)
    ada.page.wait_for_timeout(500)  # what was on its way
    assert cameras_arriving(ada) == {"Grace Hopper"}
    ada.screenshot("low-bandwidth.png")

    linus.button("Microphone").click()  # the floor moves to Linus, and his camera with it
    grace.button("Microphone").click()
    expect(ada.tile("Linus Torvalds")).to_have_class(re.compile(r"(^|\s)speaking(\s|$)"), timeout=10_000)
    poll(lambda: cameras_arriving(ada, 1.0) == {"Linus Torvalds"}, "only Linus's camera, once he speaks", timeout=5)
    expect(ada.tile("Grace Hopper")).to_have_class(NO_VIDEO)

    low.click()
    expect(low).to_have_attribute("aria-pressed", "false")
    poll(lambda: cameras_arriving(ada, 1.5) == {"Grace Hopper", "Linus Torvalds"}, "both cameras again", timeout=5)
    expect(ada.tile("Grace Hopper")).not_to_have_class(NO_VIDEO)

    # Grace presents: the tiles are a strip beside the share; in a window too short for three
    # (even at their smallest) Linus's tile is scrolled out of it, and nothing of his camera comes.
    ada.page.set_viewport_size({"width": 1280, "height": 240})
    grace.button("Share screen").click()
    expect(ada.page.get_by_role("region", name="Screen share")).to_be_visible()
    out_of_sight = """name => {
      const strip = document.querySelector('#grid').getBoundingClientRect();
      const tile = document.querySelector(`.tile[aria-label="${name}"]`).getBoundingClientRect();
      return tile.top >= strip.bottom || tile.bottom <= strip.top;
    }"""
    poll(lambda: ada.page.evaluate(out_of_sight, "Linus Torvalds"), "Linus's tile scrolled out of the strip", timeout=5)
    ada.page.wait_for_timeout(500)
    assert cameras_arriving(ada) == {"Grace Hopper"}
    ada.page.locator("#grid").evaluate("grid => { grid.scrollTop = grid.scrollHeight; }")
    poll(lambda: "Linus Torvalds" in cameras_arriving(ada, 0.5), "Linus's camera once his tile is in sight",
         timeout=1.5)
    grace.page.get_by_role("button", name="Stop presenting").click()
    ada.page.set_viewport_size({"width": 1280, "height": 720})
    for page in (ada, grace):
        page.button("Microphone").click()
        expect(page.button("Microphone")).to_have_attribute("aria-pressed", "true")
    assert all(not page.errors for page in room.everyone)


def test_the_host_removes_someone(room: Room) -> None:
    ada, grace, linus = room.pages["ada"], room.pages["grace"], room.pages["linus"]
    ada.open_panel("People")
    ada.page.get_by_role("button", name="More actions for Linus Torvalds").click()
    ada.page.get_by_role("menuitem", name="Remove from meeting").click()

    expect(linus.page.get_by_role("heading", name="You were removed from the meeting")).to_be_visible()
    expect(linus.page.get_by_text("Ada Lovelace removed you.")).to_be_visible()
    for page in (ada, grace):
        expect(page.tile("Linus Torvalds")).to_have_count(0)
        expect(page.page.get_by_text("2 participants")).to_be_visible()
    assert ada.people() == ["Ada Lovelace (You)", "Grace Hopper"]
    ada.page.get_by_role("button", name="More actions for Grace Hopper").focus()
    ada.page.keyboard.press("Escape")  # closes the panel, back to the button that opened it
    expect(ada.page.get_by_role("complementary", name="People", exact=True)).to_be_hidden()
    expect(ada.button("People")).to_be_focused()


def test_a_moderator_locks_and_the_host_ends_the_meeting_for_everyone(room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    people = ada.open_panel("People")
    grace_people = grace.open_panel("People")
    expect(grace_people.get_by_role("button", name="Lock meeting")).to_be_hidden()
    ada.page.get_by_role("button", name="More actions for Grace Hopper").click()
    ada.page.get_by_role("menuitem", name="Make moderator").click()
    expect(people.get_by_role("listitem").filter(has_text="Grace Hopper")).to_contain_text("Moderator")

    grace_people.get_by_role("button", name="Lock meeting").click()
    for page in (ada, grace):
        expect(page.page.get_by_text("Locked", exact=True)).to_be_visible()
    expect(people.get_by_role("button", name="Unlock meeting")).to_be_visible()

    people.get_by_role("button", name="End meeting for all").click()
    people.get_by_role("button", name="End for all").click()
    for page in (ada, grace):
        expect(page.page.get_by_role("heading", name="This meeting has ended")).to_be_visible()
        assert page.errors == []
