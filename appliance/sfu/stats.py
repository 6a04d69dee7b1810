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

    def snapshot(self) -> dict[str, Any]:
        return {
            "forwarded_packets": dict(self.forwarded_packets),
            "forwarded_bytes": dict(self.forwarded_bytes),
            "plis_sent": self.plis_sent,
            "keyframe_requests": self.keyframe_requests,
            "active_peers": self.active_peers,
            "rooms": self.rooms,
        }
