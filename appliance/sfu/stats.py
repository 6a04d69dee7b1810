"""Counters of the SFU for the appliance's metrics endpoint (plain numbers, no Prometheus here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _by_kind() -> dict[str, int]:
    return {"audio": 0, "video": 0}


@dataclass
class SfuStats:
    forwarded_packets: dict[str, int] = field(default_factory=_by_kind)
    forwarded_bytes: dict[str, int] = field(default_factory=_by_kind)
    plis_sent: int = 0
    keyframe_requests: int = 0  # PLI/FIR received from subscribers, before coalescing
    active_peers: int = 0
    rooms: int = 0

    def count_forwarded(self, kind: str, payload_bytes: int) -> None:
        self.forwarded_packets[kind] += 1
        self.forwarded_bytes[kind] += payload_bytes

    @classmethod
    def total(cls, snapshots: list[dict[str, Any]], gauges: bool = True) -> SfuStats:
        """The sum of several snapshots (the SFU's worker processes); ``gauges=False`` keeps only
        the counters (a worker that died has no peers or rooms left)."""
        total = cls()
        for snap in snapshots:
            for kind, count in snap["forwarded_packets"].items():
                total.forwarded_packets[kind] = total.forwarded_packets.get(kind, 0) + count
            for kind, count in snap["forwarded_bytes"].items():
                total.forwarded_bytes[kind] = total.forwarded_bytes.get(kind, 0) + count
            total.plis_sent += snap["plis_sent"]
            total.keyframe_requests += snap["keyframe_requests"]
            if gauges:
                total.active_peers += snap["active_peers"]
                total.rooms += snap["rooms"]
        return total

    def snapshot(self) -> dict[str, Any]:
        return {
            "forwarded_packets": dict(self.forwarded_packets),
            "forwarded_bytes": dict(self.forwarded_bytes),
            "plis_sent": self.plis_sent,
            "keyframe_requests": self.keyframe_requests,
            "active_peers": self.active_peers,
            "rooms": self.rooms,
        }
