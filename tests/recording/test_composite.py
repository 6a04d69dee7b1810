"""The composite export of a real recording (two aiortc participants through a RoomHost): the
picture shows both cameras where the layout puts them, the audio is both microphones mixed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.recording.composite import Job, SpeakerTracker, compose, grid_rects, speaker_rects
from appliance.recording.sink import RecordingSink
from appliance.sfu import IceSettings, RoomHost

from sfu.conftest import join_publishing
from sfu.participants import Meeting

from .media import audio_samples, close_to, decode_all, ffprobe, mean_colour, rms_dbfs, video_frames

RED, BLUE = (200, 30, 30), (30, 30, 200)


async def record(directory: Path) -> dict[str, Any]:
    """Alice (red, loud) for 4 s; Bob (blue, quiet) joins after one second."""
    def factory(room: str, options: dict[str, Any], emit) -> RecordingSink:
        return RecordingSink("rec", directory, emit)

    meeting = Meeting(RoomHost(IceSettings(loopback=True), sinks={"recording": factory}))
    try:
        alice = await join_publishing(meeting, "alice", 0.5, RED)
        assert (await alice.request({"type": "sink_start", "sink": "recording"}))["type"] == "ok"
        await asyncio.sleep(1.0)
        await join_publishing(meeting, "bob", 0.02, BLUE)
        await asyncio.sleep(3.0)
        return (await alice.request({"type": "sink_stop", "sink": "recording"}))["result"]
    finally:
        await meeting.close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("rec")
    result = asyncio.run(record(directory))
    for track in result["tracks"]:
        track["path"] = str(directory / track["file"])
    return result


def export(recording: dict[str, Any], tmp_path: Path, **options: Any) -> Path:
    out = tmp_path / f"out.{options.get('format', 'mp4')}"
    compose(Job(tracks=recording["tracks"], duration_s=recording["duration_s"], output=str(out), **options))
    return out


def test_a_grid_export_shows_everyone_and_mixes_every_microphone(recording: dict[str, Any], tmp_path: Path) -> None:
    progress: list[float] = []
    out = tmp_path / "grid.mp4"
    compose(Job(tracks=recording["tracks"], duration_s=recording["duration_s"], output=str(out),
                width=640, height=360), progress.append)
    assert progress[-1] == 1.0 and progress == sorted(progress)
    probe = ffprobe(out)
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    assert float(probe["format"]["duration"]) == pytest.approx(recording["duration_s"], rel=0.05)
    decode_all(out)
    frames = video_frames(out)
    assert frames[0][1].shape == (360, 640, 3)
    # Bob joined a second in: at first only Alice's tile has a picture; later both.
    left, right = (0.1, 0.35, 0.4, 0.65), (0.6, 0.35, 0.9, 0.65)  # the tiles' middles, skipping the white bar
    late = [image for t, image in frames if t > recording["duration_s"] - 1.0]
    assert any(close_to(mean_colour(image, left), RED) for image in late)
    assert any(close_to(mean_colour(image, right), BLUE) for image in late)
    early = [image for t, image in frames if 0.5 < t < 0.8]
    assert not any(close_to(mean_colour(image, right), BLUE) for image in early)
    samples, _ = audio_samples(out)
    assert rms_dbfs(samples) > -30


def test_a_speaker_export_puts_the_loud_one_large_in_webm(recording: dict[str, Any], tmp_path: Path) -> None:
    out = export(recording, tmp_path, format="webm", layout="speaker", width=640, height=360)
    probe = ffprobe(out)
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["opus", "vp8"]
    decode_all(out)
    image = video_frames(out)[-10][1]
    assert close_to(mean_colour(image, (0.2, 0.2, 0.8, 0.5)), RED)  # Alice, the loud one, fills the top
    assert close_to(mean_colour(image, (0.45, 0.85, 0.55, 0.95)), BLUE, 50)  # Bob below


def test_layouts_fit_the_picture() -> None:
    for count in range(1, 10):
        for rects in (grid_rects(count, 1280, 720), speaker_rects(count, 1280, 720)):
            assert len(rects) == count
            for x, y, w, h in rects:
                assert x >= 0 and y >= 0 and x + w <= 1280 and y + h <= 720
                assert x % 2 == y % 2 == w % 2 == h % 2 == 0


def test_the_export_runs_as_its_own_process(recording: dict[str, Any], tmp_path: Path) -> None:
    job = {"tracks": recording["tracks"], "duration_s": 1.0, "format": "mp4", "layout": "grid",
           "width": 320, "height": 240, "output": str(tmp_path / "p.mp4")}
    done = subprocess.run([sys.executable, "-m", "appliance.recording.composite"], input=json.dumps(job),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "progress 1.000"
    bad = subprocess.run([sys.executable, "-m", "appliance.recording.composite"],
                         input=json.dumps({**job, "width": 321}), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "multiples of 8" in bad.stderr


def test_the_active_speaker_changes_when_someone_else_talks_clearly_louder() -> None:
    tracker = SpeakerTracker()
    frame = 1 / 25
    t = 0.0
    for _ in range(25):  # a second of Alice talking, Bob quiet
        assert tracker.update(t, {"alice": 0.2, "bob": 0.001}) in (None, "alice")
        t += frame
    assert tracker.speaker == "alice"
    for _ in range(25):  # Bob talks over her, but not 6 dB louder: Alice stays
        tracker.update(t, {"alice": 0.2, "bob": 0.3})
        t += frame
    assert tracker.speaker == "alice"
    for _ in range(50):  # Bob talks, Alice stops
        tracker.update(t, {"alice": 0.0, "bob": 0.2})
        t += frame
    assert tracker.speaker == "bob"
    for _ in range(50):  # silence keeps the last speaker
        tracker.update(t, {"alice": 0.0, "bob": 0.0})
        t += frame
    assert tracker.speaker == "bob"
