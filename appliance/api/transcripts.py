"""Meeting transcripts and live-caption state: /api/v1/meetings/{id}/transcript and /captions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from sanic.response import HTTPResponse, text

from ..captions.transcripts import FORMATS, Transcripts, to_srt, to_text, to_vtt
from ..errors import Forbidden, NotFound
from ..roles import MODERATORS
from ..signaling.polls import exported, polls_text
from . import api
from .endpoint import Call


class TranscriptSegment(BaseModel):
    participant: str
    name: str
    text: str
    start: float  # seconds since the epoch
    end: float
    language: str = ""
    gap: bool = False  # speech that was never transcribed (text "[…]"): the server fell too far behind
    room: str | None = None  # the breakout room's name for speech in one; None: the main room


class PollOption(BaseModel):
    text: str
    votes: int
    voters: list[str] | None = None  # by name, for a named poll only


class TranscriptPoll(BaseModel):
    question: str
    multiple: bool
    anonymous: bool
    state: Literal["open", "closed", "published"]
    created_at: str
    closed_at: str | None
    ballots: int
    options: list[PollOption]


class Transcript(BaseModel):
    meeting_id: str
    started_at: float | None  # None: captions were never on (only polls)
    language: str
    segments: list[TranscriptSegment]
    polls: list[TranscriptPoll] = Field(default_factory=list)


class TranscriptQuery(BaseModel):
    format: Literal["json", "vtt", "srt", "txt"] = "json"


class SearchQuery(BaseModel):
    q: Annotated[str, Field(min_length=1, max_length=200)]
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class SegmentList(BaseModel):
    segments: list[TranscriptSegment]


class CaptionQueues(BaseModel):
    asr: int = 0  # final utterances waiting for speech recognition
    asr_seconds: float = 0.0  # their audio
    asr_seconds_limit: float = 0.0
    packets: int = 0
    packets_limit: int = 0
    utterance_seconds: float = 0.0
    utterance_seconds_limit: float = 0.0


class CaptionStatus(BaseModel):
    enabled: bool
    language: str
    state: Literal["off", "available", "degraded", "unavailable"]
    detail: str
    interim: bool = True  # interim captions run (off by themselves while the server is too busy)
    interim_detail: str = ""
    speakers: dict[str, str] = Field(default_factory=dict)  # participant → the language they speak
    viewers: int
    captions: int = 0
    interim_captions: int = 0
    utterances: int = 0
    merged: int = 0
    dropped: int = 0
    gaps: int = 0  # "[…]" in the transcript: speech skipped
    dropped_seconds: float = 0.0
    packets_decoded: int = 0
    packets_skipped: int = 0
    packets_overflowed: int = 0
    speech_seconds: float = 0.0
    queues: CaptionQueues = Field(default_factory=CaptionQueues)


async def _member(call: Call, meeting_id: str) -> Transcripts:
    services = call.services
    if not await services.meetings.is_member(call.principal, meeting_id):
        raise Forbidden("only people in this meeting can read its transcript")
    return services.captions.transcripts


@api.route("GET", "/api/v1/meetings/{meeting_id}/transcript", summary="The meeting's transcript",
           tag="transcripts", auth="guest", query=TranscriptQuery, response=Transcript, errors=(403,),
           produces=tuple(FORMATS[f].split(";")[0] for f in ("vtt", "srt", "txt")))
async def get_transcript(call: Call, meeting_id: str) -> dict | HTTPResponse:
    """What was said while captions were on, so far (during the meeting) or all of it (after):
    `format=json` (default), `vtt` (WebVTT), `srt` (SubRip) or `txt`. Times in JSON are seconds
    since the epoch; in the other formats, from when captions were first turned on. The meeting's
    polls come after the captions (JSON, text, WebVTT notes; SubRip has no place for them): all of
    them for its hosts, moderators and administrators, those whose results were published for the
    others; who voted what only for named polls."""
    transcripts = await _member(call, meeting_id)
    header = await transcripts.header(meeting_id)
    meeting = await call.services.meetings.get(call.principal, meeting_id)
    polls = await exported(call.services.stores.documents, meeting_id,
                           everything=call.principal.is_admin or meeting["my_role"] in MODERATORS)
    kind = call.query.format
    if header is None and (not polls or kind == "srt"):
        raise NotFound("transcript (captions were never turned on in this meeting)")
    segments = await transcripts.segments(meeting_id) if header is not None else []
    started_at = header["started_at"] if header is not None else None
    if kind == "json":
        return {"meeting_id": meeting_id, "started_at": started_at,
                "language": header["language"] if header is not None else "", "segments": segments, "polls": polls}
    body = {"vtt": to_vtt, "srt": to_srt, "txt": to_text}[kind](started_at or 0.0, segments)
    if polls and kind == "txt":
        body += ("\n" if body else "") + "".join(f"{line}\n" for line in polls_text(polls))
    elif polls and kind == "vtt":  # one note per poll: a note ends at a blank line and holds no "-->"
        body += "\n" + "".join("NOTE\n" + "\n".join(line.replace("-->", "->") for line in polls_text([poll])) + "\n\n"
                        for poll in polls)
    return text(body, content_type=FORMATS[kind], headers={
        "Content-Disposition": f'attachment; filename="transcript-{meeting_id}.{kind}"'})


@api.route("GET", "/api/v1/meetings/{meeting_id}/transcript/search", summary="Search the meeting's transcript",
           tag="transcripts", auth="guest", query=SearchQuery, response=SegmentList, errors=(403,))
async def search_transcript(call: Call, meeting_id: str) -> dict:
    """The captions whose text contains `q`, in time order: ignoring case, full- or half-width
    forms, and the Chinese script (a Simplified word finds a Traditional transcript)."""
    transcripts = await _member(call, meeting_id)
    return {"segments": await transcripts.search(meeting_id, call.query.q, call.query.limit)}


@api.route("GET", "/api/v1/meetings/{meeting_id}/captions", summary="Live captions: state and load",
           tag="transcripts", auth="guest", response=CaptionStatus, errors=(403,))
async def caption_status(call: Call, meeting_id: str) -> dict:
    """Whether captions are on, whether inference keeps up (`available`, `degraded` when
    captions fall behind the speech or speech was skipped, `unavailable` when the inference
    server is down), whether interim captions run, the counters, and the fill of every bounded
    queue against its limit."""
    await _member(call, meeting_id)
    return call.services.captions.status(meeting_id)
