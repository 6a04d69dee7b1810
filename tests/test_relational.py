"""The relational store on SQLite and real PostgreSQL: versioned, idempotent migrations; no blocking."""

from __future__ import annotations

import asyncio
import threading

import pytest

from appliance.stores.errors import StoreUnavailable
from appliance.stores.relational import (MIGRATIONS, SCHEMA_VERSION, AuditEvent, Meeting, MeetingRole,
                                         Relational, User, schema_version)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    return request.getfixturevalue("postgres_url")


async def test_migrations_run_once_and_are_versioned(db_url: str) -> None:
    db = Relational(db_url)
    await db.open()
    assert db.migrations_run == len(MIGRATIONS)
    assert await db.run(schema_version, db.db) == SCHEMA_VERSION
    await db.close()
    again = Relational(db_url)
    await again.open()
    assert again.migrations_run == 0
    await again.close()


async def test_rows_round_trip_and_cascade(db_url: str) -> None:
    db = Relational(db_url)
    await db.open()

    def work() -> tuple[int, int]:
        user = User.create(email="a@example.com", password_hash="x")
        meeting = Meeting.create(code="abc-defg-hij", title="t", owner=user)
        MeetingRole.create(meeting=meeting, user=user, role="host")
        AuditEvent.create(actor=user, meeting=meeting, action="meeting.created", detail={"k": [1, 2]})
        assert AuditEvent.get().detail == {"k": [1, 2]}
        meeting.delete_instance(recursive=True)
        return MeetingRole.select().count(), AuditEvent.select().count()

    roles, events = await db.run(work)
    assert roles == 0 and events == 1  # audit survives the meeting it talks about
    await db.close()


async def test_queries_run_off_the_event_loop(db_url: str) -> None:
    db = Relational(db_url)
    await db.open()
    loop_thread = threading.get_ident()
    threads = await asyncio.gather(*(db.run(threading.get_ident) for _ in range(8)))
    assert loop_thread not in threads
    await db.close()


async def test_unreachable_postgres_names_the_fix() -> None:
    db = Relational("postgresql://nobody@127.0.0.1:1/confmeet")
    with pytest.raises(StoreUnavailable, match="Check that the server runs"):
        await db.open()
