"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

A browser that negotiates transport-cc numbers every packet it sends on a transport with one
sequence and estimates its own uplink from what the receiver reports: which of those packets
arrived, and when. The SFU is that receiver for every publisher. It reports arrival times the
kernel stamped (``SIOCGSTAMPNS``, see ``ice.py``), so a busy event loop that reaches a packet
late does not read as a queue on the network: the browser's estimator (Google Congestion Control)
sees the network's delay only, and its probing ramps a camera to its full layers within seconds
(aiortc's receive-side estimate took about 30 s and was cut by event-loop delay; issue 24).

The feedback message (RTCP RTPFB, FMT 15)::

    base sequence number (16) | packet status count (16)
    reference time (24, signed, 64 ms) | feedback packet count (8)
    packet chunks (16 bits each) ... | receive deltas (1 or 2 bytes each) ... | padding

A chunk is either a run (``0``, a 2-bit symbol, a 13-bit length) or a vector of seven 2-bit
symbols (``11``, then the symbols). Symbols: 0 not received, 1 received with a delta of
0…63.75 ms (one byte, 250 µs units), 2 received with a larger or negative delta (two bytes,
signed). A delta is from the previous received packet's arrival, the first one's from the
reference time.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from . import _fastpath

RTCP_RTPFB = 205
FMT_TRANSPORT_CC = 15
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
DELTA_US = 250
REFERENCE_US = 64_000
NOT_RECEIVED, SMALL, LARGE = 0, 1, 2
MAX_RUN = 0x1FFF
# At most this many sequence numbers in one message (about 1 kB of deltas), so a message stays
# well inside one datagram; a longer gap starts from its end.
MAX_STATUS_COUNT = 1000
# Arrivals in one message lie within this span: every receive delta then fits its two bytes
# (±8.19 s). Older ones (a publisher that sent nothing for seconds) are left out.
MAX_SPAN_US = 8_000_000
# A report is sent this often while packets arrive (libwebrtc: every 50-250 ms by bitrate).
INTERVAL_US = 50_000


@dataclass(frozen=True)
class Feedback:
    """One feedback message: ``arrivals[i]`` is the arrival (µs, on the sender's reference
    clock) of ``base_sequence + i`` mod 2^16, or None when it was not received."""

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_us: int
    count: int
    arrivals: tuple[int | None, ...]

    def __bytes__(self) -> bytes:
        return build(self)


def _symbols(feedback: Feedback) -> tuple[list[int], bytearray]:
    symbols, deltas = [], bytearray()
    previous = feedback.reference_us
    for arrival in feedback.arrivals:
        if arrival is None:
            symbols.append(NOT_RECEIVED)
            continue
        ticks = (arrival - previous) // DELTA_US
        if 0 <= ticks <= 0xFF:
            symbols.append(SMALL)
            deltas.append(ticks)
        elif -0x8000 <= ticks <= 0x7FFF:
            symbols.append(LARGE)
            deltas += struct.pack("!h", ticks)
        else:
            raise ValueError(f"a receive delta of {ticks * DELTA_US} µs does not fit in a feedback message")
        previous += ticks * DELTA_US  # deltas are cumulative: rounding must not drift
    return symbols, deltas


def _chunks(symbols: list[int]) -> bytes:
    chunks = bytearray()
    i = 0
    while i < len(symbols):
        run = 1
        while i + run < len(symbols) and symbols[i + run] == symbols[i] and run < MAX_RUN:
            run += 1
        if run >= 7 or i + run == len(symbols):  # a run chunk, or the last symbols are all one
            chunks += struct.pack("!H", (symbols[i] << 13) | run)
            i += run
            continue
        vector = symbols[i:i + 7]
        word = 0xC000
        for position, symbol in enumerate(vector):
            word |= symbol << (12 - 2 * position)
        chunks += struct.pack("!H", word)
        i += len(vector)
    return bytes(chunks)


def build(feedback: Feedback) -> bytes:
    """The RTCP packet of ``feedback`` (padded to 32 bits with the P bit, as libwebrtc does)."""
    if not feedback.arrivals or feedback.arrivals[0] is None:
        raise ValueError("a feedback message starts with a received packet")
    symbols, deltas = _symbols(feedback)
    reference = feedback.reference_us // REFERENCE_US
    body = struct.pack("!LLHHL", feedback.sender_ssrc, feedback.media_ssrc, feedback.base_sequence & 0xFFFF,
                       len(symbols), ((reference & 0xFFFFFF) << 8) | (feedback.count & 0xFF))
    body += _chunks(symbols) + deltas
    padding = -len(body) % 4
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    first = 0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_CC
    return struct.pack("!BBH", first, RTCP_RTPFB, len(body) // 4) + body


def parse(packet: bytes) -> Feedback:
    """The feedback message in one RTCP packet (ValueError when it is not one, or malformed)."""
    if len(packet) < 20 or packet[0] >> 6 != 2 or packet[0] & 0x1F != FMT_TRANSPORT_CC or packet[1] != RTCP_RTPFB:
        raise ValueError("not a transport-cc feedback message")
    length = (struct.unpack_from("!H", packet, 2)[0] + 1) * 4
    if length > len(packet):
        raise ValueError("transport-cc feedback is truncated")
    end = length - (packet[length - 1] if packet[0] & 0x20 else 0)
    sender, media, base, status_count, word = struct.unpack_from("!LLHHL", packet, 4)
    reference = word >> 8
    if reference & 0x800000:
        reference -= 0x1000000
    symbols: list[int] = []
    offset = 20
    while len(symbols) < status_count:
        if offset + 2 > end:
            raise ValueError("transport-cc feedback ends inside its packet chunks")
        (chunk,) = struct.unpack_from("!H", packet, offset)
        offset += 2
        if not chunk & 0x8000:
            symbols += [(chunk >> 13) & 0x3] * (chunk & MAX_RUN)
        elif chunk & 0x4000:
            symbols += [(chunk >> (12 - 2 * i)) & 0x3 for i in range(7)]
        else:
            symbols += [(chunk >> (13 - i)) & 0x1 for i in range(14)]
    arrivals: list[int | None] = []
    at = reference * REFERENCE_US
    for symbol in symbols[:status_count]:
        if symbol == NOT_RECEIVED:
            arrivals.append(None)
            continue
        size = 1 if symbol == SMALL else 2
        if symbol not in (SMALL, LARGE) or offset + size > end:
            raise ValueError("transport-cc feedback has a bad symbol or too few receive deltas")
        at += (packet[offset] if size == 1 else struct.unpack_from("!h", packet, offset)[0]) * DELTA_US
        offset += size
        arrivals.append(at)
    return Feedback(sender, media, base, reference * REFERENCE_US, word & 0xFF, tuple(arrivals))


class FeedbackRecorder:
    """What one transport received, by transport-wide sequence number, until it is reported.

    ``add`` each packet's sequence number and kernel arrival time (µs); ``report`` gives the
    message for everything since the last report (None when there is nothing new). A packet that
    arrives after its number was reported lost stays lost: the sender has moved on."""

    def __init__(self) -> None:
        self._arrivals: dict[int, int] = {}  # unwrapped sequence number → arrival µs
        self._next: int | None = None  # the first unwrapped number not reported yet
        self._highest: int | None = None
        self._count = 0
        self.last_report_us = 0

    def _unwrap(self, sequence: int) -> int:
        if self._highest is None:
            return sequence
        delta = (sequence - self._highest) & 0xFFFF
        return self._highest + delta if delta < 0x8000 else self._highest + delta - 0x10000

    def add(self, sequence: int, arrival_us: int) -> None:
        number = self._unwrap(sequence)
        if self._next is None:
            self._next = number
        if number < self._next:
            return
        self._arrivals[number] = arrival_us
        if self._highest is None or number > self._highest:
            self._highest = number

    @property
    def pending(self) -> int:
        return len(self._arrivals)

    def report(self, sender_ssrc: int, media_ssrc: int, now_us: int) -> Feedback | None:
        if not self._arrivals or self._highest is None:
            return None
        latest = max(self._arrivals.values())
        kept = {n: at for n, at in self._arrivals.items() if at >= latest - MAX_SPAN_US}
        end = max(kept)
        start = min(n for n in kept if n > end - MAX_STATUS_COUNT)  # a message starts with a received packet
        arrivals = tuple(kept.get(n) for n in range(start, end + 1))
        reference = min(at for at in arrivals if at is not None) // REFERENCE_US * REFERENCE_US
        feedback = Feedback(sender_ssrc, media_ssrc, start & 0xFFFF, reference, self._count, arrivals)
        self._count = (self._count + 1) & 0xFF
        self._next = self._highest + 1
        self._arrivals.clear()
        self.last_report_us = now_us
        return feedback


# The sender's side: the SFU numbers the video it sends a subscriber, whose browser reports when
# each packet arrived. A packet's one-way delay (arrival on the browser's clock less the send time
# on the SFU's: an unknown offset, constant) above the lowest of the last QUEUE_FLOOR_S is the queue
# it met on the way; each message's smallest such queue is the queue all its packets met, which
# jitter alone does not make.
HISTORY = 4096  # packets remembered: over a second of video at the highest rate a subscriber gets
QUEUE_FLOOR_S = 10.0


class SendHistory:
    """The transport-wide sequence numbers of one subscriber's transport: ``take`` numbers a packet
    sent now; ``feedback`` reads a message of the subscriber's about them and sets ``queue_s``
    (None until a message has come) and ``feedback_at``."""

    def __init__(self) -> None:
        # The numbers and when each was sent, kept where the forwarding path takes them (_fastpath.c).
        self.times = _fastpath.SendTimes(HISTORY)
        self._floors: deque[tuple[float, float]] = deque()  # (when, the smallest delay of one message), oldest first
        self.queue_s: float | None = None
        self.feedback_at: float | None = None

    @property
    def next_sequence(self) -> int:
        return self.times.next_sequence

    @next_sequence.setter
    def next_sequence(self, sequence: int) -> None:
        self.times.next_sequence = sequence

    def take(self, now: float) -> int:
        return self.times.take(now)

    def feedback(self, message: Feedback, now: float) -> float | None:
        """The queue (seconds) the packets of ``message`` met, also kept as ``queue_s``; None
        when it names none this history still holds."""
        delays = []
        for index, arrival in enumerate(message.arrivals):
            if arrival is None:
                continue
            sent = self.times.sent_at((message.base_sequence + index) & 0xFFFF)
            if sent is not None:
                delays.append(arrival / 1e6 - sent)
        if not delays:
            return None
        smallest = min(delays)
        floors = self._floors
        floors.append((now, smallest))
        while floors[0][0] < now - QUEUE_FLOOR_S:
            floors.popleft()
        self.queue_s = max(0.0, smallest - min(delay for _, delay in floors))
        self.feedback_at = now
        return self.queue_s
