"""Active-speaker detection from the RFC 6464 audio levels publishers put in their RTP headers."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

SILENCE_DBOV = -127.0


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
        self._powers: dict[str, deque[tuple[float, float]]] = {}

    def add_level(self, participant: str, level: int, now: float) -> None:
        """Record one packet's level: RFC 6464 gives it as -dBov, 0 (loudest) to 127."""
        self._powers.setdefault(participant, deque()).append((now, 10.0 ** (-level / 10.0)))

    def forget(self, participant: str) -> None:
        self._powers.pop(participant, None)
        if self.current == participant:
            self.current = None

    def level(self, participant: str, now: float) -> float:
        """Mean level (dBov) of the participant's packets in the window; silence if none."""
        powers = self._powers.get(participant)
        if not powers:
            return SILENCE_DBOV
        horizon = now - self.settings.window
        while powers and powers[0][0] < horizon:
            powers.popleft()
        if not powers:
            return SILENCE_DBOV
        mean = sum(power for _, power in powers) / len(powers)
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
