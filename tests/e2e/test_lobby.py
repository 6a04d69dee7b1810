"""A meeting with a waiting room, through the meeting page: the newcomer waits, the host lets them in."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage

pytestmark = pytest.mark.browser


def test_the_host_admits_someone_from_the_waiting_room(browser: Browser, appliance: Appliance,
                                                       host: httpx.Client) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Interviews", "lobby": True})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    linus = MeetingPage(browser, appliance.url, PEOPLE["linus"])
    try:
        ada.join(code)
        linus.open(code)
        linus.type_name()
        linus.click_join()
        expect(linus.page.get_by_role("button", name="Waiting to be let in…")).to_be_disabled()

        expect(ada.page.get_by_role("complementary", name="Waiting to join")).to_be_visible()
        ada.page.get_by_role("button", name="Admit Linus Torvalds").click()

        expect(linus.page.get_by_role("button", name="Leave")).to_be_visible()
        expect(ada.page.get_by_role("listitem", name="Linus Torvalds")).to_be_visible()
        expect(ada.page.get_by_role("complementary", name="Waiting to join")).to_be_hidden()
        assert ada.errors == [] and linus.errors == []
    finally:
        ada.close()
        linus.close()
