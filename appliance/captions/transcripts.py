"""Meeting transcripts in the document store, and their exports (JSON, WebVTT, SRT, text).

Collection ``transcripts``: one document per meeting (``_id`` the meeting id) with when captions
were first turned on and the language. Collection ``transcript_segments``: one document per
final caption, ``{meeting, participant, name, text, start, end, language, folded}`` with
wall-clock times in seconds (``gap``: true for speech that was never transcribed, text "[…]";
``room``: the breakout room's name for speech in one, absent for the main room's);
``folded`` is the text as search compares it (case, width and Chinese script folded, see
inference/languages.py), so that a Simplified word finds a Traditional transcript. Exports give
times from the transcript's ``started_at``; cue lines wrap by display width (a Chinese character
is two columns) without adding spaces to Chinese, and a Chinese line names its speaker with a
full-width colon.
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any

from ..inference.languages import fold, has_cjk
from ..stores.documents import DocumentExists, DocumentStore

LINE_COLUMNS = 42  # a subtitle line's width: 42 Latin characters, 21 Chinese ones
BREAKS = "，。？！；：、,.?!;: "  # a line may end after these

TRANSCRIPTS = "transcripts"
SEGMENTS = "transcript_segments"
FORMATS = {"json": "application/json", "vtt": "text/vtt; charset=utf-8",
           "srt": "application/x-subrip; charset=utf-8", "txt": "text/plain; charset=utf-8"}


class Transcripts:
    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents

    async def started(self, meeting_id: str, language: str) -> None:
        """Captions were turned on: the transcript exists from now on (its time origin is kept)."""
        try:
            await self.documents.insert(TRANSCRIPTS, {"_id": meeting_id, "meeting": meeting_id,
                                                      "started_at": round(time.time(), 3), "language": language})
        except DocumentExists:
            await self.documents.update(TRANSCRIPTS, meeting_id, {"language": language})

    async def add(self, meeting_id: str, segment: dict[str, Any]) -> None:
        doc_id = f"{meeting_id}-{int(segment['start'] * 1000):014d}-{segment['participant']}"
        try:
            await self.documents.insert(SEGMENTS, {"_id": doc_id, "meeting": meeting_id, **segment,
                                                   "folded": fold(segment["text"])})
        except DocumentExists:
            pass  # the same utterance twice (a retried event): keep the first

    async def header(self, meeting_id: str) -> dict[str, Any] | None:
        return await self.documents.get(TRANSCRIPTS, meeting_id)

    async def segments(self, meeting_id: str) -> list[dict[str, Any]]:
        return [_segment(d) for d in await self.documents.find(SEGMENTS, {"meeting": meeting_id},
                                                                sort=[("start", 1)])]

    async def search(self, meeting_id: str, text: str, limit: int = 50) -> list[dict[str, Any]]:
        """Captions containing ``text``, in time order: any case, width or Chinese script
        (segments stored before ``folded`` existed: by their text, ignoring case)."""
        where = {"meeting": meeting_id, "gap": {"$ne": True}}
        found = {d["_id"]: d for field, query in (("folded", fold(text)), ("text", text))
                 for d in await self.documents.search_text(SEGMENTS, field, query, where, limit, sort=[("start", 1)])}
        return [_segment(d) for d in sorted(found.values(), key=lambda d: d["start"])][:limit or None]

    async def delete(self, meeting_id: str) -> None:
        await self.documents.delete_many(SEGMENTS, {"meeting": meeting_id})
        await self.documents.delete(TRANSCRIPTS, meeting_id)


def _segment(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("participant", "name", "text", "start", "end", "language", "gap", "room") if k in doc}


def columns(text: str) -> int:
    """Display width: East Asian wide and full-width characters take two columns."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def wrap(text: str, width: int = LINE_COLUMNS) -> list[str]:
    """Lines of at most ``width`` columns, broken after punctuation or a space where one is
    near, else anywhere between Chinese characters; no space is ever added or a word split."""
    lines: list[str] = []
    while columns(text) > width:
        fits, used = 0, 0
        for i, ch in enumerate(text):
            used += columns(ch)
            if used > width:
                break
            fits = i + 1
        cut = max((i + 1 for i in range(fits) if text[i] in BREAKS), default=0)
        if cut < fits // 2:  # no break near the end: between two Chinese characters, or after a word
            cut = fits if has_cjk(text[fits - 1:fits + 1]) else (text.rfind(" ", 0, fits) + 1 or fits)
        lines.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*lines, text] if text else lines


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _cues(started_at: float, segments: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        start = seg["start"] - started_at
        end = max(seg["end"] - started_at, start + 0.5)
        text = " ".join(seg["text"].split())  # no blank line can end the cue early
        speaker = seg.get("name", "")
        if seg.get("room"):  # spoken in a breakout room
            speaker = f"{speaker} ({seg['room']})" if speaker else f"({seg['room']})"
        if speaker:
            text = f"{speaker}{'：' if has_cjk(text[:1]) else ': '}{text}"
        cues.append((start, end, text))
    return cues


def to_vtt(started_at: float, segments: list[dict[str, Any]]) -> str:
    lines = ["WEBVTT", ""]
    for start, end, text in _cues(started_at, segments):
        lines += [f"{_clock(start, '.')} --> {_clock(end, '.')}", *wrap(text.replace("-->", "->")), ""]
    return "\n".join(lines)


def to_srt(started_at: float, segments: list[dict[str, Any]]) -> str:
    lines = []
    for i, (start, end, text) in enumerate(_cues(started_at, segments), 1):
        lines += [str(i), f"{_clock(start, ',')} --> {_clock(end, ',')}", *wrap(text), ""]
    return "\n".join(lines)


def to_text(started_at: float, segments: list[dict[str, Any]]) -> str:
    return "".join(f"[{_clock(start, '.')[:8]}] {text}\n" for start, _, text in _cues(started_at, segments))
