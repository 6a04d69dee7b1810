"""Which simulcast layer of each video a subscriber receives: its downlink shared out over its
subscriptions, and probed to climb back.

What is known of a subscriber's downlink comes from its receiver reports (the fraction of each
stream lost) and, from a client that sends them, REMB messages (a receive-side estimate:
delay-based, cut at once when a queue builds, raised a few per cent a second otherwise, never
above 1.5 times what arrives; aiortc sends them, Chromium 156 does not: it only gives
transport-wide feedback, which this SFU does not negotiate yet). Every ``INTERVAL`` the
subscriber's ``DownlinkAllocator`` shares what the link carries, less its audio, over its videos
(``share``: every video its lowest layer first, screen shares before cameras, then each raised as
far as the rest allows; bitrates are of payload, as estimates count them), and moves them:
- down at once when a report shows ``CONGESTED_LOSS`` or more while the round trip shows a queue
  (see below; a full queue is what drops), or ``HEAVY_LOSS`` or more whatever the round trip: to
  what got through (what was sent, less the loss), which becomes what the link is known to carry
  when there is no REMB (a link that loses at random, without a queue, is left its layer: a
  lower one would lose as much; before the first round trip is measured, any such loss counts);
  or when what is sent has stayed above the REMB for ``DOWN_AFTER_S`` while it did not climb (an
  estimate starts at what arrives and climbs: a rising one is not a narrow link);
- up when the higher layer has fitted within ``HEADROOM`` of the REMB for ``UP_AFTER_S``, or,
  without REMB, when a probe showed the link carries it.
A subscriber held below the layers it wants would stay there once its link cleared (nothing more
is sent to show it): so while it is held and its link loses less than ``CLEAN_LOSS``, the
allocator probes — padding (the latest packet again over RTX) in stages, the first
``PROBE_FIRST_SHARE`` of what it is sent, each ``PROBE_STAGE_S`` twice the last, up to what the
next layer adds. A probe ends the moment the link shows a queue: a round trip (the SFU's ICE
check each second) ``RTT_RISE_S`` or ``RTT_RISE_SHARE`` above the lowest of the last
``RTT_FLOOR_S``, which a queue on the downlink shows before it drops anything; or loss in a
receiver report made during it (``CLEAN_LOSS``). With REMB the probe lets the estimate climb
(for at most ``PROBE_S``); without, a stage that neither queued nor lost shows the link carries
that much, and the last stage the layer. A probe that fails is tried again after a back-off that
doubles from ``PROBE_BACKOFF_S`` up to ``PROBE_BACKOFF_MAX_S``.

A browser that takes transport-cc on the video it is sent (Chromium does) reports when each
packet arrived, every 50-100 ms: the queue those packets met (twcc.SendHistory) is then known
ten times a second instead of once, and a probe ends the moment that queue passes
``QUEUE_RISE_S`` — before a narrow link's queue overflows. Probing that fails that cheaply can
be bolder: while such feedback comes (``FEEDBACK_FRESH_S``), stages last one allocation interval
(``FED_STAGE_S``), the first is ``FED_FIRST_SHARE`` of what is sent, and the back-off stops at
``FED_BACKOFF_MAX_S``.

Nothing is held back while nothing is known: no REMB and no loss.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

INTERVAL = 0.5
HEADROOM = 0.9
CONGESTED_LOSS = 0.10  # with a queue: congestion
HEAVY_LOSS = 0.20  # congestion, queue or not
CLEAN_LOSS = 0.02  # a probe starts on a link losing less than this, and fails when it loses more
DOWN_AFTER_S = 1.0
UP_AFTER_S = 2.0
PROBE_S = 10.0  # with REMB: the longest a probe waits for the estimate to climb
PROBE_FIRST_SHARE = 0.25  # a probe's first padding, of what is sent; each stage doubles it
PROBE_STAGE_S = 1.5  # a stage's padding that lost nothing and queued nothing this long is carried
PROBE_REPORT_S = 1.5  # a receiver report made during a probe has come by then (browsers send one a second)
RTT_FLOOR_S = 10.0
RTT_RISE_S, RTT_RISE_SHARE = 0.03, 0.25  # a round trip this much above the floor: a queue
CALM_S = 1.5  # the report that showed the loss is not read twice
PROBE_BACKOFF_S = 2.0
PROBE_BACKOFF_MAX_S = 30.0
MIN_PROBE_BPS = 50_000
QUEUE_RISE_S = 0.03  # a queue this long on the downlink (transport-cc feedback): a probe stops
FEEDBACK_FRESH_S = 1.0
FED_STAGE_S = 0.45  # one INTERVAL (the allocation runs every INTERVAL, not exactly)
FED_FIRST_SHARE = 0.5
FED_BACKOFF_MAX_S = 4.0


@dataclass(frozen=True)
class Demand:
    """One video a subscriber receives: each layer's bitrate (None: a layer not sent now), the
    highest layer it takes (its view's choice: ``video_layer``), and its priority (lower first)."""

    key: Hashable
    rates: tuple[float | None, ...]
    wanted: int
    priority: int = 1

    def sent(self) -> list[int]:
        return [i for i, rate in enumerate(self.rates) if rate is not None]

    def best(self) -> int | None:
        """The highest layer sent up to the wanted one (else the lowest sent above it)."""
        sent = self.sent()
        if not sent:
            return None
        return max((i for i in sent if i <= self.wanted), default=sent[0])


def share(budget_bps: float, demands: Sequence[Demand]) -> dict[Hashable, int]:
    """The layer each video gets within ``budget_bps``: first every one its lowest layer sent
    (whether it fits or not), then each in priority order raised to the highest layer, up to its
    best, that the rest of the budget carries. A video with no layer sent is left out."""
    chosen: dict[Hashable, int] = {}
    left = budget_bps
    ordered = sorted(demands, key=lambda d: d.priority)
    for demand in ordered:
        sent = demand.sent()
        if sent:
            chosen[demand.key] = sent[0]
            left -= demand.rates[sent[0]]  # type: ignore[operator]
    for demand in ordered:
        if demand.key not in chosen:
            continue
        best = demand.best()
        current = chosen[demand.key]
        base = demand.rates[current]
        for layer in (i for i in demand.sent() if current < i <= best):  # type: ignore[operator]
            extra = demand.rates[layer] - base  # type: ignore[operator]
            if extra <= left:
                left -= extra
                chosen[demand.key], base = layer, demand.rates[layer]
    return chosen


@dataclass
class Decision:
    """The allocator's answer for one interval: the highest layer each video may have (a key
    absent: no limit) and the padding to send meanwhile (bits per second, 0: none)."""

    caps: dict[Hashable, int]
    probe_bps: float


@dataclass
class DownlinkAllocator:
    """One subscriber's allocation, updated every ``INTERVAL`` (see the module's docstring)."""

    caps: dict[Hashable, int] = field(default_factory=dict)
    learned_bps: float | None = None  # what the link carries, as loss and probes showed (no REMB)
    probe_bps: float = 0.0
    probes: int = 0  # probes started
    _over_since: float | None = None
    _over_estimate: float = 0.0
    _calm_until: float = 0.0  # the loss that moved videos down is not acted on again before this
    _fits_since: dict[Hashable, float] = field(default_factory=dict)
    _probe_started: float = 0.0
    _stage_started: float = 0.0
    _probe_gap: float = 0.0  # the bitrate the probed layer adds
    _rtt_samples: deque[tuple[float, float]] = field(default_factory=deque)
    _rtt_floor: float | None = None
    _probe_key: Hashable = None
    _probe_layer: int = -1
    _next_probe_at: float = 0.0
    _backoff: float = PROBE_BACKOFF_S
    _queue_at: float | None = None  # when transport-cc feedback last measured the queue

    def queue_measured(self, now: float, queue_s: float) -> None:
        """The queue the latest transport-cc feedback shows on the downlink: a probe that built
        it ends now."""
        self._queue_at = now
        if self.probe_bps and queue_s > QUEUE_RISE_S:
            self._fail_probe(now)

    def _fed(self, now: float) -> bool:
        return self._queue_at is not None and now - self._queue_at < FEEDBACK_FRESH_S

    def update(self, now: float, remb_bps: float | None, loss: float | None, audio_bps: float,
               demands: Sequence[Demand], rtt_s: float | None = None) -> Decision:
        """``remb_bps``: the browser's latest estimate (None: it sends none, or not yet);
        ``loss``: the fraction lost in its latest receiver reports; ``rtt_s``: the latest round
        trip to it (a queue on its downlink lengthens it before it loses anything)."""
        keys = {d.key for d in demands}
        self.caps = {key: layer for key, layer in self.caps.items() if key in keys}
        self._fits_since = {key: t for key, t in self._fits_since.items() if key in keys}
        current = {d.key: layer for d in demands if (layer := self._current(d)) is not None}
        forwarded = audio_bps + sum(d.rates[current[d.key]] or 0.0 for d in demands if d.key in current)
        self._note_rtt(now, rtt_s)
        # Loss is congestion when the link queues (a full queue drops) or when it is heavy; a
        # link that loses at random (radio, a lossy path) loses as much on a lower layer.
        lossy = (loss is not None and now >= self._calm_until
                 and (loss >= HEAVY_LOSS or (loss >= CONGESTED_LOSS and self._queued(rtt_s, unknown=True))))
        over = remb_bps is not None and self._over(now, forwarded, remb_bps)
        if lossy or over:
            carried = min(remb_bps if remb_bps is not None else float("inf"),
                          forwarded * (1 - loss) if lossy else float("inf"))  # type: ignore[operator]
            if remb_bps is None:
                self.learned_bps = carried
            self._move_down(now, share(carried - audio_bps, demands), current)
        elif remb_bps is not None:
            for key, layer in share(HEADROOM * remb_bps - audio_bps, demands).items():
                if layer > current[key]:
                    since = self._fits_since.setdefault(key, now)
                    if now - since >= UP_AFTER_S:
                        self.caps[key] = current[key] = layer
                        self._fits_since.pop(key)
                else:
                    self._fits_since.pop(key, None)
        elif self.learned_bps is not None:
            for key, layer in share(self.learned_bps - audio_bps, demands).items():
                if layer > current[key]:
                    self.caps[key] = current[key] = layer
        if remb_bps is None and self.learned_bps is None:
            self.caps.clear()  # nothing known of the link: nothing held back
        self._plan_probe(now, loss, remb_bps, forwarded, demands, current, rtt_s)
        return Decision(dict(self.caps), self.probe_bps)

    def _over(self, now: float, forwarded: float, remb_bps: float) -> bool:
        """More forwarded than the browser's estimate for DOWN_AFTER_S, the estimate not
        climbing (it starts at what arrives and climbs; one that met a queue falls)."""
        if forwarded <= remb_bps:
            self._over_since = None
            return False
        if self._over_since is None:
            self._over_since, self._over_estimate = now, remb_bps
        return now - self._over_since >= DOWN_AFTER_S and remb_bps <= 1.02 * self._over_estimate

    def _move_down(self, now: float, target: dict[Hashable, int], current: dict[Hashable, int]) -> None:
        for key, layer in target.items():
            if layer < current[key]:
                self.caps[key] = current[key] = layer
        self._fits_since.clear()
        self._over_since = None
        self._calm_until = now + CALM_S
        if self.probe_bps:
            self._fail_probe(now)
        else:  # no probe straight after congestion
            self._next_probe_at = max(self._next_probe_at, now + self._backoff)

    def _current(self, demand: Demand) -> int | None:
        """The layer the video is allowed now: its best under its cap (None: no layer sent)."""
        best = demand.best()
        cap = self.caps.get(demand.key)
        if best is None or cap is None:
            return best
        return max((i for i in demand.sent() if i <= min(cap, best)), default=demand.sent()[0])

    def _plan_probe(self, now: float, loss: float | None, remb_bps: float | None, forwarded: float,
                    demands: Sequence[Demand], current: dict[Hashable, int], rtt_s: float | None) -> None:
        held = [(d, current[d.key]) for d in sorted(demands, key=lambda d: d.priority)
                if d.key in current and current[d.key] < d.best()]  # type: ignore[operator]
        if self.probe_bps:
            stage = now - self._stage_started
            if self._queued(rtt_s, unknown=False) or (now - self._probe_started >= PROBE_REPORT_S
                                                      and loss is not None and loss >= CLEAN_LOSS):
                self._fail_probe(now)
                return
            if all(not (d.key == self._probe_key and layer < self._probe_layer) for d, layer in held):
                self._end_probe(now)  # the layer probed for is allowed now (the estimate climbed)
                return
            if stage >= (FED_STAGE_S if self._fed(now) else PROBE_STAGE_S):  # its padding went through: carried
                if remb_bps is None:
                    self.learned_bps = max(self.learned_bps or 0.0, forwarded + self.probe_bps)
                if self.probe_bps >= self._probe_gap:
                    if remb_bps is None:  # nothing else will say so: the layer fits
                        self.caps[self._probe_key] = self._probe_layer
                        self._end_probe(now)
                    elif now - self._probe_started >= PROBE_S:
                        self._fail_probe(now)
                    return
                self.probe_bps = min(self._probe_gap, 2 * self.probe_bps)
                self._stage_started = now
            return
        if not held or now < self._next_probe_at or (loss is not None and loss >= CLEAN_LOSS):
            return
        demand, layer = held[0]
        up = next(i for i in demand.sent() if i > layer)
        self._probe_key, self._probe_layer = demand.key, up
        self._probe_gap = max(MIN_PROBE_BPS, demand.rates[up] - demand.rates[layer])  # type: ignore[operator]
        first = FED_FIRST_SHARE if self._fed(now) else PROBE_FIRST_SHARE
        self.probe_bps = min(self._probe_gap, max(MIN_PROBE_BPS, first * forwarded))
        self._probe_started = self._stage_started = now
        self.probes += 1

    def _end_probe(self, now: float) -> None:
        """A probe that succeeded: the next (for the next layer up) may start at once."""
        self._stop_probe()
        self._backoff = PROBE_BACKOFF_S
        self._next_probe_at = now

    def _queued(self, rtt_s: float | None, unknown: bool) -> bool:
        """Whether the round trip shows a queue on the way: well above its floor (``unknown``
        when there is none to go by yet)."""
        if rtt_s is None or self._rtt_floor is None:
            return unknown
        return rtt_s > self._rtt_floor + max(RTT_RISE_S, RTT_RISE_SHARE * self._rtt_floor)

    def _note_rtt(self, now: float, rtt_s: float | None) -> None:
        """The lowest round trip of the last RTT_FLOOR_S: the link without a queue."""
        if rtt_s is None:
            return
        samples = self._rtt_samples
        samples.append((now, rtt_s))
        while samples and samples[0][0] < now - RTT_FLOOR_S:
            samples.popleft()
        if not self.probe_bps:  # a probe's own queue is not the link's floor
            self._rtt_floor = min(rtt for _, rtt in samples)

    def _fail_probe(self, now: float) -> None:
        self._stop_probe()
        self._next_probe_at = now + self._backoff
        self._backoff = min(FED_BACKOFF_MAX_S if self._fed(now) else PROBE_BACKOFF_MAX_S, 2 * self._backoff)

    def _stop_probe(self) -> None:
        self.probe_bps = 0.0
        self._probe_key, self._probe_layer = None, -1


# A downlink that loses packets gets them again a round trip later (the subscriber's NACK, the
# SFU's retransmission); a browser that plays frames as soon as they are whole freezes the picture
# while it waits (measured: B on a 5 % loss, 80 ms each way link frozen 5-15 % of the time). Such
# a subscriber is asked (the playout-delay header extension) to hold its video that round trip
# plus a margin, from the first report of loss until ``PLAYOUT_HOLD_S`` after the last. From
# ``PLAYOUT_TWO_ROUNDS_LOSS`` on, two round trips: a NACK or a retransmission lost in its turn
# (at 5 % each way, one lost packet in ten) costs another. B's freezes with one round trip lasted
# ~210 or ~380 ms, a frame interval plus one or two more round trips, several in the second the
# link dropped a retransmission (docs/benchmarks.md); with two, one freeze in six runs.
PLAYOUT_LOSS = 0.01
PLAYOUT_TWO_ROUNDS_LOSS = 0.03
PLAYOUT_MARGIN_MS = 60
PLAYOUT_MIN_MS, PLAYOUT_MAX_MS = 100, 400
PLAYOUT_HOLD_S = 10.0


@dataclass
class PlayoutDelay:
    """One subscriber's requested minimum playout delay, updated every ``INTERVAL``."""

    delay_ms: int = 0
    _until: float = 0.0

    def update(self, now: float, loss: float | None, rtt_s: float | None) -> int:
        if loss is not None and loss >= PLAYOUT_LOSS and rtt_s is not None:
            rounds = 2 if loss >= PLAYOUT_TWO_ROUNDS_LOSS else 1
            wanted = round(1000 * rtt_s * rounds) + PLAYOUT_MARGIN_MS
            self.delay_ms = max(self.delay_ms if now < self._until else 0,
                                min(PLAYOUT_MAX_MS, max(PLAYOUT_MIN_MS, wanted)))
            self._until = now + PLAYOUT_HOLD_S
        elif now >= self._until:
            self.delay_ms = 0
        return self.delay_ms

