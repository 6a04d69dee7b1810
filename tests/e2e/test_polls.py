"""Polls in the meeting page, in real Chromium against the real appliance: Ada (the host) asks a
question, Grace votes in her page, Ada watches the result come in and publishes it, and Grace
sees the results (the counts, not who chose what)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage
from .test_accessibility import AXE, assert_accessible, checked

pytestmark = pytest.mark.browser


def test_host_asks_grace_votes_host_publishes(browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Offsite planning"})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    grace = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    for page in (ada, grace):
        checked(page.context, AXE)  # axe-core, for the accessibility checks below
    try:
        ada.join(code, publish=False)
        grace.join(code, publish=False)

        panel = ada.open_panel("Polls")
        panel.get_by_role("button", name="New poll").click()
        panel.get_by_label("Question").fill("Which day suits the offsite?")
        panel.get_by_role("textbox", name="Option 1", exact=True).fill("Tuesday")
        panel.get_by_role("textbox", name="Option 2", exact=True).fill("Wednesday")
        panel.get_by_role("button", name="Add an option").click()
        panel.get_by_role("textbox", name="Option 3", exact=True).fill("Thursday")
        panel.get_by_role("button", name="Start poll").click()
        poll = panel.get_by_role("listitem").filter(has_text="Which day suits the offsite?")
        expect(poll.get_by_text("Open", exact=True)).to_be_visible()
        expect(poll.get_by_text("0 people voted")).to_be_visible()

        # Grace is told, votes, changes her mind; she sees her own choice, not the results.
        expect(grace.page.locator("#notice")).to_have_text("New poll: Which day suits the offsite?")
        expect(grace.page.locator("#polls-badge")).to_have_text("1")
        ballot = grace.open_panel("Polls").get_by_role("listitem").filter(has_text="Which day suits the offsite?")
        expect(grace.page.locator("#polls-badge")).to_be_hidden()
        ballot.get_by_role("radio", name="Tuesday").check()
        ballot.get_by_role("button", name="Vote").click()
        expect(ballot.get_by_text("You chose Tuesday.")).to_be_visible()
        ballot.get_by_role("radio", name="Thursday").check()
        ballot.get_by_role("button", name="Change vote").click()
        expect(ballot.get_by_text("You chose Thursday.")).to_be_visible()
        expect(ballot.locator(".poll-results")).to_have_count(0)

        # Ada votes too, and watches the live results: counts and who chose what.
        poll.get_by_role("radio", name="Tuesday").check()
        poll.get_by_role("button", name="Vote").click()
        expect(poll.get_by_text("2 people voted")).to_be_visible()
        thursday = poll.locator(".poll-result").filter(has_text="Thursday")
        expect(thursday.locator(".poll-count")).to_have_text("1 vote (50%)")
        expect(thursday.locator(".poll-voters")).to_have_text("Grace Hopper")
        expect(poll.locator(".poll-result").filter(has_text="Wednesday").locator(".poll-count")).to_have_text("0 votes (0%)")
        ada.screenshot("polls.png")
        panel.get_by_role("button", name="New poll").click()
        assert_accessible(ada.page, "the Polls panel of a host: the form, an open poll, live results")
        panel.get_by_role("button", name="Cancel").click()

        poll.get_by_role("button", name="Publish results").click()
        expect(poll.get_by_text("Results published")).to_be_visible()

        expect(grace.page.locator("#notice")).to_have_text("Poll results are out: Which day suits the offsite?")
        results = ballot.get_by_role("region", name="Results")
        expect(results).to_be_visible()
        expect(results.locator(".poll-result").filter(has_text="Thursday").locator(".poll-count")).to_have_text(
            "1 vote (50%)")
        expect(results.locator(".poll-voters")).to_have_count(0)  # who chose what stays with the hosts
        expect(ballot.get_by_role("radio")).to_have_count(0)  # closed: no more voting
        assert_accessible(grace.page, "the Polls panel of a participant: published results")
        assert not ada.errors and not grace.errors, (ada.errors, grace.errors)
    finally:
        ada.close()
        grace.close()
