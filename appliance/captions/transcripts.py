"""Meeting transcripts in the document store, and their exports (JSON, WebVTT, SRT, text).

Collection ``transcripts``: one document per meeting (``_id`` the meeting id) with when captions
were first turned on and the language. Collection ``transcript_segments``: one document per
caption, ``{meeting, participant, name, text, start, end, language}`` with wall-clock times in
seconds; exports give times from the transcript's ``started_at``.
"""

from __future__ import annotations

import time
from typing import Any

from ..stores.documents import DocumentExists, DocumentStore

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
            await self.documents.insert(SEGMENTS, {"_id": doc_id, "meeting": meeting_id, **segment})
        except DocumentExists:
            pass  # the same utterance twice (a retried event): keep the first

    async def header(self, meeting_id: str) -> dict[str, Any] | None:
        return await self.documents.get(TRANSCRIPTS, meeting_id)

    async def segments(self, meeting_id: str) -> list[dict[str, Any]]:
        return [_segment(d) for d in await self.documents.find(SEGMENTS, {"meeting": meeting_id},
                                                                sort=[("start", 1)])]

    async def search(self, meeting_id: str, text: str, limit: int = 50) -> list[dict[str, Any]]:
        found = await self.documents.search_text(SEGMENTS, "text", text, {"meeting": meeting_id}, limit,
                                                 sort=[("start", 1)])
        return [_segment(d) for d in found]

    async def delete(self, meeting_id: str) -> None:
        await self.documents.delete_many(SEGMENTS, {"meeting": meeting_id})
        await self.documents.delete(TRANSCRIPTS, meeting_id)


def _segment(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("participant", "name", "text", "start", "end", "language") if k in doc}


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
        text = " ".join(seg["text"].split())  # one line: no blank line can end the cue early
        cues.append((start, end, f"{seg['name']}: {text}" if seg.get("name") else text))
    return cues


def to_vtt(started_at: float, segments: list[dict[str, Any]]) -> str:
    lines = ["WEBVTT", ""]
    for start, end, text in _cues(started_at, segments):
        lines += [f"{_clock(start, '.')} --> {_clock(end, '.')}", text.replace("-->", "->"), ""]
    return "\n".join(lines)


def to_srt(started_at: float, segments: list[dict[str, Any]]) -> str:
    lines = []
    for i, (start, end, text) in enumerate(_cues(started_at, segments), 1):
        lines += [str(i), f"{_clock(start, ',')} --> {_clock(end, ',')}", text, ""]
    return "\n".join(lines)


def to_text(started_at: float, segments: list[dict[str, Any]]) -> str:
    return "".join(f"[{_clock(start, '.')[:8]}] {text}\n" for start, _, text in _cues(started_at, segments))
