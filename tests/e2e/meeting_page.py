"""The meeting page driven as a person would, plus what a test reads back from it: the DOM and the
page's RTCPeerConnection statistics (window.confmeet.pc)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from playwright.sync_api import Browser, Locator, Page, expect

T = TypeVar("T")

# The screenshots in docs/screenshots come from the browser tests: set CONFMEET_SCREENSHOTS=docs/screenshots
# to refresh them; otherwise they go to one scratch directory (each run overwrites the last), and
# the tree stays clean.
SCREENSHOTS = Path(os.environ.get("CONFMEET_SCREENSHOTS") or Path(tempfile.gettempdir()) / "confmeet-screenshots")
SCREENSHOTS.mkdir(parents=True, exist_ok=True)

# Each remote tile: who, the picture's size, frames decoded and audio packets received for it.
REMOTE_TILES = """async () => {
  const inbound = {};
  (await window.confmeet.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") inbound[s.trackIdentifier] = s; });
  return [...document.querySelectorAll(".tile:not(.self)")].map((tile) => {
    const video = tile.querySelector("video");
    const stream = video.srcObject;
    const v = stream?.getVideoTracks()[0], a = stream?.getAudioTracks()[0];
    return {participant: tile.dataset.participant, name: tile.getAttribute("aria-label"),
            width: video.videoWidth, frames: (v && inbound[v.id]?.framesDecoded) || 0,
            audio_packets: (a && inbound[a.id]?.packetsReceived) || 0};
  });
}"""


# Record (Date.now()) when a participant's tile leaves the page, to time it without polling lag.
WATCH_TILE = """id => {
  window.tileGoneAt ??= {};
  const gone = () => !document.querySelector(`.tile[data-participant="${id}"]`);
  const observer = new MutationObserver(() => {
    if (gone()) { window.tileGoneAt[id] ??= Date.now(); observer.disconnect(); }
  });
  observer.observe(document.body, {childList: true, subtree: true});
}"""
# Record (Date.now()) when a button is clicked, as the page sees it.
WATCH_CLICK = "button => button.addEventListener('click', () => { window.clickedAt = Date.now(); }, {capture: true})"


@dataclass
class Person:
    email: str
    password: str
    name: str

    @property
    def shown_as(self) -> str:
        """How the others' pages name this person: a guest (no account) is marked."""
        return self.name if self.email else f"{self.name} (guest)"


PEOPLE = {"ada": Person("ada@example.com", "ada password 1", "Ada Lovelace"),
          "grace": Person("grace@example.com", "grace password 1", "Grace Hopper"),
          "linus": Person("linus@example.com", "linus password 1", "Linus Torvalds")}


def poll(check: Callable[[], T], what: str, timeout: float | None = None, deadline: float | None = None,
         interval: float = 0.05) -> T:
    """``check()``'s first truthy result, by ``deadline`` (time.monotonic) or within ``timeout`` s."""
    started = time.monotonic()
    deadline = deadline if deadline is not None else started + (timeout or 0)
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {time.monotonic() - started:.1f} s (last: {result!r})")
        time.sleep(interval)


# The one remote video the page receives: its size and decoding counters.
INBOUND = """async () => {
  let video = null;
  (await window.confmeet.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") video = s; });
  return video && {width: video.frameWidth || 0, frames: video.framesDecoded || 0,
                   keyframes: video.keyFramesDecoded || 0, dropped: video.framesDropped || 0,
                   freezes: video.freezeCount || 0, frozen_s: video.totalFreezesDuration || 0,
                   plis: video.pliCount || 0};
}"""

class MeetingPage:
    def __init__(self, browser: Browser, base_url: str, person: Person, **context: Any) -> None:
        """``context``: options of the browser context over the default (a 1280x720 desktop)."""
        self.person = person
        self.context = browser.new_context(**{"viewport": {"width": 1280, "height": 720}, **context}, base_url=base_url)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.dialogs: list[str] = []  # alert(), confirm(), ...: the page never opens one
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))

    def open(self, code: str) -> None:
        """Open the meeting's link and sign in; the pre-join screen shows."""
        self.page.goto(f"/m/{code}")
        self.page.get_by_role("button", name="Sign in").click()  # "Have an account? Sign in"
        self.page.get_by_label("E-mail").fill(self.person.email)
        self.page.get_by_label("Password", exact=True).fill(self.person.password)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("button", name="Join", exact=True)).to_be_visible()

    def open_as_guest(self, code: str, password: str = "") -> None:
        """Open the meeting's link without an account and ask to join with a name (and a password)."""
        self.page.goto(f"/m/{code}")
        self.type_name()
        if password:
            self.page.get_by_label("Meeting password").fill(password)
        self.page.get_by_role("button", name="Join as guest").click()

    def preview_running(self) -> bool:
        return self.page.evaluate("document.querySelector('#preview').videoWidth > 0")

    def type_name(self) -> None:
        self.page.get_by_label("Your name").fill(self.person.name)

    def click_join(self) -> None:
        self.page.get_by_role("button", name="Join").click()

    def join(self, code: str, publish: bool = True) -> None:
        """Open, sign in and join; ``publish=False``: with the microphone and camera off."""
        self.open(code)
        if not publish:
            self.page.locator("#pre-mic").click()
            self.page.locator("#pre-cam").click()
        self.type_name()
        self.click_join()
        expect(self.page.get_by_role("button", name="Leave")).to_be_visible()

    def knock(self, code: str) -> None:
        """Ask to join a meeting with a waiting room: the page waits to be let in."""
        self.open(code)
        self.type_name()
        self.click_join()
        expect(self.page.get_by_role("button", name="Waiting to be let in…")).to_be_disabled()

    def button(self, name: str) -> Locator:
        return self.page.get_by_role("button", name=name, exact=True)

    def open_panel(self, name: str) -> Locator:
        """Open the side panel "People" or "Chat" (the button in the control bar) and return it."""
        button = self.button(name)
        if button.get_attribute("aria-expanded") != "true":
            button.click()
        panel = self.page.get_by_role("complementary", name=name, exact=True)
        expect(panel).to_be_visible()
        return panel

    def close_panels(self) -> None:
        for name in ("People", "Chat"):
            if self.button(name).get_attribute("aria-expanded") == "true":
                self.button(name).click()

    def send_chat(self, text: str, to: str = "Everyone") -> None:
        panel = self.open_panel("Chat")
        panel.get_by_label("Send to").select_option(label=to)
        panel.get_by_role("textbox", name="Message").fill(text)
        panel.get_by_role("textbox", name="Message").press("Enter")
        expect(panel.get_by_role("textbox", name="Message")).to_have_value("")

    def chat_messages(self) -> list[dict]:
        """The chat as shown: sender, the private note if any, and the message's text."""
        return self.page.eval_on_selector_all("#chat-log > li", """items => items.map((li) => ({
            from: li.querySelector('.chat-from').textContent,
            private: li.querySelector('.chat-private')?.textContent ?? null,
            text: (li.querySelector('.chat-text') ?? li.querySelector('.chat-file-name')).textContent}))""")

    def people(self) -> list[str]:
        """The participant list's names, in its order (open the People panel first)."""
        return self.page.get_by_role("complementary", name="People", exact=True).get_by_role("listitem") \
            .evaluate_all("items => items.map((li) => li.getAttribute('aria-label'))")

    def screenshot(self, name: str) -> None:
        """A picture for docs/screenshots (see SCREENSHOTS), once passing notices are gone."""
        expect(self.page.locator("#notice")).to_be_hidden(timeout=6000)
        self.page.screenshot(path=SCREENSHOTS / name)

    def tile(self, name: str) -> Locator:
        """A participant's tile on the stage (by name, "… (You)" for one's own)."""
        return self.page.get_by_role("list", name="Participants").get_by_role("listitem", name=name, exact=True)

    @property
    def participant_id(self) -> str:
        return self.page.locator(".tile.self").get_attribute("data-participant")

    def remote_tiles(self) -> list[dict]:
        return self.page.evaluate(REMOTE_TILES)

    def tile_ids(self) -> set[str]:
        return set(self.page.eval_on_selector_all(".tile", "tiles => tiles.map(t => t.dataset.participant)"))

    def watch_tile(self, participant_id: str) -> None:
        self.page.evaluate(WATCH_TILE, participant_id)

    def tile_gone_at(self, participant_id: str, timeout: float = 10) -> float:
        """When (ms since the epoch) the participant's tile went away; fails after ``timeout``."""
        return poll(lambda: self.page.evaluate(f"window.tileGoneAt[{participant_id!r}]"),
                    f"{self.person.name} drops the tile of {participant_id}", timeout=timeout)

    def click_timed(self, name: str) -> float:
        """Click a button; when (ms since the epoch) the page got the click."""
        button = self.page.get_by_role("button", name=name, exact=True)
        button.evaluate(WATCH_CLICK)
        button.click()
        return self.page.evaluate("window.clickedAt")

    def close(self) -> None:
        self.context.close()


def live(host: httpx.Client, meeting: dict) -> dict[str, dict]:
    """Who the server has in ``meeting`` now (asked by its host), by participant id."""
    r = host.get(f"/api/v1/meetings/{meeting['id']}/live")
    assert r.status_code == 200, r.text
    return {p["id"]: p for p in r.json()["participants"]}


def media_flows(me: MeetingPage, other: MeetingPage) -> None:
    """``me`` shows ``other``'s picture and receives their sound, and both keep coming."""
    def tile() -> dict | None:
        return next((t for t in me.remote_tiles() if t["participant"] == other.participant_id), None)

    try:
        first = poll(lambda: (t := tile()) and t["width"] > 0 and t["frames"] > 0 and t["audio_packets"] > 0 and t,
                     f"{me.person.name} shows and hears {other.person.name}", timeout=10)
    except AssertionError as failed:
        raise AssertionError(f"{failed}; the tile: {tile()}") from None
    assert first["name"] == other.person.shown_as
    poll(lambda: (t := tile()) and t["frames"] > first["frames"] and t["audio_packets"] > first["audio_packets"],
         f"{other.person.name}'s frames and audio keep arriving at {me.person.name}", timeout=5)


def mark_connections(pages: Sequence[MeetingPage]) -> None:
    """Remember each page's peer connection now (``window.before``), to tell a new one later."""
    for page in pages:
        page.page.evaluate("() => { window.before = window.confmeet.pc; }")


def media_back_after(kill: Callable[[], None], pages: Sequence[MeetingPage], within: float) -> float:
    """Run ``kill`` (a node, an SFU worker) and wait until every page has a new peer connection and
    every two of them see and hear each other again: the seconds that took, asserted under ``within``."""
    mark_connections(pages)
    kill()
    started = time.monotonic()
    for page in pages:
        poll(lambda page=page: page.page.evaluate("() => window.confmeet.pc !== window.before"),
             f"{page.person.name} connects again", timeout=within)
    for me in pages:
        for other in pages:
            if me is not other:
                media_flows(me, other)
    took = time.monotonic() - started
    assert took < within, f"media back {took:.1f} s after the kill"
    return took
