"""Whisper speech recognition through faster-whisper (CTranslate2), one utterance per call.

The same code serves Triton's Python backend (``TritonPythonModel``) and confmeet's in-process
inference (``WhisperAsr``, loaded from this file by ``appliance.inference.local``). Weights: the
CTranslate2 conversion of a Whisper model in ``whisper/`` beside this file (model.bin,
config.json, tokenizer.json, vocabulary.json), placed by ``confmeet models import``.

Whisper's encoder is trained on 30 s windows, and running one costs ~0.7 s on two CPU cores
however short the utterance. CTranslate2 also accepts shorter windows: here the window is the
utterance rounded up to whole seconds plus at least one second of silence, and never shorter
than ``min_window`` (10 s for final captions, which keeps the accuracy of a long window; 5 s for
interim captions, which need to be quick: with 2 s windows Whisper repeated itself on half a
second of speech). That takes an utterance of 3 s from ~0.8 s to ~0.15 s of CPU, measured with
the test speech in English and Mandarin.

A final caption is decoded with a beam of 5 (Whisper's and faster-whisper's default), an interim
one greedily. Over fourteen English sentences sent through Opus at 16–64 kbit/s the beam takes
the WER from 4.3 % to 3.4 % (Mandarin CER 6.4 % to 6.0 %) for 0.1 s more recognition per
sentence on this CPU, which the recognition at a pause hides: the final captions of a meeting
came 0.56 s after the speech, against 0.54 s greedily (``benchmarks/captions_bench.py accuracy``
and ``meeting``, docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

SAMPLE_RATE = 16000
MAX_SECONDS = 30  # Whisper's window
WEIGHTS = "whisper"
COMPUTE_TYPES = {"cuda": "float16", "cpu": "int8"}
FINAL_WINDOW = 10.0  # seconds: the shortest encoder window of a final caption's decoding
TAIL = 1.0  # seconds of silence after the audio, at least, in the window
FINAL_BEAM = 5  # the beam of a final caption's decoding; shorter windows (interim text) decode greedily
TOKENS_PER_SECOND = 15  # a generous bound on what a second of speech writes (a runaway decoding stops there)


def gpu_name(index: int) -> str:
    """The GPU's model name (NVML, else nvidia-smi), "" when neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml in this image, or no driver library: ask nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ""
    try:
        return subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader", f"--id={index}"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class WhisperAsr:
    def __init__(self, directory: Path | str, threads: int = 0, device: str = "cpu", device_index: int = 0) -> None:
        if device not in COMPUTE_TYPES:
            raise ValueError(f"device {device!r}: use cpu or cuda")
        # CTranslate2's own default is 4 threads: more than the cores of a small machine slows it down.
        threads = threads or min(4, len(os.sched_getaffinity(0)))
        self.model = WhisperModel(str(Path(directory) / WEIGHTS), device=device, device_index=device_index,
                                  compute_type=COMPUTE_TYPES[device], cpu_threads=threads, local_files_only=True)
        loaded = self.model.model  # the CTranslate2 model: where it really is, not what was asked
        where = f"cuda:{loaded.device_index[0] if isinstance(loaded.device_index, list) else loaded.device_index}" \
            if loaded.device == "cuda" else loaded.device
        name = gpu_name(device_index) if loaded.device == "cuda" else ""
        self.device = " ".join(part for part in (where, name, loaded.compute_type) if part)
        self.final_beam = FINAL_BEAM  # benchmarks/captions_bench.py accuracy sets others to compare

    def transcribe(self, audio: np.ndarray, language: str = "", min_window: float = FINAL_WINDOW) -> tuple[str, str]:
        """The text spoken in ``audio`` (float32 16 kHz mono, at most 30 s) and its language;
        ``language`` "" detects it. ``min_window``: the shortest encoder window, in seconds."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size > MAX_SECONDS * SAMPLE_RATE:
            raise ValueError(f"AUDIO is limited to {MAX_SECONDS} s ({MAX_SECONDS * SAMPLE_RATE} samples)")
        if audio.size == 0:
            return "", language
        seconds = audio.size / SAMPLE_RATE
        window = min(MAX_SECONDS, max(math.ceil(seconds + TAIL), math.ceil(min_window)))
        padded = np.zeros(window * SAMPLE_RATE, np.float32)
        padded[:audio.size] = audio
        extractor = self.model.feature_extractor
        features = extractor(padded, padding=0)[:, :window * SAMPLE_RATE // extractor.hop_length]
        encoded = self.model.encode(features)
        if not language:
            language = self.model.model.detect_language(encoded)[0][0][0].strip("<|>")
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                              language=language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = self.model.model.generate(
            encoded, [prompt], beam_size=self.final_beam if min_window >= FINAL_WINDOW else 1, max_length=len(prompt) + 8 + int(TOKENS_PER_SECOND * seconds),
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            return_scores=True, return_no_speech_prob=True)[0]
        tokens = result.sequences_ids[0]
        average_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > 0.6 and average_logprob < -1.0:  # Whisper's own rule: nothing was said
            return "", language
        return tokenizer.decode(tokens).strip(), language

def load(directory: Path | str) -> WhisperAsr:
    return WhisperAsr(directory)


def device_of(args: dict[str, str]) -> tuple[str, int]:
    """CTranslate2's device for Triton's instance: ("cuda", GPU id) for KIND_GPU, else ("cpu", 0)."""
    if args.get("model_instance_kind", "CPU") == "GPU":
        return "cuda", int(args.get("model_instance_device_id") or 0)
    return "cpu", 0


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("cpu_threads", {}).get("string_value", "0") or 0)
        device, index = device_of(args)
        self.asr = WhisperAsr(Path(args["model_repository"]) / args["model_version"], threads, device, index)
        print(f"asr: Whisper loaded on {self.asr.device}", flush=True)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        device = np.array([self.asr.device.encode()], dtype=np.object_)
        responses = []
        for request in requests:
            try:
                audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy()
                raw = pb_utils.get_input_tensor_by_name(request, "LANGUAGE").as_numpy().reshape(-1)
                language = raw[0].decode() if raw.size else ""
                window = pb_utils.get_input_tensor_by_name(request, "MIN_WINDOW")  # optional
                min_window = float(window.as_numpy().reshape(-1)[0]) if window is not None else FINAL_WINDOW
                text, detected = self.asr.transcribe(audio, language, min_window)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_)),
                    pb_utils.Tensor("LANGUAGE_OUT", np.array([detected.encode()], dtype=np.object_)),
                    pb_utils.Tensor("DEVICE", device)]))
            except (ValueError, UnicodeDecodeError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
