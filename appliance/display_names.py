"""Display names in a meeting's roster: what nobody may call themselves.

A name may not pose as a role the roster shows ("Ada (host)", "[Moderator] Bob") nor be the name
of someone else already in the meeting. Names are compared as people read them: Unicode NFKC
(fullwidth letters and brackets become plain ones), invisible format characters dropped, spaces
collapsed, case ignored. Look-alike letters of other scripts (Cyrillic "а" for Latin "a") are not
caught; the roster marks guests, whatever their name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

ROLE_WORDS = ("host", "co-host", "cohost", "moderator", "admin", "administrator", "organizer", "organiser",
              "guest", "you")
ROLE_MARK = re.compile(r"[(\[{<]\s*(?:" + "|".join(re.escape(w) for w in ROLE_WORDS) + r")\s*[)\]}>]")


def normalized(name: str) -> str:
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))
    return " ".join(text.split()).casefold()


def name_problem(name: str, taken: Iterable[str] = ()) -> str | None:
    """Why ``name`` may not be shown in a roster whose other people are called ``taken``, or None."""
    plain = normalized(name)
    if not plain:
        return "the name is empty"
    if ROLE_MARK.search(plain):
        return "a name may not carry a role such as (host) or (moderator): the roster shows roles itself"
    if plain in {normalized(other) for other in taken}:
        return "someone in the meeting already has that name; choose another"
    return None
