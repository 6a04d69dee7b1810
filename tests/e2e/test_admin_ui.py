"""The admin console (/admin) in Chromium, acceptance 2 of issue 18: each action an administrator
takes there (invite, reset a password, disable, make admin, end a meeting in progress, delete a
recording, filter and export the audit log) really happens, and leaves an audit event that the
console's audit page shows. A member gets no console; the console speaks Chinese too."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from appliance.stores.relational import Recording, Relational
from appliance_server import Appliance

from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, Person, poll
from .test_i18n import english_left


def sign_in(context: BrowserContext, appliance: Appliance, email: str, password: str) -> Page:
    """A page of ``context`` signed in as ``email`` (the tokens where the web client keeps them)."""
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the console confirms what cannot be undone
    page.goto(appliance.url)
    page.evaluate("pair => localStorage.setItem('confmeet.tokens', JSON.stringify(pair))",
                  appliance.login(email, password))
    return page


@pytest.fixture(scope="module")
def console(browser: Browser, appliance: Appliance, host: httpx.Client) -> Iterator[Page]:
    """Ada's admin console, in English."""
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    ada = PEOPLE["ada"]
    page = sign_in(context, appliance, ada.email, ada.password)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{appliance.url}/admin")
    expect(page.get_by_role("tab", name="Users")).to_be_visible()
    yield page
    context.close()
    assert errors == []


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


def audit_shows(page: Page, action: str, *texts: str) -> None:
    """The console's audit page, filtered to ``action``, lists an event with each of ``texts``."""
    tab(page, "Audit log")
    page.get_by_label("Action").select_option(action)
    page.get_by_role("button", name="Filter").click()
    row = page.locator("#audit-table tbody tr").filter(has_text=texts[0])
    for text in texts[1:]:
        row = row.filter(has_text=text)
    expect(row.first).to_be_visible()
    expect(page.locator("#audit-table tbody tr").first).to_have_attribute("data-action", action)


def user_row(page: Page, name: str):
    tab(page, "Users")
    return page.get_by_role("row", name=name)


def add_user(host: httpx.Client, email: str, name: str, password: str = "first password 1") -> Person:
    r = host.post("/api/v1/users", json={"email": email, "password": password, "name": name})
    assert r.status_code == 201, r.text
    return Person(email, password, name)


def login_status(appliance: Appliance, email: str, password: str) -> int:
    return httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": email, "password": password}).status_code


def use_link(browser: Browser, url: str, password: str, name: str) -> None:
    """Open a one-time link in a browser of its own, choose a password: signed in as ``name``."""
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(url)
    expect(page.get_by_role("heading", name="Choose your password")).to_be_visible()
    page.get_by_label("New password").fill(password)
    page.get_by_role("button", name="Set password and sign in").click()
    expect(page.locator("#who-name")).to_have_text(name)
    expect(page.get_by_role("heading", name="New meeting")).to_be_visible()
    assert "set-password" not in page.url  # the spent link leaves the address bar
    context.close()


def test_invite_someone_who_chooses_a_password_and_is_signed_in(console: Page, browser: Browser,
                                                               appliance: Appliance) -> None:
    tab(console, "Users")
    form = console.locator("#invite-form")
    form.get_by_label("E-mail").fill("ines@example.com")
    form.get_by_label("Name").fill("Ines Invited")
    form.get_by_label("Role").select_option("member")
    form.get_by_role("button", name="Invite").click()
    expect(console.locator("#link-lead")).to_contain_text("Give this link to Ines Invited (ines@example.com)")
    expect(console.locator("#link-expiry")).to_contain_text("The link works once, until")
    url = console.locator("#link").input_value()
    assert re.fullmatch(re.escape(appliance.url) + r"/#set-password=[\w-]{40,}", url), url
    expect(console.get_by_role("row", name="Ines Invited")).to_contain_text("ines@example.com")
    assert login_status(appliance, "ines@example.com", "ines password 1") == 401

    use_link(browser, url, "ines password 1", "Ines Invited")
    assert login_status(appliance, "ines@example.com", "ines password 1") == 200
    audit_shows(console, "user.invited", "Ada Lovelace", "ines@example.com")
    audit_shows(console, "user.password_set", "Ines Invited", "password chosen")


def test_reset_a_password_the_old_one_fails_and_the_link_sets_a_new_one(
        console: Page, browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    rita = add_user(host, "rita@example.com", "Rita Reset")
    session = appliance.login(rita.email, rita.password)["access_token"]
    user_row(console, "Rita Reset").get_by_role("button", name="Reset password for Rita Reset").click()
    expect(console.locator("#link-lead")).to_contain_text("The password of Rita Reset (rita@example.com) no longer works")
    url = console.locator("#link").input_value()
    assert login_status(appliance, rita.email, rita.password) == 401
    assert httpx.get(f"{appliance.url}/api/v1/users/me",
                     headers={"Authorization": f"Bearer {session}"}).status_code == 401  # signed out everywhere
    use_link(browser, url, "rita password 2", "Rita Reset")
    assert login_status(appliance, rita.email, "rita password 2") == 200
    audit_shows(console, "user.password_reset", "Ada Lovelace", "sessions_ended=1")


def test_disable_a_user_who_then_cannot_sign_in(console: Page, browser: Browser, appliance: Appliance,
                                                host: httpx.Client) -> None:
    dan = add_user(host, "dan@example.com", "Dan Disabled")
    row = user_row(console, "Dan Disabled")
    row.get_by_role("button", name="Disable Dan Disabled").click()
    expect(row).to_contain_text("Disabled")
    expect(row.get_by_role("button", name="Enable Dan Disabled")).to_be_visible()
    expect(console.locator("#status")).to_have_text("Dan Disabled is disabled.")
    assert login_status(appliance, dan.email, dan.password) == 401
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(appliance.url)
    page.locator("#signin-form").get_by_label("E-mail").fill(dan.email)
    page.locator("#signin-form").get_by_label("Password").fill(dan.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-form .error")).to_have_text("Wrong e-mail or password, or the account is disabled.")
    context.close()
    audit_shows(console, "user.updated", "Ada Lovelace", "active=false")


def test_make_a_member_an_administrator(console: Page, appliance: Appliance, host: httpx.Client) -> None:
    mia = add_user(host, "mia@example.com", "Mia Promoted")
    member = appliance.login(mia.email, mia.password)["access_token"]
    assert httpx.get(f"{appliance.url}/api/v1/admin/meetings",
                     headers={"Authorization": f"Bearer {member}"}).status_code == 403
    row = user_row(console, "Mia Promoted")
    row.get_by_role("button", name="Make admin: Mia Promoted").click()
    expect(row).to_contain_text("Administrator")
    expect(row.get_by_role("button", name="Make member: Mia Promoted")).to_be_visible()
    admin = appliance.login(mia.email, mia.password)["access_token"]
    assert httpx.get(f"{appliance.url}/api/v1/admin/meetings",
                     headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    audit_shows(console, "user.updated", "Ada Lovelace", "role=admin")


def test_end_a_meeting_in_progress(console: Page, browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    grace = PEOPLE["grace"]
    api = httpx.Client(base_url=appliance.url, headers={
        "Authorization": f"Bearer {appliance.login(grace.email, grace.password)['access_token']}"})
    meeting = api.post("/api/v1/meetings", json={"title": "Stand-up to end"}).json()
    participant = MeetingPage(browser, appliance.url, grace)
    try:
        participant.join(meeting["code"], publish=False)
        tab(console, "Meetings in progress")
        listed = console.get_by_role("listitem", name="Stand-up to end")
        poll(lambda: console.locator("#meetings .refresh").click() or listed.count(), "the meeting is listed", timeout=15)
        expect(listed.get_by_role("list", name="Participants of Stand-up to end")).to_contain_text("Grace Hopper · host")
        expect(listed).to_contain_text("host: Grace Hopper")
        listed.get_by_role("button", name="End Stand-up to end").click()
        expect(console.locator("#status")).to_have_text("Stand-up to end has ended.")
        expect(listed).to_have_count(0)
        assert api.get(f"/api/v1/meetings/{meeting['id']}").json()["status"] == "ended"
        expect(participant.page.get_by_role("button", name="Leave")).to_be_hidden()  # put out of the meeting
    finally:
        participant.close()
    poll(lambda: all(m["id"] != meeting["id"] for m in host.get("/api/v1/admin/meetings").json()["meetings"]),
         "the seats are released", timeout=10)
    audit_shows(console, "meeting.ended", "Ada Lovelace", "Stand-up to end")


def stored_recording(appliance: Appliance, meeting_id: str, size: int) -> str:
    """A finished recording's row, as the recorder leaves it (the files themselves are not needed)."""
    async def store() -> str:
        db = Relational(f"sqlite:///{appliance.data_dir / 'confmeet.db'}")
        await db.open()
        row = await db.run(lambda: Recording.create(meeting=meeting_id, status="ready", duration_s=75.2, size_bytes=size,
                                                    object_prefix=f"recordings/{meeting_id}-admin-test/"))
        await db.close()
        return row.id

    with ThreadPoolExecutor(1) as thread:  # Playwright's event loop runs on this one
        return thread.submit(asyncio.run, store()).result()


def test_delete_a_recording_and_see_the_storage_it_took(console: Page, appliance: Appliance, host: httpx.Client) -> None:
    meeting = host.post("/api/v1/meetings", json={"title": "Recorded review"}).json()
    recording_id = stored_recording(appliance, meeting["id"], 25_000_000)
    tab(console, "Recordings and storage")
    console.locator("#recordings .refresh").click()
    row = console.get_by_role("row", name="Recorded review")
    expect(row).to_contain_text("1:15")
    expect(row).to_contain_text("25 MB")
    expect(row).to_contain_text("Ready")
    expect(console.locator("#storage")).to_contain_text(re.compile(r"Storage used: [\d.]+ MB \(recordings [\d.]+ MB"))
    row.get_by_role("button", name=re.compile(r"^Delete the recording of Recorded review from ")).click()
    expect(console.locator("#status")).to_have_text("The recording of Recorded review is deleted.")
    expect(row).to_have_count(0)
    assert host.get(f"/api/v1/recordings/{recording_id}").status_code == 404
    audit_shows(console, "recording.deleted", "Ada Lovelace", "Recorded review", f"recording={recording_id}")


def test_audit_filters_and_the_csv_download(console: Page, appliance: Appliance, host: httpx.Client) -> None:
    linus = PEOPLE["linus"]
    api = httpx.Client(base_url=appliance.url, headers={
        "Authorization": f"Bearer {appliance.login(linus.email, linus.password)['access_token']}"})
    api.post("/api/v1/meetings", json={"title": "Linus's kernel sync"}).raise_for_status()
    host.post("/api/v1/meetings", json={"title": "=cmd|' /C calc'!A0"}).raise_for_status()  # a formula for a title

    tab(console, "Audit log")
    form = console.locator("#audit-form")
    form.get_by_label("Who").select_option(label=f"{linus.name} <{linus.email}>")
    form.get_by_label("Action").select_option("meeting.created")
    form.get_by_role("button", name="Filter").click()
    rows = console.locator("#audit-table tbody tr")
    expect(rows.filter(has_text="Linus's kernel sync")).to_have_count(1)
    for text in rows.all_inner_texts():
        assert "Linus Torvalds" in text and "meeting created" in text, text
    form.get_by_label("Meeting").select_option(label="Linus's kernel sync")
    form.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(console.locator("#audit-count")).to_have_text("1–1 of 1")

    form.get_by_label("From").fill("2099-01-01T00:00")
    form.get_by_role("button", name="Filter").click()
    expect(console.locator("#audit-count")).to_have_text("No events match.")
    expect(rows).to_have_count(0)
    form.get_by_label("From").fill("2000-01-01T00:00")
    form.get_by_label("Until").fill("2099-01-01T00:00")
    form.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)

    form.get_by_role("button", name="Clear").click()
    form.get_by_label("Action").select_option("meeting.created")
    form.get_by_role("button", name="Filter").click()
    expect(rows.filter(has_text="Linus's kernel sync")).to_have_count(1)
    with console.expect_download() as download:
        form.get_by_role("button", name="Export CSV").click()
    assert re.fullmatch(r"confmeet-audit-\d{8}-\d{6}\.csv", download.value.suggested_filename)
    exported = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8-sig").read())))
    assert {row["action"] for row in exported} == {"meeting.created"}
    titles = {row["meeting_title"]: row for row in exported}
    assert titles["Linus's kernel sync"]["actor_name"] == "Linus Torvalds"
    assert "'=cmd|' /C calc'!A0" in titles  # a spreadsheet shows it as text
    audit_shows(console, "audit.exported", "Ada Lovelace", "meeting.created")


def test_a_member_gets_no_console(browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    linus = PEOPLE["linus"]
    token = appliance.login(linus.email, linus.password)["access_token"]
    assert httpx.get(f"{appliance.url}/api/v1/admin/health",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 403
    context = browser.new_context(locale="en-US")
    page = sign_in(context, appliance, linus.email, linus.password)
    page.goto(appliance.url)
    expect(page.get_by_role("heading", name="New meeting")).to_be_visible()
    expect(page.get_by_role("link", name="Administration")).to_be_hidden()  # no way in from home
    page.goto(f"{appliance.url}/admin")
    expect(page.get_by_role("alert")).to_have_text(re.compile("This console is for administrators"))
    expect(page.get_by_role("tab", name="Users")).to_be_hidden()
    expect(page.locator("#users-table")).to_be_hidden()
    context.close()


def test_system_health_and_the_way_in_from_home(console: Page, appliance: Appliance) -> None:
    console.goto(appliance.url)
    console.get_by_role("link", name="Administration").click()
    tab(console, "System health")
    expect(console.get_by_role("row", name="appliance")).to_contain_text("up")
    expect(console.get_by_role("row", name="database (embedded sqlite)")).to_contain_text("SQLite")
    expect(console.locator("#overall")).to_contain_text(re.compile(r"Overall: (up|degraded)"))


def test_the_console_in_chinese(browser: Browser, appliance: Appliance, host: httpx.Client, console: Page) -> None:
    console.set_viewport_size({"width": 1280, "height": 900})
    tab(console, "Users")
    console.screenshot(path=str(SCREENSHOTS / "admin.png"), full_page=True)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    ada = PEOPLE["ada"]
    page = sign_in(context, appliance, ada.email, ada.password)
    page.goto(f"{appliance.url}/admin")
    expect(page.get_by_role("tab", name="用户")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("heading", name="邀请用户")).to_be_visible()
    users = host.get("/api/v1/users", params={"limit": 500}).json()["users"]
    data = [value for u in users for value in (u["name"], u["email"])]
    expect(page.locator("#users-table tbody tr").first).to_be_visible()
    assert english_left(page, data) == []
    page.screenshot(path=str(SCREENSHOTS / "admin-zh-CN.png"), full_page=True)
    page.get_by_role("tab", name="审计日志").click()
    expect(page.get_by_role("button", name="导出 CSV")).to_be_visible()
    expect(page.locator("#audit-table tbody tr").first).to_be_visible()
    page.get_by_label("Language / 语言").select_option("en")
    expect(page.get_by_role("tab", name="Audit log")).to_be_visible()
    context.close()
