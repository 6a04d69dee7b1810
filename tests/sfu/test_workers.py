"""SFU worker processes: rooms placed over workers, media in each, a worker that dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from appliance.sfu import IceSettings
from appliance.sfu.workers import SfuWorkers, port_slices

from .participants import ColourTrack, Meeting, Participant, ToneTrack


@pytest.fixture
async def two_workers() -> AsyncIterator[Meeting]:
    workers = SfuWorkers(IceSettings(loopback=True, udp_port_min=23100, udp_port_max=23199), workers=2)
    await workers.start()
    meeting = Meeting(workers)  # type: ignore[arg-type]
    yield meeting
    await meeting.close()


async def in_room(meeting: Meeting, room: str, participant: str, rgb: tuple[int, int, int]) -> Participant:
    client = meeting.participant(participant, room=room)
    assert (await client.join())["type"] == "joined"
    client.publish(ToneTrack(amplitude=0.3))
    client.publish(ColourTrack(rgb))
    assert (await client.offer())["type"] == "answer"
    return client


def test_the_port_range_is_split_between_workers() -> None:
    assert port_slices(20000, 20999, 2) == [(20000, 20499), (20500, 20999)]
    assert port_slices(20000, 20010, 3) == [(20000, 20002), (20003, 20005), (20006, 20010)]
    assert port_slices(0, 0, 2) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError, match="too small for 4 SFU workers"):
        port_slices(20000, 20005, 4)


async def test_rooms_spread_over_workers_and_a_dead_worker_takes_only_its_rooms(two_workers: Meeting) -> None:
    meeting = two_workers
    pool: SfuWorkers = meeting.host  # type: ignore[assignment]
    alice = await in_room(meeting, "red-room", "alice", (200, 30, 30))
    bob = await in_room(meeting, "red-room", "bob", (30, 30, 200))
    carol = await in_room(meeting, "green-room", "carol", (30, 200, 30))
    dave = await in_room(meeting, "green-room", "dave", (200, 200, 30))
    for me, other in ((alice, "bob"), (bob, "alice"), (carol, "dave"), (dave, "carol")):
        await me.wait_for_media(other, video_frames=5, audio_frames=10, timeout=20)

    # One room on each worker, each on its own ports.
    red, green = pool._placement["red-room"], pool._placement["green-room"]
    assert red is not green
    assert {w.ice.udp_port_min for w in pool.workers} == {23100, 23150}
    await asyncio.sleep(1.5)  # a stats report from each worker
    stats = pool.stats.snapshot()
    assert stats["rooms"] == 2 and stats["active_peers"] == 4
    assert stats["forwarded_packets"]["video"] > 0 and stats["forwarded_packets"]["audio"] > 0
    usage = pool.worker_usage()
    assert set(usage) == {0, 1} and all(seconds > 0 and packets > 0 for seconds, packets in usage.values())
    assert sum(packets for _, packets in usage.values()) == sum(stats["forwarded_packets"].values())
    reports = pool.room_reports()
    assert set(reports) == {"red-room", "green-room"}
    assert all(r["participants"] == 2 and r["forwarded_bytes"] > 0 for r in reports.values())

    os.kill(red.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await alice.wait_until(lambda: bool(alice.events_of("media_lost")), timeout=10)
    lost = alice.events_of("media_lost")[0]
    assert lost["room"] == "red-room" and lost["participants"] == ["alice", "bob"]
    # The green room goes on as if nothing happened.
    before = {c.id: c.tracks_from(other, "video")[0].frames for c, other in ((carol, "dave"), (dave, "carol"))}
    await asyncio.sleep(2)
    assert carol.tracks_from("dave", "video")[0].frames >= before["carol"] + 10
    assert dave.tracks_from("carol", "video")[0].frames >= before["dave"] + 10
    assert not carol.events_of("media_lost") and not dave.events_of("media_lost")

    # The red room's people join afresh (as signaling has them do) and have media again.
    for client in (alice, bob):
        await client.close()
    alice = await in_room(meeting, "red-room", "alice", (200, 30, 30))
    bob = await in_room(meeting, "red-room", "bob", (30, 30, 200))
    await alice.wait_for_media("bob", video_frames=5, audio_frames=10, timeout=10)
    await bob.wait_for_media("alice", video_frames=5, audio_frames=10, timeout=10)
    took = time.monotonic() - killed_at
    assert took < 10, f"media back {took:.1f} s after the kill"
    assert pool.restarts == 1 and len(pool.workers) == 2 and all(w.alive for w in pool.workers)
    await asyncio.sleep(1.5)
    assert set(pool.room_reports()) == {"red-room", "green-room"}
    # Counters of the dead worker stay in the totals (they are Prometheus counters).
    assert pool.stats.snapshot()["forwarded_packets"]["video"] >= stats["forwarded_packets"]["video"]


async def test_requests_for_unknown_rooms_get_room_host_errors(two_workers: Meeting) -> None:
    pool = two_workers.host
    reply = await pool.request("nowhere", {"type": "offer", "participant": "x", "sdp": "v=0"})
    assert reply["type"] == "error" and reply["code"] == "unknown_participant"
    reply = await pool.request("room", {"type": "join"})
    assert reply["type"] == "error" and reply["code"] == "bad_message"
    assert pool.rooms == []
