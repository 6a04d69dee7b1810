"""Recording through the real appliance: aiortc clients over signaling, the tracks uploaded to a
real S3 server (rclone serve s3) that goes away during the recording, the REST API on top."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance_server import Appliance, start_appliance
from cli.client.participant import Participant
from conftest import BIN, S3_KEY, S3_SECRET, free_port, stop, wait_port
from sfu.participants import ColourTrack, ToneTrack

from .accounts import add_users
from .media import audio_samples, decode_all, ffprobe, rms_dbfs

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1")}


class S3Server:
    """rclone serve s3 on a fixed port and directory, so that it can be stopped and started again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"s3://{S3_KEY}:{S3_SECRET}@127.0.0.1:{self.port}/rec-{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        rclone = shutil.which("rclone", path=str(BIN)) or shutil.which("rclone")
        self.proc = subprocess.Popen([rclone, "serve", "s3", str(self.root), "--addr", f"127.0.0.1:{self.port}",
                                      "--auth-key", f"{S3_KEY},{S3_SECRET}", "--etag-hash", "MD5"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def object(self, key: str) -> bytes:
        bucket = self.url.rsplit("/", 1)[1]
        return (self.root / bucket / key).read_bytes()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("recording"), media_loopback="true", objects=s3.url)
    add_users(app, USERS)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def api(app: Appliance, who: str) -> httpx.Client:
    token = app.login(*USERS[who])["access_token"]
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def joined(app: Appliance, who: str, code: str, rgb: tuple[int, int, int] | None = None) -> Participant:
    client = Participant(app.url, app.login(*USERS[who])["access_token"])
    await client.connect()
    assert (await client.join(code, who.title()))["type"] == "joined"
    if rgb is not None:
        client.publish(ToneTrack(amplitude=0.3))
        client.publish(ColourTrack(rgb))
        assert (await client.offer())["type"] == "answer"
    return client


def metric(app: Appliance, name: str, **labels: str) -> float | None:
    """One sample of the appliance's /metrics."""
    for family in text_string_to_metric_families(httpx.get(f"{app.url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def poll(check, what: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.2)
    return result


async def test_a_recording_survives_the_object_store_going_away(appliance: Appliance, s3: S3Server) -> None:
    ada_api = api(appliance, "ada")
    meeting = ada_api.post("/api/v1/meetings", json={"title": "recorded"}).json()
    ada = await joined(appliance, "ada", meeting["code"], (200, 30, 30))
    grace = await joined(appliance, "grace", meeting["code"], (30, 30, 200))
    late = None
    try:
        refused = await grace.request({"type": "recording_start"})
        assert refused["code"] == "forbidden"
        started = await ada.request({"type": "recording_start"})
        assert started["type"] == "ok" and started["recording"]["started_by"] == "Ada"
        began = time.monotonic()
        recording_id = started["recording"]["id"]
        again = await ada.request({"type": "recording_start"})
        assert again["code"] == "already_recording"
        for client in (ada, grace):  # the notice everyone gets
            await client.wait_until(lambda c=client: c.events_of("recording"))
            assert client.events_of("recording")[0] == {"type": "recording", "active": True,
                                                        "recording": started["recording"]}
        late = await joined(appliance, "linus", meeting["code"])  # a late joiner is told on entry
        assert late.joined["recording"] == started["recording"]
        # A file shared in the chat (only someone seated shares), to be deleted with the meeting.
        shared = ada_api.post(f"/api/v1/meetings/{meeting['id']}/files", params={"name": "notes.txt"},
                              content=b"minutes")
        assert shared.status_code == 201, shared.text
        rows = ada_api.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"]
        assert [(r["id"], r["status"]) for r in rows] == [(recording_id, "recording")]
        assert ada_api.delete(f"/api/v1/recordings/{recording_id}").status_code == 409
        scraped = time.monotonic()
        assert await asyncio.to_thread(metric, appliance, "confmeet_recordings_active") == 1

        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - scraped)))
        s3.stop()  # the object store goes away during the recording
        await asyncio.sleep(1.0)
        assert (await ada.request({"type": "recording_stop"}))["type"] == "ok"
        lasted = time.monotonic() - began  # from the start's reply to the stop's, as this test saw it
        for client in (ada, grace, late):
            await client.wait_until(lambda c=client: any(not e["active"] for e in c.events_of("recording")))
        stopped = [e for e in grace.events_of("recording") if not e["active"]][0]
        assert stopped["recording"]["reason"] == "stopped by Ada"
        # The recording's own duration is the time between start and stop (not a fixed 4 s: what
        # comes before the object store goes away takes longer on a busy machine).
        assert stopped["recording"]["duration_s"] == pytest.approx(lasted, abs=0.5)
        assert stopped["recording"]["duration_s"] >= 3.5
    finally:
        for client in (ada, grace, late):
            if client is not None:
                await client.close()

    spool = appliance.data_dir / "recordings" / recording_id
    waiting = poll(lambda: (r := ada_api.get(f"/api/v1/recordings/{recording_id}").json())["upload_error"] and r,
                   "a failed upload", 15)
    assert waiting["status"] == "uploading" and "retrying" in waiting["upload_error"]
    assert metric(appliance, "confmeet_recordings_active") == 0
    assert metric(appliance, "confmeet_recording_upload_failures_total", outcome="retried") >= 1
    tracks = waiting["tracks"]
    poll(lambda: metric(appliance, "confmeet_recording_spool_bytes") >= sum(t["size"] for t in tracks),
         "the spool's size in the metrics (probed every 15 s)", 20)
    assert sorted((t["name"], t["kind"]) for t in tracks) == [(n, k) for n in ("Ada", "Grace") for k in ("audio", "video")]
    local = {t["file"]: (spool / t["file"]).read_bytes() for t in tracks}  # kept on the appliance's disk
    assert all(len(local[t["file"]]) == t["size"] > 0 for t in tracks)
    assert waiting["size"] == sum(t["size"] for t in tracks)
    assert ada_api.get(f"/api/v1/recordings/{recording_id}/files/{tracks[0]['file']}").status_code == 409

    s3.start()  # back: the retried upload goes through and nothing is lost
    ready = poll(lambda: (r := ada_api.get(f"/api/v1/recordings/{recording_id}").json())["status"] == "ready" and r,
                 "the upload after the object store came back", 40)
    assert ready["upload_error"] == "" and not spool.exists()
    for track in tracks:
        stored = s3.object(f"recordings/{recording_id}/{track['file']}")
        assert hashlib.sha256(stored).digest() == hashlib.sha256(local[track["file"]]).digest()
    link = ada_api.get(f"/api/v1/recordings/{recording_id}/files/{tracks[0]['file']}").json()
    assert link["url"].startswith(f"http://127.0.0.1:{s3.port}/") and link["expires_in"] == 600
    assert httpx.get(link["url"]).content == local[tracks[0]["file"]]  # a presigned S3 URL

    # A composite export, made in the background, with its progress.
    grace_api = api(appliance, "grace")  # anyone who was in the meeting may export
    export = grace_api.post(f"/api/v1/recordings/{recording_id}/exports",
                            json={"format": "mp4", "layout": "grid", "width": 320, "height": 184})
    assert export.status_code == 202, export.text
    assert export.json()["status"] in ("queued", "running")
    url = f"/api/v1/recordings/{recording_id}/exports/{export.json()['id']}"
    done = poll(lambda: (e := grace_api.get(url).json())["status"] in ("ready", "failed") and e, "the export", 60)
    assert done["status"] == "ready" and done["progress"] == 1.0 and done["size"] > 0, done
    out = appliance.data_dir / "export.mp4"
    out.write_bytes(httpx.get(grace_api.get(f"{url}/download").json()["url"]).content)
    assert float(ffprobe(out)["format"]["duration"]) == pytest.approx(ready["duration_s"], rel=0.1)
    decode_all(out)
    assert rms_dbfs(audio_samples(out)[0]) > -35

    assert grace_api.delete(f"/api/v1/recordings/{recording_id}").status_code == 403  # not a moderator
    # Deleting the meeting takes its recordings (tracks, exports) and its chat's files with it.
    bucket = s3.root / s3.url.rsplit("/", 1)[1]
    stored = {str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file()}
    assert any(k.startswith("meetings/") for k in stored) and any(k.startswith("recordings/") for k in stored)
    assert grace_api.delete(f"/api/v1/meetings/{meeting['id']}").status_code == 403  # not the host
    assert {str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file()} == stored
    assert ada_api.delete(f"/api/v1/meetings/{meeting['id']}").status_code == 204
    assert ada_api.get(f"/api/v1/recordings/{recording_id}").status_code == 404
    assert not [path for path in bucket.rglob("*") if path.is_file()]  # tracks, export and file gone
