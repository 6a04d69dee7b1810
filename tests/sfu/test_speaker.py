from __future__ import annotations

import pytest

from appliance.sfu.speaker import ActiveSpeakerDetector, SpeakerChange, SpeakerSettings

SETTINGS = SpeakerSettings(window=1.0, threshold_dbov=-50, margin_db=6, min_hold=1.0)


def feed(detector: ActiveSpeakerDetector, participant: str, level: int, start: float, end: float) -> None:
    t = start
    while t < end:
        detector.add_level(participant, level, t)
        t += 0.02


def test_the_loudest_speaker_gets_the_floor() -> None:
    detector = ActiveSpeakerDetector(SETTINGS)
    feed(detector, "a", 20, 0.0, 1.0)
    feed(detector, "b", 40, 0.0, 1.0)
    assert detector.update(1.0) == SpeakerChange("a", -20.0)
    assert detector.update(1.1) is None
    assert detector.current == "a"


def test_silence_gives_nobody_the_floor() -> None:
    detector = ActiveSpeakerDetector(SETTINGS)
    feed(detector, "a", 127, 0.0, 1.0)
    feed(detector, "b", 90, 0.0, 1.0)
    assert detector.update(1.0) is None
    assert detector.current is None


def test_hysteresis_keeps_the_speaker_against_a_slightly_louder_one() -> None:
    detector = ActiveSpeakerDetector(SETTINGS)
    feed(detector, "a", 30, 0.0, 1.0)
    assert detector.update(1.0) == SpeakerChange("a", -30.0)
    feed(detector, "a", 30, 1.0, 3.0)
    feed(detector, "b", 27, 1.0, 3.0)  # 3 dB louder: within the margin
    assert detector.update(3.0) is None
    feed(detector, "b", 15, 3.0, 4.0)  # 15 dB louder, and "a" held the floor long enough
    feed(detector, "a", 30, 3.0, 4.0)
    assert detector.update(4.0) == SpeakerChange("b", -15.0)


def test_min_hold_delays_a_takeover_but_silence_does_not() -> None:
    detector = ActiveSpeakerDetector(SETTINGS)
    feed(detector, "a", 30, 0.0, 1.0)
    assert detector.update(1.0) is not None
    feed(detector, "a", 30, 1.0, 1.5)
    feed(detector, "b", 10, 1.0, 1.5)
    assert detector.update(1.5) is None  # "a" speaks and took the floor 0.5 s ago
    feed(detector, "b", 10, 1.5, 2.6)  # "a" went quiet: no packets for over a window
    assert detector.update(2.6) == SpeakerChange("b", -10.0)


def test_a_speaker_who_leaves_loses_the_floor() -> None:
    detector = ActiveSpeakerDetector(SETTINGS)
    feed(detector, "a", 20, 0.0, 1.0)
    feed(detector, "b", 35, 0.0, 1.0)
    assert detector.update(1.0) == SpeakerChange("a", -20.0)
    detector.forget("a")
    assert detector.current is None
    assert detector.update(1.0) == SpeakerChange("b", -35.0)


def test_a_speaker_who_pauses_under_dtx_loses_the_floor_as_without_it() -> None:
    """With Opus DTX a silent browser sends one packet per 400 ms instead of fifty: the silence
    must weigh its time, not its packet count, or the last words hold the floor for the window."""
    detector = ActiveSpeakerDetector(SETTINGS)
    feed(detector, "a", 20, 0.0, 0.6)
    feed(detector, "b", 127, 0.0, 0.6)
    assert detector.update(0.6) == SpeakerChange("a", -20.0)
    feed(detector, "a", 20, 0.6, 1.0)
    feed(detector, "b", 127, 0.6, 1.0)
    for t in (1.4, 1.8):  # "a" stops talking: DTX packets of silence
        detector.add_level("a", 127, t)
    feed(detector, "b", 15, 1.0, 1.8)
    # Over the last second "a" made sound for 0.2 s: -27.4 dBov weighted by time, where a mean
    # per packet (9 loud, 2 silent) says -20.9, within the 6 dB margin of "b" (-15.9).
    assert detector.level("a", 1.8) == pytest.approx(-27.4, abs=0.1)
    assert detector.update(1.8) == SpeakerChange("b", -15.9)
