"""Whisper speech recognition through faster-whisper (CTranslate2), one utterance per call.

The same code serves Triton's Python backend (``TritonPythonModel``) and confmeet's in-process
inference (``WhisperAsr``, loaded from this file by ``appliance.inference.local``). Weights: the
CTranslate2 conversion of a Whisper model in ``whisper/`` beside this file (model.bin,
config.json, tokenizer.json, vocabulary.json), placed by ``confmeet models import``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

SAMPLE_RATE = 16000
MAX_SECONDS = 30  # Whisper's window
WEIGHTS = "whisper"


class WhisperAsr:
    def __init__(self, directory: Path | str, threads: int = 0) -> None:
        # CTranslate2's own default is 4 threads: more than the cores of a small machine slows it down.
        threads = threads or min(4, len(os.sched_getaffinity(0)))
        self.model = WhisperModel(str(Path(directory) / WEIGHTS), device="cpu", compute_type="int8",
                                  cpu_threads=threads, local_files_only=True)

    def transcribe(self, audio: np.ndarray, language: str = "") -> tuple[str, str]:
        """The text spoken in ``audio`` (float32 16 kHz mono, at most 30 s) and its language;
        ``language`` "" detects it."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size > MAX_SECONDS * SAMPLE_RATE:
            raise ValueError(f"AUDIO is limited to {MAX_SECONDS} s ({MAX_SECONDS * SAMPLE_RATE} samples)")
        if audio.size == 0:
            return "", language
        segments, info = self.model.transcribe(
            audio, language=language or None, beam_size=1, temperature=0.0, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return text, info.language


def load(directory: Path | str) -> WhisperAsr:
    return WhisperAsr(directory)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("cpu_threads", {}).get("string_value", "0") or 0)
        self.asr = WhisperAsr(Path(args["model_repository"]) / args["model_version"], threads)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy()
                raw = pb_utils.get_input_tensor_by_name(request, "LANGUAGE").as_numpy().reshape(-1)
                language = raw[0].decode() if raw.size else ""
                text, detected = self.asr.transcribe(audio, language)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_)),
                    pb_utils.Tensor("LANGUAGE_OUT", np.array([detected.encode()], dtype=np.object_))]))
            except (ValueError, UnicodeDecodeError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
