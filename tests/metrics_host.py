"""An SFU worker's RoomHost for tests/test_metrics.py, made in the worker process (the worker
imports it as ``metrics_host:host_asking_inference``): beside its rooms it asks an inference
backend that has no models for one voice-activity result, so the worker's own process metrics
count one failed request, which the parent's /metrics must show."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np

from appliance.inference import InferenceUnavailable
from appliance.inference.local import LocalInference
from appliance.sfu.host import RoomHost
from appliance.sfu.ice import IceSettings

_asked: set[asyncio.Task[None]] = set()


def host_asking_inference(ice: IceSettings, repository: str) -> RoomHost:
    inference = LocalInference(Path(repository))

    async def ask() -> None:
        with contextlib.suppress(InferenceUnavailable):
            await inference.vad(np.zeros(512, np.float32), np.zeros(320, np.float32))

    task = asyncio.get_running_loop().create_task(ask())
    _asked.add(task)
    return RoomHost(ice)
