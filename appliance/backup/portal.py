"""An asyncio event loop on a thread of its own, so that the archive code can stay plain blocking
Python (tarfile, files, hashes) while the stores it reads and writes keep their async interfaces.

The archive code runs on the caller's thread and reaches the stores through :meth:`Portal.call`
and :meth:`Portal.iterate`; the stores' own blocking work runs on the loop's worker threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

SHUTDOWN_SECONDS = 10.0


class Portal:
    """``with Portal() as portal: portal.call(store.open())``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="backup-stores", daemon=True)

    def __enter__(self) -> Portal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(SHUTDOWN_SECONDS)
        except (TimeoutError, asyncio.CancelledError):
            pass  # a store call stuck on the network: the daemon thread goes with the process
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(SHUTDOWN_SECONDS)
        if not self._thread.is_alive():
            self.loop.close()

    async def _shutdown(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result (its exception is raised here)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start a coroutine on the loop; return its concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def iterate(self, items: AsyncIterator[T], batch: int = 1) -> Iterator[T]:
        """The items of an async iterator, fetched ``batch`` at a time; closing this generator
        early closes the async one (and whatever connection it holds)."""

        async def take() -> list[T]:
            out: list[T] = []
            async for item in items:
                out.append(item)
                if len(out) >= batch:
                    break
            return out

        try:
            while chunk := self.call(take()):
                yield from chunk
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                self.call(aclose())
