"""Guests, through the meeting page: someone without an account opens a meeting's link, gives a
name (and the password, if they were given one) and joins as a guest."""

from __future__ import annotations

import json
import os
from pathlib import Path
import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage, Person, media_flows

pytestmark = pytest.mark.browser

GUEST = Person("", "", "Marie Curie")  # no account: a name only
# The one answer a stranger gets, whatever was wrong (the server does not say which meetings exist).
NOT_FOR_GUESTS = "This meeting doesn’t exist, doesn’t allow guests, or the password is wrong."
STORED_TOKENS = "[sessionStorage.getItem('confmeet.guest'), localStorage.getItem('confmeet.tokens')]"


def test_a_guest_waits_in_the_lobby_is_admitted_and_shown_as_a_guest(browser: Browser, appliance: Appliance,
                                                                      host: httpx.Client) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Open day", "lobby": True, "allow_guests": True})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    guest = MeetingPage(browser, appliance.url, GUEST)
    console: list[str] = []
    guest.page.on("console", lambda message: console.append(message.text))
    try:
        ada.join(code)
        guest.page.goto(f"/m/{code}")
        # No account: the pre-join screen asks for a name, and offers signing in instead.
        expect(guest.page.get_by_role("heading", name="Join as a guest")).to_be_visible()
        expect(guest.page.get_by_role("button", name="Sign in")).to_be_visible()
        guest.open_as_guest(code)
        expect(guest.page.get_by_role("button", name="Waiting to be let in…")).to_be_disabled()

        expect(ada.page.get_by_role("complementary", name="Waiting to join")).to_be_visible()
        ada.page.get_by_role("button", name=f"Admit {GUEST.name}").click()
        expect(guest.page.get_by_role("button", name="Leave")).to_be_visible()

        media_flows(ada, guest)
        media_flows(guest, ada)
        row = ada.open_panel("People").get_by_role("listitem", name=GUEST.shown_as, exact=True)
        expect(row.locator(".person-role")).to_have_text("Guest")
        expect(row.locator(".person-name")).to_have_text(GUEST.shown_as)  # marked beside the name too

        # The guest shares a file in the chat and downloads it back, both with the guest token.
        content = b"guest notes\n" + os.urandom(2048)
        chat = guest.open_panel("Chat")
        with guest.page.expect_file_chooser() as chooser:
            chat.get_by_role("button", name="Share a file").click()
        chooser.value.set_files({"name": "notes.bin", "mimeType": "application/octet-stream", "buffer": content})
        link = chat.get_by_role("link", name="Download notes.bin")
        with guest.page.expect_download() as download:
            link.click()
        assert Path(download.value.path()).read_bytes() == content
        expect(ada.open_panel("Chat").get_by_role("link", name="Download notes.bin")).to_be_visible()

        # The guest's token belongs to the tab (sessionStorage), not the browser, and is never logged.
        stored, account_tokens = guest.page.evaluate(STORED_TOKENS)
        assert stored and account_tokens is None
        token = json.loads(stored)["token"]
        assert not [text for text in console if token in text]
        assert ada.errors == [] and guest.errors == [] and guest.dialogs == []
    finally:
        ada.close()
        guest.close()


def test_a_stranger_gets_one_answer_whatever_was_wrong(browser: Browser, appliance: Appliance,
                                                         host: httpx.Client) -> None:
    created = {}
    for title, fields in (("Board", {"allow_guests": True, "password": "sesame seed"}), ("Staff only", {})):
        r = host.post("/api/v1/meetings", json={"title": title, **fields})
        assert r.status_code == 201, r.text
        created[title] = r.json()["code"]
    stranger = MeetingPage(browser, appliance.url, GUEST)
    try:
        for code, password in ((created["Board"], "open sesame"), (created["Board"], ""),
                               (created["Staff only"], ""), ("xxx-xxxx-xxx", "")):
            stranger.open_as_guest(code, password)
            expect(stranger.page.locator("#join-form").get_by_role("alert")).to_have_text(NOT_FOR_GUESTS)
            assert stranger.page.evaluate(STORED_TOKENS) == [None, None], code
            expect(stranger.page.get_by_role("button", name="Join as guest")).to_be_enabled()

        # The right password lets the guest in, at once in a meeting without a waiting room.
        stranger.open_as_guest(created["Board"], "sesame seed")
        expect(stranger.page.get_by_role("button", name="Leave")).to_be_visible()
        expect(stranger.tile(f"{GUEST.name} (You)")).to_be_visible()
        assert stranger.errors == []
    finally:
        stranger.close()
