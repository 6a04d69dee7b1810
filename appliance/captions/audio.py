"""Audio for the models: Opus RTP payloads, or any audio file, as 16 kHz mono float32."""

from __future__ import annotations

import io

import av
import numpy as np

from ..inference.base import SAMPLE_RATE

OPUS_RATE = 48000


class OpusTo16k:
    """Decodes one Opus stream packet by packet (libopus keeps state between packets, and
    conceals a lost one) and resamples it to 16 kHz mono."""

    def __init__(self) -> None:
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.sample_rate = OPUS_RATE
        self._decoder.layout = "mono"
        self._decoder.format = "s16"
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        out = []
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            return np.zeros(0, np.float32)  # a damaged packet: libopus conceals it next time
        for frame in frames:
            frame.pts = None
            for resampled in self._resampler.resample(frame):
                out.append(resampled.to_ndarray().reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class AudioFileError(Exception):
    """The upload is not audio that FFmpeg can decode."""


def decode_file(data: bytes, max_seconds: float) -> np.ndarray:
    """Any audio (or video's first audio track) FFmpeg reads, as 16 kHz mono float32."""
    try:
        container = av.open(io.BytesIO(data))
    except (av.FFmpegError, ValueError) as exc:
        raise AudioFileError(f"not an audio file FFmpeg can read ({exc})") from None
    try:
        if not container.streams.audio:
            raise AudioFileError("the file has no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks, samples, limit = [], 0, int(max_seconds * SAMPLE_RATE)
        for frame in container.decode(audio=0):
            frame.pts = None
            for resampled in resampler.resample(frame):
                chunk = resampled.to_ndarray().reshape(-1)
                chunks.append(chunk)
                samples += chunk.size
                if samples > limit:
                    raise AudioFileError(f"the audio is longer than {max_seconds / 60:.0f} minutes")
        for resampled in resampler.resample(None):
            chunks.append(resampled.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise AudioFileError(f"the audio cannot be decoded ({exc})") from None
    finally:
        container.close()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioFileError("the file holds no audio samples")
    return audio.astype(np.float32)
