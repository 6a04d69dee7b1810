"""Nothing acknowledged is lost when the appliance dies (issue 23): the real `confmeet serve` is
killed with SIGKILL while people are recorded, a file is uploaded or a recording waits for its
upload, then started again on the same data: every recorded track comes back playable up to about
a second before the kill, marked interrupted; what was half-written is gone; nobody stays seated.
Once with the embedded stores, once with PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack
from av import VideoFrame

from appliance_server import CONFMEET, Appliance, appliance_env, start_appliance
from cli.client.participant import Participant
from conftest import free_port, stop
from recording.accounts import add_users
from recording.media import decode_all, ffprobe
from recording.test_service import S3Server
from sfu.participants import ToneTrack

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1"), "joan": ("joan@example.com", "joan password 1")}
TOLERANCE_S = 2.0  # the bound on what a kill may cost a track


class SmallCamera(VideoStreamTrack):
    """A 320x240 camera of one colour with a moving bar (four of them encode on two cores)."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        super().__init__()
        self.row = bytes(rgb) * 320
        self.count = 0
        self.began: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self.began = self.began or time.monotonic()
        await asyncio.sleep(max(0.0, self.began + self.count / 15 - time.monotonic()))
        bar = (self.count * 8) % 240
        image = b"".join(b"\xff" * 960 if bar <= y < bar + 12 else self.row for y in range(240))
        frame = VideoFrame(width=320, height=240, format="rgb24")
        frame.planes[0].update(image)
        frame.pts, frame.time_base = self.count * 6000, fractions.Fraction(1, 90000)
        self.count += 1
        return frame


def api(app: Appliance, who: str) -> httpx.Client:
    token = app.login(*USERS[who])["access_token"]
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def publishing(app: Appliance, who: str, code: str, rgb: tuple[int, int, int]) -> Participant:
    client = Participant(app.url, app.login(*USERS[who])["access_token"])
    await client.connect()
    assert (await client.join(code, who.title()))["type"] == "joined"
    client.publish(ToneTrack(amplitude=0.3))
    client.publish(SmallCamera(rgb))
    assert (await client.offer())["type"] == "answer"
    return client


async def start_recording(host: Participant) -> tuple[str, float, float]:
    """The recording's id, when it was asked for and when the appliance acknowledged it
    (monotonic): the recording's clock starts between the two."""
    asked = time.monotonic()
    reply = await host.request({"type": "recording_start"})
    assert reply["type"] == "ok", reply
    return reply["recording"]["id"], asked, time.monotonic()


def kill(app: Appliance) -> float:
    """SIGKILL, as the OOM killer or `systemctl kill -s KILL` does; when it died (monotonic)."""
    app.proc.kill()
    app.proc.wait(10)
    return time.monotonic()


def poll(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.2)
    return result


def ready(client: httpx.Client, recording_id: str) -> dict[str, Any]:
    """The recording once its files are stored (it must not fail)."""
    def stored() -> dict[str, Any] | None:
        row = client.get(f"/api/v1/recordings/{recording_id}").json()
        assert row["status"] != "failed", row
        return row if row["status"] == "ready" else None
    return poll(stored, f"recording {recording_id} stored", 60)


def check_interrupted(client: httpx.Client, recording: dict[str, Any], people: tuple[str, str],
                      recorded: tuple[float, float], folder: Path) -> None:
    """Both people's camera and microphone kept, each playable and ending within TOLERANCE_S of
    the kill on the recording's clock; ``recorded``: the seconds from the start's acknowledgement
    and from its request to the kill (the clock started between the two)."""
    shortest, longest = recorded
    assert recording["interrupted"] is True, recording
    assert sorted((t["name"], t["kind"]) for t in recording["tracks"]) == [
        (name, kind) for name in sorted(people) for kind in ("audio", "video")]
    assert shortest - TOLERANCE_S <= recording["duration_s"] <= longest + 0.5, (recording, recorded)
    for track in recording["tracks"]:
        link = client.get(f"/api/v1/recordings/{recording['id']}/files/{track['file']}").json()
        path = folder / f"{recording['id']}-{track['file']}"
        path.write_bytes(httpx.get(link["url"], timeout=30).content)
        probe = ffprobe(path)
        assert probe["streams"][0]["codec_type"] == track["kind"]
        kept = float(probe["format"]["duration"])  # the end of its last frame on the recording's clock
        assert shortest - TOLERANCE_S <= kept <= longest + 0.5, (track, kept, recorded)
        assert decode_all(path)[track["kind"]] > 0


class StalledUpload:
    """A file shared in a meeting whose upload sends ``first_bytes`` and then waits, forever."""

    def __init__(self, app: Appliance, who: str, meeting_id: str, first_bytes: int) -> None:
        self.release = threading.Event()
        client = api(app, who)

        def body() -> Iterator[bytes]:
            for _ in range(first_bytes // (1 << 20)):
                yield b"x" * (1 << 20)
            self.release.wait(120)

        def send() -> None:
            try:
                client.post(f"/api/v1/meetings/{meeting_id}/files", params={"name": "big.bin"}, content=body())
            except httpx.HTTPError:
                pass  # the appliance died under it

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)


def open_participants(query: Any) -> list[str]:
    return [row[0] for row in query("SELECT display_name FROM participant WHERE left_at IS NULL")]


@pytest.fixture
def appliances() -> Iterator[list[Appliance]]:
    """The appliances a test starts (one after the other on the same data), stopped at the end."""
    started: list[Appliance] = []
    yield started
    for app in started:
        if app.proc.poll() is None:
            stop(app.proc)


async def test_a_killed_appliance_keeps_every_recorded_track_and_leaves_nothing_half_done(
        tmp_path: Path, appliances: list[Appliance]) -> None:
    """Two meetings recorded, for 40 s and 8 s when the appliance is killed, a file upload under way."""
    data = tmp_path / "data"
    app = start_appliance(data, media_loopback="true")
    appliances.append(app)
    add_users(app, USERS)
    ada = api(app, "ada")
    long_meeting = ada.post("/api/v1/meetings", json={"title": "long"}).json()
    short_meeting = api(app, "linus").post("/api/v1/meetings", json={"title": "short"}).json()
    clients = [await publishing(app, "ada", long_meeting["code"], (200, 30, 30)),
               await publishing(app, "grace", long_meeting["code"], (30, 30, 200))]
    upload = None
    try:
        long_id, long_asked, long_started = await start_recording(clients[0])
        await asyncio.sleep(29.0)
        clients += [await publishing(app, "linus", short_meeting["code"], (30, 200, 30)),
                    await publishing(app, "joan", short_meeting["code"], (200, 200, 30))]
        upload = StalledUpload(app, "ada", long_meeting["id"], 3 << 20)
        await asyncio.sleep(long_started + 32.0 - time.monotonic())
        short_id, short_asked, short_started = await start_recording(clients[2])
        await asyncio.sleep(long_started + 40.0 - time.monotonic())
        assert list((data / "objects" / "tmp").iterdir()), "the upload is under way"
        killed = kill(app)
    finally:
        for client in clients:
            await client.close()
        if upload is not None:
            upload.close()
    recorded = {long_id: (killed - long_started, killed - long_asked),
                short_id: (killed - short_started, killed - short_asked)}

    app = start_appliance(data, media_loopback="true")
    appliances.append(app)
    ada, linus = api(app, "ada"), api(app, "linus")
    for client, recording_id, people in ((ada, long_id, ("Ada", "Grace")), (linus, short_id, ("Linus", "Joan"))):
        check_interrupted(client, ready(client, recording_id), people, recorded[recording_id], tmp_path)
    assert not list((data / "objects" / "tmp").iterdir())  # the half-uploaded file is gone
    assert ada.get(f"/api/v1/meetings/{long_meeting['id']}/files").json()["files"] == []
    with sqlite3.connect(data / "confmeet.db") as db:
        assert open_participants(db.execute) == []
        assert db.execute("SELECT count(*) FROM participant").fetchone()[0] == 4
    assert not (data / "recordings" / long_id).exists()  # uploaded, then the spool removed
    app.proc.terminate()
    assert app.proc.wait(30) == 0 and "Traceback" not in app.output()


async def test_a_stopped_appliance_finishes_its_recording_within_the_stop_timeout(
        tmp_path: Path, appliances: list[Appliance]) -> None:
    data = tmp_path / "data"
    app = start_appliance(data, media_loopback="true", stop_timeout_seconds="10")
    appliances.append(app)
    add_users(app, {who: USERS[who] for who in ("ada", "grace")})
    ada = api(app, "ada")
    meeting = ada.post("/api/v1/meetings", json={"title": "stopped"}).json()
    clients = [await publishing(app, "ada", meeting["code"], (200, 30, 30)),
               await publishing(app, "grace", meeting["code"], (30, 30, 200))]
    try:
        recording_id, asked, started = await start_recording(clients[0])
        await asyncio.sleep(started + 5.0 - time.monotonic())
        app.proc.terminate()  # systemctl stop
        stopped = time.monotonic()
        assert await asyncio.to_thread(app.proc.wait, 30) == 0
        assert time.monotonic() - stopped < 10 + 5, "the stop overran stop_timeout_seconds"
    finally:
        for client in clients:
            await client.close()
    assert "Traceback" not in app.output()
    with sqlite3.connect(data / "confmeet.db") as db:  # finished and stored by the stop itself
        status, tracks = db.execute("SELECT status, tracks FROM recording WHERE id = ?", (recording_id,)).fetchone()
        assert status in ("uploading", "ready") and tracks.count('"kind"') == 4
        assert open_participants(db.execute) == []

    app = start_appliance(data, media_loopback="true")
    appliances.append(app)
    ada = api(app, "ada")
    check_interrupted(ada, ready(ada, recording_id), ("Ada", "Grace"), (stopped - started, stopped - asked), tmp_path)


def test_a_second_appliance_on_the_same_data_refuses_to_start_and_repairs_nothing(
        tmp_path: Path, appliances: list[Appliance]) -> None:
    app = start_appliance(tmp_path / "data")
    appliances.append(app)
    with sqlite3.connect(app.data_dir / "confmeet.db") as db:  # as if someone were in a meeting
        db.execute("INSERT INTO user (id, email, name, password_hash, role, active, created_at) "
                   "VALUES ('u', 'u@example.org', '', 'x', 'member', 1, '2026-01-01')")
        db.execute("INSERT INTO meeting (id, code, title, owner_id, lobby, allow_guests, locked, e2ee, status, created_at) "
                   "VALUES ('m', 'abc-defg-hij', 't', 'u', 0, 0, 0, 0, 'live', '2026-01-01')")
        db.execute("INSERT INTO participant (id, meeting_id, display_name, role, joined_at) "
                   "VALUES ('p', 'm', 'Seated', 'host', '2026-01-01')")
    env = appliance_env(app.data_dir, free_port())
    second = subprocess.run([*CONFMEET, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"another confmeet serve (pid {app.proc.pid})" in second.stdout + second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    with sqlite3.connect(app.data_dir / "confmeet.db") as db:
        assert open_participants(db.execute) == ["Seated"]
    assert httpx.get(f"{app.url}/readyz").status_code == 200


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


async def test_on_postgresql_and_s3_kills_lose_no_recording_nor_waiting_upload_and_leave_no_part(
        tmp_path: Path, postgres_url: str, s3: S3Server, appliances: list[Appliance]) -> None:
    """Killed while one recording waits for its upload (the object store is down) and another
    runs (8 s): both are stored in full once the appliance and the store are back. Killed while a
    file's upload has sent its first part to S3: the part is gone after the restart."""
    data = tmp_path / "data"
    stores = {"media_loopback": "true", "database": postgres_url, "objects": s3.url}
    app = start_appliance(data, **stores)
    appliances.append(app)
    add_users(app, USERS)
    ada = api(app, "ada")
    meeting = ada.post("/api/v1/meetings", json={"title": "recorded"}).json()
    clients = [await publishing(app, "ada", meeting["code"], (200, 30, 30)),
               await publishing(app, "grace", meeting["code"], (30, 30, 200))]
    try:
        waiting_id, _, _ = await start_recording(clients[0])
        await asyncio.sleep(3.0)
        s3.stop()
        assert (await clients[0].request({"type": "recording_stop"}))["type"] == "ok"
        waiting = poll(lambda: (r := ada.get(f"/api/v1/recordings/{waiting_id}").json())["upload_error"] and r,
                       "a failed upload", 15)
        spool = data / "recordings" / waiting_id
        written = {t["file"]: hashlib.sha256((spool / t["file"]).read_bytes()).hexdigest() for t in waiting["tracks"]}
        assert len(written) == 4
        running_id, running_asked, running_started = await start_recording(clients[0])
        await asyncio.sleep(running_started + 8.0 - time.monotonic())
        killed = kill(app)
    finally:
        for client in clients:
            await client.close()

    s3.start()
    app = start_appliance(data, **stores)
    appliances.append(app)
    ada = api(app, "ada")
    stored = ready(ada, waiting_id)
    assert stored["interrupted"] is False and stored["stop_reason"] == "stopped by Ada"
    for track in stored["tracks"]:
        uploaded = s3.object(f"recordings/{waiting_id}/{track['file']}")
        assert hashlib.sha256(uploaded).hexdigest() == written[track["file"]]
    check_interrupted(ada, ready(ada, running_id), ("Ada", "Grace"),
                     (killed - running_started, killed - running_asked), tmp_path)
    with psycopg2.connect(postgres_url) as db, db.cursor() as cursor:
        def query(sql: str) -> list[tuple]:
            cursor.execute(sql)
            return cursor.fetchall()
        assert open_participants(query) == []
    db.close()

    seated = Participant(app.url, app.login(*USERS["ada"])["access_token"])  # files are shared from a seat
    await seated.connect()
    assert (await seated.join(meeting["code"], "Ada"))["type"] == "joined"
    upload = StalledUpload(app, "ada", meeting["id"], 12 << 20)  # the first 10 MiB part goes up, then it waits
    try:
        poll(lambda: list(s3.root.rglob(".rclone_temp_multipart_*")), "a multipart upload under way", 20)
        kill(app)
    finally:
        await seated.close()
        upload.close()
    app = start_appliance(data, **stores)
    appliances.append(app)
    assert not list(s3.root.rglob(".rclone_temp_multipart_*"))  # aborted at the start
    assert api(app, "ada").get(f"/api/v1/meetings/{meeting['id']}/files").json()["files"] == []
    app.proc.terminate()
    assert app.proc.wait(30) == 0 and "Traceback" not in app.output()
