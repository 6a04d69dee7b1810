"""Transcription jobs survive the appliance (issue 23): a job accepted with 202 has its audio in the
object store; killed (SIGKILL) or stopped (SIGTERM) while the job runs, the appliance finishes it
after its restart, from the last utterance it had transcribed, within a bounded time. Once with the
embedded stores, once with PostgreSQL and S3."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.captions.files import INPUTS, JOBS
from appliance.inference.models import import_models
from appliance.stores.documents import open_documents
from appliance_server import Appliance, start_appliance
from captions.conftest import SCRIPT, speak, word_error_rate
from conftest import stop
from recording.test_service import S3Server

ADA = ("ada@example.com", "ada password 1")
SPOKEN = SCRIPT + SCRIPT[::-1]  # six utterances: several seconds of ASR on two cores
FINISHED_WITHIN_S = 120.0  # after a restart, a job is done (or failed) within this


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("models") / "model_repository"
    import_models("packages", repository)
    return repository


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(SPOKEN, tmp_path_factory.mktemp("speech") / "speech.wav").read_bytes()


@pytest.fixture
def appliances() -> Iterator[list[Appliance]]:
    started: list[Appliance] = []
    yield started
    for app in started:
        if app.proc.poll() is None:
            stop(app.proc)


def api(app: Appliance) -> httpx.Client:
    token = app.login(*ADA)["access_token"]
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def poll(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.2)
    return result


def submit(client: httpx.Client, speech: bytes) -> str:
    accepted = client.post("/api/v1/ai/transcriptions", params={"language": "en", "name": "minutes"}, content=speech)
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["id"]


def midway(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it runs and has transcribed at least one utterance, not all."""
    def running() -> dict[str, Any] | None:
        job = client.get(f"/api/v1/ai/transcriptions/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        return job if job["status"] == "running" and job["segments"] else None
    return poll(running, "a job half done", 90)


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return poll(lambda: (j := client.get(f"/api/v1/ai/transcriptions/{job_id}").json())["status"]
                in ("done", "failed") and j, "the job after the restart", FINISHED_WITHIN_S)


def check_complete(job: dict[str, Any], before: dict[str, Any]) -> None:
    """Done, every sentence once: the run after the restart went on from where the first stopped."""
    assert job["status"] == "done" and job["error"] == "" and job["progress"] == 1.0, job
    assert word_error_rate(" ".join(SPOKEN), job["text"]) <= 0.2, job["text"]
    starts = [s["start"] for s in job["segments"]]
    assert starts == sorted(set(starts)), job["segments"]  # none transcribed twice
    assert job["segments"][:len(before["segments"])] == before["segments"]


async def stored_job(url: str, job_id: str) -> dict[str, Any] | None:
    documents = open_documents(url)
    await documents.open()
    try:
        return await documents.get(JOBS, job_id)
    finally:
        await documents.close()


async def test_a_transcription_finishes_after_a_kill_and_after_a_stop(
        tmp_path: Path, models: Path, speech: bytes, appliances: list[Appliance]) -> None:
    data = tmp_path / "data"
    app = start_appliance(data, model_repository=str(models))
    appliances.append(app)
    app.add_user(*ADA, admin=True)
    client = api(app)
    killed_job = submit(client, speech)
    assert [p.name for p in (data / "objects" / "data" / INPUTS).iterdir()] == [killed_job]  # stored before the 202
    before = midway(client, killed_job)
    app.proc.kill()
    app.proc.wait(10)

    app = start_appliance(data, model_repository=str(models))
    appliances.append(app)
    client = api(app)
    check_complete(finished(client, killed_job), before)

    stopped_job = submit(client, speech)
    before = midway(client, stopped_job)
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(30) == 0 and "Traceback" not in app.output()
    interrupted = await stored_job(f"sqlite:///{data / 'documents.db'}", stopped_job)
    assert interrupted is not None and interrupted["status"] == "interrupted"

    app = start_appliance(data, model_repository=str(models))
    appliances.append(app)
    check_complete(finished(api(app), stopped_job), before)
    assert not list((data / "objects" / "data" / INPUTS).iterdir())  # inputs go once their job is done


def test_on_postgresql_and_s3_a_killed_transcription_finishes(
        tmp_path: Path, models: Path, speech: bytes, postgres_url: str, appliances: list[Appliance]) -> None:
    s3 = S3Server(tmp_path / "s3")
    s3.start()
    try:
        data = tmp_path / "data"
        stores = {"model_repository": str(models), "database": postgres_url, "objects": s3.url}
        app = start_appliance(data, **stores)
        appliances.append(app)
        app.add_user(*ADA, admin=True)
        client = api(app)
        job_id = submit(client, speech)
        assert s3.object(f"{INPUTS}{job_id}") == speech
        before = midway(client, job_id)
        app.proc.kill()
        app.proc.wait(10)

        app = start_appliance(data, **stores)
        appliances.append(app)
        check_complete(finished(api(app), job_id), before)
        with pytest.raises(FileNotFoundError):
            s3.object(f"{INPUTS}{job_id}")
    finally:
        s3.stop()
