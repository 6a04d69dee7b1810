"""``confmeet backup``, run as an operator runs it, against real servers: PostgreSQL, a MongoDB
wire-protocol server (nx-27017) and an S3 server (rclone serve s3), and the embedded stores."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.accounts import create_user
from appliance.backup import BackupError, Portal, create_backup, open_location, restore_archive, verify_archive
from appliance.backup.cipher import CHUNK, HEADER, SEALED
from appliance.backup.location import DirectoryLocation
from appliance.backup.tarstream import TarWriter
from appliance.settings import Settings, load_settings
from appliance.stores.documents import DocumentStore, open_documents
from appliance.stores.objects import ObjectStore, open_objects
from appliance.stores.relational import (MODELS, AuditEvent, AuthSession, Meeting, MeetingRole, Participant,
                                         Recording, Relational, User, utcnow)
from appliance_server import CONFMEET, appliance_env, start_appliance
from conftest import free_port, stop

MiB = 1024 * 1024
RSS_LIMIT_MB = 200
PASSWORD = "a long enough password"


# ---------------------------------------------------------------------------------------- helpers
@dataclass
class Install:
    """A data directory and the stores its settings name (embedded where a URL is absent)."""

    data_dir: Path
    urls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = appliance_env(self.data_dir, free_port(), **self.urls)

    @property
    def database(self) -> str:
        return self.urls.get("database", f"sqlite:///{self.data_dir / 'confmeet.db'}")

    @property
    def documents(self) -> str:
        return self.urls.get("documents", f"sqlite:///{self.data_dir / 'documents.db'}")

    @property
    def objects(self) -> str:
        return self.urls.get("objects", f"file://{self.data_dir / 'objects'}")

    @property
    def journal(self) -> Path:
        return self.data_dir / "restore-state.json"

    def settings(self) -> Settings:
        return load_settings(self.data_dir / "confmeet.toml", env={},
                             overrides={"data_dir": self.data_dir, **self.urls})

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*CONFMEET, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr + result.stdout
        return result

    def fails(self, *args: str) -> str:
        """Run a command that must fail with one line of advice; return its stderr."""
        result = self.cli(*args)
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        return result.stderr

    def measured(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        """Run a command and sample its peak resident memory (MB) while it runs."""
        proc = subprocess.Popen([*CONFMEET, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        peak = 0.0
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            time.sleep(0.02)
        out, err = proc.communicate()
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert result.returncode == 0, err + out
        return result, peak


@contextlib.asynccontextmanager
async def stores(install: Install) -> AsyncIterator[tuple[Relational, DocumentStore, ObjectStore]]:
    db = Relational(install.database)
    docs = open_documents(install.documents)
    objects = open_objects(install.objects)
    await db.open()
    await docs.open()
    await objects.open()
    try:
        yield db, docs, objects
    finally:
        await objects.close()
        await docs.close()
        await db.close()


async def read_object(objects: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in objects.get(key)])


async def dump(install: Install, skip: str = "\0") -> dict[str, Any]:
    """Everything the install holds: every row, every document, every object's bytes (as sha256);
    objects under ``skip`` (archives kept in the same bucket) left out."""
    async with stores(install) as (db, docs, objects):
        def rows() -> dict[str, list[tuple]]:
            return {model._meta.table_name: list(model.select().order_by(model._meta.primary_key).tuples())
                    for model in MODELS}

        tables = await db.run(rows)
        documents = {name: [doc async for doc in docs.iter_all(name)] for name in await docs.collections()}
        blobs = {}
        async for info in objects.list(""):
            if info.key.startswith(skip):
                continue
            digest = hashlib.sha256()
            async for chunk in objects.get(info.key):
                digest.update(chunk)
            blobs[info.key] = (info.size, digest.hexdigest(), (await objects.stat(info.key)).content_type)
    return {"tables": tables, "documents": documents, "objects": blobs}


async def seed(install: Install, *, users: int = 3, meetings: int = 4, documents: int = 600) -> dict[str, Any]:
    """Users with real password hashes, meetings with roles and participants, sessions, audit events,
    recordings whose tracks are objects, transcripts and AI results, uploads."""
    rng = random.Random(7)
    async with stores(install) as (db, docs, objects):
        people = [await create_user(db, f"user{i}@example.org", PASSWORD, f"Ünïcode Name {i}",
                                    "admin" if i == 0 else "member") for i in range(users)]
        recordings = []
        for m in range(meetings):
            rec_id = uuid.uuid4().hex
            tracks = []
            for kind, size in (("audio", 1536 * 1024 + m), ("video", 300 * 1024)):
                key = f"recordings/{rec_id}/{kind}.webm"
                await objects.put(key, rng.randbytes(size), content_type=f"{kind}/webm")
                tracks.append({"kind": kind, "key": key, "size": size})
            recordings.append((rec_id, tracks))
        await objects.put("uploads/empty.bin", b"")
        await objects.put("uploads/slides.pdf", b"%PDF-1.7 " + rng.randbytes(5000), content_type="application/pdf")

        def rows() -> list[str]:
            codes = []
            for m, (rec_id, tracks) in enumerate(recordings):
                owner = people[m % len(people)]
                meeting = Meeting.create(code=f"abc-{m:04d}-xyz", title=f"Réunion «{m}» 🎥", owner=owner,
                                         starts_at=dt.datetime(2026, 3, m + 1, 9, 30, 15, 123456),
                                         lobby=m % 2 == 0, allow_guests=True, status="ended",
                                         ended_at=utcnow())
                codes.append(meeting.code)
                MeetingRole.create(meeting=meeting, user=owner, role="host")
                for person in people:
                    if person.id != owner.id:
                        MeetingRole.create(meeting=meeting, user=person, role="participant")
                Participant.create(meeting=meeting, user=owner, display_name="Host", role="host",
                                   left_at=utcnow())
                Participant.create(meeting=meeting, user=None, display_name="Gäst", role="guest")
                Recording.create(id=rec_id, meeting=meeting, started_by=owner, duration_s=61.25 + m,
                                 status="ready", tracks=tracks, size_bytes=sum(t["size"] for t in tracks),
                                 object_prefix=f"recordings/{rec_id}/")
                for n in range(12):
                    AuditEvent.create(actor=owner, meeting=meeting, action="meeting.event",
                                      detail={"n": n, "text": "naïve ✓", "nested": {"ok": n % 2 == 0, "f": 0.5}})
            AuthSession.create(user=people[0], refresh_hash=hashlib.sha256(b"r").hexdigest(),
                               expires_at=utcnow() + dt.timedelta(days=30))
            return codes

        codes = await db.run(rows)
        for i in range(documents):
            await docs.insert("transcripts", {
                "_id": f"seg-{i:05d}", "meeting": codes[i % len(codes)], "start": i * 1.5, "final": i % 3 == 0,
                "text": f"Satz {i}: Grüße, 世界 \"quoted\"\n", "speaker": {"name": "Ada", "lang": "de"},
                "words": [{"w": "hallo", "p": 0.98}, {"w": None, "p": 1}],
            })
        for i in range(5):
            await docs.insert("ai_results", {"kind": "summary", "n": i, "bullets": ["a", "b"], "score": 1e-3})
    return {"codes": codes, "recordings": recordings}


async def wipe(install: Install, skip: str = "\0") -> None:
    async with stores(install) as (db, docs, objects):
        def delete_rows() -> None:
            for model in reversed(MODELS):
                model.delete().execute()

        await db.run(delete_rows)
        for name in await docs.collections():
            await docs.delete_many(name, {})
        async for info in objects.list(""):
            if not info.key.startswith(skip):
                await objects.delete(info.key)


def write_passphrase(path: Path, text: str = "correct horse battery staple") -> Path:
    path.write_text(text + "\n")
    return path


def embedded_archive_members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {member.name: member for member in tar.getmembers()}


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x55]))


# ------------------------------------------------------------------------- 1: real-server round trip
async def test_round_trip_postgresql_mongodb_s3(tmp_path: Path, postgres_url: str, mongo_url: str,
                                               s3_url: str) -> None:
    install = Install(tmp_path / "data", {"database": postgres_url, "documents": mongo_url, "objects": s3_url})
    (install.data_dir / "secrets.toml").write_text('secret_key = "k-123"\nturn_secret = "t-456"\n')
    await seed(install, documents=150)
    before = await dump(install)
    passphrase = write_passphrase(tmp_path / "pass")
    # In the bucket the objects live in (endpoint and keys borrowed from the 'objects' setting):
    # the backup must neither copy its own archives nor a restore wipe them.
    backups = f"s3://{s3_url.rpartition('/')[2]}/backups"

    created = json.loads(install.ok("backup", "create", "--to", backups, "--passphrase-file", str(passphrase),
                                    "--json").stdout)
    manifest = created["manifest"]
    assert manifest["source"] == {"database": "postgresql", "documents": "mongodb", "objects": "s3"}
    assert manifest["database"]["tables"]["user"] == 3 and manifest["database"]["tables"]["audit_event"] == 4 * 12 + 3
    assert manifest["documents"]["collections"] == {"ai_results": 5, "transcripts": 150}
    assert manifest["objects"]["count"] == 10 and manifest["encryption"] == "secrets"
    assert manifest["config"]["files"] == ["config/confmeet.toml.enc", "config/secrets.toml.enc"]
    listed = json.loads(install.ok("backup", "list", backups, "--json").stdout)
    assert [a["name"] for a in listed] == [created["archive"]] and listed[0]["size"] == created["size"]

    await wipe(install, skip="backups/")
    (install.data_dir / "secrets.toml").unlink()
    assert (await dump(install, skip="backups/"))["objects"] == {}

    restored = json.loads(install.ok("backup", "restore", f"{backups}/{created['archive']}", "--passphrase-file",
                                     str(passphrase), "--json").stdout)
    assert any("secrets restored" in note for note in restored["notes"])
    after = await dump(install, skip="backups/")
    assert after["tables"] == before["tables"]
    assert after["documents"] == before["documents"]
    assert after["objects"] == before["objects"]
    with (install.data_dir / "secrets.toml").open("rb") as fh:
        assert tomllib.load(fh) == {"secret_key": "k-123", "turn_secret": "t-456"}
    assert not install.journal.exists()

    async with stores(install) as (db, _, _):  # PostgreSQL's id sequences moved past the restored ids
        event = await db.run(lambda: AuditEvent.create(action="after.restore"))
        assert event.id > max(row[0] for row in before["tables"]["audit_event"])
    with Portal() as portal:  # the first archive now lies among the objects: not copied again
        again = create_backup(install.settings(), open_location(backups, install.settings(), portal), portal)
    assert again.manifest["objects"]["count"] == 10


# ----------------------------------------------------------- 2: embedded install → production stores
def test_embedded_install_restores_into_postgresql_s3_mongodb(tmp_path: Path, postgres_url: str,
                                                               mongo_url: str, s3_url: str) -> None:
    app = start_appliance(tmp_path / "embedded")
    try:
        app.add_user("grace@example.org", PASSWORD, admin=True)
        tokens = app.login("grace@example.org", PASSWORD)
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        meeting = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "Quarterly review – Q3"},
                             headers=auth).json()
        source = Install(app.data_dir)
        source.env = app.env

        async def add_content() -> None:
            async with stores(source) as (_, docs, objects):
                await docs.insert("transcripts", {"_id": "t1", "meeting": meeting["id"], "text": "Hallo zusammen"})
                await objects.put(f"recordings/{meeting['id']}/audio.ogg", b"OggS" + bytes(range(256)) * 900,
                                  content_type="audio/ogg")

        asyncio.run(add_content())
        created = json.loads(source.ok("backup", "create", "--to", str(tmp_path / "archives"), "--passphrase-file",
                                       str(write_passphrase(tmp_path / "pass")), "--json").stdout)  # while serving
    finally:
        stop(app.proc)
    assert created["manifest"]["source"] == {"database": "sqlite", "documents": "sqlite", "objects": "file"}

    target = Install(tmp_path / "production", {"database": postgres_url, "documents": mongo_url, "objects": s3_url})
    archive = str(tmp_path / "archives" / created["archive"])
    assert "encrypted settings" in restore_error(target, Path(archive))
    target.ok("backup", "restore", archive, "--passphrase-file", str(tmp_path / "pass"))

    migrated = start_appliance(target.data_dir, **target.urls)
    try:
        login = httpx.post(f"{migrated.url}/api/v1/auth/login",
                           json={"email": "grace@example.org", "password": PASSWORD})
        assert login.status_code == 200, login.text
        fresh = {"Authorization": f"Bearer {login.json()['access_token']}"}
        found = httpx.get(f"{migrated.url}/api/v1/meetings/by-code/{meeting['code']}", headers=fresh)
        assert found.status_code == 200, found.text
        assert (found.json()["id"], found.json()["title"]) == (meeting["id"], "Quarterly review – Q3")
        # The signing secret came along: a token issued by the embedded install is still good.
        assert httpx.get(f"{migrated.url}/api/v1/meetings/{meeting['id']}", headers=auth).status_code == 200
    finally:
        stop(migrated.proc)

    async def content() -> tuple[Any, bytes]:
        async with stores(target) as (_, docs, objects):
            return (await docs.get("transcripts", "t1"),
                    await read_object(objects, f"recordings/{meeting['id']}/audio.ogg"))

    doc, audio = asyncio.run(content())
    assert doc == {"_id": "t1", "meeting": meeting["id"], "text": "Hallo zusammen"}
    assert audio == b"OggS" + bytes(range(256)) * 900


# ------------------------------------------------------------------ 3: damaged archives, errors
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An embedded install and two archives of it: a plain one and a wholly encrypted one."""
    root = tmp_path_factory.mktemp("small")
    install = Install(root / "data")
    asyncio.run(seed(install, documents=50))
    contents = asyncio.run(dump(install))
    passphrase = write_passphrase(root / "pass")
    plain = json.loads(install.ok("backup", "create", "--to", str(root / "archives"), "--json").stdout)
    sealed = json.loads(install.ok("backup", "create", "--to", str(root / "archives"), "--passphrase-file",
                                   str(passphrase), "--encrypt-archive", "--json").stdout)
    return {"install": install, "root": root, "passphrase": passphrase, "dump": contents,
            "plain": root / "archives" / plain["archive"], "sealed": root / "archives" / sealed["archive"]}


def damaged_copy(small: dict[str, Any], tmp_path: Path, which: str = "plain") -> Path:
    """A copy of an archive, under its own name, in a folder of its own."""
    folder = tmp_path / uuid.uuid4().hex[:8]
    folder.mkdir()
    copy = folder / small[which].name
    shutil.copy(small[which], copy)
    return copy


def verify_error(archive: Path, passphrase: bytes | None = None) -> str:
    with pytest.raises(BackupError) as caught:
        verify_archive(DirectoryLocation(archive.parent), archive.name, passphrase).close()
    return str(caught.value)


def restore_error(install: Install, archive: Path, **options: Any) -> str:
    """What a restore in this process refuses with (the CLI prints the same message)."""
    with Portal() as portal, pytest.raises(BackupError) as caught:
        restore_archive(install.settings(), DirectoryLocation(archive.parent), archive.name, portal, **options)
    return str(caught.value)


async def test_altered_archive_fails_verify_and_restore_naming_the_part_target_unchanged(
        small: dict[str, Any], tmp_path: Path) -> None:
    archive = damaged_copy(small, tmp_path)
    members = embedded_archive_members(archive)
    audio = next(name for name in members if name.endswith("audio.webm"))
    flip_byte(archive, members[audio].offset_data + members[audio].size // 2)

    target = Install(tmp_path / "target")
    await seed(target, users=1, meetings=1, documents=3)
    before = await dump(target)
    message = target.fails("backup", "verify", str(archive))
    assert audio in message and "sha256" in message
    message = target.fails("backup", "restore", str(archive), "--force")
    assert audio in message
    assert await dump(target) == before and not target.journal.exists()

    for name in ("database/meeting/000001.jsonl.gz", "documents/transcripts/000001.jsonl.gz", "manifest.json",
                 "index.jsonl"):
        altered = damaged_copy(small, tmp_path)
        flip_byte(altered, members[name].offset_data + members[name].size // 2)
        assert name in verify_error(altered)


async def test_truncated_archive_fails_verify_and_restore_target_unchanged(small: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    members = embedded_archive_members(small["plain"])
    part = "database/audit_event/000001.jsonl.gz"
    cut_inside = damaged_copy(small, tmp_path)
    os.truncate(cut_inside, members[part].offset_data + members[part].size // 2)
    message = verify_error(cut_inside)
    assert f"in part {part}" in message and "cut short" in message

    cut_after = damaged_copy(small, tmp_path)
    os.truncate(cut_after, members["index.jsonl"].offset)
    message = verify_error(cut_after)
    assert "manifest is missing" in message and "after part config/" in message

    target = Install(tmp_path / "target")
    message = target.fails("backup", "restore", str(cut_inside))
    assert part in message
    empty = await dump(target)
    assert not any(empty["tables"].values()) and empty["objects"] == {} and empty["documents"] == {}
    assert not target.journal.exists()


def test_encrypted_archive_needs_its_passphrase_and_detects_changes(small: dict[str, Any], tmp_path: Path) -> None:
    passphrase = small["passphrase"].read_text().strip().encode()
    verify_archive(DirectoryLocation(small["sealed"].parent), small["sealed"].name, passphrase).close()
    assert "passphrase is wrong" in verify_error(small["sealed"], b"not the passphrase")
    assert "pass --passphrase-file" in verify_error(small["sealed"])

    plain_members = embedded_archive_members(small["plain"])  # same layout inside, so offsets carry over
    audio = next(name for name in plain_members if name.endswith("audio.webm"))
    at = plain_members[audio].offset_data + plain_members[audio].size // 2
    altered = damaged_copy(small, tmp_path, "sealed")
    flip_byte(altered, HEADER.size + (at // CHUNK) * SEALED + at % CHUNK)
    message = verify_error(altered, passphrase)
    assert audio in message and "does not open" in message
    cut = damaged_copy(small, tmp_path, "sealed")
    os.truncate(cut, cut.stat().st_size - 100)
    assert "does not open" in verify_error(cut, passphrase)


async def test_restore_refuses_a_non_empty_install_unless_forced(small: dict[str, Any], tmp_path: Path) -> None:
    install: Install = small["install"]
    async with stores(install) as (db, docs, objects):
        await db.run(lambda: User.create(email="extra@example.org", password_hash="x"))
        await docs.insert("scratch", {"_id": "extra"})
        await objects.put("uploads/extra.bin", b"extra")
    message = install.fails("backup", "restore", str(small["plain"]))
    assert "not empty" in message and "--force" in message
    install.ok("backup", "restore", str(small["plain"]), "--force")
    assert await dump(install) == small["dump"]


def test_verify_names_what_is_not_an_archive(tmp_path: Path) -> None:
    garbage = tmp_path / "confmeet-20200101T000000Z.tar"
    garbage.write_bytes(b"not a tar file at all" * 100)
    assert "damaged or cut short at its start" in verify_error(garbage)
    assert "no archive" in verify_error(tmp_path / "missing.tar")


def test_keep_and_prune_delete_the_oldest_archives(small: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "retention"
    folder.mkdir()
    for stamp in ("20240101T031500Z", "20240102T031500Z"):
        shutil.copy(small["plain"], folder / f"confmeet-{stamp}.tar")
    (folder / "notes.txt").write_text("not an archive: never pruned")
    install: Install = small["install"]
    created = json.loads(install.ok("backup", "create", "--to", str(folder), "--keep", "2", "--json").stdout)
    assert created["pruned"] == ["confmeet-20240101T031500Z.tar"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["confmeet-20240102T031500Z.tar", created["archive"], "notes.txt"])
    pruned = json.loads(install.ok("backup", "prune", str(folder), "--keep", "1", "--json").stdout)
    assert pruned == {"deleted": ["confmeet-20240102T031500Z.tar"], "removed_partials": []}
    assert sorted(p.name for p in folder.iterdir()) == sorted([created["archive"], "notes.txt"])


# ------------------------------------------------------------- 4: consistent while being written
async def test_backup_during_writes_restores_without_rows_naming_missing_objects(
        tmp_path: Path, postgres_url: str, s3_url: str) -> None:
    source = Install(tmp_path / "source", {"database": postgres_url, "objects": s3_url})
    rng = random.Random(1)
    async with stores(source) as (db, _, objects):
        owner = await db.run(lambda: User.create(email="o@example.org", password_hash="x"))
        meeting = await db.run(lambda: Meeting.create(code="con-curr-ent", title="busy", owner=owner))
        for i in range(40):  # copied first (keys sort before recordings/), widening the race window
            await objects.put(f"aaa-filler/{i:03d}", rng.randbytes(MiB))

        async def add_recording() -> str:
            rec_id = uuid.uuid4().hex
            tracks = []
            for kind in ("audio", "video"):
                key = f"recordings/{rec_id}/{kind}"
                size = rng.randrange(1000, 40000)
                await objects.put(key, rng.randbytes(size))
                tracks.append({"key": key, "size": size})
            await db.run(lambda: Recording.create(id=rec_id, meeting=meeting, tracks=tracks, status="ready",
                                                  object_prefix=f"recordings/{rec_id}/"))
            return rec_id

        live = [await add_recording() for _ in range(30)]
        stopping = asyncio.Event()

        async def writer() -> int:
            """Adds recordings (objects, then row) and deletes others, mostly row first then
            objects, sometimes objects first: both orders the backup must survive."""
            n = 0
            while not stopping.is_set():
                live.append(await add_recording())
                victim = live.pop(rng.randrange(len(live) - 1))
                keys = [f"recordings/{victim}/audio", f"recordings/{victim}/video"]
                if n % 3:
                    await db.run(lambda: Recording.delete().where(Recording.id == victim).execute())
                    for key in keys:
                        await objects.delete(key)
                else:
                    for key in keys:
                        await objects.delete(key)
                    await db.run(lambda: Recording.delete().where(Recording.id == victim).execute())
                n += 1
            return n

        writing = asyncio.create_task(writer())
        proc = await asyncio.create_subprocess_exec(
            *CONFMEET, "backup", "create", "--to", str(tmp_path / "archives"), "--json", env=source.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        stopping.set()
        changes = await writing
    assert proc.returncode == 0, err.decode()
    created = json.loads(out)
    manifest = created["manifest"]
    assert changes > 10
    assert manifest["database"]["excluded"].get("recording", 0) > 0, "no deletion raced the backup"

    target = Install(tmp_path / "target")
    target.ok("backup", "restore", str(tmp_path / "archives" / created["archive"]))
    async with stores(target) as (db, _, objects):
        recordings = await db.run(lambda: list(Recording.select()))
        assert len(recordings) == manifest["database"]["tables"]["recording"] > 0
        for recording in recordings:
            for track in recording.tracks:
                info = await objects.stat(track["key"])
                assert info is not None and info.size == track["size"], f"{recording.id} names a missing object"


# --------------------------------------------------------- 5: bounded memory, interrupted restore
async def put_random(objects: ObjectStore, key: str, mib: int) -> str:
    """Stream ``mib`` MiB of random bytes into an object; return their sha256."""
    digest = hashlib.sha256()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(mib):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            yield chunk

    await objects.put(key, chunks())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An embedded install with 150 MB of objects, and its archive (with the backup's peak RSS)."""
    root = tmp_path_factory.mktemp("large")
    install = Install(root / "data")
    asyncio.run(seed(install, users=1, meetings=1, documents=20))

    async def fill() -> dict[str, str]:
        async with stores(install) as (_, _, objects):
            return {f"media/big-{i}.bin": await put_random(objects, f"media/big-{i}.bin", 50) for i in range(3)}

    hashes = asyncio.run(fill())
    result, peak = install.measured("backup", "create", "--to", str(root / "archives"), "--json")
    created = json.loads(result.stdout)
    return {"install": install, "archive": root / "archives" / created["archive"], "peak": peak,
            "hashes": hashes, "manifest": created["manifest"]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_large_object_store_backs_up_and_restores_in_bounded_memory(large: dict[str, Any], tmp_path: Path) -> None:
    assert large["manifest"]["objects"]["bytes"] > 150 * 10**6
    assert large["peak"] < RSS_LIMIT_MB, f"backup peaked at {large['peak']:.0f} MB"
    target = Install(tmp_path / "target")
    _, peak = target.measured("backup", "restore", str(large["archive"]))
    assert peak < RSS_LIMIT_MB, f"restore peaked at {peak:.0f} MB"
    for key, sha in large["hashes"].items():
        assert file_sha256(target.data_dir / "objects" / "data" / key) == sha


def test_interrupted_restore_is_never_silently_partial_and_resumes(large: dict[str, Any], tmp_path: Path) -> None:
    target = Install(tmp_path / "target")
    proc = subprocess.Popen([*CONFMEET, "backup", "restore", str(large["archive"])], env=target.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    objects = target.data_dir / "objects" / "data"
    deadline = time.monotonic() + 60
    while not (target.journal.exists() and objects.exists() and any(objects.rglob("*"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the restore ended before it could be stopped"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: a lost server
    proc.wait()

    assert target.journal.exists()
    assert "--resume" in restore_error(target, large["archive"])
    with Portal() as portal, pytest.raises(BackupError, match="unfinished"):
        create_backup(target.settings(), DirectoryLocation(tmp_path / "archives"), portal)
    assert asyncio.run(user_emails(target)) == [], "the database is restored in one transaction, after the objects"

    target.ok("backup", "restore", str(large["archive"]), "--resume")
    assert not target.journal.exists()
    assert asyncio.run(user_emails(target)) == ["user0@example.org"]
    for key, sha in large["hashes"].items():
        assert file_sha256(objects / key) == sha


def killed_create(install: Install, to: str, written: Any) -> None:
    """Start `backup create --to TO` and kill it (SIGKILL) once ``written()`` finds part of its archive."""
    proc = subprocess.Popen([*CONFMEET, "backup", "create", "--to", to], env=install.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not written():
        assert proc.poll() is None and time.monotonic() < deadline, "the backup ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_backup_leaves_nothing_after_the_next_create_or_prune(large: dict[str, Any], small: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    folder = tmp_path / "archives"
    running = folder / ".confmeet-20990101T000000Z.tar.partial"  # a backup still writing, beside them

    def dead_ones() -> list[Path]:
        return [p for p in folder.glob(".confmeet-*.tar.partial") if p != running and p.stat().st_size]

    killed_create(large["install"], str(folder), dead_ones)
    [dead] = dead_ones()
    with running.open("wb") as live:
        fcntl.flock(live.fileno(), fcntl.LOCK_EX)
        live.write(b"a tar under way")
        install: Install = small["install"]
        assert json.loads(install.ok("backup", "list", str(folder), "--json").stdout) == []
        listed = json.loads(install.ok("backup", "list", str(folder), "--all", "--json").stdout)
        assert {(a["name"], a["state"]) for a in listed} == {
            (dead.name[1:-8], "half-written: its backup stopped"), (running.name[1:-8], "being written")}

        created = json.loads(install.ok("backup", "create", "--to", str(folder), "--json").stdout)
        assert created["removed_partials"] == [dead.name[1:-8]]
        assert sorted(p.name for p in folder.iterdir()) == sorted([created["archive"], running.name])

        killed_create(large["install"], str(folder), dead_ones)
        pruned = json.loads(install.ok("backup", "prune", str(folder), "--keep", "1", "--json").stdout)
        assert pruned["deleted"] == [] and len(pruned["removed_partials"]) == 1
        assert sorted(p.name for p in folder.iterdir()) == sorted([created["archive"], running.name])


def test_a_backup_killed_while_uploading_to_s3_leaves_no_part_after_the_next_create(
        large: dict[str, Any], small: dict[str, Any], s3_server: dict, s3_url: str) -> None:
    to = f"{s3_url}/backups"
    bucket = s3_server["root"] / s3_url.rsplit("/", 1)[1]

    def parts() -> list[Path]:
        return list(bucket.rglob(".rclone_temp_multipart_*"))

    killed_create(large["install"], to, parts)  # its first 10 MiB part is stored
    install: Install = small["install"]
    [listed] = json.loads(install.ok("backup", "list", to, "--all", "--json").stdout)
    assert listed["partial"] and listed["state"] == "incomplete upload"
    created = json.loads(install.ok("backup", "create", "--to", to, "--json").stdout)
    assert created["removed_partials"] == [listed["name"]] and not parts()
    assert [a["name"] for a in json.loads(install.ok("backup", "list", to, "--all", "--json").stdout)] == [
        created["archive"]]


async def user_emails(install: Install) -> list[str]:
    async with stores(install) as (db, _, _):
        return await db.run(lambda: [user.email for user in User.select()])


# ---------------------------------------------------------------------------------- tar writer
def test_tar_writer_marks_members_whose_source_changed_size(tmp_path: Path) -> None:
    """An object replaced while it is copied: the member keeps its announced size (padded or cut),
    is reported not whole, and the stream stays a valid tar."""
    path = tmp_path / "t.tar"
    with path.open("wb") as fh:
        writer = TarWriter(fh)
        whole = writer.add("objects/a", 5, iter([b"ab", b"cde"]))
        short = writer.add("objects/b", 8, iter([b"abc"]))
        long = writer.add("objects/c", 3, iter([b"ab", b"cdef", b"more"]))
        writer.close()
    assert (whole.whole, short.whole, long.whole) == (True, False, False)
    assert whole.sha256 == hashlib.sha256(b"abcde").hexdigest()
    with tarfile.open(path) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [("objects/a", 5), ("objects/b", 8), ("objects/c", 3)]
        assert tar.extractfile("objects/b").read() == b"abc" + bytes(5)
        assert tar.extractfile("objects/c").read() == b"abc"


# ------------------------------------------------------------------------------- systemd units
def test_systemd_units_pass_verify(tmp_path: Path) -> None:
    """The units as shipped, with ExecStart pointed at this checkout's confmeet (verify needs the
    binary to exist)."""
    units = Path(__file__).resolve().parent.parent / "systemd"
    binary = Path(sys.executable).parent / "confmeet"
    assert binary.exists(), "install the package (pip install -e .) so the confmeet command exists"
    service = (units / "confmeet-backup.service").read_text()
    assert "ExecStart=/opt/confmeet/current/bin/confmeet backup create --keep 7\n" in service
    (tmp_path / "confmeet-backup.service").write_text(
        service.replace("ExecStart=/opt/confmeet/current/bin/confmeet ", f"ExecStart={binary} "))
    shutil.copy(units / "confmeet-backup.timer", tmp_path)
    checked = subprocess.run(["systemd-analyze", "verify", "confmeet-backup.service", "confmeet-backup.timer"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    timer = (units / "confmeet-backup.timer").read_text()
    assert "OnCalendar=*-*-* 03:15:00" in timer and "Persistent=true" in timer
