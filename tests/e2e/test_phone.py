"""The meeting page on a phone and from the keyboard, in real Chromium against the real appliance.

Ada joins from a phone (390x844, touch, a mobile browser without screen sharing) while Grace, on a
desktop, sends her camera: Ada sees Grace's picture, taps mute and Grace and the server see it,
reaches every control, opens the side panels over the whole screen, and pages through the tiles
(four at most on a page) with the page buttons and a swipe, held upright and on its side. Grace
then drives the meeting from her keyboard: the shortcuts, the help dialog that lists them, and
none of it while she types. The tests run in order and share one meeting."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from appliance_server import Appliance
from cli.client.signaling import SignalingClient, signaling_url

from .meeting_page import PEOPLE, REMOTE_TILES, MeetingPage, live, media_flows, poll

pytestmark = pytest.mark.browser

PORTRAIT = {"width": 390, "height": 844}
LANDSCAPE = {"width": 844, "height": 390}
# A phone's browser: touch, the mobile viewport, and no getDisplayMedia (no screen sharing).
PHONE = {"viewport": PORTRAIT, "has_touch": True, "is_mobile": True, "device_scale_factor": 2}
NO_SCREEN_SHARING = "delete MediaDevices.prototype.getDisplayMedia"
SILENCE_DBOV = -127
OTHERS = ["Hedy Lamarr", "Alan Turing", "Katherine Johnson", "Margaret Hamilton"]  # guests without media

# What has the focus, and whether it shows a ring (an outline of 2 px or more).
FOCUSED = """() => {
  const style = getComputedStyle(document.activeElement);
  return {id: document.activeElement.id, ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2};
}"""
CONTROL_ORDER = ["mic", "cam", "share", "hand", "react", "leave", "low-bandwidth", "people-button", "chat-button"]
# Each shown button of the control bar and the page buttons that is not wholly in the viewport or
# is smaller than a fingertip (40 px), and how far the page scrolls sideways.
OUT_OF_REACH = """() => {
  const buttons = [...document.querySelectorAll('.controlbar button, .grid-pages button')]
    .filter((b) => b.getClientRects().length);
  const out = buttons.map((b) => [b.id || b.getAttribute('aria-label'), b.getBoundingClientRect().toJSON()])
    .filter(([, r]) => r.left < 0 || r.top < 0 || r.right > innerWidth || r.bottom > innerHeight
                       || r.width < 40 || r.height < 40);
  return {buttons: buttons.length, out, sideways: document.documentElement.scrollWidth - innerWidth};
}"""
# The tiles on show: each one's name, and whether it lies wholly above the control bar and in the window.
SHOWN_TILES = """() => {
  const bar = document.querySelector('.controlbar').getBoundingClientRect();
  return [...document.querySelectorAll('.tile')].filter((t) => t.getClientRects().length).map((t) => {
    const r = t.getBoundingClientRect();
    return {name: t.getAttribute('aria-label'), width: r.width, height: r.height,
            fits: r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= bar.top + 1};
  });
}"""


@dataclass
class Room:
    meeting: dict
    pages: dict[str, MeetingPage] = field(default_factory=dict)


@pytest.fixture(scope="module")
def room(host: httpx.Client) -> Iterator[Room]:
    r = host.post("/api/v1/meetings", json={"title": "Field trip", "allow_guests": True})
    assert r.status_code == 201, r.text
    room = Room(r.json())
    yield room
    for page in room.pages.values():
        page.close()


@contextmanager
def guests_in(base_url: str, code: str, names: list[str]) -> Iterator[None]:
    """People in the meeting with no media: a guest pass and a signaling connection each (the
    project's SignalingClient, which pings), in an event loop of their own until the block ends,
    then left."""
    passes = []
    for name in names:
        r = httpx.post(f"{base_url}/api/v1/meetings/by-code/{code}/guest", json={"name": name})
        assert r.status_code in (200, 201), r.text
        passes.append((name, r.json()["guest_token"]))

    async def join(name: str, token: str) -> SignalingClient:
        client = await SignalingClient.connect(signaling_url(base_url, token), lambda _: None, lambda _: None)
        await client.request({"type": "join", "meeting": code, "name": name}, check=True)
        return client

    async def leave(client: SignalingClient) -> None:
        await client.request({"type": "leave"}, timeout=5)
        await client.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(works: list) -> list:  # coroutines, run together in the loop: their results
        async def together() -> list:
            return await asyncio.gather(*works)
        return asyncio.run_coroutine_threadsafe(together(), loop).result(30)

    try:
        clients = run([join(name, token) for name, token in passes])
        try:
            yield
        finally:
            run([leave(client) for client in clients])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def out_of_reach(page: Page) -> dict:
    found = page.evaluate(OUT_OF_REACH)
    assert found["buttons"] >= 5 and found["out"] == [] and found["sideways"] <= 0, found
    return found


def shown_tiles(page: Page, count: int) -> list[dict]:
    """The tiles on show, once there are ``count``: all of them wholly in sight, none tiny."""
    tiles = poll(lambda: (shown := page.evaluate(SHOWN_TILES)) and len(shown) == count and shown,
                 f"{count} tiles on show", timeout=10)
    assert all(t["fits"] and t["width"] >= 120 for t in tiles), tiles
    return tiles


def swipe(page: Page, dx: int) -> None:
    """A finger across the tiles, ``dx`` pixels sideways (negative: to the left)."""
    box = page.locator("#grid").bounding_box()
    x, y = box["x"] + box["width"] / 2 - dx / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for step in range(1, 6):
            time.sleep(0.02)
            point = {"x": x + dx * step / 5, "y": y}
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    finally:
        cdp.detach()


def turn(page: Page, size: dict[str, int]) -> None:
    """The phone turned to ``size``, once touches reach the page again (Chromium drops the first
    ones after its emulated screen changes size): a tap in the grid's empty corner, until one does."""
    page.set_viewport_size(size)
    page.evaluate("() => addEventListener('touchstart', () => { window.touched = true; }, {passive: true})")
    page.evaluate("window.touched = false")

    def touched() -> bool:
        page.touchscreen.tap(4, 4)
        return page.evaluate("window.touched")

    poll(touched, "a touch reaches the turned page", timeout=5, interval=0.1)


def camera_moving(page: Page, name: str) -> bool:
    """Whether frames of ``name``'s camera keep being decoded (over half a second)."""
    def frames() -> int:
        return next(t["frames"] for t in page.evaluate(REMOTE_TILES) if t["name"] == name)

    before = frames()
    page.wait_for_timeout(500)
    return frames() > before


def pages_of(page: Page, count: int, receiving: str = "") -> None:
    """With six people, four tiles on page one and two on page two: by button, then by swipe.
    ``receiving``: someone on page one whose camera the page receives."""
    nav = page.get_by_role("navigation", name="Pages of participants")
    expect(nav).to_be_visible()
    expect(nav).to_contain_text(f"1 of {count}")
    first = {t["name"] for t in shown_tiles(page, 4)}
    expect(nav.get_by_role("button", name="Previous participants")).to_be_disabled()
    nav.get_by_role("button", name="Next participants").tap()
    expect(nav).to_contain_text(f"2 of {count}")
    second = {t["name"] for t in shown_tiles(page, 2)}
    assert first.isdisjoint(second) and len(first | second) == 6, (first, second)
    if receiving:  # a camera off the page is not received (views.js); its page back, it is again
        poll(lambda: not camera_moving(page, receiving), f"{receiving}'s camera paused off the page", timeout=10)
    expect(nav.get_by_role("button", name="Next participants")).to_be_disabled()
    swipe(page, 200)  # to the right: the page before
    expect(nav).to_contain_text(f"1 of {count}")
    assert {t["name"] for t in shown_tiles(page, 4)} == first
    if receiving:
        poll(lambda: camera_moving(page, receiving), f"{receiving}'s camera back on its page", timeout=10)
    swipe(page, -200)
    expect(nav).to_contain_text(f"2 of {count}")
    swipe(page, 200)
    expect(nav).to_contain_text(f"1 of {count}")


def test_a_phone_joins_sees_video_mutes_and_pages_through_the_tiles(
        browser: Browser, appliance: Appliance, host: httpx.Client, room: Room) -> None:
    code = room.meeting["code"]
    grace = room.pages["grace"] = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    grace.join(code)
    ada = room.pages["ada"] = MeetingPage(browser, appliance.url, PEOPLE["ada"], **PHONE)
    ada.context.add_init_script(NO_SCREEN_SHARING)
    ada.join(code)
    phone = ada.page

    media_flows(ada, grace)  # Grace's picture plays on the phone
    shown_tiles(phone, 2)
    expect(phone.get_by_role("navigation", name="Pages of participants")).to_be_hidden()
    expect(phone.locator("#share")).to_be_hidden()  # no getDisplayMedia: no share button
    expect(grace.button("Share screen")).to_be_visible()
    out_of_reach(phone)

    # Ada taps mute: her button and Grace's view of her tile say so, and the server hears silence.
    def level() -> float | None:
        return live(host, room.meeting)[ada.participant_id]["audio_level_dbov"]

    poll(lambda: (level() or SILENCE_DBOV) > SILENCE_DBOV, "the server hears Ada's microphone", timeout=10)
    phone.locator("#mic").tap()
    expect(phone.locator("#mic")).to_have_attribute("aria-pressed", "false")
    expect(grace.tile(PEOPLE["ada"].name).get_by_role("img", name="Microphone off")).to_be_visible()
    poll(lambda: level() == SILENCE_DBOV, "the server hears silence from Ada", timeout=5)

    # The side panels take the whole screen, and close with their button.
    for name in ("People", "Chat"):
        ada.button(name).tap()
        panel = phone.get_by_role("complementary", name=name, exact=True)
        expect(panel).to_be_visible()
        assert panel.bounding_box() == {"x": 0, "y": 0, **{k: float(v) for k, v in PORTRAIT.items()}}
        panel.get_by_role("button", name=f"Close {name.lower()}").tap()
        expect(panel).to_be_hidden()

    with guests_in(appliance.url, code, OTHERS):
        expect(phone.get_by_text("6 participants")).to_be_visible()
        pages_of(phone, 2, receiving=PEOPLE["grace"].name)
        out_of_reach(phone)
        tiles = shown_tiles(phone, 4)
        assert all(t["height"] > t["width"] for t in tiles), tiles  # upright tiles on an upright phone
        ada.screenshot("meeting-phone.png")

        turn(phone, LANDSCAPE)
        tiles = shown_tiles(phone, 4)
        assert all(t["width"] > t["height"] for t in tiles), tiles
        out_of_reach(phone)
        ada.screenshot("meeting-phone-landscape.png")
        pages_of(phone, 2)
        turn(phone, PORTRAIT)

    expect(phone.get_by_text("2 participants")).to_be_visible()
    expect(phone.get_by_role("navigation", name="Pages of participants")).to_be_hidden()
    shown_tiles(phone, 2)
    phone.locator("#mic").tap()
    expect(phone.locator("#mic")).to_have_attribute("aria-pressed", "true")
    expect(grace.tile(PEOPLE["ada"].name).get_by_role("img", name="Microphone off")).to_be_hidden()
    assert ada.errors == [] and grace.errors == []


def test_keyboard_shortcuts_and_their_help(room: Room) -> None:
    grace, ada = room.pages["grace"], room.pages["ada"]
    page = grace.page
    mic, cam, hand = page.locator("#mic"), page.locator("#cam"), page.locator("#hand")
    page.evaluate("document.activeElement.blur()")
    grace_on_ada = ada.tile(PEOPLE["grace"].name)

    page.keyboard.press("m")
    expect(mic).to_have_attribute("aria-pressed", "false")
    expect(grace_on_ada.get_by_role("img", name="Microphone off")).to_be_visible()
    page.keyboard.press("M")
    expect(mic).to_have_attribute("aria-pressed", "true")
    expect(grace_on_ada.get_by_role("img", name="Microphone off")).to_be_hidden()

    page.keyboard.press("v")
    expect(cam).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("v")
    expect(cam).to_have_attribute("aria-pressed", "true")

    page.keyboard.press("h")
    expect(hand).to_have_attribute("aria-pressed", "true")
    expect(grace_on_ada.get_by_role("img", name=re.compile("^Hand raised"))).to_be_visible()
    page.keyboard.press("h")
    expect(hand).to_have_attribute("aria-pressed", "false")

    # C opens the chat with the message box ready; typing there is typing, not shortcuts.
    page.keyboard.press("c")
    box = page.get_by_role("textbox", name="Message")
    expect(box).to_be_focused()
    page.keyboard.type("mvhc?")
    expect(box).to_have_value("mvhc?")
    expect(mic).to_have_attribute("aria-pressed", "true")
    expect(cam).to_have_attribute("aria-pressed", "true")
    expect(hand).to_have_attribute("aria-pressed", "false")
    expect(page.get_by_role("dialog")).to_be_hidden()
    box.fill("")
    page.keyboard.press("Escape")  # the panel closes; focus goes back to the Chat button
    expect(page.get_by_role("complementary", name="Chat", exact=True)).to_be_hidden()
    expect(grace.button("Chat")).to_be_focused()

    # "?" opens the help: a modal dialog that takes the focus, and gives it back on Escape.
    page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_visible()
    for key, action in (("M", "Turn the microphone on or off"), ("V", "Turn the camera on or off"),
                        ("H", "Raise or lower your hand"), ("C", "Open or close the chat"),
                        ("?", "Show these shortcuts")):
        expect(dialog.get_by_role("definition").filter(has_text=action).first).to_be_visible()
        expect(dialog.get_by_role("term").filter(has_text=key).first).to_be_visible()
    expect(dialog.get_by_role("button", name="Close")).to_be_focused()
    page.keyboard.press("m")  # nothing behind the dialog reacts
    expect(mic).to_have_attribute("aria-pressed", "true")
    grace.screenshot("meeting-help.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(grace.button("Chat")).to_be_focused()

    # Single keys can be turned off (remembered); Ctrl+/ still opens the help.
    page.keyboard.press("?")
    dialog.get_by_label("Single-key shortcuts (M, V, H, C, ?)").uncheck()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    page.keyboard.press("m")
    page.keyboard.press("?")
    expect(dialog).to_be_hidden()
    expect(mic).to_have_attribute("aria-pressed", "true")
    expect(mic).not_to_have_attribute("aria-keyshortcuts", "M")
    page.keyboard.press("ControlOrMeta+/")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Single-key shortcuts (M, V, H, C, ?)").check()
    page.keyboard.press("Escape")
    expect(mic).to_have_attribute("aria-keyshortcuts", "M")
    page.keyboard.press("m")
    expect(mic).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("m")
    expect(mic).to_have_attribute("aria-pressed", "true")

    # Tab goes through the control bar in the order it shows, each control with a focus ring.
    mic.focus()
    visited = []
    while (focused := page.evaluate(FOCUSED))["id"] != "chat-button" and len(visited) < 20:
        visited.append(focused)
        page.keyboard.press("Tab")
    order = [f["id"] for f in visited]
    assert [i for i in order if i in CONTROL_ORDER] == CONTROL_ORDER[:-1], order
    assert all(f["ring"] for f in visited + [focused]), visited + [focused]
    assert grace.errors == []


def test_a_narrow_window_moves_the_least_used_buttons_into_more(room: Room) -> None:
    grace = room.pages["grace"]
    page = grace.page
    bar, more = page.locator(".controlbar"), page.get_by_role("button", name="More")
    popover = page.locator("#more-popover")
    out_of_window = "() => [...document.querySelectorAll('.controlbar button')].filter((b) => b.getClientRects().length)" \
                    ".filter((b) => { const r = b.getBoundingClientRect(); return r.left < 0 || r.right > innerWidth; })" \
                    ".map((b) => b.id)"
    try:
        expect(more).to_be_hidden()  # 1280 px: everything fits
        page.set_viewport_size({"width": 900, "height": 720})
        expect(more).to_be_visible()
        assert page.evaluate(out_of_window) == []
        expect(bar.locator(".meeting-status").get_by_role("button", name="Low bandwidth")).to_have_count(0)
        more.click()
        expect(popover).to_be_visible()
        popover.get_by_role("button", name="Low bandwidth").click()  # the same button, named in full
        expect(popover).to_be_hidden()
        page.set_viewport_size({"width": 1280, "height": 720})
        expect(more).to_be_hidden()
        low = bar.locator(".meeting-status").get_by_role("button", name="Low bandwidth")
        expect(low).to_have_attribute("aria-pressed", "true")  # back in the bar, as it was left
        low.click()
        expect(low).to_have_attribute("aria-pressed", "false")
    finally:
        page.set_viewport_size({"width": 1280, "height": 720})
