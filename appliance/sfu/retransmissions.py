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

RETRANSMISSION_SHARE = 0.15
WINDOW = 1.0  # seconds of forwarded media the share is taken of
SAMPLE_INTERVAL = 0.1  # how often the forwarded byte count is noted: the window's resolution


class RetransmissionBudget:
    """One down track's allowance. The forwarding path notes its cumulative payload byte count
    at most every ``SAMPLE_INTERVAL`` (``sample`` when ``now >= next_sample``: one comparison
    per packet); ``allow`` decides each retransmission."""

    __slots__ = ("share", "window", "next_sample", "_forwarded", "_resent", "_resent_bytes")

    def __init__(self, share: float = RETRANSMISSION_SHARE, window: float = WINDOW) -> None:
        self.share = share
        self.window = window
        self.next_sample = 0.0
        self._forwarded: deque[tuple[float, int]] = deque()  # (time, bytes forwarded until then)
        self._resent: deque[tuple[float, int]] = deque()  # (time, payload bytes) of retransmissions
        self._resent_bytes = 0

    def sample(self, now: float, forwarded_bytes: int) -> None:
        self._forwarded.append((now, forwarded_bytes))
        self.next_sample = now + SAMPLE_INTERVAL
        self._expire(now)

    def allow(self, now: float, size: int, forwarded_bytes: int, always: bool = False) -> bool:
        """Whether a retransmission of ``size`` payload bytes fits, ``forwarded_bytes`` being
        the down track's count now (``always``: it is sent whether it fits or not); a
        retransmission allowed is counted against the budget."""
        horizon = self._expire(now)
        if not always:
            forwarded = self._forwarded
            if not forwarded or forwarded[-1][0] <= horizon:  # nothing forwarded within the window
                return False
            # The count at the window's start: the last one noted before it, or none (0) when the
            # track began within it.
            base = forwarded[0][1] if forwarded[0][0] <= horizon else 0
            if self._resent_bytes + size > self.share * (forwarded_bytes - base):
                return False
        self._resent.append((now, size))
        self._resent_bytes += size
        return True

    def _expire(self, now: float) -> float:
        horizon = now - self.window
        forwarded = self._forwarded
        while len(forwarded) > 1 and forwarded[1][0] <= horizon:  # keep the last count at or before it
            forwarded.popleft()
        resent = self._resent
        while resent and resent[0][0] <= horizon:
            self._resent_bytes -= resent.popleft()[1]
        return horizon
