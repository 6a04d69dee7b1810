"""Sinks: consumers of a room's tracks (recording, captions) started and stopped by message."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc.rtp import RtpPacket

from appliance.sfu import IceSettings, RoomHost
from appliance.sfu.errors import SfuError
from appliance.sfu.forwarder import UpTrack

from .conftest import join_publishing
from .participants import Meeting


class CountingSink:
    """Counts the packets of every track it is given, per (publisher, kind)."""

    made: list[CountingSink] = []

    def __init__(self, room: str, options: dict[str, Any], emit: Callable[[str | None, dict[str, Any]], None]) -> None:
        if not isinstance(options.get("label", ""), str):
            raise SfuError("bad_message", "'label' must be a string")
        self.label = options.get("label", "")
        self.packets: Counter[tuple[str, str]] = Counter()
        self.present: set[tuple[str, str]] = set()
        self.stopped = False
        CountingSink.made.append(self)

    def _tap(self, up: UpTrack, packet: RtpPacket) -> None:
        self.packets[(up.publisher, up.kind)] += 1

    def track_added(self, up: UpTrack) -> None:
        self.present.add((up.publisher, up.kind))
        up.add_tap(self._tap)

    def track_removed(self, up: UpTrack) -> None:
        self.present.discard((up.publisher, up.kind))
        up.remove_tap(self._tap)

    async def stop(self) -> dict[str, Any]:
        self.stopped = True
        return {"label": self.label, "tracks": len(self.packets)}


@pytest.fixture
async def meeting() -> AsyncIterator[Meeting]:
    CountingSink.made.clear()
    meeting = Meeting(RoomHost(IceSettings(loopback=True), sinks={"counter": CountingSink}))
    yield meeting
    await meeting.close()


async def test_a_sink_sees_present_and_later_tracks_until_stopped(meeting: Meeting) -> None:
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    reply = await alice.request({"type": "sink_start", "sink": "counter", "options": {"label": "rec"}})
    assert reply == {"type": "ok"}
    sink = CountingSink.made[-1]
    bob = await join_publishing(meeting, "bob", 0.5, (30, 30, 200))  # publishes after the start
    await alice.wait_until(lambda: all(sink.packets[(who, kind)] > 20 for who in ("alice", "bob")
                                       for kind in ("audio", "video")))

    again = await bob.request({"type": "sink_start", "sink": "counter"})
    assert again["code"] == "already_running"

    # A moderator's hold stops the packets reaching the sink as well as the subscribers.
    await alice.request({"type": "hold", "participant": "bob", "source": "microphone", "held": True})
    held_at = sink.packets[("bob", "audio")]
    await alice.wait_until(lambda: sink.packets[("alice", "audio")] > 2 * held_at + 50)
    assert sink.packets[("bob", "audio")] <= held_at + 2

    assert await bob.request({"type": "leave"}) == {"type": "left"}
    await alice.wait_until(lambda: ("bob", "video") not in sink.present)
    counted = sink.packets[("bob", "video")]

    stopped = await alice.request({"type": "sink_stop", "sink": "counter"})
    assert stopped == {"type": "sink_stopped", "sink": "counter", "result": {"label": "rec", "tracks": 4}}
    assert sink.stopped and sink.present == set()
    assert sink.packets[("bob", "video")] == counted
    await alice.wait_until(lambda: bool(alice.events_of("sink_stopped")))
    assert alice.events_of("sink_stopped")[0]["result"] == {"label": "rec", "tracks": 4}
    # Taps are gone from the tracks.
    room = meeting.host._rooms["room"]
    assert all(up.taps == () for up in room.tracks.values())
    assert (await alice.request({"type": "sink_stop", "sink": "counter"}))["code"] == "not_running"


async def test_an_emptied_room_stops_its_sinks(meeting: Meeting) -> None:
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    events: list[dict[str, Any]] = []
    stream = meeting.host.subscribe_events()
    assert (await alice.request({"type": "sink_start", "sink": "counter"}))["type"] == "ok"
    await alice.wait_until(lambda: len(CountingSink.made[-1].packets) == 2)
    await alice.request({"type": "leave"})
    await meeting.host.close()
    async for event in stream:
        events.append(event)
    assert CountingSink.made[-1].stopped
    assert [e["result"] for e in events if e["type"] == "sink_stopped"] == [{"label": "", "tracks": 2}]


async def test_sink_requests_are_checked(meeting: Meeting) -> None:
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    unknown = await alice.request({"type": "sink_start", "sink": "nope"})
    assert unknown["code"] == "unknown_sink" and "counter" in unknown["message"]
    bad = await alice.request({"type": "sink_start", "sink": "counter", "options": {"label": 3}})
    assert bad["code"] == "bad_message"
    assert (await alice.request({"type": "sink_start", "sink": "counter", "options": []}))["code"] == "bad_message"
    outsider = await meeting.host.request("room", {"type": "sink_start", "participant": "eve", "sink": "counter"})
    assert outsider["code"] == "unknown_participant"
    assert CountingSink.made == []
