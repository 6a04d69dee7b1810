"""AI on uploaded audio: /api/v1/ai/transcriptions (background jobs) and /api/v1/ai/voice-activity."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field

from ..captions.audio import AudioFileError, decode_file
from ..captions.files import MAX_SECONDS, MIN_SECONDS, voice_activity
from ..errors import Forbidden, Invalid, NotFound, TooLarge, TooMany, Unavailable
from ..inference import InferenceError, InferenceUnavailable
from ..inference.base import SAMPLE_RATE
from ..inference.languages import TAGS
from . import api
from .endpoint import Call


class SpeechSegment(BaseModel):
    start: float  # seconds from the start of the file
    end: float


class VoiceActivity(BaseModel):
    duration: float
    speech_seconds: float
    segments: list[SpeechSegment]


class TextSegment(SpeechSegment):
    text: str


class TranscriptionJob(BaseModel):
    id: str
    name: str
    status: Literal["queued", "running", "interrupted", "done", "failed"] = Field(
        description="interrupted: the appliance stopped during the job; it continues when it starts again")
    progress: float  # 0 to 1: the share of the file's speech transcribed
    language: str
    duration: float
    segments: list[TextSegment]
    text: str
    error: str
    created_at: float
    finished_at: float


class TranscriptionQuery(BaseModel):
    language: Annotated[str, Field(max_length=8)] = ""
    name: Annotated[str, Field(max_length=255)] = ""


async def _read_upload(call: Call) -> bytes:
    limit = call.services.settings.max_upload_bytes
    chunks, size = [], 0
    while (chunk := await call.request.stream.read()) is not None:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"files are limited to {limit // (1024 * 1024)} MiB")
        chunks.append(chunk)
    if not size:
        raise Invalid("the file is empty", "body")
    return b"".join(chunks)


def _unavailable(exc: Exception) -> Unavailable | Invalid:
    if isinstance(exc, InferenceUnavailable):
        return Unavailable(f"{exc}; try again later", code="inference_unavailable")
    return Invalid(str(exc), "body")


def _job_view(job: dict) -> dict:
    return {"id": job["_id"], **{k: job[k] for k in TranscriptionJob.model_fields if k != "id"}}


@api.route("POST", "/api/v1/ai/voice-activity", summary="Where an audio file has speech",
           tag="ai", upload=True, response=VoiceActivity, errors=(429, 503))
async def file_voice_activity(call: Call) -> dict:
    """Send an audio file as the body: WAV, Ogg (Opus, Vorbis), WebM/Matroska, MP4/MOV/M4A, MP3, FLAC or AAC (other formats, and
    playlists or lists of files, are refused with 422). The answer lists the stretches of speech
    that the VAD model finds, in seconds from the start."""
    data = await _read_upload(call)
    try:
        return await voice_activity(call.services.inference, data)
    except AudioFileError as exc:
        raise Invalid(str(exc), "body") from None
    except (InferenceUnavailable, InferenceError) as exc:
        raise _unavailable(exc) from None


@api.route("POST", "/api/v1/ai/transcriptions", summary="Transcribe an audio file (a background job)",
           tag="ai", upload=True, query=TranscriptionQuery, response=TranscriptionJob, status=202,
           errors=(429,))
async def start_transcription(call: Call) -> dict:
    """Send an audio file as the body: WAV, Ogg (Opus, Vorbis), WebM/Matroska, MP4/MOV/M4A, MP3, FLAC or AAC; `language` is
    its language tag (`en`, `de`, `zh-CN` for Simplified Chinese, `zh-TW` for Traditional, ...;
    empty: detect it). The file is stored before the answer, so the job survives a restart of the
    appliance. The job runs in the background: poll it for `progress` and the text."""
    language = call.query.language
    if language and language not in TAGS:
        raise Invalid("language must be a language tag Whisper knows (en, de, zh-CN, zh-TW, ...), or empty", "language")
    jobs = call.services.file_jobs
    if jobs.busy:
        raise TooMany("too many transcriptions are waiting; try again when one has finished", code="busy")
    data = await _read_upload(call)
    try:
        audio = await decode_audio(data)
    except AudioFileError as exc:
        raise Invalid(str(exc), "body") from None
    job = await jobs.submit(call.principal.id, data, audio, call.query.name, language)
    return _job_view(job)


async def decode_audio(data: bytes) -> np.ndarray:
    audio = await asyncio.to_thread(decode_file, data, MAX_SECONDS)
    if audio.size < MIN_SECONDS * SAMPLE_RATE:
        raise AudioFileError(f"the audio is shorter than {MIN_SECONDS} s")
    return audio


@api.route("GET", "/api/v1/ai/transcriptions/{job_id}", summary="A transcription job: progress and text",
           tag="ai", response=TranscriptionJob)
async def get_transcription(call: Call, job_id: str) -> dict:
    job = await call.services.file_jobs.get(job_id)
    if job is None:
        raise NotFound("transcription job")
    if job["owner"] != call.principal.id and not call.principal.is_admin:
        raise Forbidden("only whoever started a transcription (or an administrator) can read it")
    return _job_view(job)
