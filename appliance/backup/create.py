"""``confmeet backup create``: one archive of the database, documents, objects and configuration,
taken while the appliance keeps serving.

Consistency. The database is read inside one read transaction opened first (rows.Snapshot); the
objects are copied after it was opened, the rows written after the objects. A row names objects
through a column called ``object_key`` (one object) or ``object_prefix`` (the objects under it).
Objects written after the snapshot are copied too and are harmless extras. A row from the
snapshot is left out when, once the objects are copied, it no longer exists in the live database
or one of its objects vanished while the backup ran: with the appliance deleting a row before its
objects, no restored row can name a missing object. An object replaced while it is copied is
copied again (the torn copy stays in the archive, marked to be discarded).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee as pw

from .. import __version__, tracing
from ..settings import SECRET_FIELDS, Settings
from ..stores import Stores
from ..stores.objects import ObjectNotFound
from ..stores.relational import BaseModel
from .archive import (FORMAT, FORMAT_VERSION, INDEX, MANIFEST, MANIFEST_SUM, PART_BYTES, BackupError, Spool,
                      index_entry)
from .cipher import EncryptingWriter, encrypt_bytes
from .datastores import LIST_BATCH, data_stores
from .location import Location, Sink
from .portal import Portal
from .progress import Progress, Silent
from .restore import restore_state_path
from .rows import TABLES, Snapshot, encode_row, position, table_name
from .tarstream import TarWriter

OBJECT_ATTEMPTS = 3


@dataclass(frozen=True)
class Created:
    location: str
    name: str
    size: int
    manifest: dict[str, Any]
    seconds: float
    removed_partials: list[str]  # archives left half-written by backups that died, removed first


def object_reference(model: type[BaseModel]) -> tuple[pw.Field, bool] | None:
    """The column through which a table's rows name objects, and whether it is a prefix."""
    fields = model._meta.fields
    if "object_key" in fields:
        return fields["object_key"], False
    if "object_prefix" in fields:
        return fields["object_prefix"], True
    return None


def names_any(value: str | None, is_prefix: bool, keys: set[str]) -> bool:
    if not value:
        return False
    if not is_prefix:
        return value in keys
    folder = value if value.endswith("/") else f"{value}/"
    return any(key == value or key.startswith(folder) for key in keys)


def effective_secrets(settings: Settings) -> dict[str, str]:
    """The secrets in effect: set in the settings, else kept in <data_dir>/secrets.toml."""
    stored: dict[str, Any] = {}
    path = settings.data_dir / "secrets.toml"
    if path.exists():
        try:
            with path.open("rb") as fh:
                stored = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BackupError(f"cannot read {path} ({exc}); run as the confmeet user or root") from None
    out = {name: getattr(settings, name) or str(stored.get(name, "")) for name in SECRET_FIELDS}
    return {name: value for name, value in out.items() if value}


def secrets_toml(secrets: dict[str, str]) -> bytes:
    # JSON string escapes are valid TOML basic-string escapes.
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in secrets.items()).encode()


class JsonlParts:
    """JSON lines cut into gzip'd parts of about PART_BYTES: ``<folder>/000001.jsonl.gz``, ..."""

    def __init__(self, job: _Backup, folder: str) -> None:
        self._job = job
        self._folder = folder
        self._buffer = bytearray()
        self._items = 0
        self._number = 0
        self.count = 0
        self.bytes = 0

    def add(self, item: dict[str, Any]) -> None:
        self._buffer += json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self._items += 1
        self.count += 1
        if len(self._buffer) >= PART_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._items:
            return
        self._number += 1
        data = gzip.compress(bytes(self._buffer), compresslevel=6, mtime=0)
        written = self._job.tar.add_bytes(f"{self._folder}/{self._number:06d}.jsonl.gz", data)
        self._job.index.add(index_entry(written, items=self._items))
        self.bytes += written.size
        self._buffer.clear()
        self._items = 0


class _Backup:
    def __init__(self, settings: Settings, stores: Stores, portal: Portal, out: Any,
                 passphrase: bytes | None, encrypt_archive: bool, skip: Callable[[str], bool],
                 progress: Progress) -> None:
        self.settings = settings
        self.stores = stores
        self.portal = portal
        self.tar = TarWriter(out)
        self.index = Spool()
        self.passphrase = passphrase
        self.encrypt_archive = encrypt_archive
        self.skip = skip
        self.progress = progress

    def run(self, created_at: datetime) -> dict[str, Any]:
        try:
            with Snapshot(self.stores.db.db) as snapshot:
                with tracing.span("backup.objects"):
                    objects, vanished = self.copy_objects()
                with tracing.span("backup.database"):
                    database = self.copy_database(snapshot, vanished)
            with tracing.span("backup.documents"):
                documents = self.copy_documents()
            with tracing.span("backup.config"):
                config = self.copy_config()
            index = self.tar.add(INDEX, self.index.size, self.index.chunks())
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "confmeet_version": __version__,
                "schema_version": snapshot.schema_version,
                "encryption": "archive" if self.encrypt_archive else "secrets" if self.passphrase else "none",
                "source": self.stores.kinds(),
                "database": database,
                "documents": documents,
                "objects": objects,
                "config": config,
                "index": {"name": INDEX, "entries": self.index.lines, "size": index.size, "sha256": index.sha256},
            }
            written = self.tar.add_bytes(MANIFEST, json.dumps(manifest, indent=2).encode())
            self.tar.add_bytes(MANIFEST_SUM, f"{written.sha256}  {MANIFEST}\n".encode())
            self.tar.close()
            return manifest
        finally:
            self.index.close()

    # ------------------------------------------------------------------ objects
    def copy_objects(self) -> tuple[dict[str, Any], set[str]]:
        total = sum(info.size for info in self.portal.iterate(self.stores.objects.list(""), LIST_BATCH)
                    if not self.skip(info.key))
        self.progress.phase("objects", total, in_bytes=True)
        summary = {"count": 0, "bytes": 0, "vanished": 0, "retried": 0}
        vanished: set[str] = set()
        for info in self.portal.iterate(self.stores.objects.list(""), LIST_BATCH):
            if self.skip(info.key):
                continue
            size = self.copy_object(info.key, summary)
            if size is None:
                vanished.add(info.key)
                summary["vanished"] += 1
            else:
                summary["count"] += 1
                summary["bytes"] += size
        return summary, vanished

    def copy_object(self, key: str, summary: dict[str, int]) -> int | None:
        """Copy one object; its size, or None when it was deleted before it could be read."""
        for _ in range(OBJECT_ATTEMPTS):
            info = self.portal.call(self.stores.objects.stat(key))
            if info is None:
                return None
            chunks = self.portal.iterate(self.stores.objects.get(key))
            try:
                try:
                    first = next(chunks, b"")
                except ObjectNotFound:
                    return None
                except Exception:
                    if self.portal.call(self.stores.objects.stat(key)) is None:
                        return None  # deleted between the look and the read (some S3 servers' errors)
                    raise
                written = self.tar.add(f"objects/{key}", info.size, self._counted(first, chunks))
            finally:
                chunks.close()
            self.index.add(index_entry(written, content_type=info.content_type, discard=not written.whole))
            if written.whole:
                return info.size
            summary["retried"] += 1
        raise BackupError(f"object {key} changed every time it was read; run the backup again when it is idle")

    def _counted(self, first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
        self.progress.advance(len(first))
        yield first
        for chunk in rest:
            self.progress.advance(len(chunk))
            yield chunk

    # ------------------------------------------------------------------ database
    def copy_database(self, snapshot: Snapshot, vanished: set[str]) -> dict[str, Any]:
        self.progress.phase("database", sum(snapshot.counts.values()))
        tables: dict[str, int] = {}
        excluded: Counter[str] = Counter()
        size = 0
        for model in TABLES:
            name = table_name(model)
            parts = JsonlParts(self, f"database/{name}")
            pk_at = position(model, model._meta.primary_key)
            reference = object_reference(model)
            ref_at = position(model, reference[0]) if reference else -1
            for page in snapshot.pages(model):
                alive = self.live_ids(model, [row[pk_at] for row in page]) if reference else set()
                for row in page:
                    self.progress.advance()
                    if reference is not None:
                        if row[pk_at] not in alive or names_any(row[ref_at], reference[1], vanished):
                            excluded[name] += 1
                            continue
                    parts.add(encode_row(model, row))
            parts.flush()
            tables[name] = parts.count
            size += parts.bytes
        return {"tables": tables, "bytes": size, "excluded": dict(excluded)}

    def live_ids(self, model: type[BaseModel], ids: list[Any]) -> set[Any]:
        """Which of these rows exist in the database now (outside the snapshot)."""
        pk = model._meta.primary_key

        def query() -> set[Any]:
            return {row[0] for row in model.select(pk).where(pk.in_(ids)).tuples()}

        return self.portal.call(self.stores.db.run(query))

    # ------------------------------------------------------------------ documents
    def copy_documents(self) -> dict[str, Any]:
        documents = self.stores.documents
        names = self.portal.call(documents.collections())
        self.progress.phase("documents", sum(self.portal.call(documents.count(name)) for name in names))
        collections: dict[str, int] = {}
        size = 0
        for name in names:
            parts = JsonlParts(self, f"documents/{name}")
            for doc in self.portal.iterate(documents.iter_all(name), 500):
                try:
                    parts.add(doc)
                except (TypeError, ValueError) as exc:
                    raise BackupError(f"document {doc.get('_id')!r} in {name} holds a value JSON cannot "
                                      f"carry ({exc}); the document store takes JSON values only") from None
                self.progress.advance()
            parts.flush()
            collections[name] = parts.count
            size += parts.bytes
        return {"collections": collections, "bytes": size}

    # ------------------------------------------------------------------ configuration
    def copy_config(self) -> dict[str, Any]:
        files: list[tuple[str, bytes]] = []
        if self.settings.source != "defaults":
            files.append(("config/confmeet.toml", _read(Path(self.settings.source))))
        secrets = effective_secrets(self.settings)
        if secrets:
            files.append(("config/secrets.toml", secrets_toml(secrets)))
        for setting, name in (("tls_cert", "cert.pem"), ("tls_key", "key.pem")):
            if getattr(self.settings, setting):
                files.append((f"config/tls/{name}", _read(Path(getattr(self.settings, setting)))))
        files += monitoring_files(self.settings)
        self.progress.phase("configuration", len(files))
        names = []
        for name, data in files:
            if self.passphrase and not self.encrypt_archive:
                name, data = f"{name}.enc", encrypt_bytes(data, self.passphrase)
            self.index.add(index_entry(self.tar.add_bytes(name, data)))
            names.append(name)
            self.progress.advance()
        return {"files": names}


MONITORING_PREFIX = "config/monitoring/"
GRAFANA_STATE = "config/monitoring/grafana/state/grafana.db"


def monitoring_files(settings: Settings) -> list[tuple[str, bytes]]:
    """The observability layer's own state, when ``confmeet install`` deployed it: its rendered
    configuration and alert rules (``<config dir>/monitoring/``), and Grafana's database (users,
    edited dashboards) from its volume, which needs the install record and the Docker Engine
    (root); without them the database is left out."""
    if settings.source == "defaults":
        return []
    config_dir = Path(settings.source).parent
    monitoring = config_dir / "monitoring"
    files = [(f"{MONITORING_PREFIX}{path.relative_to(monitoring)}", _read(path))
             for path in sorted(monitoring.rglob("*")) if path.is_file()] if monitoring.is_dir() else []
    database = grafana_database(config_dir)
    if database is not None:
        files.append((GRAFANA_STATE, database))
    return files


def grafana_database(config_dir: Path) -> bytes | None:
    """A consistent copy (SQLite's online backup) of grafana.db in the confmeet-grafana volume."""
    from appliance.machine.deploy import COMPONENTS, DeployError, InstallRecord, Layout

    try:
        record = InstallRecord.read(Layout(config_dir.parent.parent))
    except DeployError:
        return None  # not root: the install record is root's
    if record is None or record.mode != "containers" or "grafana" not in record.components:
        return None
    import sqlite3

    import docker

    try:
        client = docker.DockerClient(base_url=record.docker_url, timeout=10)
        try:
            mountpoint = client.volumes.get(COMPONENTS["grafana"].volume_name).attrs["Mountpoint"]
        finally:
            client.close()
    except Exception as exc:  # no engine, no permission, no volume
        raise BackupError(f"cannot find Grafana's volume to back up its database ({exc}); run the backup as "
                          "root with the Docker Engine running, or leave Grafana out (confmeet install "
                          "--components)") from None
    source = Path(mountpoint) / "grafana.db"
    if not source.exists():
        return None  # Grafana has not started yet
    with tempfile.TemporaryDirectory(prefix="confmeet-grafana-") as tmp:
        copy = Path(tmp) / "grafana.db"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)) as db, \
                    contextlib.closing(sqlite3.connect(copy)) as out:
                db.backup(out)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot copy Grafana's database {source} ({exc}); run the backup as root") from None
        return copy.read_bytes()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path} ({exc.strerror or exc}); run the backup as root or "
                          "the confmeet user") from None


def create_backup(settings: Settings, location: Location, portal: Portal, *, passphrase: bytes | None = None,
                  encrypt_archive: bool = False, progress: Progress | None = None) -> Created:
    """Write one archive into ``location``; nothing appears there unless it is complete."""
    with tracing.span("backup.create", location=location.describe(), encrypted=bool(passphrase)) as span:
        created = _create(settings, location, portal, passphrase, encrypt_archive, progress)
        span.set_attributes({"confmeet.archive": created.name, "confmeet.bytes": created.size})
        return created


def _create(settings: Settings, location: Location, portal: Portal, passphrase: bytes | None,
            encrypt_archive: bool, progress: Progress | None) -> Created:
    if encrypt_archive and not passphrase:
        raise BackupError("encrypting the whole archive needs a passphrase: pass --passphrase-file")
    state = restore_state_path(settings)
    if state.exists():
        raise BackupError(f"a restore into this install is unfinished ({state}); finish it with "
                          "'confmeet backup restore ARCHIVE --resume' before backing up")
    started = time.monotonic()
    created_at = datetime.now(UTC)
    removed_partials = location.remove_partials()
    with data_stores(settings, portal) as stores:
        name = location.new_name(created_at, encrypt_archive)
        sink: Sink = location.create(name)
        try:
            out: Any = EncryptingWriter(sink, passphrase) if encrypt_archive and passphrase else sink
            job = _Backup(settings, stores, portal, out, passphrase, encrypt_archive,
                          location.archive_keys_in(stores.objects), progress or Silent())
            manifest = job.run(created_at)
            if isinstance(out, EncryptingWriter):
                out.close()
            sink.commit()
        except BaseException:
            sink.abort()
            raise
    return Created(location.describe(), name, sink.size, manifest, time.monotonic() - started, removed_partials)
