"""Audio for the models: Opus RTP payloads, or any audio file, as 16 kHz mono float32."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

import av
import numpy as np

from ..inference.base import SAMPLE_RATE
from ..throttle import Throttled

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
    """The upload is not audio that confmeet decodes."""


# Plain containers only. FFmpeg guesses the format from the bytes, and some of its demuxers open
# other files named inside the upload (concat lists, HLS playlists, image sequences ...), relative to
# the server's working directory: FFmpeg may use only these, and no protocol at all.
ALLOWED_FORMATS = frozenset({"wav", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "mp3", "flac", "aac"})
DEMUXER_OPTIONS = {"format_whitelist": ",".join(sorted(ALLOWED_FORMATS)), "protocol_whitelist": "none"}
# One answer for every file refused, whatever FFmpeg said: an error must not tell anything about
# the server (such as whether a file named in the upload exists).
NOT_AUDIO = "not an audio file confmeet reads: send WAV, Ogg (Opus, Vorbis), WebM/Matroska, MP4/MOV, MP3, FLAC or AAC"
DECODE_RETRY_SECONDS = 5


class DecodeSlots:
    """At most ``limit`` uploads decode at once (3 h of audio is ~700 MB of samples); one more is
    refused with :class:`Throttled` rather than queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._busy >= self.limit:
                raise Throttled("the appliance is decoding other audio files; try again shortly",
                                DECODE_RETRY_SECONDS, "busy")
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1


DECODE_SLOTS = DecodeSlots(2)  # the app sets the limit from the setting ai_concurrent_decodes


def decode_file(data: bytes, max_seconds: float) -> np.ndarray:
    """A plain audio file (or a video's first audio track) as 16 kHz mono float32."""
    with DECODE_SLOTS.slot():
        try:
            container = av.open(io.BytesIO(data), options=DEMUXER_OPTIONS)
        except (av.FFmpegError, ValueError, OSError):
            raise AudioFileError(NOT_AUDIO) from None
        try:
            if not ALLOWED_FORMATS.intersection(container.format.name.split(",")):
                raise AudioFileError(NOT_AUDIO)
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
        except (av.FFmpegError, OSError):
            raise AudioFileError(NOT_AUDIO) from None
        finally:
            container.close()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioFileError("the file holds no audio samples")
    return audio.astype(np.float32)
