"""``local://``: the models of the model repository run in this process, off the event loop.

Each model has its own single worker thread (onnxruntime and CTranslate2 release the GIL and use
the machine's cores themselves), so a slow transcription never delays voice activity. A model is
loaded at its first use; one that is not imported makes calls fail with InferenceUnavailable
until it is, without a restart.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from .base import (FINAL_WINDOW, INTERIM_WINDOW, VAD_CHUNK, VAD_STATE, Health, Inference, InferenceError,
                   InferenceUnavailable, Transcript, check_audio)
from .metrics import measured
from .models import ModelError, load_model

T = TypeVar("T")


class LocalInference(Inference):
    def __init__(self, repository: Path) -> None:
        self.url = "local://"
        self.repository = repository
        self._executors = {name: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inference-{name}")
                           for name in ("vad", "asr")}
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _model(self, name: str) -> Any:
        with self._lock:
            if name not in self._models:
                try:
                    model = load_model(self.repository, name)
                except ModelError as exc:
                    raise InferenceUnavailable(str(exc)) from None
                if name == "asr" and "min_window" not in inspect.signature(model.transcribe).parameters:
                    raise InferenceUnavailable(f"the asr model code in {self.repository} is older than confmeet: "
                                               "run `confmeet models import` again")
                self._models[name] = model
            return self._models[name]

    async def _run(self, name: str, work: Callable[[Any], T]) -> T:
        def call() -> T:
            model = self._model(name)
            try:
                return work(model)
            except ValueError as exc:
                raise InferenceError(str(exc)) from None

        with measured("local", name):
            return await asyncio.get_running_loop().run_in_executor(self._executors[name], call)

    async def vad(self, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        audio = check_audio(audio, VAD_CHUNK)
        state = np.ascontiguousarray(state, dtype=np.float32).reshape(VAD_STATE)
        return await self._run("vad", lambda model: model.probabilities(audio, state))

    async def recognise(self, audio: np.ndarray, language: str, interim: bool) -> Transcript:
        window = INTERIM_WINDOW if interim else FINAL_WINDOW
        text, detected = await self._run("asr", lambda model: model.transcribe(audio, language, window))
        return Transcript(text, detected)

    async def health(self) -> Health:
        models: dict[str, bool] = {}
        problems = []
        for name in ("vad", "asr"):
            try:
                await asyncio.get_running_loop().run_in_executor(self._executors[name], self._model, name)
                models[name] = True
            except InferenceUnavailable as exc:
                models[name] = False
                problems.append(str(exc))
        return Health(all(models.values()), "local", "in-process", models, "; ".join(problems))

    async def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
