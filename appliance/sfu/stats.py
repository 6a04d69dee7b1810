"""Counters of the SFU for the appliance's metrics endpoint (plain numbers, no Prometheus here:
a worker process reports a snapshot every second and the parent adds the snapshots up)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from . import _fastpath

# Seconds: a keyframe is a round trip plus the publisher's encoder away; media a whole negotiation.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
FEEDBACK = ("nack", "pli", "fir", "transport-cc")
# What became of a subscriber's PLI/FIR: passed on to the publisher, or held to the subscriber's budget.
KEYFRAME_REQUEST_OUTCOMES = ("honoured", "throttled")
# Packets subscribers NACKed that the SFU still had: sent again, or refused (over the down track's budget).
RETRANSMISSION_OUTCOMES = ("sent", "refused")
FAILURE_CAUSES = ("ice", "dtls")


def _by_kind() -> dict[str, int]:
    return {"audio": 0, "video": 0}


@dataclass
class Durations:
    """A histogram as plain numbers: observations per bucket (the last one is +Inf) and their sum."""

    buckets: tuple[float, ...] = WAIT_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    def add(self, snapshot: dict[str, Any]) -> None:
        self.counts = [a + b for a, b in zip(self.counts, snapshot["counts"], strict=True)]
        self.sum += snapshot["sum"]

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) as Prometheus writes a histogram's buckets."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class SfuStats:
    forwarded: _fastpath.Counters = field(default_factory=_fastpath.Counters)  # counted where it is done
    received_packets: dict[str, int] = field(default_factory=_by_kind)  # from publishers
    received_bytes: dict[str, int] = field(default_factory=_by_kind)
    plis_sent: int = 0
    layer_switches: int = 0  # a down track moving from one simulcast layer to another
    probes: int = 0  # probes for a subscriber's downlink started (allocation.py)
    padding_bytes: int = 0  # sent as probe padding (RTX of packets already sent)
    duplicates_dropped: int = 0  # publishers' retransmissions of packets already received (their padding)
    # PLI/FIR received from subscribers, by outcome (before the publisher's own coalescing).
    keyframe_requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYFRAME_REQUEST_OUTCOMES, 0))
    retransmissions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RETRANSMISSION_OUTCOMES, 0))
    # RTCP feedback from subscribers, by type (nack, pli, fir); a NACK counts once per packet asked for.
    feedback_received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FEEDBACK, 0))
    # Connections that failed to set up or broke, by the layer that failed (ice, dtls).
    connection_failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_CAUSES, 0))
    keyframe_wait: Durations = field(default_factory=Durations)  # a video subscription's start -> its first frame
    first_media: Durations = field(default_factory=Durations)  # joining the SFU -> the first media forwarded to one
    active_peers: int = 0
    rooms: int = 0
    published_tracks: dict[str, int] = field(default_factory=_by_kind)
    subscribed_tracks: dict[str, int] = field(default_factory=_by_kind)

    @property
    def forwarded_packets(self) -> dict[str, int]:
        return {"audio": self.forwarded.audio_packets, "video": self.forwarded.video_packets}

    @property
    def forwarded_bytes(self) -> dict[str, int]:
        """Payload bytes."""
        return {"audio": self.forwarded.audio_bytes, "video": self.forwarded.video_bytes}

    def count_received(self, kind: str, payload_bytes: int) -> None:
        self.received_packets[kind] += 1
        self.received_bytes[kind] += payload_bytes

    @classmethod
    def total(cls, snapshots: list[dict[str, Any]], gauges: bool = True) -> SfuStats:
        """The sum of several snapshots (the SFU's worker processes); ``gauges=False`` keeps only
        the counters (a worker that died has no peers, rooms or tracks left)."""
        total = cls()
        for snap in snapshots:
            for kind in ("audio", "video"):
                total.forwarded.add(kind == "video", snap["forwarded_packets"].get(kind, 0),
                                    snap["forwarded_bytes"].get(kind, 0))
            total.forwarded.add(False, 0, 0, snap.get("send_errors", 0))
            for name in ("received_packets", "received_bytes",
                         "feedback_received", "connection_failures", "keyframe_requests",
                         "retransmissions",
                         *(("published_tracks", "subscribed_tracks") if gauges else ())):
                mine = getattr(total, name)
                for key, count in snap[name].items():
                    mine[key] = mine.get(key, 0) + count
            total.plis_sent += snap["plis_sent"]
            total.layer_switches += snap.get("layer_switches", 0)
            total.probes += snap.get("probes", 0)
            total.padding_bytes += snap.get("padding_bytes", 0)
            total.duplicates_dropped += snap.get("duplicates_dropped", 0)
            total.keyframe_wait.add(snap["keyframe_wait"])
            total.first_media.add(snap["first_media"])
            if gauges:
                total.active_peers += snap["active_peers"]
                total.rooms += snap["rooms"]
        return total

    def snapshot(self) -> dict[str, Any]:
        return {
            "forwarded_packets": dict(self.forwarded_packets),
            "forwarded_bytes": dict(self.forwarded_bytes),
            "send_errors": self.forwarded.send_errors,
            "received_packets": dict(self.received_packets),
            "received_bytes": dict(self.received_bytes),
            "plis_sent": self.plis_sent,
            "layer_switches": self.layer_switches,
            "probes": self.probes,
            "padding_bytes": self.padding_bytes,
            "duplicates_dropped": self.duplicates_dropped,
            "keyframe_requests": dict(self.keyframe_requests),
            "retransmissions": dict(self.retransmissions),
            "feedback_received": dict(self.feedback_received),
            "connection_failures": dict(self.connection_failures),
            "keyframe_wait": self.keyframe_wait.snapshot(),
            "first_media": self.first_media.snapshot(),
            "active_peers": self.active_peers,
            "rooms": self.rooms,
            "published_tracks": dict(self.published_tracks),
            "subscribed_tracks": dict(self.subscribed_tracks),
        }
