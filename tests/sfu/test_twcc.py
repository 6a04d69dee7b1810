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


def test_the_send_history_reads_the_queue_the_packets_of_a_message_met() -> None:
    """One-way delay = the browser's arrival clock less the SFU's send clock (offset unknown):
    above its lowest of the last ten seconds, the smallest of a message is the queue they met."""
    history = twcc.SendHistory()
    offset_us = 5_000_000_000  # the browser's clock, far from ours
    sent = [(history.take(10.0 + i / 100), 10.0 + i / 100) for i in range(40)]
    assert [number for number, _ in sent] == list(range(40))

    def message(numbers: range, extra_s: float) -> Feedback:
        arrivals = tuple(round(offset_us + (sent[n][1] + 0.02 + extra_s) * 1e6) for n in numbers)
        return Feedback(1, 2, numbers.start, 0, 0, arrivals)

    assert history.queue_s is None
    assert history.feedback(message(range(0, 10), 0.0), 10.2) == 0.0  # 20 ms of path, no queue
    assert abs(history.feedback(message(range(10, 20), 0.045), 10.3) - 0.045) < 1e-6
    # One packet late (jitter) does not make a queue: the message's smallest delay does.
    jittery = message(range(20, 30), 0.0)
    jittery = Feedback(1, 2, 20, 0, 0, (*jittery.arrivals[:5], jittery.arrivals[5] + 80_000, *jittery.arrivals[6:]))
    assert history.feedback(jittery, 10.4) == 0.0
    # Lost packets are skipped; numbers this history no longer holds say nothing.
    assert history.feedback(Feedback(1, 2, 30, 0, 0, (None, None)), 10.5) is None
    assert history.feedback(Feedback(1, 2, 1000, 0, 0, (offset_us,)), 10.5) is None
    assert history.queue_s == 0.0 and history.feedback_at == 10.4


def test_the_send_history_numbers_across_the_wrap() -> None:
    history = twcc.SendHistory()
    history.next_sequence = 65534
    assert [history.take(1.0) for _ in range(4)] == [65534, 65535, 0, 1]
    message = Feedback(1, 2, 65535, 0, 0, (1_010_000, 1_010_000))
    assert history.feedback(message, 1.1) == 0.0


async def test_transport_feedback_in_a_compound_rtcp_packet_is_read_before_aiortc_parses_it() -> None:
    """A real aiortc DTLS transport: the hook finds the transport-cc message between a receiver
    report and a NACK, and aiortc still gets the whole packet."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket, RtcpRtpfbPacket

    from appliance.sfu import aiortc_private

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    handled: list[bytes] = []
    original = transport._handle_rtcp_data

    async def aiortc_handles(data: bytes) -> None:
        handled.append(data)
        await original(data)

    transport._handle_rtcp_data = aiortc_handles
    seen: list[Feedback] = []
    aiortc_private.on_transport_feedback(transport, seen.append)
    aiortc_private.on_transport_feedback(transport, lambda _: None)  # a second call changes nothing
    feedback = Feedback(0x1234, 0x5678, 7, REF, 3, (REF + 1000, None, REF + 5000))
    report = RtcpRrPacket(ssrc=0x1234, reports=[RtcpReceiverInfo(ssrc=0x5678, fraction_lost=0, packets_lost=0,
                                                                 highest_sequence=1, jitter=0, lsr=0, dlsr=0)])
    nack = RtcpRtpfbPacket(fmt=1, ssrc=0x1234, media_ssrc=0x5678, lost=[3])
    compound = bytes(report) + bytes(feedback) + bytes(nack)
    await transport._handle_rtcp_data(compound)
    assert seen == [feedback] and handled == [compound]
    await transport._handle_rtcp_data(bytes(report) + bytes([0x8F, 205, 0, 2]) + bytes(8))  # malformed: skipped
    assert seen == [feedback] and len(handled) == 2
