"""A pool of Triton servers (appliance/inference/pool.py) against two real tritonservers on
loopback: calls spread over both, the busy one passed over, a refused or too slow call not tried
again, one server killed and brought back, both gone; and a malformed list of servers refused by
the settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY as MAIN_REGISTRY

from appliance.inference import InferenceError, InferenceUnavailable, open_inference
from appliance.inference.base import SAMPLE_RATE, VAD_CHUNK, VAD_STATE
from appliance.inference.pool import TritonPool
from appliance.inference.triton import TritonUnreachable
from appliance.process_metrics import REGISTRY
from appliance.settings import SettingsError, load_settings
from triton_server import Triton, backend_directory

CHUNK, STATE = np.zeros(VAD_CHUNK, np.float32), np.zeros(VAD_STATE, np.float32)


@pytest.fixture(scope="module")
def servers(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Triton]]:
    scratch = tmp_path_factory.mktemp("triton-pool")
    backends = backend_directory(scratch / "backends")
    pair = [Triton(model_repository, backends, scratch / f"tritonserver-{n}.log") for n in (1, 2)]
    try:
        with ThreadPoolExecutor(2) as starting:  # both load their models at once
            list(starting.map(Triton.start, pair))
        yield pair
    finally:
        for server in pair:
            server.stop()


@pytest.fixture
def running(servers: list[Triton]) -> list[Triton]:
    """Both servers up, whichever test killed one before."""
    for server in servers:
        if server.proc is None:
            server.start()
    return servers


def pool_url(servers: list[Triton]) -> str:
    return "triton://" + ",".join(f"127.0.0.1:{server.http_port}" for server in servers)


async def until(condition, seconds: float = 30.0) -> None:
    """Wait for the pool's background check to see a change (it runs every check_every seconds)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the pool's health check did not see the change"
        await asyncio.sleep(0.1)


async def test_calls_spread_over_the_servers_the_busy_one_passed_over(running: list[Triton], model_repository: Path,
                                                                     script_audio: np.ndarray) -> None:
    pool = open_inference(pool_url(running), model_repository)
    assert isinstance(pool, TritonPool)
    try:
        health = await pool.health()
        assert health.ready and health.models == {"vad": True, "asr": True} and health.detail == "", health
        first, second = pool.members

        for _ in range(6):  # one at a time: none is busy, so they take turns
            probs, _ = await pool.vad(CHUNK, STATE)
            assert probs.shape == (1,)
        assert (first.answered, second.answered) == (3, 3)
        await asyncio.gather(*(pool.vad(CHUNK, STATE) for _ in range(8)))  # at once: each gets as many in flight
        assert (first.answered, second.answered) == (7, 7)

        transcription = asyncio.create_task(pool.transcribe(script_audio, "en"))
        await asyncio.sleep(0)  # it has picked its server
        busy, idle = (first, second) if first.in_flight else (second, first)
        assert (busy.in_flight, idle.in_flight) == (1, 0)
        assert REGISTRY.get_sample_value("confmeet_inference_in_flight", {"member": busy.address}) == 1
        answered, voice_calls = busy.answered, 0
        while not transcription.done() and voice_calls < 10:
            await pool.vad(CHUNK, STATE)
            voice_calls += 1
        assert "budget" in (await transcription).text.lower()
        assert voice_calls >= 2, "the transcription ended before the pool had a choice to make"
        assert busy.answered == answered + 1  # the transcription only: every voice call went to the idle one
        assert idle.answered == 7 + voice_calls
    finally:
        await pool.close()


async def test_refused_and_too_slow_calls_are_not_tried_again(running: list[Triton], script_audio: np.ndarray) -> None:
    pool = TritonPool(pool_url(running), check_every=600, asr_timeout=0.01)  # no transcription is that quick
    try:
        with pytest.raises(InferenceError, match="multiple of 512"):
            await pool.vad(np.zeros(100, np.float32), STATE)
        too_slow = {"backend": "triton", "model": "asr", "kind": "unavailable"}
        before = REGISTRY.get_sample_value("confmeet_inference_errors_total", too_slow) or 0
        with pytest.raises(InferenceUnavailable, match=r"did not answer a transcription within 0.01 s") as slow:
            await pool.transcribe(script_audio[:3 * SAMPLE_RATE], "en")
        assert not isinstance(slow.value, TritonUnreachable)
        assert REGISTRY.get_sample_value("confmeet_inference_errors_total", too_slow) == before + 1  # one server asked
        assert all(m.up and m.unreachable == 0 and m.answered == 0 for m in pool.members)
    finally:
        await pool.close()


async def test_a_server_killed_is_passed_over_then_taken_back(running: list[Triton]) -> None:
    killed, alive = running
    calls_only = TritonPool(pool_url(running), check_every=600)  # no check runs: only calls mark servers down
    checked = TritonPool(pool_url(running), check_every=0.3)
    try:
        for pool in (calls_only, checked):
            await asyncio.gather(pool.vad(CHUNK, STATE), pool.vad(CHUNK, STATE))
            assert [m.answered for m in pool.members] == [1, 1]

        killed.kill()
        # Two calls at once: one of them is given the killed server, and is tried again on the other.
        results = await asyncio.gather(calls_only.vad(CHUNK, STATE), calls_only.vad(CHUNK, STATE))
        assert all(probs.shape == (1,) for probs, _ in results)
        gone, there = calls_only.members
        assert not gone.up and gone.unreachable == 1 and f"127.0.0.1:{killed.http_port} is unreachable" in gone.problem
        assert there.up and there.answered == 3
        for _ in range(3):  # the next calls go to the server left, without trying the killed one again
            await calls_only.vad(CHUNK, STATE)
        assert (gone.unreachable, gone.answered, there.answered) == (1, 1, 6)
        health = await calls_only.health()
        assert health.ready and health.models == {"vad": True, "asr": True}
        assert health.detail.startswith("1 of 2 Triton servers down: ") and f":{killed.http_port}" in health.detail
        assert f":{alive.http_port}" not in health.detail

        await until(lambda: not checked.members[0].up)  # the background check saw it go
        assert MAIN_REGISTRY.get_sample_value("confmeet_inference_member_up", {"member": gone.address}) == 0
        await checked.vad(CHUNK, STATE)
        assert [m.answered for m in checked.members] == [1, 2]

        killed.start()  # on the same port
        await until(lambda: checked.members[0].up)
        assert MAIN_REGISTRY.get_sample_value("confmeet_inference_member_up", {"member": gone.address}) == 1
        for _ in range(4):
            await checked.vad(CHUNK, STATE)
        assert [m.answered for m in checked.members] == [3, 4]
        assert (await checked.health()).detail == ""
    finally:
        await calls_only.close()
        await checked.close()


async def test_no_server_up_fails_naming_every_server(running: list[Triton]) -> None:
    pool = TritonPool(pool_url(running), check_every=600)
    try:
        for server in running:
            server.kill()
        with pytest.raises(InferenceUnavailable) as failed:
            await pool.vad(CHUNK, STATE)
        message = str(failed.value)
        assert message.startswith("no Triton server of the pool is up: ")
        for server in running:
            assert f"Triton at 127.0.0.1:{server.http_port} is unreachable" in message
        with pytest.raises(InferenceUnavailable, match="no Triton server of the pool is up"):
            await pool.transcribe(np.zeros(16000, np.float32))  # at once: no server is tried again
        assert [m.unreachable for m in pool.members] == [1, 1]
        health = await pool.health()
        assert not health.ready and health.models == {}
        assert all(f"127.0.0.1:{server.http_port} does not answer" in health.detail for server in running)
    finally:
        await pool.close()


@pytest.mark.parametrize("servers, message", [
    ("h1:8001,,h2:8001", "server 2 of 3 is empty"),
    ("h1:8001,h2:80x1", "server 2 of 2, 'h2:80x1', has no valid port"),
    ("h1:8001,:8002", "server 2 of 2, ':8002', is not HOST:PORT"),
    ("h1:8001;h2:8001", "the server, 'h1:8001;h2:8001', is not HOST:PORT (servers are separated by commas)"),
    ("h1:8001,h1:8001", "h1:8001 is listed twice; name each server once"),
])
def test_a_malformed_list_of_servers_is_refused(tmp_path: Path, servers: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(None, env={"CONFMEET_DATA_DIR": str(tmp_path), "CONFMEET_INFERENCE": f"triton://{servers}"})
    said = str(refused.value)
    assert said.startswith(f"setting 'inference' = 'triton://{servers}': {message}") and said.endswith(
        "(set it in the config file or CONFMEET_INFERENCE)"), said
    assert "listed twice" in said or "use triton://HOST:PORT, or several servers as one pool" in said, said


def test_a_list_of_servers_is_a_pool(tmp_path: Path) -> None:
    settings = load_settings(None, env={"CONFMEET_DATA_DIR": str(tmp_path),
                                        "CONFMEET_INFERENCE": "triton://h1:8001, h2,10.0.0.3:8001,[fd00::3]"})
    pool = open_inference(settings.inference, tmp_path)
    assert isinstance(pool, TritonPool)
    assert [m.address for m in pool.members] == ["h1:8001", "h2:8000", "10.0.0.3:8001", "[fd00::3]:8000"]
    assert not isinstance(open_inference("triton://h1:8001", tmp_path), TritonPool)
