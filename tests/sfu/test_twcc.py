"""Transport-wide congestion control feedback: the messages the SFU writes for publishers."""

from __future__ import annotations

import random
import struct

import pytest

from appliance.sfu import twcc
from appliance.sfu.twcc import Feedback, FeedbackRecorder

REF = 640_000  # 10 × 64 ms


def test_a_message_is_written_bit_for_bit_as_the_draft_lays_it_out() -> None:
    # 65535 at +1 ms, 0 lost, 1 at +301 ms (a large delta), 2 at +300.5 ms (negative: large).
    message = Feedback(0x11223344, 0x55667788, 65535, REF, 7, (REF + 1000, None, REF + 301_000, REF + 300_500))
    data = bytes(message)
    assert data[:4] == bytes([0x80 | 0x20 | 15, 205]) + struct.pack("!H", len(data) // 4 - 1)  # P bit: padded
    assert struct.unpack_from("!LLHHL", data, 4) == (0x11223344, 0x55667788, 65535, 4, (10 << 8) | 7)
    # One vector chunk of 2-bit symbols: small, not received, large, large.
    assert struct.unpack_from("!H", data, 20)[0] == 0xC000 | (1 << 12) | (0 << 10) | (2 << 8) | (2 << 6)
    # Deltas: 4 ticks; 1200 ticks (two bytes); -2 ticks (two bytes); then padding, its length last.
    assert data[22:27] == bytes([4]) + struct.pack("!h", 1200) + struct.pack("!h", -2)
    assert data[27] == 1 and len(data) == 28


def test_long_runs_are_one_chunk_and_everything_reads_back() -> None:
    arrivals = (REF, *([None] * 500), *(REF + 5000 + 1000 * i for i in range(20)))
    data = bytes(Feedback(1, 2, 100, REF, 0, arrivals))
    # Three chunks (a vector for the first seven symbols, a run of the rest of the lost ones, a
    # run of received ones) and 21 one-byte deltas, padded: not 74 vectors.
    assert struct.unpack_from("!HHH", data, 20) == (0xC000 | 1 << 12, 494, 1 << 13 | 20)
    assert len(data) == 20 + 3 * 2 + 21 + 1
    parsed = twcc.parse(data)
    assert parsed.arrivals == arrivals and parsed.base_sequence == 100


@pytest.mark.parametrize("seed", range(20))
def test_random_feedback_reads_back_within_a_tick(seed: int) -> None:
    rng = random.Random(seed)
    at, arrivals = REF + rng.randrange(64_000), []
    for _ in range(rng.randrange(1, 300)):
        if arrivals and rng.random() < 0.2:
            arrivals.append(None)
            continue
        at += rng.choice([rng.randrange(0, 70_000), rng.randrange(0, 2_000), -rng.randrange(0, 5_000)])
        arrivals.append(at)
    while arrivals[0] is None:
        arrivals.pop(0)
    parsed = twcc.parse(bytes(Feedback(3, 4, rng.randrange(65536), REF, seed, tuple(arrivals))))
    assert [a is None for a in parsed.arrivals] == [a is None for a in arrivals]
    # Cumulative deltas: each arrival within one 250 µs tick, never drifting further.
    assert all(0 <= a - p < twcc.DELTA_US for a, p in zip(arrivals, parsed.arrivals) if a is not None)


def test_a_delta_beyond_eight_seconds_is_refused_not_wrapped() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        bytes(Feedback(1, 2, 0, REF, 0, (REF, REF + 9_000_000)))


@pytest.mark.parametrize("damage", ["truncated", "fmt", "deltas"])
def test_malformed_feedback_is_refused(damage: str) -> None:
    data = bytearray(bytes(Feedback(1, 2, 0, REF, 0, (REF, REF + 1000, REF + 2000))))
    if damage == "truncated":
        data = data[:-4]
    elif damage == "fmt":
        data[0] = 0x80 | 1  # a NACK
    else:
        struct.pack_into("!H", data, 14, 40)  # says 40 packets, carries 3 deltas
    with pytest.raises(ValueError):
        twcc.parse(bytes(data))


def test_the_recorder_reports_each_number_once_across_the_wrap_and_keeps_late_ones_lost() -> None:
    recorder = FeedbackRecorder()
    for sequence, at in ((65534, REF), (65535, REF + 1000), (1, REF + 3000)):  # 0 is missing
        recorder.add(sequence, at)
    first = recorder.report(9, 8, now_us=0)
    assert first is not None and first.base_sequence == 65534 and first.count == 0
    assert first.arrivals == (REF, REF + 1000, None, REF + 3000)
    recorder.add(0, REF + 3500)  # late: reported lost already
    assert recorder.report(9, 8, now_us=0) is None
    recorder.add(2, REF + 4000)
    second = recorder.report(9, 8, now_us=0)
    assert second is not None and second.base_sequence == 2 and second.arrivals == (REF + 4000,) and second.count == 1
    assert twcc.parse(bytes(second)).arrivals == (REF + 4000,)


def test_after_a_long_gap_the_report_covers_the_latest_numbers_only() -> None:
    recorder = FeedbackRecorder()
    recorder.add(0, REF)
    recorder.report(1, 2, now_us=0)
    for n in range(5000, 6000):
        recorder.add(n, REF + n)
    recorder.add(7000, REF + 9000)
    report = recorder.report(1, 2, now_us=0)
    assert report is not None and len(report.arrivals) <= twcc.MAX_STATUS_COUNT
    assert report.arrivals[0] is not None and report.arrivals[-1] == REF + 9000


def test_a_publisher_silent_for_seconds_gets_a_report_that_fits() -> None:
    """Packets left unreported before ten seconds of silence: the next report leaves them out
    rather than carry a delta its two bytes cannot hold (building it raised, in the receive path)."""
    recorder = FeedbackRecorder()
    recorder.add(0, REF)
    recorder.report(1, 2, now_us=0)
    recorder.add(1, REF + 10_000)  # under 50 ms after the report: still pending at the silence
    recorder.add(2, REF + 10_010_000)
    report = recorder.report(1, 2, now_us=0)
    assert report is not None and report.base_sequence == 2 and report.arrivals == (REF + 10_010_000,)
    assert twcc.parse(bytes(report)).arrivals[0] is not None
