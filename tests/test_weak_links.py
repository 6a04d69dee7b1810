"""benchmarks/weak_links.py's figures from getStats readings and /metrics (the benchmark itself
needs three browsers and a shaped link: it is run by hand, see docs/benchmarks.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from weak_links import Sample, b_seconds, estimate_cut, parse_metrics, presenter_figures, receiver_figures  # noqa: E402


def reading(second: int, frames: int, **video: float) -> dict:
    return {"timestamp": 1000.0 * second,
            "inbound": [{"framesDecoded": frames, "packetsReceived": 10 * second, **video},
                        {"framesDecoded": 0, "packetsReceived": 0}],  # an unused transceiver
            "transports": [{"packetsReceived": 20 * second, "bytesReceived": 1000 * second}]}


def test_a_subscriber_that_stops_receiving_is_frozen_until_the_end_even_before_chromium_counts_it() -> None:
    # 24 fps for 4 s at 640 px, then nothing for 6 s: Chromium's freeze counter only counts a
    # freeze once a frame ends it, so the stalled seconds are what say it.
    readings = [reading(s, 24 * min(s, 4), frameWidth=640, packetsLost=s, nackCount=2 * s, pliCount=0,
                        totalFreezesDuration=0.0, freezeCount=0) for s in range(11)]
    figures = receiver_figures(readings)
    assert figures["fps"] == pytest.approx(9.6)
    assert figures["frozen_share"] == pytest.approx(0.6)
    assert figures["width"] == 640
    assert figures["packets_lost"] == 10 and figures["nacks_sent"] == 20
    assert figures["video_rtp_pps"] == pytest.approx(11)  # received + lost
    assert figures["transport_pps"] == pytest.approx(20)
    assert figures["transport_kbps"] == pytest.approx(8)


def test_a_freeze_that_began_before_the_window_counts_only_from_the_windows_start() -> None:
    # Frozen since 30 s before the window; frames again after 5 s: Chromium then adds all 35 s.
    readings = [reading(s, 0 if s <= 5 else 24 * (s - 5), frameWidth=480,
                        totalFreezesDuration=0.0 if s <= 5 else 35.0, freezeCount=int(s > 5)) for s in range(11)]
    figures = receiver_figures(readings)
    assert figures["frozen_share"] == pytest.approx(0.6)  # 5 s stalled, the ending second counted whole
    assert figures["freezes"] == 1


def test_freezes_within_a_second_come_from_chromiums_counter_and_the_width_from_decoded_frames() -> None:
    readings = [reading(s, 20 * s, frameWidth=320 if s == 3 else 480, totalFreezesDuration=0.3 * (s > 5),
                        freezeCount=int(s > 5)) for s in range(11)]
    figures = receiver_figures(readings)
    assert figures["frozen_share"] == pytest.approx(0.03)
    assert figures["freezes"] == 1
    assert (figures["width"], figures["width_min"]) == (480, 320)
    stalled = [reading(s, 5, frameWidth=640) for s in range(5)]  # a picture from before the window
    assert receiver_figures(stalled)["width"] is None


def test_the_presenters_keyframes_and_estimate_in_the_window() -> None:
    readings = [{"timestamp": 1000.0 * s,
                 "outbound": [{"framesEncoded": 24 * s, "keyFramesEncoded": 3 + s // 4, "frameWidth": 640,
                               "qualityLimitationReason": "bandwidth" if s < 2 else "none",
                               "bytesSent": 100_000 * s, "pliCount": s // 4, "nackCount": 0}],
                 "pairs": [{"availableOutgoingBitrate": 1_000_000 + 100_000 * s}]} for s in range(9)]
    figures = presenter_figures(readings)
    assert figures["keyframes"] == 2 and figures["plis_received"] == 2
    assert figures["fps_sent"] == pytest.approx(24)
    assert figures["outgoing_kbps"] == pytest.approx(800)
    assert (figures["estimate_kbps"], figures["estimate_min_kbps"]) == (1400, 1000)
    assert figures["estimate_cut"] == 0  # it only climbed
    assert figures["quality_limitation"] == "none"
    assert figures["quality_limited_share"] == pytest.approx(2 / 9)


def test_an_estimates_deepest_cut_is_measured_from_the_highest_before_it() -> None:
    assert estimate_cut([1000, 2000, 1500, 3000, 2400, 2700]) == pytest.approx(0.25)
    assert estimate_cut([1000, 900]) == pytest.approx(0.1) and estimate_cut([]) is None


def test_a_simulcast_presenters_layers_are_summed_and_its_keyframes_shown_per_layer() -> None:
    def layer(rid: str, s: int, width: int, keyframes: int) -> dict:
        return {"rid": rid, "ssrc": hash(rid), "framesEncoded": 24 * s, "keyFramesEncoded": keyframes,
                "frameWidth": width, "bytesSent": width * 100 * s, "pliCount": s // 4, "nackCount": 0}

    readings = [{"timestamp": 1000.0 * s, "pairs": [],
                 "outbound": [layer("q", s, 240, 1 + s // 4), layer("h", s, 480, 1 + s // 4),
                              layer("f", s, 960, 1 + s // 8)]} for s in range(9)]
    figures = presenter_figures(readings)
    assert figures["layers"] == 3 and figures["keyframes_by_layer"] == {"f": 1, "h": 2, "q": 2}
    assert figures["width"] == 960 and figures["fps_sent"] == pytest.approx(24)  # the top layer's
    assert figures["keyframes"] == 2  # a keyframe request makes one on every layer: not the sum
    assert figures["outgoing_kbps"] == pytest.approx(8 * (240 + 480 + 960) * 100 / 1000)
    assert figures["plis_received"] == 3 * 2


def test_the_sfus_counters_are_read_by_name_and_label_with_the_workers_summed() -> None:
    text = """# TYPE confmeet_sfu_forwarded_packets counter
confmeet_sfu_forwarded_packets_total{kind="audio"} 10.0
confmeet_sfu_forwarded_packets_total{kind="video"} 250.0
# TYPE confmeet_sfu_keyframe_requests counter
confmeet_sfu_keyframe_requests_total 3.0
# TYPE confmeet_sfu_worker_cpu_seconds counter
confmeet_sfu_worker_cpu_seconds_total{worker="0"} 1.5
confmeet_sfu_worker_cpu_seconds_total{worker="1"} 0.5
# TYPE http_requests counter
http_requests_total 7.0
"""
    assert parse_metrics(text) == {'confmeet_sfu_forwarded_packets_total{kind="audio"}': 10.0,
                                   'confmeet_sfu_forwarded_packets_total{kind="video"}': 250.0,
                                   "confmeet_sfu_keyframe_requests_total": 3.0,
                                   "confmeet_sfu_worker_cpu_seconds_total": 2.0}


def test_each_second_of_b_places_its_freezes_beside_the_retransmissions_and_feedback_the_link_dropped() -> None:
    """B's timeline: width/frames, "!" per PLI, "fN" for a freeze of N ms ended in the second, "r"
    per packet of B's RTX SSRC the downlink dropped, "n" per RTCP packet of B's the uplink dropped.
    A drop on the video's own SSRC, or outside the window, is not marked."""
    link = {"down": {"rtp_dropped_at": {"111": [100.5, 101.5], "222": [101.2, 101.4, 99.0]}},
            "up": {"rtcp_dropped_at": [100.2, 102.9]}}
    samples = [Sample(100.0 + s, {"b": reading(s, 24 * s, frameWidth=480, pliCount=int(s == 3), ssrc=111,
                                               rtxSsrc=222, totalFreezesDuration=0.21 * (s >= 2))},
                      {}, link) for s in range(4)]
    assert b_seconds(samples) == ["480/24n", "480/24f210rr", "480/24!n"]
