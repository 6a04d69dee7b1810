"""``confmeet backup restore``: put an archive's data into the stores the settings name.

A restore never destroys what it replaces before everything it brings is in place and verified:

1. It refuses to run while the appliance holds its lock on the data directory (``confmeet.lock``);
   it holds that lock itself until it ends, so the appliance cannot start meanwhile.
2. The whole archive is verified first (verify.py): a damaged one never touches the target.
3. A non-empty target is refused unless ``--force`` (which then replaces everything in it).
4. ``<data_dir>/restore-state.json`` is written before the first change: the journal of an
   unfinished restore. While it exists, ``backup restore`` and ``backup create`` refuse to run
   without ``--resume`` (or ``--force``), and the appliance does not start.
5. The archive is streamed a second time, and its data ADDED beside what the target holds:
   objects and documents are written under their keys and ids (one that exists with other
   content is first set aside: an object under ``restore-previous/``, a document in the undo
   log), the database is replaced inside ONE transaction that stays open, and the settings are
   held back. ``<data_dir>/restore-undo.jsonl`` records each change before it is made.
6. The switch: the database transaction commits; only then are the settings written (secrets into
   ``<data_dir>/secrets.toml``, the settings file and TLS files into
   ``<data_dir>/restored-config/``), the objects and documents the archive does not hold deleted,
   and what was set aside dropped.
7. The counts in the target are checked against the manifest, and the journal is removed.

A restore that fails before the switch (an error, a full disk, a file size limit, Ctrl-C) undoes
what it did from the undo log: the install holds exactly what it held before. One killed before
the switch is undone by the next ``--resume`` or ``--force`` before they start over. After the
switch, the restored data is in place and ``--resume`` finishes the rest. Never a silently
partial install, and never rows that name objects a failed restore deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee as pw

from .. import tracing
from ..fsutil import write_atomically
from ..instance import AlreadyServing, InstanceLock
from ..settings import SECRET_FIELDS, Settings
from ..stores import Stores
from ..stores.documents import DocumentExists, DocumentStore
from ..stores.objects import ObjectInfo
from ..stores.relational import Relational
from .archive import INDEX, BackupError, jsonl_part, section
from .cipher import decrypt_bytes
from .datastores import LIST_BATCH, data_stores, delete_objects, describe_contents
from .location import Location
from .portal import Portal
from .progress import Progress, Silent
from .rows import BY_NAME, TABLES, decode_row, insert_rows, reset_sequences, table_counts, table_name, wipe_tables
from .verify import (MAX_PART_BYTES, Position, Verified, jsonl_lines, open_stream, read_member, read_small,
                     tar_members, translate_errors, verify_archive)

STATE_FILE = "restore-state.json"
UNDO_FILE = "restore-undo.jsonl"
SET_ASIDE = "restore-previous/"  # objects a restore replaced, kept until it succeeds
SYNC_SECONDS = 1.0  # the undo log reaches the disk at least this often
DOCUMENT_CONCURRENCY = 16


def restore_state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


@dataclass
class Restored:
    name: str
    manifest: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)


class Journal:
    """The restore-state file: which archive, and whether the database is switched already."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.state = state

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        try:
            return cls(path, json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackupError(f"cannot read the restore journal {path} ({exc}); delete it and restore "
                              "again with --force") from None

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        write_atomically(self.path, json.dumps(self.state).encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class UndoLog:
    """What a restore changed before its switch, each change written before it is made: an object
    that was absent, an object set aside under ``restore-previous/``, documents that were absent,
    a document as it was. Read backwards, it puts the install back. A killed process loses
    nothing of it; a lost machine at most the last second (objects added then stay as harmless
    extras, which the next restore's switch deletes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._synced = 0.0

    def record(self, *entries: dict[str, Any]) -> None:
        if not entries:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(entry) + "\n" for entry in entries))
            fh.flush()
            if time.monotonic() - self._synced >= SYNC_SECONDS:
                os.fsync(fh.fileno())
                self._synced = time.monotonic()

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # the last line, cut short by a killed process: its change was never made
        return out

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def undo(stores: Stores, portal: Portal, log: UndoLog) -> int:
    """Put back what an unfinished restore changed (newest change first); how many changes."""
    entries = log.entries()
    objects, documents = stores.objects, stores.documents
    for entry in reversed(entries):
        if "object" in entry:
            key = entry["object"]
            if entry["was"] == "absent":
                portal.call(objects.delete(key))
            else:
                kept = portal.call(objects.stat(SET_ASIDE + key))
                if kept is not None:  # else the new object never replaced it
                    portal.call(copy_object(stores, SET_ASIDE + key, key, kept))
        elif "added" in entry:
            portal.call(delete_documents(documents, entry["documents"], entry["added"]))
        elif "previous" in entry:
            collection, doc = entry["document"], entry["previous"]
            portal.call(documents.delete(collection, doc["_id"]))
            portal.call(documents.insert(collection, doc))
    drop_set_aside(stores, portal)
    log.remove()
    return len(entries)


def drop_set_aside(stores: Stores, portal: Portal) -> None:
    keys = [info.key for info in portal.iterate(stores.objects.list(SET_ASIDE), LIST_BATCH)]
    portal.call(delete_objects(stores.objects, keys))


async def copy_object(stores: Stores, source: str, target: str, info: ObjectInfo) -> None:
    await stores.objects.put(target, stores.objects.get(source), length=info.size,
                             content_type=info.content_type or "application/octet-stream")


async def delete_documents(documents: DocumentStore, collection: str, ids: list[str]) -> None:
    limit = asyncio.Semaphore(DOCUMENT_CONCURRENCY)

    async def one(doc_id: str) -> None:
        async with limit:
            await documents.delete(collection, doc_id)

    await asyncio.gather(*(one(doc_id) for doc_id in ids))


async def object_sha256(stores: Stores, key: str) -> str:
    digest = hashlib.sha256()
    async for chunk in stores.objects.get(key):
        digest.update(chunk)
    return digest.hexdigest()


class HashingReader:
    def __init__(self, chunks: Iterator[bytes], progress: Progress) -> None:
        self._chunks = chunks
        self._pending = b""
        self._progress = progress
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else float("inf")
        while wanted > 0:
            if not self._pending:
                self._pending = next(self._chunks, b"")
                if not self._pending:
                    break
                self.digest.update(self._pending)
                self._progress.advance(len(self._pending))
            take = int(min(wanted, len(self._pending)))
            parts.append(self._pending[:take])
            self._pending = self._pending[take:]
            wanted -= take
        return b"".join(parts)


class DatabasePhase:
    """The database part of a restore: one transaction from the first row to the switch."""

    def __init__(self, db: Relational, journal: Journal, manifest: dict[str, Any]) -> None:
        self.db = db.db
        self.journal = journal
        self.expected = manifest["database"]["tables"]
        self.done = bool(journal.state.get("database_done"))
        self._txn: Any = None

    def _begin(self) -> None:
        self.db.connect(reuse_if_open=True)
        self._txn = self.db.atomic()
        self._txn.__enter__()
        if self.journal.state["force"]:
            wipe_tables()
            return
        counts = table_counts()
        if not any(counts.values()):
            return
        if all(counts[name] == self.expected.get(name, 0) for name in counts):
            self.done = True  # switched just before the process stopped, the journal one step behind
            self._txn.__exit__(None, None, None)
            self._txn = None
            return
        raise BackupError("the database holds rows this restore did not write; restore again with --force "
                          "to replace everything")

    def part(self, member: str, data: bytes) -> None:
        if self._txn is None and not self.done:
            self._begin()
        if self.done:
            return
        model = BY_NAME[jsonl_part(member)[1]]
        insert_rows(model, [decode_row(model, row) for _, row in jsonl_lines(member, data)])

    def commit(self) -> None:
        """The switch: the restored rows replace the old ones at once; the journal records it."""
        if not self.done:
            if self._txn is None:
                self._begin()
            if not self.done:
                reset_sequences(self.db)
                self._txn.__exit__(None, None, None)
                self._txn = None
                self.done = True
        self.journal.save(database_done=True)

    def abort(self, exc: BaseException) -> None:
        if self._txn is not None:
            with contextlib.suppress(pw.PeeweeException):
                self._txn.__exit__(type(exc), exc, exc.__traceback__)
            self._txn = None
        with contextlib.suppress(pw.PeeweeException):
            self.db.close()


async def insert_documents(documents: DocumentStore, collection: str, docs: list[dict[str, Any]]) -> None:
    """Insert documents; one already there (with other content) is replaced."""
    limit = asyncio.Semaphore(DOCUMENT_CONCURRENCY)

    async def one(doc: dict[str, Any]) -> None:
        async with limit:
            try:
                await documents.insert(collection, doc)
            except DocumentExists:
                await documents.delete(collection, doc["_id"])
                await documents.insert(collection, doc)

    await asyncio.gather(*(one(doc) for doc in docs))


async def current_documents(documents: DocumentStore, collection: str, ids: list[str]) -> list[dict[str, Any] | None]:
    limit = asyncio.Semaphore(DOCUMENT_CONCURRENCY)

    async def one(doc_id: str) -> dict[str, Any] | None:
        async with limit:
            return await documents.get(collection, doc_id)

    return await asyncio.gather(*(one(doc_id) for doc_id in ids))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, data)


class _Restore:
    def __init__(self, settings: Settings, stores: Stores, portal: Portal, verified: Verified,
                 passphrase: bytes | None, journal: Journal, undo_log: UndoLog, skip: Any, progress: Progress) -> None:
        self.settings = settings
        self.stores = stores
        self.portal = portal
        self.verified = verified
        self.manifest = verified.manifest
        self.passphrase = passphrase
        self.journal = journal
        self.undo_log = undo_log
        self.skip = skip
        self.progress = progress
        self.database = DatabasePhase(stores.db, journal, verified.manifest)
        self.notes: list[str] = []
        self.config: list[tuple[str, bytes]] = []  # written at the switch
        self.object_keys: set[str] = set()  # what the archive holds: the rest goes at the switch
        self.document_ids: dict[str, set[str]] = {}

    def run(self, location: Location) -> None:
        """Stream the archive into the target beside what it holds; nothing is destroyed yet."""
        stream, raw, _ = open_stream(location, self.verified.name, self.passphrase, self.progress, "restore")
        where = Position()
        entries = self.verified.index.entries()
        try:
            with translate_errors(self.verified.name, where):
                tar = tar_members(stream)
                for member in tar:
                    if member.name == INDEX:
                        break
                    where.enter(member.name)
                    entry = next(entries, None)
                    if entry is None or entry["name"] != member.name:
                        raise BackupError(f"archive {self.verified.name} changed after it was verified "
                                          f"({member.name}); verify it again")
                    self.member(tar, member, section(member.name), entry)
                    where.leave()
        except BaseException as exc:
            self.database.abort(exc)
            raise
        finally:
            raw.close()

    def part_data(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict[str, Any]) -> bytes:
        data = read_small(tar, member, MAX_PART_BYTES)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BackupError(f"archive {self.verified.name} changed after it was verified ({member.name}); "
                              "verify it again")
        return data

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, kind: str, entry: dict[str, Any]) -> None:
        if kind == "objects":
            if not entry.get("discard"):
                self.put_object(tar, member, entry)
        elif kind == "database":
            if not self.database.done:
                self.database.part(member.name, self.part_data(tar, member, entry))
        elif kind == "documents":
            collection = jsonl_part(member.name)[1]
            docs = [doc for _, doc in jsonl_lines(member.name, self.part_data(tar, member, entry))]
            self.put_documents(collection, docs)
        elif kind == "config":
            self.config.append((member.name, self.part_data(tar, member, entry)))

    def put_object(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict[str, Any]) -> None:
        key = member.name.removeprefix("objects/")
        self.object_keys.add(key)
        existing = self.portal.call(self.stores.objects.stat(key))
        if existing is not None:
            if self._holds(existing, entry["sha256"]):
                return  # the same bytes are there already
            self.portal.call(copy_object(self.stores, key, SET_ASIDE + key, existing))
            self.undo_log.record({"object": key, "was": "set_aside"})
        else:
            self.undo_log.record({"object": key, "was": "absent"})
        reader = HashingReader(read_member(tar, member), Silent())
        content_type = entry.get("content_type") or "application/octet-stream"
        self.portal.call(self.stores.objects.put(key, reader, length=member.size, content_type=content_type))
        if reader.digest.hexdigest() != entry["sha256"]:
            raise BackupError(f"archive {self.verified.name} changed after it was verified ({member.name}); "
                              "verify it again")

    def _holds(self, info: ObjectInfo, sha256: str) -> bool:
        if self.stores.objects.kind == "file":  # its etag is the sha256
            return info.etag == sha256
        return self.portal.call(object_sha256(self.stores, info.key)) == sha256

    def put_documents(self, collection: str, docs: list[dict[str, Any]]) -> None:
        ids = [doc["_id"] for doc in docs]
        self.document_ids.setdefault(collection, set()).update(ids)
        current = self.portal.call(current_documents(self.stores.documents, collection, ids))
        changed = [doc for doc, now in zip(docs, current) if doc != now]
        self.undo_log.record(
            {"documents": collection, "added": [doc["_id"] for doc, now in zip(docs, current) if now is None]},
            *({"document": collection, "previous": now} for doc, now in zip(docs, current)
              if now is not None and now != doc))
        self.portal.call(insert_documents(self.stores.documents, collection, changed))

    def switch(self) -> None:
        """Commit the database, then write the settings and drop what the archive does not hold."""
        self.database.commit()
        for name, data in self.config:
            self.write_config(name, data)
        for collection in self.portal.call(self.stores.documents.collections()):
            wanted = self.document_ids.get(collection, set())
            stale = [doc["_id"] for doc in self.portal.iterate(self.stores.documents.iter_all(collection), LIST_BATCH)
                     if doc["_id"] not in wanted]
            self.portal.call(delete_documents(self.stores.documents, collection, stale))
        stale = [info.key for info in self.portal.iterate(self.stores.objects.list(""), LIST_BATCH)
                 if info.key not in self.object_keys and not self.skip(info.key) and not info.key.startswith(SET_ASIDE)]
        self.portal.call(delete_objects(self.stores.objects, stale))
        drop_set_aside(self.stores, self.portal)
        self.undo_log.remove()

    def write_config(self, name: str, data: bytes) -> None:
        if name.endswith(".enc"):
            if not self.passphrase:
                raise BackupError(f"{name} is encrypted: pass --passphrase-file")
            data = decrypt_bytes(data, self.passphrase)
            name = name.removesuffix(".enc")
        if name == "config/secrets.toml":
            target = self.settings.data_dir / "secrets.toml"
            _write_private(target, data)
            self.notes.append(f"secrets restored into {target}")
            overridden = [s for s in SECRET_FIELDS if getattr(self.settings, s)]
            if overridden:
                self.notes.append(f"your settings set {', '.join(overridden)}, which override the restored "
                                  "secrets: remove them to use the backed-up ones")
        else:
            target = self.settings.data_dir / "restored-config" / name.removeprefix("config/")
            _write_private(target, data)
            self.notes.append(f"backed-up {name.removeprefix('config/')} saved as {target}: compare it with "
                              "your settings")

    def check_counts(self) -> None:
        problems = []
        counts = self.portal.call(self.stores.db.run(table_counts))
        for model in TABLES:
            name = table_name(model)
            want = self.manifest["database"]["tables"].get(name, 0)
            if counts[name] != want:
                problems.append(f"table {name} has {counts[name]} rows, the archive {want}")
        wanted = {k: v for k, v in self.manifest["documents"]["collections"].items() if v}
        for collection in sorted(set(wanted) | set(self.portal.call(self.stores.documents.collections()))):
            have, want = self.portal.call(self.stores.documents.count(collection)), wanted.get(collection, 0)
            if have != want:
                problems.append(f"collection {collection} has {have} documents, the archive {want}")
        count = size = 0
        for info in self.portal.iterate(self.stores.objects.list(""), LIST_BATCH):
            if not self.skip(info.key):
                count += 1
                size += info.size
        objects = self.manifest["objects"]
        if (count, size) != (objects["count"], objects["bytes"]):
            problems.append(f"the object store has {count} objects ({size} bytes), the archive "
                            f"{objects['count']} ({objects['bytes']} bytes)")
        if problems:
            raise BackupError("the restore finished but the target does not match the manifest: "
                              + "; ".join(problems) + ". Restore again with --force")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"


def restore_archive(settings: Settings, location: Location, name: str, portal: Portal, *,
                    passphrase: bytes | None = None, force: bool = False, resume: bool = False,
                    progress: Progress | None = None) -> Restored:
    with tracing.span("backup.restore", archive=name, force=force, resume=resume):
        return _restore(settings, location, name, portal, passphrase, force, resume, progress or Silent())


def _restore(settings: Settings, location: Location, name: str, portal: Portal, passphrase: bytes | None,
             force: bool, resume: bool, progress: Progress) -> Restored:
    if force and resume:
        raise BackupError("--force starts over and --resume continues: choose one")

    started = time.monotonic()
    lock = InstanceLock(settings.data_dir)
    try:
        lock.acquire()
    except AlreadyServing as exc:
        raise BackupError(f"the appliance is running: {exc} (systemctl stop confmeet) before a restore, "
                          "which replaces its data") from None
    try:
        return _restore_locked(settings, location, name, portal, passphrase, force, resume, progress, started)
    finally:
        lock.release()


def _restore_locked(settings: Settings, location: Location, name: str, portal: Portal, passphrase: bytes | None,
                    force: bool, resume: bool, progress: Progress, started: float) -> Restored:
    path = restore_state_path(settings)
    journal = Journal.load(path)
    undo_log = UndoLog(settings.data_dir / UNDO_FILE)
    archive = f"{location.describe().rstrip('/')}/{name}"
    if journal is not None and not (force or resume):
        raise BackupError(f"a restore of {journal.state.get('archive')} was interrupted and left this install "
                          "incomplete: rerun it with --resume to finish, or with --force to start over")
    if resume and journal is None:
        raise BackupError(f"there is no interrupted restore to resume ({path} does not exist)")
    with tracing.span("backup.verify"):
        verified = verify_archive(location, name, passphrase, progress)
    try:
        if verified.encrypted_config:
            raise BackupError(f"{name} holds encrypted settings ({', '.join(verified.encrypted_config)}): "
                              "pass --passphrase-file with the backup's passphrase")
        if resume and journal is not None and journal.state.get("manifest_sha256") != verified.manifest_sha256:
            raise BackupError(f"the interrupted restore was of {journal.state.get('archive')}, not {archive}; "
                              "resume with that archive, or use --force to start over")
        with data_stores(settings, portal) as stores:
            if journal is not None and not journal.state.get("database_done"):
                undo(stores, portal, undo_log)  # the interrupted run's changes, before starting over
            skip = location.archive_keys_in(stores.objects)
            if not resume and not force:
                held = describe_contents(stores, portal, skip)
                if held:
                    raise BackupError(f"this install is not empty ({held}); restore refuses to overwrite "
                                      "it: pass --force to replace everything in it")
            if journal is None or force:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                journal = Journal(path, {
                    "archive": archive, "manifest_sha256": verified.manifest_sha256,
                    "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "force": force, "database_done": False,
                })
                journal.save()
            job = _Restore(settings, stores, portal, verified, passphrase, journal, undo_log, skip, progress)
            try:
                with tracing.span("backup.restore.copy"):
                    job.run(location)
                with tracing.span("backup.restore.switch"):
                    job.switch()
                job.check_counts()
            except BaseException as exc:
                if journal.state.get("database_done"):
                    raise BackupError(f"restore stopped: {_reason(exc)}. The restored data is in place but the "
                                      f"restore did not finish; run 'confmeet backup restore {archive} --resume' "
                                      "to finish") from exc
                job.database.abort(exc)
                _put_back(stores, portal, undo_log, journal, archive, exc)
                raise BackupError(f"restore stopped: {_reason(exc)}. Nothing was changed: the install holds "
                                  "what it held before the restore") from exc
            journal.remove()
            return Restored(name, verified.manifest, time.monotonic() - started, job.notes)
    finally:
        verified.close()


def _put_back(stores: Stores, portal: Portal, undo_log: UndoLog, journal: Journal, archive: str,
              failure: BaseException) -> None:
    """After a failure before the switch: undo every change, and forget the restore."""
    try:
        undo(stores, portal, undo_log)
    except BaseException as exc:
        raise BackupError(f"restore stopped: {_reason(failure)}; putting back what it had changed failed too "
                          f"({_reason(exc)}). Run 'confmeet backup restore {archive} --resume': it puts the rest "
                          "back before it starts over") from exc
    journal.remove()
