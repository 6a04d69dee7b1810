"""Connection quality: a participant's packet loss and jitter, graded for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GOOD = (0.02, 30.0)  # (loss fraction, jitter ms) below which a connection is good
FAIR = (0.10, 100.0)


@dataclass(frozen=True)
class Quality:
    level: str  # "good", "fair" or "poor"
    loss: float  # fraction of packets lost, 0..1
    jitter_ms: float

    @classmethod
    def grade(cls, loss: float, jitter_ms: float) -> Quality:
        if loss < GOOD[0] and jitter_ms < GOOD[1]:
            level = "good"
        elif loss < FAIR[0] and jitter_ms < FAIR[1]:
            level = "fair"
        else:
            level = "poor"
        return cls(level, round(loss, 3), round(jitter_ms, 1))

    def describe(self) -> dict[str, Any]:
        return {"quality": self.level, "loss": self.loss, "jitter_ms": self.jitter_ms}
