"""The event bus, in-process and over real Redis pub/sub."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from appliance.stores.bus import MemoryBus, RedisBus, open_bus
from appliance.stores.errors import StoreUnavailable


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest):
    if request.param == "memory":
        b = MemoryBus()
    else:
        b = RedisBus(request.getfixturevalue("redis_url"))
    await b.open()
    yield b
    await b.close()


async def test_publish_reaches_matching_subscribers_only(bus) -> None:
    room = uuid.uuid4().hex
    async with bus.subscribe(f"meeting.{room}") as exact, bus.subscribe(f"meeting.{room}*") as pattern, \
            bus.subscribe("meeting.other") as other:
        await asyncio.sleep(0.05)  # Redis: let the subscriptions register
        await bus.publish(f"meeting.{room}", {"type": "joined", "n": 1, "names": ["a", "b"]})
        await bus.publish(f"meeting.{room}.chat", {"type": "chat", "text": "hi"})
        assert await exact.get(2) == (f"meeting.{room}", {"type": "joined", "n": 1, "names": ["a", "b"]})
        got = [await pattern.get(2), await pattern.get(2)]
        assert [c for c, _ in got] == [f"meeting.{room}", f"meeting.{room}.chat"]
        with pytest.raises(asyncio.TimeoutError):
            await other.get(0.2)
        with pytest.raises(asyncio.TimeoutError):
            await exact.get(0.2)  # the .chat message did not match the exact channel


async def test_unsubscribed_receive_nothing(bus) -> None:
    room = uuid.uuid4().hex
    async with bus.subscribe(f"r.{room}") as sub:
        await asyncio.sleep(0.05)
    await bus.publish(f"r.{room}", {"x": 1})
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.2)


async def test_slow_subscriber_loses_oldest_not_newest() -> None:
    bus = MemoryBus()
    async with bus.subscribe("c") as sub:
        for i in range(1005):
            await bus.publish("c", {"i": i})
        assert sub.dropped == 5
        assert (await sub.get(1))[1] == {"i": 5}


async def test_two_redis_connections_see_each_other(redis_url: str) -> None:
    a, b = RedisBus(redis_url), RedisBus(redis_url)
    await a.open(), await b.open()
    try:
        async with b.subscribe("cross.*") as sub:
            await asyncio.sleep(0.05)
            await a.publish("cross.1", {"from": "a"})
            assert await sub.get(2) == ("cross.1", {"from": "a"})
    finally:
        await a.close(), await b.close()


async def test_unreachable_redis_names_the_fix() -> None:
    bus = open_bus("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable, match="start Redis or fix the 'bus' URL"):
        await bus.open()
    await bus.close()


def test_unknown_bus_url() -> None:
    with pytest.raises(StoreUnavailable, match="memory://"):
        open_bus("kafka://x")
