"""The client in the browser's language: a Chromium set to zh-CN gets the home page, the pre-join
page and the meeting (people, chat, a raised hand, a recording) in Simplified Chinese with no
English left on them; a picker switches the language and the choice outlives a reload."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Browser, Page, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, SCREENSHOTS, MeetingPage, media_flows

# The product's name; the picker names each language in itself; the captions button (CC) and the
# transcript's (Aa) are symbols, as on a remote control.
ALLOWED = {"confmeet", "English", "CC", "Aa"}


def english_left(page: Page, data: list[str]) -> list[str]:
    """Latin words on the page that are not ``data`` (names, codes) nor ALLOWED."""
    text = page.locator("body").inner_text()
    for value in data:
        text = text.replace(value, " ")
    return [word for word in re.findall(r"[A-Za-z]{2,}", text) if word not in ALLOWED]


def test_the_home_page_speaks_the_browsers_chinese_and_the_picker_changes_it(
        browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(appliance.url)
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert english_left(page, []) == []

    grace = PEOPLE["grace"]
    form = page.locator("#signin-form")
    form.get_by_label("电子邮箱").fill(grace.email)
    form.get_by_label("密码").fill("wrong password")
    form.get_by_role("button", name="登录").click()
    expect(page.locator("#signin-form .error")).to_have_text("电子邮箱或密码错误，或账户已停用。")  # by its code
    form.get_by_label("密码").fill(grace.password)
    form.get_by_role("button", name="登录").click()
    expect(page.get_by_role("heading", name="新建会议")).to_be_visible()
    page.get_by_label("会议主题").fill("产品周会")
    page.get_by_role("button", name="创建会议").click()
    listed = page.get_by_role("list", name="我的会议").get_by_role("listitem").filter(has_text="产品周会")
    expect(listed).to_contain_text("主持人")
    expect(page.get_by_role("link", name="加入“产品周会”")).to_be_visible()
    # What people typed (other tests' meetings may be listed too) and the meetings' codes are data.
    titles = page.locator(".meeting-title").all_inner_texts()
    codes = re.findall(r"[a-z]{3}-[a-z]{4}-[a-z]{3}", page.locator("#meetings").inner_text())
    assert codes and english_left(page, [grace.name, *titles, *codes]) == []
    page.screenshot(path=str(SCREENSHOTS / "home-zh-CN.png"))

    page.get_by_label("Language / 语言").select_option("en")
    expect(page.get_by_role("heading", name="My meetings")).to_be_visible()
    expect(page.get_by_role("link", name="Join 产品周会")).to_be_visible()  # what the script drew, too
    assert page.evaluate("document.documentElement.lang") == "en"
    page.reload()
    expect(page.get_by_role("heading", name="My meetings")).to_be_visible()  # the choice is remembered
    page.get_by_label("Language / 语言").select_option("zh-CN")
    expect(page.get_by_role("heading", name="我的会议")).to_be_visible()
    context.close()


def test_the_meeting_in_chinese_from_the_join_page_to_people_chat_and_recording(
        browser: Browser, appliance: Appliance, host: httpx.Client) -> None:
    meeting = host.post("/api/v1/meetings", json={"title": "产品评审"}).json()
    ada, grace = PEOPLE["ada"], PEOPLE["grace"]
    zh = MeetingPage(browser, appliance.url, ada, locale="zh-CN")
    en = MeetingPage(browser, appliance.url, grace)  # someone else, in English
    try:
        page = zh.page
        page.goto(f"/m/{meeting['code']}")  # signed out: as a guest, or sign in
        expect(page.get_by_role("heading", name="以访客身份加入")).to_be_visible()
        expect(page.get_by_text(f"会议号 {meeting['code']}")).to_be_visible()
        # The browser names its (fake) devices itself: data, as the meeting's code is.
        devices = page.locator("#camera option, #microphone option").all_inner_texts()
        assert devices and english_left(page, [meeting["code"], *devices]) == []
        page.get_by_label("Language / 语言").select_option("en")  # what the script wrote follows
        expect(page.get_by_role("heading", name="Join as a guest")).to_be_visible()
        expect(page.get_by_text(f"Meeting code {meeting['code']}")).to_be_visible()
        expect(page.get_by_role("button", name="Join as guest")).to_be_visible()
        page.get_by_label("Language / 语言").select_option("zh-CN")
        expect(page.get_by_role("button", name="以访客身份加入")).to_be_visible()
        page.get_by_role("button", name="登录").click()
        expect(page.get_by_role("heading", name="登录后加入")).to_be_visible()
        assert english_left(page, []) == []
        page.get_by_label("电子邮箱").fill(ada.email)
        page.get_by_label("密码", exact=True).fill(ada.password)
        page.get_by_role("button", name="登录").click()
        expect(page.get_by_role("button", name="加入", exact=True)).to_be_visible()
        expect(page.get_by_role("heading", name=meeting["title"])).to_be_visible()
        assert english_left(page, [ada.name, meeting["title"], meeting["code"], *devices]) == []
        page.screenshot(path=str(SCREENSHOTS / "join-zh-CN.png"))

        page.get_by_role("button", name="加入", exact=True).click()
        expect(page.get_by_role("button", name="离开")).to_be_visible()
        en.join(meeting["code"])
        media_flows(zh, en)
        expect(page.get_by_text("2位参会者")).to_be_visible()
        en.button("Raise hand").click()
        en.send_chat("Hello from Grace")
        expect(page.get_by_role("img", name="第1个举手")).to_be_visible()  # Grace's tile
        page.get_by_role("button", name="录制", exact=True).click()
        notice = page.locator("#recording-notice")
        expect(notice).to_contain_text("本会议正在录制")
        notice.get_by_role("button", name="知道了").click()
        expect(page.locator("#recording-indicator")).to_have_text("正在录制")

        page.get_by_role("button", name="成员", exact=True).click()
        people = page.get_by_role("complementary", name="成员")
        expect(people.get_by_role("listitem", name=f"{ada.name}（我）")).to_contain_text("主持人")
        expect(people.get_by_role("button", name=f"将{grace.name}静音")).to_be_visible()
        initials = [f"{n.split()[0][0]}{n.split()[-1][0]}" for n in (ada.name, grace.name)]  # on the avatars
        data = [ada.name, grace.name, *initials, meeting["title"], "Hello from Grace"]
        assert english_left(page, data) == []
        page.get_by_role("button", name="聊天", exact=True).click()
        chat = page.get_by_role("complementary", name="聊天")
        expect(chat.get_by_role("log", name="聊天消息")).to_contain_text("Hello from Grace")
        expect(chat.get_by_label("发送给")).to_have_value("")  # 所有人
        expect(page.locator("#notice")).to_be_hidden(timeout=8000)
        assert english_left(page, data) == []
        page.screenshot(path=str(SCREENSHOTS / "meeting-zh-CN.png"))
        page.get_by_role("button", name="停止录制", exact=True).click()
        expect(page.locator("#notice")).to_have_text(f"录制已停止：{ada.name}停止了录制。")
        expect(page.locator("#notice")).to_be_hidden(timeout=8000)

        # What came with issue 19 speaks Chinese too: polls, breakout rooms, the whiteboard.
        page.get_by_role("button", name="投票", exact=True).click()
        page.get_by_role("complementary", name="投票").get_by_role("button", name="发起投票").click()
        assert english_left(page, data) == []
        page.get_by_role("button", name="分组讨论室", exact=True).click()
        expect(page.get_by_role("complementary", name="分组讨论室")).to_be_visible()
        assert english_left(page, data) == []
        page.get_by_role("button", name="白板", exact=True).click()
        expect(page.locator("#whiteboard canvas, .whiteboard canvas").first).to_be_visible()
        assert english_left(page, data) == []
        page.screenshot(path=str(SCREENSHOTS / "whiteboard-zh-CN.png"))
    finally:
        zh.close()
        en.close()
