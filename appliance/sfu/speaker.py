"""Active-speaker detection from the RFC 6464 audio levels publishers put in their RTP headers."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

SILENCE_DBOV = -127.0
FRAME_SECONDS = 0.02  # what one packet stands for when nothing tells otherwise (Opus's usual ptime)
# The longest span one packet stands for: with Opus DTX a browser sends one packet every 400 ms in
# silence; a longer gap is loss or a mute, and says nothing of the level.
MAX_PACKET_SPAN = 0.5


@dataclass(frozen=True)
class SpeakerSettings:
    window: float = 1.0  # seconds of audio levels averaged per participant
    threshold_dbov: float = -50.0  # quieter than this is not speech
    margin_db: float = 6.0  # how much louder than the current speaker a challenger must be
    min_hold: float = 1.0  # seconds a speaker keeps the floor before someone louder takes it


@dataclass(frozen=True)
class SpeakerChange:
    participant: str
    level_dbov: float


class ActiveSpeakerDetector:
    """Picks the loudest participant over a short window, with hysteresis.

    The floor changes hands when the current speaker has gone quiet, or when someone else is
    louder by ``margin_db`` and the current speaker has held the floor for ``min_hold``. Nobody
    speaking keeps the last speaker (what a meeting UI wants to show).
    """

    def __init__(self, settings: SpeakerSettings | None = None) -> None:
        self.settings = settings or SpeakerSettings()
        self.current: str | None = None
        self._since = 0.0
        # Per participant: (arrival, power, the span since the packet before) of recent packets.
        self._powers: dict[str, deque[tuple[float, float, float]]] = {}

    def add_level(self, participant: str, level: int, now: float) -> None:
        """Record one packet's level: RFC 6464 gives it as -dBov, 0 (loudest) to 127."""
        powers = self._powers.setdefault(participant, deque())
        span = min(MAX_PACKET_SPAN, now - powers[-1][0]) if powers else FRAME_SECONDS
        powers.append((now, 10.0 ** (-level / 10.0), span))

    def forget(self, participant: str) -> None:
        self._powers.pop(participant, None)
        if self.current == participant:
            self.current = None

    def level(self, participant: str, now: float) -> float:
        """Mean level (dBov) over the window of the participant's packets, each weighted by the
        time since the packet before (so a DTX packet, one per 400 ms of silence, counts for its
        400 ms, not as one 20 ms frame); silence if none. Evenly spaced packets weigh the same."""
        powers = self._powers.get(participant)
        if not powers:
            return SILENCE_DBOV
        horizon = now - self.settings.window
        while powers and powers[0][0] < horizon:
            powers.popleft()
        if not powers:
            return SILENCE_DBOV
        weights = [min(span, at - horizon) for at, _, span in powers]
        total = sum(weights)
        if total > 0:
            mean = sum(power * weight for (_, power, _), weight in zip(powers, weights, strict=True)) / total
        else:
            mean = sum(power for _, power, _ in powers) / len(powers)
        return max(SILENCE_DBOV, 10.0 * math.log10(mean))

    def update(self, now: float) -> SpeakerChange | None:
        """Re-evaluate the floor; return the new speaker when it changed."""
        levels = {participant: self.level(participant, now) for participant in self._powers}
        if not levels:
            return None
        loudest = max(levels, key=levels.__getitem__)
        loudest_level = levels[loudest]
        if loudest == self.current or loudest_level < self.settings.threshold_dbov:
            return None
        current_level = levels.get(self.current, SILENCE_DBOV) if self.current else SILENCE_DBOV
        current_speaks = current_level >= self.settings.threshold_dbov
        if current_speaks and (now - self._since < self.settings.min_hold
                               or loudest_level < current_level + self.settings.margin_db):
            return None
        self.current = loudest
        self._since = now
        return SpeakerChange(loudest, round(loudest_level, 1))
