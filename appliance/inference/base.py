"""The inference interface both backends implement."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from . import languages

SAMPLE_RATE = 16000
VAD_CHUNK = 512  # samples per speech probability (32 ms)
VAD_STATE = 320  # floats of state a VAD stream carries from one request to the next
MAX_UTTERANCE_SECONDS = 30.0  # the ASR model's window
# The asr model's shortest encoder window (model.py): final text keeps the accuracy of a long
# window; interim text is quicker, and 5 s is what keeps Whisper from repeating itself on half a
# second of speech (2 s windows wrote "Today we today we today we ...").
FINAL_WINDOW = 10.0
INTERIM_WINDOW = 5.0


class InferenceUnavailable(Exception):
    """The backend cannot answer now (down, not ready, too slow): try again later."""


class InferenceError(Exception):
    """The backend refused this request (bad input); trying again will not help."""


@dataclass
class Transcript:
    text: str
    language: str


@dataclass
class Health:
    ready: bool
    backend: str  # "local" or "triton"
    version: str = ""
    models: dict[str, bool] = field(default_factory=dict)
    detail: str = ""

    def view(self) -> dict[str, object]:
        return {"ready": self.ready, "backend": self.backend, "version": self.version,
                "models": self.models, "detail": self.detail}


class Inference(ABC):
    url: str

    @abstractmethod
    async def vad(self, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Speech probability of each 512-sample chunk of ``audio`` (float32, 16 kHz mono, a
        multiple of 512 long) and the stream's next state (zeros start a stream)."""

    async def transcribe(self, audio: np.ndarray, language: str = "", interim: bool = False) -> Transcript:
        """The words spoken in one utterance (float32, 16 kHz mono, at most 30 s), written for
        the reader of ``language``, a caption language tag (languages.py: "en", "zh-CN", "zh-TW",
        ...; "" detects it). ``interim``: a quick draft of speech still going on."""
        try:
            spoken = languages.parse(language)
        except ValueError as exc:
            raise InferenceError(str(exc)) from None
        heard = await self.recognise(check_audio(audio), spoken.whisper, interim)
        return Transcript(languages.write(heard.text, spoken, heard.language), spoken.tag or heard.language)

    @abstractmethod
    async def recognise(self, audio: np.ndarray, language: str, interim: bool) -> Transcript:
        """Whisper's text for ``audio`` (checked), ``language`` a code Whisper knows or "" to
        detect it, and the language it heard."""

    @abstractmethod
    async def health(self) -> Health:
        """Whether the backend and both models answer now; never raises."""

    @abstractmethod
    async def close(self) -> None: ...


def check_audio(audio: np.ndarray, multiple: int = 1) -> np.ndarray:
    audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
    if audio.size % multiple:
        raise InferenceError(f"audio must be a multiple of {multiple} samples, not {audio.size}")
    if audio.size > MAX_UTTERANCE_SECONDS * SAMPLE_RATE and multiple == 1:
        raise InferenceError(f"an utterance is at most {MAX_UTTERANCE_SECONDS:.0f} s")
    return audio
