"""Meeting transcripts and live-caption state: /api/v1/meetings/{id}/transcript and /captions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from sanic.response import HTTPResponse, text

from ..captions.transcripts import FORMATS, Transcripts, to_srt, to_text, to_vtt
from ..errors import Forbidden, NotFound
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


class Transcript(BaseModel):
    meeting_id: str
    started_at: float
    language: str
    segments: list[TranscriptSegment]


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
    since the epoch; in the other formats, from when captions were first turned on."""
    transcripts = await _member(call, meeting_id)
    header = await transcripts.header(meeting_id)
    if header is None:
        raise NotFound("transcript (captions were never turned on in this meeting)")
    segments = await transcripts.segments(meeting_id)
    kind = call.query.format
    if kind == "json":
        return {"meeting_id": meeting_id, "started_at": header["started_at"], "language": header["language"],
                "segments": segments}
    body = {"vtt": to_vtt, "srt": to_srt, "txt": to_text}[kind](header["started_at"], segments)
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
