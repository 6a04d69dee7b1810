from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from appliance.sfu import IceSettings, RoomHost

from .participants import ColourTrack, Meeting, Participant, ToneTrack


@pytest.fixture
async def meeting() -> AsyncIterator[Meeting]:
    meeting = Meeting(RoomHost(IceSettings(loopback=True), quality_interval=0.5))
    yield meeting
    await meeting.close()


async def join_publishing(meeting: Meeting, participant: str, loudness: float, rgb: tuple[int, int, int],
                          auto_answer: bool = True) -> Participant:
    client = meeting.participant(participant, auto_answer=auto_answer)
    assert (await client.join())["type"] == "joined"
    client.publish(ToneTrack(amplitude=loudness))
    client.publish(ColourTrack(rgb))
    reply = await client.offer()
    assert reply["type"] == "answer", reply
    return client


@pytest.fixture
async def alice_and_bob(meeting: Meeting) -> tuple[Participant, Participant]:
    """Two participants who publish a microphone (alice loud, bob quiet) and a camera."""
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    bob = await join_publishing(meeting, "bob", 0.03, (30, 30, 200))
    return alice, bob
