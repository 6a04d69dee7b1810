"""Silero VAD: the speech probability of each 32 ms of 16 kHz audio.

The same code serves Triton's Python backend (``TritonPythonModel``) and confmeet's in-process
inference (``SileroVad``, loaded from this file by ``appliance.inference.local``). Weights:
``silero_vad.onnx`` beside this file, placed by ``confmeet models import``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

SAMPLE_RATE = 16000
CHUNK = 512  # samples per probability: 32 ms
CONTEXT = 64  # samples of the previous chunk that the model sees before each chunk
LSTM = 2 * 128
STATE_SIZE = LSTM + CONTEXT
WEIGHTS = "silero_vad.onnx"


class SileroVad:
    def __init__(self, directory: Path | str, threads: int = 1) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(Path(directory) / WEIGHTS), options,
                                                    providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def probabilities(self, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``audio``: float32 samples, a multiple of CHUNK long; ``state``: float32 [STATE_SIZE]
        (zeros for a new stream). Returns one probability per chunk and the state that follows."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        if audio.size % CHUNK:
            raise ValueError(f"AUDIO must be a multiple of {CHUNK} samples, not {audio.size}")
        if state.size != STATE_SIZE:
            raise ValueError(f"STATE must have {STATE_SIZE} values, not {state.size}")
        lstm = state[:LSTM].reshape(2, 1, 128).copy()
        context = state[LSTM:]
        probs = np.empty(audio.size // CHUNK, dtype=np.float32)
        for i in range(probs.size):
            chunk = audio[i * CHUNK:(i + 1) * CHUNK]
            window = np.concatenate([context, chunk])[np.newaxis, :]
            out, lstm = self.session.run(None, {"input": window, "state": lstm, "sr": self._sr})
            probs[i] = out.reshape(-1)[0]
            context = chunk[-CONTEXT:]
        return probs, np.concatenate([lstm.reshape(-1), context]).astype(np.float32)


def load(directory: Path | str) -> SileroVad:
    return SileroVad(directory)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        directory = Path(args["model_repository"]) / args["model_version"]
        self.vad = SileroVad(directory)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy()
                state = pb_utils.get_input_tensor_by_name(request, "STATE").as_numpy()
                probs, state_out = self.vad.probabilities(audio, state)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("PROBS", probs), pb_utils.Tensor("STATE_OUT", state_out)]))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
