"""Caption languages: the tags people choose, what Whisper is asked for, and how its text is
written for the reader.

A tag is an ISO 639-1 code Whisper knows ("en", "de", ...), a Chinese tag that also says the
script (BCP 47: ``zh-CN``/``zh-SG``/``zh-Hans`` Simplified, ``zh-TW``/``zh-HK``/``zh-MO``/``zh-Hant``
Traditional, plain ``zh`` Simplified, ``yue`` Cantonese in Traditional as in Hong Kong), or ""
to detect the language of each utterance. Whisper writes Chinese in either script, often
Traditional; the script follows the tag by conversion with OpenCC (opencc-python-reimplemented),
through Simplified and, for Traditional, with the regional phrasing (s2twp: 软件 → 軟體 in
Taiwan). Chinese text is then normalised as a Chinese reader expects: no spaces between
characters, full-width punctuation (，。？！：；) beside Chinese characters, half-width digits
with their own decimal points and clock colons (3.5, 10:30).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from opencc import OpenCC

WHISPER = tuple(("af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he "
                 "hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne "
                 "nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk "
                 "ur uz vi yi yo zh yue").split())
# Chinese tags: (Whisper's code, the OpenCC conversion from Simplified; None: stay Simplified)
CHINESE = {"zh": ("zh", None), "zh-CN": ("zh", None), "zh-SG": ("zh", None), "zh-Hans": ("zh", None),
           "zh-TW": ("zh", "s2twp"), "zh-HK": ("zh", "s2hk"), "zh-MO": ("zh", "s2hk"), "zh-Hant": ("zh", "s2t"),
           "yue": ("yue", "s2hk")}
TAGS = tuple(sorted({*WHISPER, *CHINESE}))


@dataclass(frozen=True)
class Language:
    tag: str  # canonical: "en", "zh-CN", "zh-TW", ... or "" (detect)
    whisper: str  # the code Whisper is given ("" detects)
    traditional: str | None = None  # the OpenCC conversion Simplified → Traditional, if Traditional

    @property
    def chinese(self) -> bool:
        return self.whisper in ("zh", "yue")


def canonical(tag: str) -> str:
    """``zh_tw``, ``ZH-tw`` → ``zh-TW``; ``zh-hant`` → ``zh-Hant``; ``EN`` → ``en``."""
    parts = tag.strip().replace("_", "-").split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        out.append(part.title() if len(part) == 4 else part.upper() if len(part) == 2 else part.lower())
    return "-".join(out)


def parse(tag: str) -> Language:
    """The language a tag names; ValueError (a sentence for the user) when it names none."""
    if not isinstance(tag, str):
        raise ValueError("a language must be a string such as \"en\", \"zh-CN\" or \"\" (detect)")
    if not tag.strip():
        return Language("", "")
    name = canonical(tag)
    if name.startswith(("zh-Hans-", "zh-Hant-")):
        name = name[:7]
    if name in CHINESE:
        whisper, traditional = CHINESE[name]
        return Language(name, whisper, traditional)
    if name in WHISPER:
        return Language(name, name)
    raise ValueError(f"{tag!r} is not a caption language: use an ISO 639-1 code (\"en\", \"de\", ...), "
                     "zh-CN or zh-Hans (Simplified Chinese), zh-TW, zh-HK or zh-Hant (Traditional), "
                     "or \"\" to detect it")


def is_tag(tag: object) -> bool:
    try:
        parse(tag)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


@lru_cache(maxsize=None)
def _opencc(config: str) -> OpenCC:
    return OpenCC(config)


CJK = r"\u2e80-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"  # radicals, kana, ideographs (and extensions)
WIDE_PUNCTUATION = r"\u3000-\u303f\uff00-\uffef"  # 。、「」 and the full-width forms ，？！：；（）
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{CJK}])\s+(?=[{CJK}])")
_SPACE_AT_PUNCTUATION = re.compile(rf"\s+(?=[{WIDE_PUNCTUATION}])|(?<=[{WIDE_PUNCTUATION}])\s+")
_SPACE_CJK_DIGIT = re.compile(rf"(?<=[{CJK}])\s+(?=[0-9])|(?<=[0-9%])\s+(?=[{CJK}])")
FULL_WIDTH = {",": "，", "?": "？", "!": "！", ";": "；", "(": "（", ")": "）"}


def has_cjk(text: str) -> bool:
    return re.search(f"[{CJK}]", text) is not None


def _punctuate(text: str) -> str:
    """Half-width punctuation written by Whisper among Chinese characters becomes full-width; a
    full stop or colon between digits stays (3.5, 10:30), as does a comma inside a number."""
    out = []
    for i, ch in enumerate(text):
        before, after = text[i - 1] if i else "", text[i + 1] if i + 1 < len(text) else ""
        between_digits = before.isdigit() and after.isdigit()
        if ch in FULL_WIDTH and not (ch == "," and between_digits):
            out.append(FULL_WIDTH[ch])
        elif ch == "." and not between_digits:
            out.append("。")
        elif ch == ":" and not between_digits:
            out.append("：")
        else:
            out.append(ch)
    return "".join(out)


def normalise_chinese(text: str) -> str:
    """Chinese text as a Chinese reader expects it (see the module's docstring); spaces beside
    a Latin word stay."""
    text = "".join(unicodedata.normalize("NFKC", ch) if ch.isalnum() else ch for ch in text.strip())  # ０ Ａ → 0 A
    if not has_cjk(text):
        return text
    text = _SPACE_AT_PUNCTUATION.sub("", _punctuate(text))
    return _SPACE_CJK_DIGIT.sub("", _SPACE_BETWEEN_CJK.sub("", text))


def write(text: str, language: Language, detected: str = "") -> str:
    """Whisper's ``text`` written for the reader of ``language`` (``detected``: what Whisper
    heard when the language was left to detection)."""
    chinese = language.chinese or (not language.whisper and detected in ("zh", "yue"))
    if not chinese:
        return text.strip()
    text = _opencc("tw2s").convert(normalise_chinese(text))
    traditional = language.traditional or ("s2hk" if not language.whisper and detected == "yue" else None)
    return _opencc(traditional).convert(text) if traditional else text


def join(texts: list[str]) -> str:
    """Consecutive pieces of one text, with a space between them except between Chinese ones."""
    wide = re.compile(f"[{CJK}{WIDE_PUNCTUATION}]")
    out = ""
    for text in (t.strip() for t in texts):
        if text:
            out += ("" if not out or (wide.match(out[-1]) and wide.match(text[0])) else " ") + text
    return out


def fold(text: str) -> str:
    """The form transcript search compares: case, width and script folded (a Traditional
    transcript is found with Simplified words, and the other way round), spaces removed
    between Chinese characters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _opencc("tw2s").convert(_SPACE_BETWEEN_CJK.sub("", text)) if has_cjk(text) else text
