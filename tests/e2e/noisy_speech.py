"""A noisy microphone for Chromium's fake audio capture, and the levels read back from what was
received: espeak-ng speech with pauses between the sentences, and steady white noise under it all
the time at a fixed signal-to-noise ratio. Used by test_noise.py and benchmarks/noise_bench.py."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

SENTENCES = [
    "Good morning everyone, thank you for joining the weekly planning meeting.",
    "Please send your comments to the project manager before Friday afternoon.",
]
SPEECH_DBFS = -20.0   # the speech's level while it talks
SNR_DB = 10.0         # the noise this far below it
PAUSE_MS = 1500       # after each sentence
FRAME_S = 0.02


def noisy_speech(path: Path, sentences: list[str] = SENTENCES, snr_db: float = SNR_DB) -> Path:
    """A WAV (the rate espeak-ng writes, mono, 16 bit) of the sentences, each followed by
    PAUSE_MS of silence, the speech at SPEECH_DBFS while it talks, plus white noise ``snr_db``
    below that from start to end (seeded: the same file every time)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: apt-get install -y espeak-ng (make system-packages)")
    clean = path.with_name(f"{path.stem}-clean.wav")
    ssml = "<speak>" + "".join(f'{s}<break time="{PAUSE_MS}ms"/>' for s in sentences) + "</speak>"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-m", "-w", str(clean), ssml], check=True)
    with wave.open(str(clean)) as source:
        rate = source.getframerate()
        speech = np.frombuffer(source.readframes(source.getnframes()), np.int16).astype(np.float64) / 32768
    frames = frame_rms(speech, rate)
    talking = frames[frames > frames.max() / 10]  # the frames with speech in them
    speech *= 10 ** (SPEECH_DBFS / 20) / np.sqrt(np.mean(talking ** 2))
    noise = np.random.default_rng(19).standard_normal(len(speech)) * 10 ** ((SPEECH_DBFS - snr_db) / 20)
    mixed = np.clip(speech + noise, -1, 1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((mixed * 32767).astype(np.int16).tobytes())
    return path


def frame_rms(samples: np.ndarray, rate: int) -> np.ndarray:
    """The RMS of each FRAME_S frame."""
    size = int(rate * FRAME_S)
    count = len(samples) // size
    return np.sqrt(np.mean(samples[:count * size].reshape(count, size).astype(np.float64) ** 2, axis=1))


def levels(samples: np.ndarray, rate: int = 48000) -> tuple[float, float]:
    """(noise floor, speech level) in dBFS: the 10th and the 95th percentile of the 20 ms frames'
    RMS. A third of the file is pause, so the 10th percentile is the noise between sentences
    whatever the recording's phase in the looped file."""
    db = 20 * np.log10(np.maximum(frame_rms(samples, rate), 1e-6))
    return float(np.percentile(db, 10)), float(np.percentile(db, 95))
