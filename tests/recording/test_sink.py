"""The recording sink inside a real RoomHost: aiortc participants publish over loopback, and each
track lands in its own file, as received, on one clock shared by all tracks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.recording.sink import RecordingSink, read_manifest
from appliance.sfu import IceSettings, RoomHost

from sfu.conftest import join_publishing
from sfu.participants import AUDIO_RATE, VIDEO_FPS, ColourTrack, Meeting, ToneTrack

from .media import audio_samples, decode_all, ffprobe, rms_dbfs, video_frames


@pytest.fixture
async def recorded(tmp_path: Path) -> AsyncIterator[tuple[Meeting, dict[str, Any]]]:
    made: dict[str, Any] = {}

    def factory(room: str, options: dict[str, Any], emit) -> RecordingSink:
        made["sink"] = RecordingSink("rec1", tmp_path / "rec1", emit, **options)
        return made["sink"]

    meeting = Meeting(RoomHost(IceSettings(loopback=True), sinks={"recording": factory}))
    yield meeting, made
    await meeting.close()


async def test_each_track_is_written_as_received_on_the_recordings_clock(
        recorded: tuple[Meeting, dict[str, Any]], tmp_path: Path) -> None:
    meeting, made = recorded
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    await alice.wait_until(lambda: meeting.host._rooms["room"].tracks and all(
        up.packets > 10 for up in meeting.host._rooms["room"].tracks.values()))
    assert await alice.request({"type": "sink_start", "sink": "recording"}) == {"type": "ok"}
    started = time.monotonic()

    await asyncio.sleep(1.0)
    bob_joined = time.monotonic() - started
    bob = await join_publishing(meeting, "bob", 0.2, (30, 30, 200))  # a late joiner
    await asyncio.sleep(2.0)
    assert await bob.request({"type": "leave"}) == {"type": "left"}  # stops mid-recording
    bob_left = time.monotonic() - started
    await asyncio.sleep(1.0)
    stopped = await alice.request({"type": "sink_stop", "sink": "recording"})
    length = time.monotonic() - started

    result = stopped["result"]
    assert "error" not in result
    assert abs(result["duration_s"] - length) < 0.3
    tracks = {(t["participant"], t["kind"]): t for t in result["tracks"]}
    assert set(tracks) == {(p, k) for p in ("alice", "bob") for k in ("audio", "video")}
    assert read_manifest(tmp_path / "rec1") == {**result, "state": "stopped"}

    for (who, kind), track in tracks.items():
        path = tmp_path / "rec1" / track["file"]
        assert path.suffix == ".webm" and track["size"] == path.stat().st_size > 0
        probe = ffprobe(path)
        assert [s["codec_name"] for s in probe["streams"]] == ["opus" if kind == "audio" else "vp8"]
        decode_all(path)
        # Alice's tracks span the recording; Bob's the time he was there, on the same clock.
        begin, end = (0.0, length) if who == "alice" else (bob_joined, bob_left)
        assert begin - 0.1 < track["start_s"] < begin + 0.6, (who, kind, track)
        assert end - 0.6 < track["end_s"] < end + 0.2, (who, kind, track)
        assert float(probe["streams"][0]["start_time"]) == pytest.approx(track["start_s"], abs=0.03)
        if kind == "audio":
            samples, first = audio_samples(path)
            assert rms_dbfs(samples) > -30, f"{who}'s audio is silent"
            assert len(samples) / 48000 == pytest.approx(track["end_s"] - track["start_s"], abs=0.25)
        else:
            assert (track["width"], track["height"]) == (640, 480)
            frames = video_frames(path)
            assert len(frames) == track["frames"] and frames[0][0] == pytest.approx(track["start_s"], abs=0.01)
            colour = frames[len(frames) // 2][1][400:470, 20:620].reshape(-1, 3).mean(axis=0)
            expected = (200, 30, 30) if who == "alice" else (30, 30, 200)
            assert all(abs(c - e) < 40 for c, e in zip(colour, expected)), (who, colour)


async def test_a_recording_under_way_is_listed_and_forced_to_disk_on_its_cadence(
        recorded: tuple[Meeting, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[float, str]] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append((time.monotonic(), os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    meeting, made = recorded
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    assert await alice.request({"type": "sink_start", "sink": "recording",
                                "options": {"sync_interval": 1.0}}) == {"type": "ok"}
    await asyncio.sleep(3.5)

    running = read_manifest(tmp_path / "rec1")  # what start-up recovery finds if the process dies now
    assert running is not None and running["state"] == "recording"
    assert sorted((t["participant"], t["kind"], t["codec"]) for t in running["tracks"]) == [
        ("alice", "audio", "opus"), ("alice", "video", "VP8")]
    for track in running["tracks"]:
        times = [when for when, path in synced if path == str(tmp_path / "rec1" / track["file"])]
        assert len(times) >= 2, (track["file"], synced)
        assert all(0.9 < later - earlier < 1.6 for earlier, later in zip(times, times[1:])), times
    assert sum(path == str(tmp_path / "rec1") for _, path in synced) >= 2  # the directory's entries too
    result = (await alice.request({"type": "sink_stop", "sink": "recording"}))["result"]
    assert read_manifest(tmp_path / "rec1") == {**result, "state": "stopped"}


async def test_an_h264_track_is_stored_in_matroska(recorded: tuple[Meeting, dict[str, Any]], tmp_path: Path) -> None:
    meeting, made = recorded
    carol = meeting.participant("carol")
    await carol.join()
    carol.publish(ColourTrack((30, 160, 30)), codec="video/H264")
    assert (await carol.offer())["type"] == "answer"
    assert await carol.request({"type": "sink_start", "sink": "recording"}) == {"type": "ok"}
    await asyncio.sleep(2.0)
    result = (await carol.request({"type": "sink_stop", "sink": "recording"}))["result"]
    [track] = result["tracks"]
    assert track["codec"] == "H264" and track["file"].endswith(".mkv")
    assert (track["width"], track["height"]) == (640, 480)
    path = tmp_path / "rec1" / track["file"]
    assert ffprobe(path)["streams"][0]["codec_name"] == "h264"
    decode_all(path)
    frames = video_frames(path)
    assert len(frames) == track["frames"] > 10


async def test_a_disk_under_the_minimum_stops_the_recording_and_says_why(
        recorded: tuple[Meeting, dict[str, Any]], tmp_path: Path) -> None:
    meeting, made = recorded
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    huge = 1 << 60
    assert await alice.request({"type": "sink_start", "sink": "recording",
                                "options": {"min_free_bytes": huge}}) == {"type": "ok"}
    await alice.wait_until(lambda: bool(alice.events_of("sink_failed")))
    failed = alice.events_of("sink_failed")[0]
    assert failed["sink"] == "recording" and "MB are free on the disk" in failed["reason"]
    result = (await alice.request({"type": "sink_stop", "sink": "recording"}))["result"]
    assert result["error"] == failed["reason"]
    assert all(up.taps == () for up in meeting.host._rooms["room"].tracks.values())


class FlashingColour(ColourTrack):
    """A camera that turns white at ``flash_at`` (time.monotonic)."""

    def __init__(self, rgb: tuple[int, int, int], flash_at: float) -> None:
        super().__init__(rgb)
        self.flash_at = flash_at

    async def recv(self):  # type: ignore[override]
        began = self._began if self._began is not None else time.monotonic()
        if began + self._count / VIDEO_FPS >= self.flash_at:  # this frame's capture time
            self.rgb = (255, 255, 255)
        return await super().recv()


class FlashingTone(ToneTrack):
    """A microphone that is silent until ``flash_at``, then plays a loud tone."""

    def __init__(self, flash_at: float) -> None:
        super().__init__(amplitude=0.0)
        self.flash_at = flash_at

    async def recv(self):  # type: ignore[override]
        began = self._began if self._began is not None else time.monotonic()
        if began + self._pts / AUDIO_RATE >= self.flash_at:  # this frame's capture time
            self.amplitude = 0.5
        return await super().recv()


async def test_everyones_tracks_line_up_on_one_clock(recorded: tuple[Meeting, dict[str, Any]], tmp_path: Path) -> None:
    """Two people's cameras turn white and their microphones start a tone at the same instant:
    in the four files, the four changes are at the same time on the recording's clock."""
    meeting, made = recorded
    flash_at = time.monotonic() + 4.0
    clients = []
    for who, rgb in (("alice", (200, 30, 30)), ("bob", (30, 30, 200))):
        client = meeting.participant(who)
        await client.join()
        client.publish(FlashingTone(flash_at))
        client.publish(FlashingColour(rgb, flash_at))
        assert (await client.offer())["type"] == "answer"
        clients.append(client)
        if who == "alice":
            assert await client.request({"type": "sink_start", "sink": "recording"}) == {"type": "ok"}
            started = time.monotonic()
            await asyncio.sleep(1.0)  # bob publishes a second after the recording started
    await asyncio.sleep(max(0.0, flash_at + 1.0 - time.monotonic()))
    result = (await clients[0].request({"type": "sink_stop", "sink": "recording"}))["result"]
    expected = flash_at - started

    changes = {}
    for track in result["tracks"]:
        path = tmp_path / "rec1" / track["file"]
        if track["kind"] == "video":
            changes[(track["participant"], "video")] = next(
                t for t, image in video_frames(path) if image[240:300, 300:340].mean() > 240)
        else:
            samples, first = audio_samples(path)
            loud = next(i for i in range(0, len(samples), 480) if abs(samples[i:i + 480]).max() > 0.2)
            changes[(track["participant"], "audio")] = first + loud / 48000
    assert len(changes) == 4
    # Lip sync within a frame and a half, between people too; all near when it happened.
    assert max(changes.values()) - min(changes.values()) < 0.1, changes
    assert all(abs(t - expected) < 0.15 for t in changes.values()), (expected, changes)
