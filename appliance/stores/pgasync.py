"""Reads on PostgreSQL straight from the event loop: psycopg2 connections in asynchronous mode.

The hot look-ups (a token's session, a meeting and the caller's role) are single prepared
statements. Sending them to the thread pool costs a thread hop and GIL hand-overs per request;
psycopg2's asynchronous mode lets the loop wait on the socket instead (``poll()`` says whether to
wait for readable or writable). Only reads go this way: asynchronous connections are always in
autocommit, and everything that writes keeps peewee's transactions on the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg2
import psycopg2.extensions as ext

from .errors import StoreUnavailable

_RECONNECTABLE = (psycopg2.OperationalError, psycopg2.InterfaceError)


async def _ready(conn: Any) -> None:
    """Wait until the connection's pending operation (connect or query) has finished."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        if state == ext.POLL_READ:
            watch, unwatch = loop.add_reader, loop.remove_reader
        elif state == ext.POLL_WRITE:
            watch, unwatch = loop.add_writer, loop.remove_writer
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        waiter = loop.create_future()
        watch(fd, waiter.set_result, None)
        try:
            await waiter
        finally:
            unwatch(fd)


class AsyncReader:
    """A small pool of asynchronous connections for single-statement reads."""

    def __init__(self, connect_kwargs: dict[str, Any], size: int = 4) -> None:
        self._kwargs = connect_kwargs
        self._size = size
        self._idle: list[Any] = []
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def _connect(self) -> Any:
        conn = psycopg2.connect(async_=True, **self._kwargs)
        try:
            await _ready(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def fetch(self, sql: str, params: list[Any]) -> list[tuple]:
        """All rows of one statement. When the server dropped the connection, the idle ones go
        too and the statement runs once more on a new connection."""
        if self._closed:
            raise StoreUnavailable("the database store is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        async with self._slots:
            for attempt in (1, 2):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    cursor = conn.cursor()
                    cursor.execute(sql, params)
                    await _ready(conn)
                    rows = cursor.fetchall()
                except _RECONNECTABLE:
                    conn.close()
                    if attempt == 2 or not reused:
                        raise
                    self._discard_idle()  # a restarted server dropped them all: retry on a new one
                    continue
                except BaseException:
                    conn.close()  # a cancelled or failed query leaves the connection unusable
                    raise
                self._idle.append(conn)
                return rows
        raise AssertionError("unreachable")

    def _discard_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        self._closed = True
        self._discard_idle()
