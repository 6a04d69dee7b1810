"""Retransmissions (answers to a subscriber's NACKs) held to a share of what the subscriber gets.

A subscriber whose link cannot carry a stream loses most of it and NACKs most of it; answering
every NACK then sends it more retransmissions than media, on the link that is already full (issue
24: 468-473 packets/s towards a 300 kbit/s subscriber against 286-289 to one on a clean link). The
cure for such a link is less media (a lower layer), not more repair, so each down track may
retransmit at most ``RETRANSMISSION_SHARE`` of the payload bytes forwarded to it in the last
second. 15 %: random loss of 5 % (the issue's lossy link) needs about 5 % of the media again, a
retransmission that is lost in turn a little more, and a burst (a keyframe's packets) needs room
inside the second; three times the loss a usable link has leaves that room, while a saturated
link gets at most 0.15 of its media again instead of more than all of it. LiveKit and mediasoup
limit how often one packet is sent again (per round trip, a few times at most); neither caps the
total per subscriber, which is what matters without per-subscriber layers.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

RETRANSMISSION_SHARE = 0.15
WINDOW = 1.0  # seconds of forwarded media the share is taken of


class Forwarded(Protocol):
    """What the forwarding path counts (``_fastpath.Down``): the payload bytes forwarded, and the
    count at the start of a window, noted every 0.1 s at most (the window's resolution)."""

    @property
    def bytes(self) -> int: ...

    def window_base(self, horizon: float) -> int | None: ...


class RetransmissionBudget:
    """One down track's allowance: ``allow`` decides each retransmission."""

    __slots__ = ("share", "window", "_resent", "_resent_bytes")

    def __init__(self, share: float = RETRANSMISSION_SHARE, window: float = WINDOW) -> None:
        self.share = share
        self.window = window
        self._resent: deque[tuple[float, int]] = deque()  # (time, payload bytes) of retransmissions
        self._resent_bytes = 0

    def allow(self, now: float, size: int, forwarded: Forwarded, always: bool = False) -> bool:
        """Whether a retransmission of ``size`` payload bytes fits in what was ``forwarded``
        within the window (``always``: it is sent whether it fits or not); a retransmission
        allowed is counted against the budget."""
        horizon = now - self.window
        resent = self._resent
        while resent and resent[0][0] <= horizon:
            self._resent_bytes -= resent.popleft()[1]
        if not always:
            base = forwarded.window_base(horizon)
            if base is None:  # nothing forwarded within the window
                return False
            if self._resent_bytes + size > self.share * (forwarded.bytes - base):
                return False
        resent.append((now, size))
        self._resent_bytes += size
        return True
