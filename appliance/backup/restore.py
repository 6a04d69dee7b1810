"""``confmeet backup restore``: put an archive's data into the stores the settings name.

1. The whole archive is verified first (verify.py): a damaged one never touches the target.
2. A non-empty target is refused unless ``--force`` (which then replaces everything in it).
3. ``<data_dir>/restore-state.json`` is written before the first change: the journal of an
   unfinished restore. While it exists, ``backup restore`` and ``backup create`` refuse to run
   without ``--resume`` (or ``--force``, which starts over).
4. The archive is streamed a second time, in its order: objects, then the whole database in ONE
   transaction (rolled back by any failure: never partly restored), then documents, then the
   settings (secrets into ``<data_dir>/secrets.toml``, the settings file and TLS files into
   ``<data_dir>/restored-config/`` for the operator to compare). The journal records how far it
   got; every step can be repeated, so ``--resume`` simply starts again from there.
5. The counts in the target are checked against the manifest, and the journal is removed.

An interrupted restore (an error, Ctrl-C, a killed process, a lost server) therefore leaves either
the database untouched or wholly restored, and a journal that makes the next run finish the rest:
never a silently partial install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee as pw

from ..settings import SECRET_FIELDS, Settings
from ..fsutil import write_atomically
from ..stores.documents import DocumentExists, DocumentStore
from ..stores.relational import Relational
from .archive import INDEX, BackupError, jsonl_part, section
from .cipher import decrypt_bytes
from .datastores import LIST_BATCH, DataStores, describe_contents, open_data_stores, wipe_documents_and_objects
from .location import Location
from .portal import Portal
from .progress import Progress, Silent
from .rows import BY_NAME, TABLES, decode_row, insert_rows, reset_sequences, table_counts, table_name, wipe_tables
from .verify import (MAX_PART_BYTES, Position, Verified, jsonl_lines, open_stream, read_member, read_small,
                     tar_members, translate_errors, verify_archive)

STATE_FILE = "restore-state.json"
STATE_EVERY_SECONDS = 1.0
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
    """The restore-state file: which archive, how far, whether the database is done."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.state = state
        self._saved = 0.0

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
        self._saved = time.monotonic()

    def progress(self, next_part: int) -> None:
        """Record progress now and then: every step can be redone, so a stale record costs only time."""
        self.state["next"] = next_part
        if time.monotonic() - self._saved >= STATE_EVERY_SECONDS:
            self.save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
    """The database part of a restore: one transaction from the first row to the last."""

    def __init__(self, db: Relational, journal: Journal, manifest: dict[str, Any]) -> None:
        self.db = db.db
        self.relational = db
        self.journal = journal
        self.expected = manifest["database"]["tables"]
        self.done = bool(journal.state.get("database_done"))
        self._txn: Any = None
        self._finished = False

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
            self.done = True  # committed just before the process stopped, the journal one step behind
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

    def finish(self, next_part: int) -> None:
        """Commit (once); the journal then records the database as done."""
        if self._finished:
            return
        if not self.done:
            if self._txn is None:
                self._begin()
            if not self.done:
                reset_sequences(self.db)
                self._txn.__exit__(None, None, None)
                self._txn = None
                self.done = True
        self.journal.save(database_done=True, next=max(next_part, self.journal.state.get("next", 0)))
        self._finished = True

    def abort(self, exc: BaseException) -> None:
        if self._txn is not None:
            with contextlib.suppress(pw.PeeweeException):
                self._txn.__exit__(type(exc), exc, exc.__traceback__)
            self._txn = None
        with contextlib.suppress(pw.PeeweeException):
            self.db.close()


async def insert_documents(documents: DocumentStore, collection: str, docs: list[dict[str, Any]]) -> None:
    """Insert documents; one already there (a resumed restore) is replaced."""
    limit = asyncio.Semaphore(DOCUMENT_CONCURRENCY)

    async def one(doc: dict[str, Any]) -> None:
        async with limit:
            try:
                await documents.insert(collection, doc)
            except DocumentExists:
                await documents.delete(collection, doc["_id"])
                await documents.insert(collection, doc)

    await asyncio.gather(*(one(doc) for doc in docs))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, data)


class _Restore:
    def __init__(self, settings: Settings, stores: DataStores, portal: Portal, verified: Verified,
                 passphrase: bytes | None, journal: Journal, skip: Any, progress: Progress) -> None:
        self.settings = settings
        self.stores = stores
        self.portal = portal
        self.verified = verified
        self.manifest = verified.manifest
        self.passphrase = passphrase
        self.journal = journal
        self.skip = skip
        self.progress = progress
        self.notes: list[str] = []

    def run(self, location: Location) -> None:
        state = self.journal.state
        if state["force"] and not state.get("wiped"):
            wipe_documents_and_objects(self.stores, self.portal, self.skip)
            self.journal.save(wiped=True)
        database = DatabasePhase(self.stores.db, self.journal, self.manifest)
        stream, raw, _ = open_stream(location, self.verified.name, self.passphrase, self.progress, "restore")
        where = Position()
        entries = self.verified.index.entries()
        try:
            with translate_errors(self.verified.name, where):
                tar = tar_members(stream)
                for number, member in enumerate(tar):
                    if member.name == INDEX:
                        break
                    where.enter(member.name)
                    entry = next(entries, None)
                    if entry is None or entry["name"] != member.name:
                        raise BackupError(f"archive {self.verified.name} changed after it was verified "
                                          f"({member.name}); verify it again")
                    kind = section(member.name)
                    if kind != "database" and number >= state.get("next", 0):
                        if kind != "objects":
                            database.finish(number)
                        self.member(tar, member, kind, entry)
                        self.journal.progress(number + 1)
                    elif kind == "database" and not database.done:
                        database.part(member.name, self.part_data(tar, member, entry))
                    where.leave()
                database.finish(state.get("next", 0))
        except BaseException as exc:
            database.abort(exc)
            raise
        finally:
            raw.close()
        self.journal.save()

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
        elif kind == "documents":
            collection = jsonl_part(member.name)[1]
            docs = [doc for _, doc in jsonl_lines(member.name, self.part_data(tar, member, entry))]
            self.portal.call(insert_documents(self.stores.documents, collection, docs))
        elif kind == "config":
            self.config(member.name, self.part_data(tar, member, entry))

    def put_object(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict[str, Any]) -> None:
        key = member.name.removeprefix("objects/")
        reader = HashingReader(read_member(tar, member), Silent())
        content_type = entry.get("content_type") or "application/octet-stream"
        self.portal.call(self.stores.objects.put(key, reader, length=member.size, content_type=content_type))
        if reader.digest.hexdigest() != entry["sha256"]:
            self.portal.call(self.stores.objects.delete(key))
            raise BackupError(f"archive {self.verified.name} changed after it was verified ({member.name}); "
                              "verify it again")

    def config(self, name: str, data: bytes) -> None:
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


def restore_archive(settings: Settings, location: Location, name: str, portal: Portal, *,
                    passphrase: bytes | None = None, force: bool = False, resume: bool = False,
                    progress: Progress | None = None) -> Restored:
    progress = progress or Silent()
    if force and resume:
        raise BackupError("--force starts over and --resume continues: choose one")
    started = time.monotonic()
    path = restore_state_path(settings)
    journal = Journal.load(path)
    archive = f"{location.describe().rstrip('/')}/{name}"
    if journal is not None and not (force or resume):
        raise BackupError(f"a restore of {journal.state.get('archive')} was interrupted and left this install "
                          "incomplete: rerun it with --resume to finish, or with --force to start over")
    if resume and journal is None:
        raise BackupError(f"there is no interrupted restore to resume ({path} does not exist)")
    verified = verify_archive(location, name, passphrase, progress)
    try:
        if verified.encrypted_config:
            raise BackupError(f"{name} holds encrypted settings ({', '.join(verified.encrypted_config)}): "
                              "pass --passphrase-file with the backup's passphrase")
        if resume and journal is not None and journal.state.get("manifest_sha256") != verified.manifest_sha256:
            raise BackupError(f"the interrupted restore was of {journal.state.get('archive')}, not {archive}; "
                              "resume with that archive, or use --force to start over")
        with open_data_stores(settings, portal) as stores:
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
                    "force": force, "wiped": False, "database_done": False, "next": 0,
                })
                journal.save()
            job = _Restore(settings, stores, portal, verified, passphrase, journal, skip, progress)
            try:
                job.run(location)
                job.check_counts()
            except BaseException as exc:
                reason = str(exc) if isinstance(exc, BackupError) else (
                    "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
                raise BackupError(f"restore stopped: {reason}. The install is incomplete (the database is "
                                  f"{'restored' if journal.state.get('database_done') else 'unchanged'}); run "
                                  f"'confmeet backup restore {archive} --resume' to finish, or --force to "
                                  "start over") from exc
            journal.remove()
            return Restored(name, verified.manifest, time.monotonic() - started, job.notes)
    finally:
        verified.close()
