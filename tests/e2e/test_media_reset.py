"""The meeting page when the SFU worker process of its meeting dies: the seats stay, the page
connects its media afresh (``media_reset``), and pictures and sound flow again."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage, media_back_after, media_flows

pytestmark = pytest.mark.browser


def test_a_dead_sfu_worker_costs_the_meeting_seconds_not_its_seats(browser: Browser, appliance: Appliance,
                                                                   host: httpx.Client) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Worker down"})
    assert r.status_code == 201, r.text
    meeting = r.json()
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    grace = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    try:
        ada.join(meeting["code"])
        grace.join(meeting["code"])
        media_flows(ada, grace)
        media_flows(grace, ada)
        seats = (ada.participant_id, grace.participant_id)
        [worker] = {p["sfu_worker"]["pid"] for p in host.get(f"/api/v1/meetings/{meeting['id']}/live").json()
                    ["participants"]}

        media_back_after(lambda: os.kill(worker, signal.SIGKILL), [ada, grace], within=10)  # a new peer connection
        assert (ada.participant_id, grace.participant_id) == seats  # the same seats
        for page in (ada, grace):
            expect(page.page.get_by_role("button", name="Leave")).to_be_visible()
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        ada.close()
        grace.close()
