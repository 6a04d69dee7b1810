"""Stored recordings without a meeting running: the schema migration, recovery of a recording the
appliance died under, retention, and signed download links on the file store."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.accounts import Principal
from appliance.recording.service import Recordings, was_interrupted
from appliance.recording.sink import recording_sink_factory, write_manifest
from appliance.settings import Settings
from appliance.sfu import IceSettings, RoomHost
from appliance.signaling.protocol import Connection, Seat
from appliance.signaling.recording import Recording as RecordingFeature
from appliance.signaling.room import RoomView
from appliance.stores.objects import FileObjects
from appliance.stores.relational import (SCHEMA_VERSION, Meeting, Recording, RecordingExport, Relational,
                                         SchemaVersion, User, utcnow)
from appliance_server import Appliance, start_appliance
from conftest import stop
from sfu.participants import Meeting as SfuMeeting
from sfu.participants import ToneTrack

from .accounts import add_users
from .media import ffprobe
from .test_writer import KILLED_WRITER, TESTS


async def test_migration_3_adds_the_recording_columns_to_an_older_schema(db_url: str) -> None:
    db = Relational(db_url)
    await db.open()

    def back_to_version_2() -> None:  # as a database made before recordings had these columns
        for column in ("ended_at", "stop_reason", "upload_error"):
            db.db.execute_sql(f"ALTER TABLE recording DROP COLUMN {column}")
        db.db.drop_tables([RecordingExport])
        SchemaVersion.delete().where(SchemaVersion.version == 3).execute()
        owner = User.create(email="o@example.org", password_hash="x")
        meeting = Meeting.create(code="old-reco-rds", title="old", owner=owner)
        db.db.execute_sql("INSERT INTO recording (id, meeting_id, started_at, duration_s, status, tracks, "
                          "size_bytes, object_prefix) VALUES ('r1', %s, %s, 1.5, 'ready', '[]', 0, 'recordings/r1/')"
                          .replace("%s", "?" if db.kind == "sqlite" else "%s"), (meeting.id, utcnow()))

    await db.run(back_to_version_2)
    await db.close()
    again = Relational(db_url)
    await again.open()
    assert again.migrations_run == 1 and SCHEMA_VERSION >= 4
    old = await again.run(Recording.get_by_id, "r1")
    assert (old.duration_s, old.stop_reason, old.upload_error, old.ended_at) == (1.5, "", "", None)
    await again.close()


@pytest.fixture
async def recordings(tmp_path: Path) -> AsyncIterator[Recordings]:
    db = Relational(f"sqlite:///{tmp_path}/db.sqlite")
    await db.open()
    objects = FileObjects(f"file://{tmp_path}/objects")
    await objects.open()
    service = Recordings(Settings(data_dir=tmp_path, recording_retention_days=30), db, objects)
    yield service
    await service.close()
    await db.close()


def new_recording(status: str, started_at: dt.datetime | None = None) -> Recording:
    owner = User.get_or_none(User.email == "o@example.org") or User.create(email="o@example.org", password_hash="x")
    meeting = Meeting.create(code=f"m-{Recording.select().count():03d}", title="m", owner=owner)
    recording = Recording.create(meeting=meeting, status=status, started_at=started_at or utcnow())
    recording.object_prefix = f"recordings/{recording.id}/"
    recording.save()
    return recording


def killed_writer(directory: Path, stem: str, kind: str, seconds: float) -> None:
    """Leave a track file as a recording process killed after ``seconds`` of it leaves it."""
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(TESTS), str(TESTS.parent), kind, str(seconds),
                    str(directory / stem)], check=True, timeout=120)


async def test_a_recording_cut_off_by_a_crash_is_finished_and_uploaded_as_interrupted(
        recordings: Recordings) -> None:
    row = await recordings.db.run(new_recording, "recording")
    directory = recordings.spool / row.id
    directory.mkdir(parents=True)
    # What the sink had written when the process died: its manifest under way and unfinished files.
    participant = "0123456789abcdef0123456789abcdef"
    killed_writer(directory, f"{participant}-camera-1", "video", 6.0)
    killed_writer(directory, f"{participant}-microphone-1", "audio", 6.0)
    listed = [{"file": f"{participant}-{source}-1.webm", "participant": participant, "track_id": f"t-{kind}",
               "kind": kind, "source": source, "codec": codec}
              for kind, source, codec in (("video", "camera", "VP8"), ("audio", "microphone", "opus"))]
    write_manifest(directory, {"recording_id": row.id, "started_at": "2026-01-01T00:00:00Z", "state": "recording",
                               "tracks": listed})

    await recordings.recover()
    await recordings.uploader.wait(row.id)
    row = await recordings.db.run(Recording.get_by_id, row.id)
    assert row.status == "ready" and was_interrupted(row.stop_reason)
    assert [(t["kind"], t["track_id"], t["codec"]) for t in row.tracks] == [("video", "t-video", "VP8"),
                                                                             ("audio", "t-audio", "opus")]
    assert all(5.0 <= t["end_s"] <= 6.0 for t in row.tracks)
    assert row.duration_s == max(t["end_s"] for t in row.tracks)
    for track in row.tracks:
        stored = recordings.spool / "stored.webm"
        stored.write_bytes(b"".join([chunk async for chunk in recordings.objects.get(track["key"])]))
        assert len(stored.read_bytes()) == track["size"]
        assert float(ffprobe(stored)["format"]["duration"]) == pytest.approx(track["end_s"], abs=0.1)
    assert not directory.exists()  # removed once everything is stored


async def test_a_crash_before_anything_reached_the_disk_is_a_failure_not_an_empty_recording(
        recordings: Recordings) -> None:
    row = await recordings.db.run(new_recording, "recording")
    directory = recordings.spool / row.id
    directory.mkdir(parents=True)
    write_manifest(directory, {"recording_id": row.id, "state": "recording", "tracks": [
        {"file": "p-camera-1.webm", "participant": "p", "track_id": "t", "kind": "video", "source": "camera",
         "codec": "VP8"}]})
    (directory / "p-camera-1.webm").write_bytes(b"\x1aE\xdf\xa3")  # the header under way

    await recordings.recover()
    row = await recordings.db.run(Recording.get_by_id, row.id)
    assert (row.status, row.tracks) == ("failed", [])
    assert was_interrupted(row.stop_reason) and "nothing of it had reached the disk" in row.stop_reason
    assert (directory / "p-camera-1.webm").exists()  # the evidence stays until the recording is deleted


async def test_retention_deletes_recordings_past_their_time(recordings: Recordings) -> None:
    now = utcnow()
    old = await recordings.db.run(new_recording, "ready", now - dt.timedelta(days=31))
    recent = await recordings.db.run(new_recording, "ready", now - dt.timedelta(days=29))
    for row in (old, recent):
        await recordings.objects.put(f"{row.object_prefix}a.webm", b"track")
        await recordings.objects.put(f"{row.object_prefix}exports/x.mp4", b"export")
    assert await recordings.sweep(now) == 1
    assert [r.id for r in await recordings.db.run(lambda: list(Recording.select()))] == [recent.id]
    assert [o.key async for o in recordings.objects.list("recordings/")] == [
        f"{recent.object_prefix}a.webm", f"{recent.object_prefix}exports/x.mp4"]



async def test_deleting_a_recording_without_objects_deletes_no_one_elses(recordings: Recordings) -> None:
    """A row whose object prefix is empty (nothing was ever stored for it) must not list, and so
    delete, the whole object store."""
    kept = await recordings.db.run(new_recording, "ready", utcnow())
    await recordings.objects.put(f"{kept.object_prefix}a.webm", b"track")
    empty = await recordings.db.run(new_recording, "failed", utcnow())
    empty.object_prefix = ""
    await recordings.db.run(empty.save)
    await recordings.delete(empty)
    assert [o.key async for o in recordings.objects.list("")] == [f"{kept.object_prefix}a.webm"]

# ---------------------------------------------------------------------------- the file store's links
@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("files"))
    add_users(app, {"ada": ("ada@example.com", "ada password 1"), "eve": ("eve@example.com", "eve password 1")})
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


async def test_file_store_downloads_are_signed_expiring_app_links(appliance: Appliance) -> None:
    ada = httpx.Client(base_url=appliance.url, headers={
        "Authorization": f"Bearer {appliance.login('ada@example.com', 'ada password 1')['access_token']}"})
    eve = httpx.Client(base_url=appliance.url, headers={
        "Authorization": f"Bearer {appliance.login('eve@example.com', 'eve password 1')['access_token']}"})
    meeting = ada.post("/api/v1/meetings", json={"title": "files"}).json()
    # A finished recording as the service stores one: its row and its object.
    content = b"\x1aE\xdf\xa3 not really webm " * 1000
    db = Relational(f"sqlite:///{appliance.data_dir / 'confmeet.db'}")
    await db.open()
    row = await db.run(lambda: Recording.create(meeting=meeting["id"], status="ready", duration_s=2.0,
                                                object_prefix="recordings/r/", tracks=[{
                                                    "file": "p-1-camera-1.webm", "key": "recordings/r/p-1-camera-1.webm",
                                                    "participant": "p-1", "name": "Ada", "kind": "video",
                                                    "source": "camera", "codec": "VP8", "start_s": 0.0,
                                                    "end_s": 2.0, "size": len(content)}]))
    await db.close()
    objects = FileObjects(f"file://{appliance.data_dir / 'objects'}")
    await objects.put("recordings/r/p-1-camera-1.webm", content, content_type="video/webm")

    listed = ada.get(f"/api/v1/meetings/{meeting['id']}/recordings").json()["recordings"]
    assert [r["id"] for r in listed] == [row.id] and listed[0]["tracks"][0]["name"] == "Ada"
    assert eve.get(f"/api/v1/meetings/{meeting['id']}/recordings").status_code == 403  # not in the meeting
    assert eve.get(f"/api/v1/recordings/{row.id}/files/p-1-camera-1.webm").status_code == 403
    link = ada.get(f"/api/v1/recordings/{row.id}/files/p-1-camera-1.webm").json()
    assert re.fullmatch(rf"{appliance.url}/recordings/[\w.-]+", link["url"]) and link["expires_in"] == 600
    got = httpx.get(link["url"])  # no token needed: the link is the credential
    assert got.status_code == 200 and hashlib.sha256(got.content).digest() == hashlib.sha256(content).digest()
    assert got.headers["content-type"] == "video/webm"
    assert 'filename="p-1-camera-1.webm"' in got.headers["content-disposition"]
    assert httpx.get(link["url"][:-3] + "abc").status_code == 403  # tampered
    assert ada.get(f"/api/v1/recordings/{row.id}/files/nope.webm").status_code == 404
    assert ada.post(f"/api/v1/recordings/{row.id}/exports", json={"width": 100}).status_code == 422

    assert ada.delete(f"/api/v1/recordings/{row.id}").status_code == 204
    assert await objects.stat("recordings/r/p-1-camera-1.webm") is None
    assert httpx.get(link["url"]).status_code == 404


# ---------------------------------------------------------------------------- a disk filling up
def seated(meeting_id: str, user_id: str) -> tuple[Seat, Connection]:
    """Ada, the meeting's host, seated as signaling seats her; what is sent to her is in the
    connection's outbox."""
    principal = Principal("user", user_id, "Ada")
    connection = Connection(ws=None, principal=principal)  # type: ignore[arg-type]
    seat = Seat("p-ada", meeting_id, {}, principal, "Ada", "host", "session", connection=connection)
    return seat, connection


def sent(connection: Connection) -> list[dict[str, Any]]:
    messages = []
    while not connection.outbox.empty():
        messages.append(connection.outbox.get_nowait())
    return messages


async def pump(host: RoomHost, feature: RecordingFeature) -> None:
    """The SFU's events to the feature, as signaling's server hands them."""
    async for event in host.subscribe_events():
        if feature.handles(event):
            await feature.sfu_event(event)


async def test_a_disk_filling_up_stops_the_recording_and_everyone_is_told(recordings: Recordings) -> None:
    def meeting_row() -> tuple[User, Meeting]:
        owner = User.create(email="o@example.org", password_hash="x")
        return owner, Meeting.create(code="dsk-full-now", title="m", owner=owner)

    owner, meeting = await recordings.db.run(meeting_row)
    factory = recording_sink_factory(Settings(data_dir=recordings.spool.parent))  # the spool the service reads
    sfu = SfuMeeting(RoomHost(IceSettings(loopback=True), sinks={"recording": factory}))
    seat, connection = seated(meeting.id, owner.id)
    room = RoomView({seat.id: seat}, sfu.host, recordings.db, release=None, seat=None,  # type: ignore[arg-type]
                    check_name=None, move=None, breakout_rooms=None)  # type: ignore[arg-type]
    feature = RecordingFeature(room, recordings)
    pumping = asyncio.get_running_loop().create_task(pump(sfu.host, feature))
    try:
        ada = sfu.participant("p-ada", room=meeting.id)  # the SFU's room is the meeting
        assert (await ada.join())["type"] == "joined"
        ada.publish(ToneTrack())
        assert (await ada.offer())["type"] == "answer"
        reply = await feature.handlers["recording_start"](seat, {})
        recording_id = reply["recording"]["id"]
        sink = sfu.host._rooms[meeting.id].sinks["recording"]
        await ada.wait_until(lambda: bool(sink._all) and sink._all[0].frames > 20)
        sink.min_free_bytes = 1 << 60  # the disk fills up

        messages: list[dict[str, Any]] = []

        def told_it_stopped() -> bool:
            messages.extend(sent(connection))
            return any(m["type"] == "recording" and not m["active"] for m in messages)

        await ada.wait_until(told_it_stopped)
        stopped = [m for m in messages if m["type"] == "recording"][-1]["recording"]
        assert stopped["id"] == recording_id and "MB are free on the disk" in stopped["reason"]
        assert meeting.id not in recordings.live
        await recordings.uploader.wait(recording_id)
        row = await recordings.db.run(Recording.get_by_id, recording_id)
        assert row.status == "ready" and row.stop_reason == stopped["reason"]
        [track] = row.tracks  # what was written before the disk filled is kept
        assert track["kind"] == "audio" and track["size"] > 0
        assert (await recordings.objects.stat(track["key"])).size == track["size"]
    finally:
        pumping.cancel()
        await sfu.close()
