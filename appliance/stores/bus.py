"""The event bus: JSON messages published on named channels.

``memory://`` keeps everything in this process; ``redis://`` uses Redis pub/sub so that another
process (a second appliance, an SFU worker) can follow the same events.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..settings import mask_url_password
from .errors import StoreUnavailable

SUBSCRIBER_QUEUE = 1000


class Subscription:
    """Messages for one subscriber; use as ``async with bus.subscribe(...) as sub: async for m in sub``."""

    def __init__(self, bus: EventBus, pattern: str) -> None:
        self.bus = bus
        self.pattern = pattern
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.dropped = 0

    def deliver(self, channel: str, message: dict[str, Any]) -> None:
        if self.queue.full():  # a subscriber that stopped reading loses its oldest messages
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait((channel, message))

    async def get(self, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        return await self.queue.get()

    async def __aenter__(self) -> Subscription:
        await self.bus._add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus._remove(self)


class EventBus(ABC):
    kind: str

    def subscribe(self, pattern: str) -> Subscription:
        """Subscribe to a channel name or a glob pattern (``room.*``)."""
        return Subscription(self, pattern)

    @abstractmethod
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    @abstractmethod
    async def _add(self, sub: Subscription) -> None: ...

    @abstractmethod
    async def _remove(self, sub: Subscription) -> None: ...

    async def open(self) -> None:
        """Connect; raise StoreUnavailable with the fix when that is impossible."""

    async def ping(self) -> None:
        """Raise when the bus cannot carry messages."""

    async def close(self) -> None: ...

    def describe(self) -> str:
        return self.kind


class MemoryBus(EventBus):
    kind = "memory"

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        # Round-trip through JSON so that in-process and Redis subscribers see the same values.
        payload = json.loads(json.dumps(message))
        for sub in list(self._subs):
            if fnmatchcase(channel, sub.pattern):
                sub.deliver(channel, payload)

    async def _add(self, sub: Subscription) -> None:
        self._subs.add(sub)

    async def _remove(self, sub: Subscription) -> None:
        self._subs.discard(sub)


class RedisBus(EventBus):
    """Redis pub/sub: one connection publishes, one pub/sub connection fans out to local subscribers."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._redis = aioredis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._subs: dict[str, set[Subscription]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return mask_url_password(self.url)

    async def open(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {self.describe()} ({exc}); start Redis or fix the 'bus' URL"
            ) from None

    async def ping(self) -> None:
        await self._redis.ping()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.publish(channel, json.dumps(message, separators=(",", ":")))

    async def _add(self, sub: Subscription) -> None:
        async with self._lock:
            first = sub.pattern not in self._subs
            self._subs.setdefault(sub.pattern, set()).add(sub)
            if first:
                await self._pubsub.psubscribe(sub.pattern)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")

    async def _remove(self, sub: Subscription) -> None:
        async with self._lock:
            subs = self._subs.get(sub.pattern)
            if subs is None:
                return
            subs.discard(sub)
            if not subs:
                del self._subs[sub.pattern]
                await self._pubsub.punsubscribe(sub.pattern)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError):
                await asyncio.sleep(0.5)  # redis-py reconnects and resubscribes on the next call
                continue
            if message is None:
                if not self._subs:
                    return
                continue
            pattern = message["pattern"].decode()
            channel = message["channel"].decode()
            payload = json.loads(message["data"])
            for sub in list(self._subs.get(pattern, ())):
                sub.deliver(channel, payload)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        await self._pubsub.aclose()
        await self._redis.aclose()


def open_bus(url: str) -> EventBus:
    if url.startswith("memory://"):
        return MemoryBus()
    if url.startswith(("redis://", "rediss://")):
        return RedisBus(url)
    raise StoreUnavailable(f"bus URL {url!r}: use memory:// or redis://HOST:PORT/DB")
