"""One appliance per data directory: the lock ``confmeet serve`` holds for its whole life, and
``backup restore`` while it writes (so that neither runs under the other)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
from pathlib import Path

LOCK_FILE = "confmeet.lock"
HEARTBEAT_S = 30.0
class AlreadyServing(Exception):
    """Another appliance process uses this data directory."""


class InstanceLock:
    """An exclusive lock on ``<data_dir>/confmeet.lock`` for the life of the process (the kernel
    releases it when the process dies, however it dies), holding its pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.last_alive: dt.datetime | None = None  # the previous holder's last heartbeat (UTC, naive)
        self._fd: int | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyServing(f"another confmeet serve (pid {pid or '?'}) uses the data directory "
                                 f"{self.path.parent}; stop it first") from None
        st = os.fstat(fd)
        if st.st_size:
            self.last_alive = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).replace(tzinfo=None)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def start_heartbeat(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="instance-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
