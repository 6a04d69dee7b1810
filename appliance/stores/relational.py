"""Relational data (users, meetings, roles, sessions, recordings, audit events) with peewee.

SQLite for the embedded default, PostgreSQL (psycopg2) in production. peewee is a blocking
library, so every query runs on a small thread pool through :meth:`Relational.run`; the event
loop never waits on the database. The hot single-statement reads (:class:`Prepared`) go through
:meth:`Relational.fetch`, which on PostgreSQL waits on the socket from the loop instead (pgasync).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migrations
from playhouse.shortcuts import ReconnectMixin

from ..settings import mask_url_password
from .errors import StoreUnavailable
from .pgasync import AsyncReader
from .urls import local_path, parse_postgres, scheme

T = TypeVar("T")

database_proxy = pw.DatabaseProxy()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class JSONField(pw.TextField):
    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class User(BaseModel):
    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    email = pw.CharField(max_length=254, unique=True)
    name = pw.CharField(max_length=200, default="")
    password_hash = pw.CharField(max_length=255)
    role = pw.CharField(max_length=16, default="member")  # admin | member
    active = pw.BooleanField(default=True)
    created_at = pw.DateTimeField(default=utcnow)


class AuthSession(BaseModel):
    """One sign-in: holds the (hashed) refresh token; access tokens name it and die with it."""

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    user = pw.ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    refresh_hash = pw.CharField(max_length=64, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    revoked_at = pw.DateTimeField(null=True)


class Meeting(BaseModel):
    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    code = pw.CharField(max_length=16, unique=True)
    title = pw.CharField(max_length=200)
    owner = pw.ForeignKeyField(User, backref="meetings", on_delete="CASCADE")
    starts_at = pw.DateTimeField(null=True)
    password_hash = pw.CharField(max_length=255, null=True)
    lobby = pw.BooleanField(default=False)
    allow_guests = pw.BooleanField(default=False)
    locked = pw.BooleanField(default=False)
    e2ee = pw.BooleanField(default=False)  # end-to-end encrypted media (signaling/e2ee.py)
    status = pw.CharField(max_length=16, default="scheduled")  # scheduled | live | ended
    created_at = pw.DateTimeField(default=utcnow)
    ended_at = pw.DateTimeField(null=True)


class MeetingRole(BaseModel):
    meeting = pw.ForeignKeyField(Meeting, backref="roles", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="meeting_roles", on_delete="CASCADE")
    role = pw.CharField(max_length=16)  # host | moderator | participant | guest

    class Meta:
        indexes = ((("meeting", "user"), True),)


class Participant(BaseModel):
    """One person's stay in a meeting (a seat), account holder or guest."""

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    meeting = pw.ForeignKeyField(Meeting, backref="participants", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, null=True, backref="participations", on_delete="SET NULL")
    display_name = pw.CharField(max_length=100)
    role = pw.CharField(max_length=16)
    joined_at = pw.DateTimeField(default=utcnow)
    left_at = pw.DateTimeField(null=True)
    node = pw.CharField(max_length=64, null=True)  # the node holding the seat (start-up repairs are per node)


class Recording(BaseModel):
    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    meeting = pw.ForeignKeyField(Meeting, backref="recordings", on_delete="CASCADE")
    started_by = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    started_at = pw.DateTimeField(default=utcnow)
    duration_s = pw.FloatField(default=0.0)
    status = pw.CharField(max_length=16, default="recording")
    tracks = JSONField(default=list)
    size_bytes = pw.BigIntegerField(default=0)
    object_prefix = pw.CharField(max_length=255, default="")
    ended_at = pw.DateTimeField(null=True)
    stop_reason = pw.CharField(max_length=255, default="")
    upload_error = pw.TextField(default="")  # the last failed upload, while it is retried
    room = pw.CharField(max_length=60, null=True)  # the breakout room it recorded; None: the main room
    node = pw.CharField(max_length=64, null=True)  # the node whose SFU records it (its files are there first)


class RecordingExport(BaseModel):
    """A composite of a recording (one picture, all audio mixed), made on demand."""

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    recording = pw.ForeignKeyField(Recording, backref="exports", on_delete="CASCADE")
    format = pw.CharField(max_length=8)  # mp4 | webm
    layout = pw.CharField(max_length=16)  # grid | speaker
    width = pw.IntegerField()
    height = pw.IntegerField()
    status = pw.CharField(max_length=16, default="queued")  # queued | running | ready | failed
    progress = pw.FloatField(default=0.0)
    error = pw.TextField(default="")
    size_bytes = pw.BigIntegerField(default=0)
    object_key = pw.CharField(max_length=512, default="")
    created_at = pw.DateTimeField(default=utcnow)


class AuditEvent(BaseModel):
    id = pw.BigAutoField()
    at = pw.DateTimeField(default=utcnow, index=True)
    actor = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    meeting = pw.ForeignKeyField(Meeting, null=True, on_delete="SET NULL")
    action = pw.CharField(max_length=64)
    detail = JSONField(default=dict)


class MeetingFile(BaseModel):
    """A file shared in a meeting's chat; the bytes live in the object store under ``object_key``."""

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    meeting = pw.ForeignKeyField(Meeting, backref="files", on_delete="CASCADE")
    uploader = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    uploader_name = pw.CharField(max_length=100)
    name = pw.CharField(max_length=255)
    size = pw.BigIntegerField()
    content_type = pw.CharField(max_length=127)
    object_key = pw.CharField(max_length=512)
    created_at = pw.DateTimeField(default=utcnow)


class PasswordLink(BaseModel):
    """A one-time link that sets an account's password (an invitation or a reset by an
    administrator): only the token's hash is kept; it works once, until ``expires_at``."""

    token_hash = pw.CharField(primary_key=True, max_length=64)
    user = pw.ForeignKeyField(User, backref="password_links", on_delete="CASCADE")
    purpose = pw.CharField(max_length=16)  # invite | reset
    created_by = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    used_at = pw.DateTimeField(null=True)


class SchemaVersion(BaseModel):
    version = pw.IntegerField(primary_key=True)
    description = pw.CharField(max_length=200)
    applied_at = pw.DateTimeField(default=utcnow)


MODELS: list[type[BaseModel]] = [
    User, AuthSession, Meeting, MeetingRole, Participant, Recording, AuditEvent, MeetingFile, RecordingExport,
    PasswordLink,
]


# ---------------------------------------------------------------------------- migrations
def _m1_initial(db: pw.Database) -> None:
    db.create_tables([User, AuthSession, Meeting, MeetingRole, Participant, Recording, AuditEvent])


def _m2_meeting_files(db: pw.Database) -> None:
    db.create_tables([MeetingFile])


def _m3_recording_details(db: pw.Database) -> None:
    # A database made by _m1 from today's models has the columns already.
    present = {column.name for column in db.get_columns("recording")}
    fields = {"ended_at": Recording.ended_at, "stop_reason": Recording.stop_reason,
              "upload_error": Recording.upload_error}
    migrator = SchemaMigrator.from_database(db)
    run_migrations(*(migrator.add_column("recording", name, field)
                     for name, field in fields.items() if name not in present))
    db.create_tables([RecordingExport], safe=True)


def _m4_password_links(db: pw.Database) -> None:
    db.create_tables([PasswordLink], safe=True)


def _m5_meeting_e2ee(db: pw.Database) -> None:
    if "e2ee" not in {column.name for column in db.get_columns("meeting")}:
        run_migrations(SchemaMigrator.from_database(db).add_column("meeting", "e2ee", Meeting.e2ee))


def _m6_recording_room(db: pw.Database) -> None:
    if "room" not in {column.name for column in db.get_columns("recording")}:  # made by _m1 from today's models
        run_migrations(SchemaMigrator.from_database(db).add_column("recording", "room", Recording.room))


def _m7_nodes(db: pw.Database) -> None:
    migrator = SchemaMigrator.from_database(db)
    for table, field in (("participant", Participant.node), ("recording", Recording.node)):
        if "node" not in {column.name for column in db.get_columns(table)}:  # made by _m1 from today's models
            run_migrations(migrator.add_column(table, "node", field))


# Append only: (version, description, function). Each runs once, in its own transaction.
MIGRATIONS: list[tuple[int, str, Callable[[pw.Database], None]]] = [
    (1, "users, sessions, meetings, roles, participants, recordings, audit events", _m1_initial),
    (2, "files shared in meetings", _m2_meeting_files),
    (3, "recordings: end, stop reason, upload state; composite exports", _m3_recording_details),
    (4, "one-time password links (invitations, resets)", _m4_password_links),
    (5, "meetings: end-to-end encryption", _m5_meeting_e2ee),
    (6, "recordings: the breakout room recorded", _m6_recording_room),
    (7, "participants and recordings: the node that holds them", _m7_nodes),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class Prepared:
    """A peewee query compiled to SQL once and then run with new parameter values.

    Building a query costs peewee ~0.4 ms of Python; the hot paths (token checks, meeting look-ups)
    compile once and only execute. ``build`` receives one placeholder per parameter name.
    """

    def __init__(self, build: Callable[..., pw.Query], *names: str) -> None:
        self._build = build
        self._names = names
        self._compiled: dict[int, tuple[str, list[tuple[str | None, Any]]]] = {}

    def bind(self, db: pw.Database, values: dict[str, Any]) -> tuple[str, list[Any]]:
        """The SQL for ``db`` and its parameters for ``values``."""
        compiled = self._compiled.get(id(db))
        if compiled is None:
            marks = {f"\x00{name}\x00": name for name in self._names}
            sql, args = self._build(*marks).sql()
            compiled = (sql, [(marks.get(arg) if isinstance(arg, str) else None, arg) for arg in args])
            self._compiled[id(db)] = compiled
        sql, slots = compiled
        return sql, [values[name] if name else const for name, const in slots]

    def rows(self, **values: Any) -> list[tuple]:
        db = database_proxy.obj
        return db.execute_sql(*self.bind(db, values)).fetchall()



def model_from_row(model: type[BaseModel], row: tuple) -> Any:
    """An instance of ``model`` from a row that starts with all its columns (``model.select()``)."""
    return model(**{f.name: f.python_value(v) for f, v in zip(model._meta.sorted_fields, row)})


class ReconnectingPostgres(ReconnectMixin, pw.PostgresqlDatabase):
    """Reconnects once when PostgreSQL dropped the connection (restart, failover)."""


def connect_database(url: str) -> pw.Database:
    kind = scheme(url)
    if kind == "sqlite":
        path = local_path(url)
        if str(path) in (".", "/", "/:memory:"):
            database = ":memory:"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            database = str(path)
        return pw.SqliteDatabase(
            database,
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000,
                     "synchronous": "normal", "cache_size": -16000},
            check_same_thread=False,
        )
    if kind in ("postgresql", "postgres"):
        where = parse_postgres(url)
        return ReconnectingPostgres(where.database, user=where.user, password=where.password, host=where.host,
                                    port=where.port, connect_timeout=where.connect_timeout, **where.options)
    raise StoreUnavailable(f"database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


class Relational:
    """The relational store: a peewee database driven from a thread pool."""

    def __init__(self, url: str, workers: int = 2) -> None:
        self.url = url
        self.db = connect_database(url)
        database_proxy.initialize(self.db)
        self.kind = "sqlite" if isinstance(self.db, pw.SqliteDatabase) else "postgresql"
        self.migrations_run = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")
        self._reader = (AsyncReader({"dbname": self.db.database, **self.db.connect_params})
                        if self.kind == "postgresql" else None)

    def describe(self) -> str:
        return mask_url_password(self.url)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking function using the database on the pool and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def fetch(self, query: Prepared, **values: Any) -> list[tuple]:
        """The rows of a prepared read: from the loop on PostgreSQL, on the pool on SQLite."""
        if self._reader is None:
            return await self.run(query.rows, **values)
        return await self._reader.fetch(*query.bind(self.db, values))

    def atomic(self):
        return self.db.atomic()

    # -------------------------------------------------------------- lifecycle
    def open_sync(self) -> int:
        """Connect and bring the schema up to date. Returns how many migrations ran."""
        try:
            self.db.connect(reuse_if_open=True)
        except pw.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot connect to the database at {self.describe()}: {str(exc).strip()}. "
                "Check that the server runs and the URL (user, host, port, database name) is right."
            ) from None
        return migrate(self.db)

    async def open(self) -> None:
        self.migrations_run = await self.run(self.open_sync)

    async def ping(self) -> None:
        await self.run(lambda: self.db.execute_sql("SELECT 1").fetchone())

    async def close(self) -> None:
        def _close_all() -> None:
            self.db.close()

        await self.run(_close_all)
        if self._reader is not None:
            self._reader.close()
        self._executor.shutdown(wait=True)
        self.db.close()


def migrate(db: pw.Database) -> int:
    """Apply the migrations that have not run yet. Safe to run from several processes at once."""
    ran = 0
    with db.atomic():
        if isinstance(db, pw.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(4242001)")
        db.create_tables([SchemaVersion], safe=True)
        done = {row.version for row in SchemaVersion.select(SchemaVersion.version)}
        for version, description, fn in MIGRATIONS:
            if version in done:
                continue
            fn(db)
            SchemaVersion.create(version=version, description=description)
            ran += 1
    return ran


def schema_version(db: pw.Database) -> int:
    if not db.table_exists("schema_version"):
        return 0
    row = SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar()
    return int(row or 0)
