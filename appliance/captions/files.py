"""Audio files through the same models: voice activity of a file, and transcription of a file as
a background job whose progress is kept in the document store (collection ``ai_jobs``)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import numpy as np

from ..inference import Inference, InferenceError, InferenceUnavailable
from ..inference.base import SAMPLE_RATE, VAD_CHUNK, VAD_STATE
from ..stores.documents import DocumentStore
from .audio import decode_file
from .utterances import CHUNK_SECONDS, CutSettings, Utterance, UtteranceCutter

log = logging.getLogger("confmeet.ai")
JOBS = "ai_jobs"
MAX_SECONDS = 3 * 3600.0  # of audio in one file
MIN_SECONDS = 0.1
VAD_BATCH = 313  # chunks per VAD request: 10 s
FILE_CUT = CutSettings(min_silence=0.5, max_utterance=25.0, pad=0.2)


async def utterances_of(inference: Inference, audio: np.ndarray, cut: CutSettings = FILE_CUT) -> list[Utterance]:
    """The speech in a whole recording, cut into utterances (times in seconds from its start)."""
    padded = np.concatenate([audio, np.zeros(-audio.size % VAD_CHUNK, np.float32)])
    cutter, state, found = UtteranceCutter("", cut), np.zeros(VAD_STATE, np.float32), []
    step = VAD_BATCH * VAD_CHUNK
    for offset in range(0, padded.size, step):
        batch = padded[offset:offset + step]
        probs, state = await inference.vad(batch, state)
        first = offset / SAMPLE_RATE
        found += cutter.feed(batch, probs, [first + i * CHUNK_SECONDS for i in range(probs.size)])
    return found + cutter.flush()


async def voice_activity(inference: Inference, data: bytes) -> dict[str, Any]:
    audio = await asyncio.to_thread(decode_file, data, MAX_SECONDS)
    if audio.size < MIN_SECONDS * SAMPLE_RATE:
        from .audio import AudioFileError

        raise AudioFileError(f"the audio is shorter than {MIN_SECONDS} s")
    found = await utterances_of(inference, audio, CutSettings(min_silence=0.3, pad=0.0, max_utterance=3600))
    segments = [{"start": round(u.start, 3), "end": round(u.end, 3)} for u in found]
    return {"duration": round(audio.size / SAMPLE_RATE, 3), "segments": segments,
            "speech_seconds": round(sum(s["end"] - s["start"] for s in segments), 3)}


class FileJobs:
    """Transcription jobs, one running at a time, at most ``limit`` waiting or running."""

    def __init__(self, inference: Inference, documents: DocumentStore, limit: int = 8) -> None:
        self.inference = inference
        self.documents = documents
        self.limit = limit
        self._running: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Semaphore(1)

    @property
    def busy(self) -> bool:
        return len(self._running) >= self.limit

    async def submit(self, owner: str, audio: np.ndarray, name: str, language: str) -> dict[str, Any]:
        job = {"_id": uuid.uuid4().hex, "kind": "transcription", "owner": owner, "name": name,
               "status": "queued", "progress": 0.0, "language": language,
               "duration": round(audio.size / SAMPLE_RATE, 3), "segments": [], "text": "", "error": "",
               "created_at": round(time.time(), 3), "finished_at": 0.0}
        await self.documents.insert(JOBS, job)
        task = asyncio.get_running_loop().create_task(self._run(job["_id"], audio, language))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return job

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self.documents.get(JOBS, job_id)

    async def _run(self, job_id: str, audio: np.ndarray, language: str) -> None:
        async with self._one_at_a_time:
            try:
                await self.documents.update(JOBS, job_id, {"status": "running"})
                found = await utterances_of(self.inference, audio)
                total = sum(u.seconds for u in found) or 1.0
                done, segments = 0.0, []
                for utterance in found:
                    result = await self.inference.transcribe(utterance.audio, language)
                    done += utterance.seconds
                    if result.text.strip():
                        segments.append({"start": round(utterance.start, 3), "end": round(utterance.end, 3),
                                         "text": result.text.strip()})
                    await self.documents.update(JOBS, job_id, {"progress": round(done / total, 3),
                                                               "segments": segments})
                await self.documents.update(JOBS, job_id, {
                    "status": "done", "progress": 1.0, "segments": segments,
                    "text": " ".join(s["text"] for s in segments), "finished_at": round(time.time(), 3)})
            except (InferenceUnavailable, InferenceError) as exc:
                await self.documents.update(JOBS, job_id, {"status": "failed", "error": str(exc),
                                                           "finished_at": round(time.time(), 3)})
            except Exception as exc:
                log.exception("transcription job %s failed", job_id)
                await self.documents.update(JOBS, job_id, {"status": "failed", "error": f"internal error: {exc}",
                                                           "finished_at": round(time.time(), 3)})

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
