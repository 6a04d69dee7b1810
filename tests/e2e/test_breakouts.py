"""Breakout rooms in real Chromium against the real appliance: Ada hosts and stays in the main
room, Grace and Linus go to Room 1 and see and hear each other there, while Ada's page receives
none of their media; when the timer ends everyone is back in the main room with everyone's media."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage, media_flows, poll
from .test_accessibility import AXE, SERIOUS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Everything the page's peer connection has received so far: video frames decoded, audio packets.
RECEIVED = """async () => {
  let frames = 0, packets = 0;
  (await window.confmeet.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") { frames += s.framesDecoded || 0; packets += s.kind === "audio" ? s.packetsReceived : 0; }
  });
  return {frames, packets};
}"""


# What a page has received for one participant's tile: frames decoded, audio packets. Summed over
# every inbound stream of the tile's tracks: back from a breakout room, the same browser tracks come
# on new m-lines beside the stopped ones, and both report the same track identifier.
TILE_RECEIVED = """async (id) => {
  const tile = document.querySelector(`.tile[data-participant="${id}"]`);
  const tracks = new Set((tile?.querySelector("video").srcObject?.getTracks() ?? []).map((t) => t.id));
  let frames = 0, packets = 0;
  (await window.confmeet.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && tracks.has(s.trackIdentifier)) {
      frames += s.framesDecoded || 0; packets += s.kind === "audio" ? s.packetsReceived : 0;
    }
  });
  return {frames, packets};
}"""


def flowing(me: MeetingPage, other: MeetingPage) -> None:
    """``me``'s tile of ``other`` shows their picture and gets their sound, and both keep coming."""
    def received() -> dict:
        return me.page.evaluate(TILE_RECEIVED, other.participant_id)

    first = poll(lambda: (r := received())["frames"] > 0 and r["packets"] > 0 and r,
                 f"{me.person.name} shows and hears {other.person.name}", timeout=15)
    poll(lambda: (r := received())["frames"] > first["frames"] and r["packets"] > first["packets"],
         f"{other.person.name}'s frames and audio keep arriving at {me.person.name}", timeout=5)


# Every notice the page shows, however briefly.
WATCH_NOTICES = """() => {
  window.notices = [];
  const notice = document.querySelector("#notice");
  new MutationObserver(() => { if (!notice.hidden) window.notices.push(notice.textContent); })
    .observe(notice, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


@pytest.fixture
def pages(browser: Browser, appliance: Appliance) -> Iterator[dict[str, MeetingPage]]:
    opened = {who: MeetingPage(browser, appliance.url, PEOPLE[who]) for who in ("ada", "grace", "linus")}
    for who in ("ada", "grace"):  # axe-core in their pages (an init script: the CSP allows no other)
        opened[who].context.add_init_script(path=str(AXE))
    yield opened
    for page in opened.values():
        page.close()


def test_a_breakout_room_has_its_own_media_until_the_timer_brings_everyone_back(
        host: httpx.Client, pages: dict[str, MeetingPage]) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Workshop"})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    ada, grace, linus = pages.values()
    for page in pages.values():
        page.join(code)
        page.page.evaluate(WATCH_NOTICES)
    media_flows(ada, grace)
    media_flows(ada, linus)

    # Ada makes two rooms and puts Grace and Linus in the first, in her panel.
    panel = ada.open_panel("Breakout rooms")
    panel.get_by_role("button", name="Create rooms").click()
    for who in (grace, linus):
        panel.get_by_label(f"Breakout room for {who.person.name}").select_option(label="Room 1")
        expect(panel.get_by_label(f"Breakout room for {who.person.name}")).to_have_value("r1")
    # Open with a 30 s timer (the panel takes whole minutes: the protocol takes fractions).
    ada.page.evaluate("() => window.confmeet.signaling.request('breakout_open', {minutes: 0.5})")

    for me, other in ((grace, linus), (linus, grace)):
        expect(me.page.locator("#breakout-banner")).to_contain_text("You are in Room 1")
        expect(me.tile(ada.person.name)).to_have_count(0)  # the tiles are the room's
        media_flows(me, other)
    expect(ada.tile(grace.person.name)).to_have_count(0)
    expect(ada.tile(linus.person.name)).to_have_count(0)
    rooms = panel.get_by_role("list", name="Breakout rooms")
    expect(rooms.get_by_role("listitem").filter(has_text="Room 1")).to_contain_text("Grace Hopper, Linus Torvalds")
    # Ada's page gets nothing of theirs any more: what it has received stands still.
    poll(lambda: ada.remote_tiles() == [], "Ada's page has no remote tiles", timeout=10)
    before = ada.page.evaluate(RECEIVED)
    ada.page.wait_for_timeout(2000)
    assert ada.page.evaluate(RECEIVED) == before
    ada.screenshot("breakouts.png")
    grace.screenshot("breakout-room.png")
    for me in (ada, grace):  # the panel and the banner: no serious or critical accessibility problem
        assert me.page.evaluate(SERIOUS) == [], me.person.name

    # The timer runs down on the banner; at its end everyone is back in the main room with everyone's media.
    expect(grace.page.locator("#breakout-banner .breakout-timer")).to_contain_text(" left")
    for me in (grace, linus):
        expect(me.page.locator("#breakout-banner")).to_be_hidden(timeout=40_000)
    for me, other in ((ada, grace), (ada, linus), (grace, ada), (grace, linus), (linus, ada), (linus, grace)):
        flowing(me, other)
    for page in pages.values():  # moving never showed a negotiation failure (an answer to the room left)
        assert not page.errors and not page.dialogs, (page.errors, page.dialogs)
        notices = page.page.evaluate("window.notices")
        assert not [n for n in notices if "failed" in n], notices
    assert any("close in" in n for n in grace.page.evaluate("window.notices"))  # the timer's warning
