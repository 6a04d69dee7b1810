"""The home page in the browser's language: a Chromium set to zh-CN gets it in Simplified Chinese
with no English left on it (signed out and signed in, with a meeting listed), a picker switches
the language and the choice outlives a reload."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Browser, Page, expect

from appliance_server import Appliance

from .meeting_page import PEOPLE, SCREENSHOTS

ALLOWED = {"confmeet", "English"}  # the product's name; the picker names each language in itself


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
