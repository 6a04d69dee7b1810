"""The meeting page in Debian's Firefox ESR beside Chromium: a Firefox participant joins a meeting
in progress, hosts one, leaves and comes back, shares a screen. Each time media must flow both
ways (a late-joining Firefox used to get none: the SFU's DTLS role flipped on its answer)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .firefox import Firefox, FirefoxMeetingPage
from .meeting_page import PEOPLE, MeetingPage, media_flows, poll

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    firefox = Firefox()
    yield firefox
    firefox.close()


def new_meeting(host: httpx.Client, title: str) -> str:
    r = host.post("/api/v1/meetings", json={"title": title})
    assert r.status_code == 201, r.text
    return r.json()["code"]


def test_firefox_joins_a_meeting_in_progress(browser: Browser, firefox: Firefox, appliance: Appliance,
                                             host: httpx.Client) -> None:
    code = new_meeting(host, "Firefox joins late")
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    grace = FirefoxMeetingPage(firefox, appliance.url, PEOPLE["grace"])
    try:
        ada.join(code)
        grace.join(code)
        media_flows(grace, ada)
        media_flows(ada, grace)
        assert grace.page.errors() == []
    finally:
        grace.close()
        ada.close()
