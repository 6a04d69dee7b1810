"""The relational store on SQLite and real PostgreSQL: versioned, idempotent migrations; no blocking."""

from __future__ import annotations

import asyncio
import threading

import peewee as pw
import pytest

from appliance.stores.errors import StoreUnavailable
from appliance.stores.relational import (MIGRATIONS, SCHEMA_VERSION, AuditEvent, Meeting, MeetingRole,
                                         Relational, User, schema_version)


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


async def test_prepared_reads_match_on_both_paths_and_do_not_block_the_loop(db_url: str) -> None:
    """Relational.fetch returns what the peewee path returns; on PostgreSQL the loop keeps
    running while the server sleeps inside the statement (it waits on the socket)."""
    from appliance.meetings import MEETING_BY_CODE

    db = Relational(db_url)
    await db.open()

    def seed() -> list[tuple]:
        user = User.create(email="r@example.com", password_hash="x")
        meeting = Meeting.create(code="abc-defg-hij", title="t", owner=user)
        MeetingRole.create(meeting=meeting, user=user, role="host")
        return MEETING_BY_CODE.rows(key="abc-defg-hij", user=user.id)

    expected = await db.run(seed)
    assert expected and expected[0][-1] == "host"
    user_id = expected[0][3]
    fetched = await asyncio.gather(*(db.fetch(MEETING_BY_CODE, key="abc-defg-hij", user=user_id)
                                     for _ in range(10)))  # more than the reader's pool at once
    assert all(rows == expected for rows in fetched)
    assert await db.fetch(MEETING_BY_CODE, key="nope", user=user_id) == []
    if db.kind == "postgresql":
        from appliance.stores.relational import Prepared

        slow = Prepared(lambda s: User.select(pw.fn.pg_sleep(s)), "s")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.get_running_loop().create_task(tick())
        await db.fetch(slow, s=0.3)
        ticker.cancel()
        assert ticks >= 15
    await db.close()


async def test_the_async_reader_replaces_connections_the_server_dropped(postgres_url: str) -> None:
    from appliance.meetings import MEETING_BY_CODE

    db = Relational(postgres_url)
    await db.open()
    await asyncio.gather(*(db.fetch(MEETING_BY_CODE, key="x", user="") for _ in range(3)))
    pids = {conn.get_backend_pid() for conn in db._reader._idle}
    assert len(pids) == 3

    def kill() -> int:
        killed = 0
        for pid in pids:
            killed += db.db.execute_sql("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        return killed

    assert await db.run(kill) == 3
    await asyncio.sleep(0.1)
    # The first stale connection fails, the others are dropped with it: callers see no error.
    for _ in range(3):
        assert await db.fetch(MEETING_BY_CODE, key="x", user="") == []
    assert db._reader._idle and not pids & {conn.get_backend_pid() for conn in db._reader._idle}
    # A statement the server refuses is the caller's error; the reader goes on working.
    from appliance.stores.relational import Prepared

    broken = Prepared(lambda v: User.select().where(User.id == pw.fn.no_such_function(v)), "v")
    with pytest.raises(Exception, match="no_such_function"):
        await db.fetch(broken, v=1)
    assert await db.fetch(MEETING_BY_CODE, key="x", user="") == []
    await db.close()
