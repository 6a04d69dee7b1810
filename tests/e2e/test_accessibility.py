"""Automated accessibility checks of the web client in real Chromium: axe-core (from npm, installed
by `make test-setup` with tests/e2e/firefox's packages) finds no serious or critical violation on
the home page signed out and signed in, a meeting's pre-join screen, a meeting in progress (with
its side panels and the shortcuts' help open, on a desktop and on a phone) and the admin console."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parent / "firefox" / "node_modules" / "axe-core" / "axe.min.js"
# The serious and critical violations on the page as it is now: the rule, and the first few places.
SERIOUS = """async () => {
  const { violations } = await axe.run(document, { resultTypes: ["violations"] });
  return violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => ({
    rule: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map((n) => `${n.target.join(" ")}: ${n.failureSummary.replace(/\\s+/g, " ")}`),
  }));
}"""
RING = """() => { const style = getComputedStyle(document.activeElement);
                  return document.activeElement !== document.body && style.outlineStyle !== "none"
                         && parseFloat(style.outlineWidth) >= 2; }"""
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True}


@pytest.fixture(scope="module")
def axe() -> Path:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: run `make test-setup` (npm ci --prefix tests/e2e/firefox)")
    return AXE


def checked(context: BrowserContext, axe: Path) -> BrowserContext:
    """``context`` with axe-core in each of its pages (an init script: the pages' CSP allows no other)."""
    context.add_init_script(path=str(axe))
    return context


def assert_accessible(page: Page, where: str) -> None:
    found = page.evaluate(SERIOUS)
    assert found == [], f"{where}: {found}"


@pytest.fixture(scope="module")
def meeting(host: httpx.Client) -> dict:
    r = host.post("/api/v1/meetings", json={"title": "Accessibility review", "password": "open sesame"})
    assert r.status_code == 201, r.text
    return r.json()


def sign_in(page: Page, email: str, password: str) -> None:
    form = page.locator("#signin-form")
    form.get_by_label("E-mail").fill(email)
    form.get_by_label("Password", exact=True).fill(password)
    form.get_by_role("button", name="Sign in").click()


def test_home_page_signed_out_and_signed_in(browser: Browser, appliance: Appliance, axe: Path,
                                            meeting: dict) -> None:
    context = checked(browser.new_context(base_url=appliance.url), axe)
    try:
        page = context.new_page()
        page.goto("/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert_accessible(page, "the home page, signed out")
        for _ in range(4):  # the language list, e-mail, password, Sign in: each shows a focus ring
            page.keyboard.press("Tab")
            assert page.evaluate(RING), page.evaluate("document.activeElement.outerHTML")
        sign_in(page, PEOPLE["ada"].email, PEOPLE["ada"].password)
        expect(page.get_by_role("list", name="My meetings").get_by_role("listitem").first).to_be_visible()
        assert_accessible(page, "the home page, signed in")
    finally:
        context.close()


@pytest.fixture(scope="module")
def in_meeting(browser: Browser, appliance: Appliance, axe: Path, meeting: dict) -> Iterator[MeetingPage]:
    ada = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    checked(ada.context, axe)
    yield ada
    ada.close()


def test_join_screen_and_meeting_in_progress(browser: Browser, appliance: Appliance, axe: Path, meeting: dict,
                                             in_meeting: MeetingPage) -> None:
    ada = in_meeting
    ada.open(meeting["code"])
    assert_accessible(ada.page, "the pre-join screen")
    ada.type_name()
    ada.click_join()
    expect(ada.button("Leave")).to_be_visible()

    grace = MeetingPage(browser, appliance.url, PEOPLE["grace"], **PHONE)
    checked(grace.context, axe)
    try:
        grace.open(meeting["code"])
        grace.page.get_by_label("Meeting password").fill("open sesame")
        grace.type_name()
        grace.click_join()
        expect(grace.button("Leave")).to_be_visible()
        expect(ada.page.get_by_text("2 participants")).to_be_visible()
        assert_accessible(ada.page, "a meeting in progress")
        assert_accessible(grace.page, "a meeting in progress, on a phone")
        for name in ("People", "Chat"):
            ada.open_panel(name)
            assert_accessible(ada.page, f"a meeting with the {name} panel open")
            panel = grace.open_panel(name)  # over the whole screen: it closes before the next opens
            assert_accessible(grace.page, f"a meeting with the {name} panel open, on a phone")
            panel.get_by_role("button", name=f"Close {name.lower()}").tap()
        ada.close_panels()
        ada.page.keyboard.press("Control+/")
        expect(ada.page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
        assert_accessible(ada.page, "the keyboard shortcuts' help")
        ada.page.keyboard.press("Escape")
    finally:
        grace.close()


def test_admin_console(browser: Browser, appliance: Appliance, axe: Path, host: httpx.Client) -> None:
    context = checked(browser.new_context(base_url=appliance.url), axe)
    try:
        page = context.new_page()
        page.goto("/")
        sign_in(page, PEOPLE["ada"].email, PEOPLE["ada"].password)  # the appliance's first administrator
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        page.goto("/admin")
        expect(page.get_by_role("tablist", name="Administration")).to_be_visible()
        found = {}
        for tab in page.get_by_role("tab").all():
            tab.click()
            expect(page.get_by_role("tabpanel")).to_be_visible()
            found[tab.text_content()] = page.evaluate(SERIOUS)
        assert not any(found.values()), f"the admin console: {found}"
    finally:
        context.close()
