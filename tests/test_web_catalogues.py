"""The web client's message catalogues (appliance/web/locales): Simplified Chinese as complete as
English, and every key the pages and scripts ask for in the English one."""

from __future__ import annotations

import re
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "appliance" / "web"


def catalogue(name: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*"([\w.]+)":\s*"((?:[^"\\]|\\.)*)",\s*$', (WEB / "locales" / name).read_text(), re.M))


def test_chinese_has_every_english_message_and_no_other() -> None:
    en, zh = catalogue("en.js"), catalogue("zh-CN.js")
    assert len(en) > 40
    assert sorted(zh) == sorted(en)
    for key, message in zh.items():  # the same {placeholders}, and really translated
        assert re.findall(r"\{\w+\}", message) == re.findall(r"\{\w+\}", en[key]), key
        assert re.search(r"[\u4e00-\u9fff]", message), (key, message)


def test_every_key_asked_for_is_in_the_english_catalogue() -> None:
    en = catalogue("en.js")
    asked = set()
    for page in WEB.glob("*.html"):
        asked |= set(re.findall(r'data-i18n(?:-[\w-]+)?="([\w.]+)"', page.read_text()))
    for script in WEB.glob("*.js"):
        asked |= set(re.findall(r'\bt\("([\w.]+)"', script.read_text()))
        for prefix in re.findall(r'\bt\(`([\w.]+)\.\$\{', script.read_text()):  # t(`role.${...}`)
            assert any(key.startswith(prefix + ".") for key in en), prefix
    assert asked and asked - set(en) == set()
