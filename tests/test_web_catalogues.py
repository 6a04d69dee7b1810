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
        assert re.search(r"[\u4e00-\u9fff\uff00-\uffef]", message), (key, message)  # Han or full-width (：)


def test_every_key_asked_for_is_in_the_english_catalogue() -> None:
    """Keys in the pages' data-i18n attributes, and every "namespace.key" string in the scripts
    (``t("chat.send")``, ``t(on ? "recording.stop" : "recording.record")``): ``tn`` keys as
    ``.one`` and ``.other``; ``t(`role.${...}`)`` by its prefix."""
    en = catalogue("en.js")
    namespaces = {key.split(".")[0] for key in en}
    asked = set()
    for page in WEB.glob("*.html"):
        asked |= set(re.findall(r'data-i18n(?:-[\w-]+)?="([\w.]+)"', page.read_text()))
    for script in WEB.glob("*.js"):
        text = script.read_text()
        for key in re.findall(r'"([a-z_]+(?:\.\w+)+)"', text):
            if key.split(".")[0] in namespaces and not re.search(r"\.(js|css|html)$", key):
                asked |= {key} if key in en or f"{key}.other" not in en else {f"{key}.one", f"{key}.other"}
        for prefix in re.findall(r'\bt\(`([\w.]+)\.\$\{', text):  # t(`role.${...}`)
            assert any(key.startswith(prefix + ".") for key in en), prefix
    assert len(asked) > 200 and asked - set(en) == set()
