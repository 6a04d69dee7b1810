"""``triton://HOST:PORT``: the models served by Triton, through tritonclient's asyncio HTTP client.

Every call has a deadline; a call that cannot reach the server is retried a bounded number of
times with a short back-off, then fails with InferenceUnavailable (as does a timeout, or a model
that is not ready) so that callers can degrade and try again later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from ..settings import host_port
from .base import (FINAL_WINDOW, INTERIM_WINDOW, VAD_CHUNK, VAD_STATE, Health, Inference, InferenceError,
                   InferenceUnavailable, Transcript, check_audio)
from .metrics import measured

log = logging.getLogger("confmeet.inference")
T = TypeVar("T")

VAD_TIMEOUT = 2.0
ASR_TIMEOUT = 15.0
HEALTH_TIMEOUT = 2.0
RETRIES = 2  # after the first attempt, for errors that mean "not reachable now"
BACKOFF = (0.1, 0.3)


class TritonUnreachable(InferenceUnavailable):
    """The server is not there (after the retries): a pool (pool.py) tries another server, which
    it must not do for a request that was too slow or refused."""


def _unreachable(exc: BaseException) -> bool:
    """An error that says the server is not there (retry) rather than that the request is bad."""
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError, OSError)):
        return True
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = exc.message() or ""
        return status in ("", "503", "502", "None") or "unavailable" in message.lower() \
            or "not ready" in message.lower() or "connect" in message.lower()
    return False


class TritonInference(Inference):
    def __init__(self, url: str, vad_timeout: float = VAD_TIMEOUT, asr_timeout: float = ASR_TIMEOUT) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"inference URL {url!r}: use triton://HOST:PORT (Triton's HTTP port)")
        self.url = url
        self.address = host_port(parts.hostname, parts.port or 8000)
        self.vad_timeout = vad_timeout
        self.asr_timeout = asr_timeout
        self._client: aioclient.InferenceServerClient | None = None

    def _connection(self) -> aioclient.InferenceServerClient:
        if self._client is None:
            self._client = aioclient.InferenceServerClient(self.address, conn_timeout=self.asr_timeout)
        return self._client

    async def _call(self, what: str, timeout: float, work: Callable[[aioclient.InferenceServerClient], Awaitable[T]]) -> T:
        for attempt in range(RETRIES + 1):
            try:
                return await asyncio.wait_for(work(self._connection()), timeout)
            except asyncio.TimeoutError:
                raise InferenceUnavailable(f"Triton at {self.address} did not answer {what} within {timeout:g} s") from None
            except Exception as exc:
                if not _unreachable(exc):
                    message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
                    raise InferenceError(f"Triton refused {what}: {message}") from None
                if attempt == RETRIES:
                    reason = exc.message() if isinstance(exc, InferenceServerException) else (str(exc) or type(exc).__name__)
                    raise TritonUnreachable(f"Triton at {self.address} is unreachable ({reason})") from None
                await asyncio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
        raise AssertionError("unreachable")

    async def vad(self, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        audio = check_audio(audio, VAD_CHUNK)
        state = np.ascontiguousarray(state, dtype=np.float32).reshape(VAD_STATE)
        inputs = [httpclient.InferInput("AUDIO", [audio.size], "FP32"), httpclient.InferInput("STATE", [VAD_STATE], "FP32")]
        inputs[0].set_data_from_numpy(audio, binary_data=True)
        inputs[1].set_data_from_numpy(state, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("PROBS", "STATE_OUT")]
        with measured("triton", "vad"):
            result = await self._call("a voice-activity request", self.vad_timeout,
                                      lambda c: c.infer("vad", inputs, outputs=outputs))
        return result.as_numpy("PROBS"), result.as_numpy("STATE_OUT")

    async def recognise(self, audio: np.ndarray, language: str, interim: bool) -> Transcript:
        inputs = [httpclient.InferInput("AUDIO", [audio.size], "FP32"), httpclient.InferInput("LANGUAGE", [1], "BYTES"),
                  httpclient.InferInput("MIN_WINDOW", [1], "FP32")]
        inputs[0].set_data_from_numpy(audio, binary_data=True)
        inputs[1].set_data_from_numpy(np.array([language.encode()], dtype=np.object_), binary_data=True)
        window = np.array([INTERIM_WINDOW if interim else FINAL_WINDOW], np.float32)
        inputs[2].set_data_from_numpy(window, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("TEXT", "LANGUAGE_OUT")]
        with measured("triton", "asr"):
            result = await self._call("a transcription", self.asr_timeout,
                                      lambda c: c.infer("asr", inputs, outputs=outputs))
        text, detected = result.as_numpy("TEXT").reshape(-1)[0], result.as_numpy("LANGUAGE_OUT").reshape(-1)[0]
        return Transcript(text.decode(), detected.decode())

    async def health(self) -> Health:
        try:
            client = self._connection()
            metadata = await asyncio.wait_for(client.get_server_metadata(), HEALTH_TIMEOUT)
            ready = await asyncio.wait_for(client.is_server_ready(), HEALTH_TIMEOUT)
            models = {name: bool(await asyncio.wait_for(client.is_model_ready(name), HEALTH_TIMEOUT))
                      for name in ("vad", "asr")}
        except Exception as exc:
            reason = exc.message() if isinstance(exc, InferenceServerException) else (str(exc) or type(exc).__name__)
            return Health(False, "triton", detail=f"Triton at {self.address} does not answer: {reason}")
        not_ready = [name for name, ok in models.items() if not ok]
        detail = f"model(s) not ready: {', '.join(not_ready)}" if not_ready else ""
        return Health(bool(ready) and not not_ready, "triton", f"Triton {metadata.get('version', '?')}",
                      models, detail if ready else "the server is not ready")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
