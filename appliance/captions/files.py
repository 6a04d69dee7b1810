"""Audio files through the same models: voice activity of a file, and transcription of a file as
a background job whose progress is kept in the document store (collection ``ai_jobs``)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..inference import Inference, InferenceError, InferenceUnavailable
from ..inference.base import SAMPLE_RATE, VAD_CHUNK, VAD_STATE
from ..inference.languages import join as join_texts
from ..stores.documents import DocumentStore
from ..stores.objects import ObjectStore
from .audio import AudioFileError, decode_file
from .utterances import CHUNK_SECONDS, CutSettings, Utterance, UtteranceCutter

log = logging.getLogger("confmeet.ai")
JOBS = "ai_jobs"
INPUTS = "ai/transcriptions/"  # object keys of the jobs' uploaded files
UNFINISHED = ("queued", "running", "interrupted")
MAX_ATTEMPTS = 3  # starts of a job cut off by stops of the appliance before it fails
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
        raise AudioFileError(f"the audio is shorter than {MIN_SECONDS} s")
    found = await utterances_of(inference, audio, CutSettings(min_silence=0.3, pad=0.0, max_utterance=3600))
    segments = [{"start": round(u.start, 3), "end": round(u.end, 3)} for u in found]
    return {"duration": round(audio.size / SAMPLE_RATE, 3), "segments": segments,
            "speech_seconds": round(sum(s["end"] - s["start"] for s in segments), 3)}


class FileJobs:
    """Transcription jobs, one running at a time, at most ``limit`` waiting or running.

    Durability: the uploaded file is stored in the object store (``ai/transcriptions/<job id>``)
    before the job is accepted, and the job's progress (the segments so far and how far into the
    audio they reach) after each utterance. A stop of the appliance marks its jobs ``interrupted``;
    at the next start (``resume``) every job left queued, running or interrupted continues from
    its last utterance, or fails with the reason when its input is gone or it was cut off
    ``MAX_ATTEMPTS`` times. The input is deleted once the job is done or failed.
    """

    def __init__(self, inference: Inference, documents: DocumentStore, objects: ObjectStore, limit: int = 8,
                 node: str = "") -> None:
        """``node``: this node's name, kept in each job it runs, so that the nodes of an install
        resume only their own jobs and those of nodes that died."""
        self.inference = inference
        self.node = node
        self.documents = documents
        self.objects = objects
        self.limit = limit
        self._running: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Semaphore(1)

    @property
    def busy(self) -> bool:
        return len(self._running) >= self.limit

    async def submit(self, owner: str, data: bytes, audio: np.ndarray, name: str, language: str) -> dict[str, Any]:
        """Accept a job for the uploaded ``data`` (decoded: ``audio``); it is stored first."""
        job = {"_id": uuid.uuid4().hex, "kind": "transcription", "owner": owner, "name": name,
               "status": "queued", "progress": 0.0, "language": language,
               "duration": round(audio.size / SAMPLE_RATE, 3), "segments": [], "text": "", "error": "",
               "created_at": round(time.time(), 3), "finished_at": 0.0, "attempts": 1, "transcribed_until": 0.0,
               "node": self.node}
        await self.objects.put(input_key(job["_id"]), data)
        await self.documents.insert(JOBS, job)
        self._start(job, audio)
        return job

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self.documents.get(JOBS, job_id)

    async def resume(self, alive: set[str] | None = None, stored_before: datetime | None = None) -> dict[str, int]:
        """At start-up (reconcile.py): continue or fail every job a stopped appliance left
        unfinished, and delete inputs no job needs (a stop between storing one and its job) stored
        before ``stored_before`` (default: now). Counts. ``alive``: with several nodes, the names of
        the live ones: a job another live node runs is its own (and an input stored lately may be
        one another node is storing its job for: the caller gives an earlier ``stored_before``)."""
        jobs = await self.documents.find(JOBS, {"status": {"$in": list(UNFINISHED)}}, sort=[("created_at", 1)])
        counts = {"transcriptions resumed": 0, "transcriptions failed": 0}
        for job in jobs:
            if alive is not None and job.get("node") not in ("", None, self.node) and job["node"] in alive:
                continue
            attempts = job.get("attempts", 1)
            if attempts >= MAX_ATTEMPTS:
                reason = f"the appliance stopped during this transcription {attempts} times; it is not tried again"
            elif await self.objects.stat(input_key(job["_id"])) is None:
                reason = "the appliance stopped during this transcription and its audio was not kept; send it again"
            else:
                await self.documents.update(JOBS, job["_id"], {"status": "queued", "attempts": attempts + 1,
                                                               "node": self.node})
                self._start({**job, "attempts": attempts + 1, "node": self.node}, None)
                counts["transcriptions resumed"] += 1
                continue
            await self._fail(job["_id"], reason)
            counts["transcriptions failed"] += 1
        needed = {job["_id"] for job in jobs}
        cutoff = stored_before or datetime.now(UTC)
        async for info in self.objects.list(INPUTS):
            if info.key.removeprefix(INPUTS) not in needed and info.modified < cutoff:
                await self.objects.delete(info.key)
        return counts

    def _start(self, job: dict[str, Any], audio: np.ndarray | None) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job, audio), name=f"transcription-{job['_id']}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _input(self, job_id: str) -> np.ndarray:
        data = b"".join([chunk async for chunk in self.objects.get(input_key(job_id))])
        return await asyncio.to_thread(decode_file, data, MAX_SECONDS)

    async def _run(self, job: dict[str, Any], audio: np.ndarray | None) -> None:
        job_id, language = job["_id"], job["language"]
        async with self._one_at_a_time:
            try:
                await self.documents.update(JOBS, job_id, {"status": "running"})
                if audio is None:
                    audio = await self._input(job_id)
                found = await utterances_of(self.inference, audio)
                total = sum(u.seconds for u in found) or 1.0
                until = job.get("transcribed_until", 0.0)  # what a run cut off by a stop did is kept
                segments = list(job["segments"]) if until else []
                done = sum(u.seconds for u in found if u.end <= until)
                for utterance in (u for u in found if u.end > until):
                    result = await self.inference.transcribe(utterance.audio, language)
                    done += utterance.seconds
                    if result.text.strip():
                        segments.append({"start": round(utterance.start, 3), "end": round(utterance.end, 3),
                                         "text": result.text.strip()})
                    await self.documents.update(JOBS, job_id, {"progress": round(done / total, 3),
                                                               "segments": segments,
                                                               "transcribed_until": utterance.end})
                await self.documents.update(JOBS, job_id, {
                    "status": "done", "progress": 1.0, "segments": segments,
                    "text": join_texts([s["text"] for s in segments]), "finished_at": round(time.time(), 3)})
            except asyncio.CancelledError:
                await self.documents.update(JOBS, job_id, {"status": "interrupted"})
                raise
            except (InferenceUnavailable, InferenceError, AudioFileError) as exc:
                await self._fail(job_id, str(exc))
                return
            except Exception as exc:
                log.exception("transcription job %s failed", job_id)
                await self._fail(job_id, f"internal error: {exc}")
                return
        await self._drop_input(job_id)

    async def _fail(self, job_id: str, reason: str) -> None:
        await self.documents.update(JOBS, job_id, {"status": "failed", "error": reason,
                                                   "finished_at": round(time.time(), 3)})
        await self._drop_input(job_id)

    async def _drop_input(self, job_id: str) -> None:
        try:
            await self.objects.delete(input_key(job_id))
        except Exception as exc:  # the object store is away: resume() deletes it at the next start
            log.warning("the input of transcription job %s is kept for now: %s", job_id, exc)

    async def close(self) -> None:
        """Stop the jobs; each is marked interrupted, to resume at the next start."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


def input_key(job_id: str) -> str:
    return f"{INPUTS}{job_id}"
