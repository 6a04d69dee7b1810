"""The per-subscriber layer allocation (appliance/sfu/allocation.py), as pure decisions over
time: the estimates a browser's REMB would give and the layer bitrates the SFU measures."""

from appliance.sfu.allocation import (
    DOWN_AFTER_S, FED_BACKOFF_MAX_S, FED_FIRST_SHARE, INTERVAL, MIN_PROBE_BPS, PLAYOUT_HOLD_S, PROBE_BACKOFF_S,
    PROBE_REPORT_S, PROBE_S, PROBE_STAGE_S, QUEUE_RISE_S, UP_AFTER_S, Demand, DownlinkAllocator, PlayoutDelay, share,
)

CAMERA = (150_000.0, 500_000.0, 1_200_000.0)  # a 1280x720 camera's three layers, as measured
AUDIO = 40_000.0


def camera(key="ada", wanted=2, priority=1, rates=CAMERA):
    return Demand(key, rates, wanted, priority)


def run(allocator, seconds, estimate, loss=0.0, demands=(camera(),), start=0.0, rtt=0.05):
    """Updates every INTERVAL from ``start`` to ``start + seconds``, both included; the last decision."""
    now, decision = start, None
    while now <= start + seconds + 1e-9:
        value = estimate(now) if callable(estimate) else estimate
        decision = allocator.update(now, value, loss, AUDIO, demands, rtt)
        now += INTERVAL
    return decision


# A held camera on the lowest layer: 150 kbit/s and the audio forwarded; the probe's stages.
STAGES = [MIN_PROBE_BPS, 2 * MIN_PROBE_BPS, 4 * MIN_PROBE_BPS, CAMERA[1] - CAMERA[0]]


def test_every_video_gets_its_lowest_layer_before_any_gets_more_and_screens_come_first():
    screen = Demand("screen", (300_000.0, 900_000.0), 1, priority=0)
    demands = [camera("ada"), camera("grace"), screen]
    assert share(200_000, demands) == {"ada": 0, "grace": 0, "screen": 0}  # over budget: lowest all the same
    assert share(1_400_000, demands) == {"ada": 0, "grace": 0, "screen": 1}  # the screen first
    assert share(1_600_000, demands) == {"ada": 1, "grace": 0, "screen": 1}  # then the cameras in order
    assert share(10_000_000, demands) == {"ada": 2, "grace": 2, "screen": 1}


def test_the_view_caps_the_share_and_a_layer_not_sent_is_skipped():
    assert share(10_000_000, [camera(wanted=1)]) == {"ada": 1}
    assert share(10_000_000, [camera(rates=(150_000.0, None, 1_200_000.0))]) == {"ada": 2}
    assert share(600_000, [camera(rates=(150_000.0, None, 1_200_000.0))]) == {"ada": 0}
    assert share(10_000_000, [camera(rates=(None, None, None))]) == {}


def test_nothing_is_held_back_before_the_browsers_first_estimate():
    decision = run(DownlinkAllocator(), 10, None)
    assert decision.caps == {} and decision.probe_bps == 0


def test_a_narrow_link_moves_the_video_down_once_its_estimate_stays_below_what_is_sent():
    allocator = DownlinkAllocator()
    assert run(allocator, DOWN_AFTER_S - INTERVAL, 300_000).caps == {}  # not yet: a dip is not a link
    assert run(allocator, 1.0, 300_000, start=DOWN_AFTER_S).caps == {"ada": 0}
    assert run(allocator, 5.0, 300_000, start=2 * DOWN_AFTER_S).caps == {"ada": 0}  # and stays


def test_an_estimate_that_climbs_from_what_arrives_moves_nothing_down():
    # A browser's first estimate is what arrives, then it climbs ~8 % a second.
    decision = run(DownlinkAllocator(), 10, lambda t: 1_000_000 * 1.08 ** t)
    assert decision.caps == {}


def test_heavy_loss_moves_the_video_down_at_once_to_what_gets_through():
    # 1.24 Mbit/s sent "fits" the estimate, but a quarter of it is lost: 930 kbit/s arrive.
    assert DownlinkAllocator().update(0.0, 2_000_000, 0.25, AUDIO, [camera()]).caps == {"ada": 1}
    assert DownlinkAllocator().update(0.0, 2_000_000, 0.6, AUDIO, [camera()]).caps == {"ada": 0}


def test_a_wider_estimate_moves_the_video_up_after_it_has_held():
    allocator = DownlinkAllocator()
    run(allocator, 2.0, 300_000)
    assert allocator.caps == {"ada": 0}
    assert run(allocator, UP_AFTER_S - INTERVAL, 700_000, start=2.5).caps == {"ada": 0}
    assert run(allocator, 1.0, 700_000, start=2.5 + UP_AFTER_S).caps == {"ada": 1}  # 540 kbit/s in 630
    assert run(allocator, 5.0, 3_000_000, start=10.0).caps == {"ada": 2}


def held(estimate=300_000):
    """An allocator that moved the camera to its lowest layer at 1.0 s, its first probe due at 3.0 s."""
    allocator = DownlinkAllocator()
    run(allocator, DOWN_AFTER_S, estimate)
    assert allocator.caps == {"ada": 0} and allocator.probe_bps == 0  # not straight after congestion
    assert run(allocator, PROBE_BACKOFF_S - 2 * INTERVAL, estimate, start=DOWN_AFTER_S + INTERVAL).probe_bps == 0
    return allocator, DOWN_AFTER_S + PROBE_BACKOFF_S


def test_a_probe_pads_in_stages_that_double_up_to_what_the_next_layer_adds():
    allocator, started = held()
    rates = []
    for stage in range(len(STAGES)):
        rates.append(run(allocator, PROBE_STAGE_S - INTERVAL, 300_000, start=started + stage * PROBE_STAGE_S).probe_bps)
    assert rates == STAGES and allocator.probes == 1


def test_with_remb_a_probe_the_estimate_does_not_answer_ends_and_the_next_waits_twice_as_long():
    allocator, started = held()
    assert run(allocator, PROBE_S - INTERVAL, 300_000, start=started).probe_bps > 0
    ended = started + PROBE_S
    assert run(allocator, 0.0, 300_000, start=ended).probe_bps == 0
    assert run(allocator, PROBE_BACKOFF_S - 2 * INTERVAL, 300_000, start=ended + INTERVAL).probe_bps == 0
    assert run(allocator, PROBE_S - INTERVAL, 300_000, start=ended + PROBE_BACKOFF_S).probe_bps > 0
    ended += PROBE_BACKOFF_S + PROBE_S
    assert run(allocator, 2 * PROBE_BACKOFF_S - INTERVAL, 300_000, start=ended).probe_bps == 0
    assert run(allocator, 0.0, 300_000, start=ended + 2 * PROBE_BACKOFF_S).probe_bps > 0
    assert allocator.probes == 3


def test_with_remb_a_probe_stops_when_the_estimate_allows_the_layer():
    allocator, started = held()
    run(allocator, 0.0, 300_000, start=started)
    decision = run(allocator, UP_AFTER_S + INTERVAL, 700_000, start=started + INTERVAL)
    # Allowed: the probe for the next layer up starts at once, at a quarter of what is sent now.
    assert decision.caps == {"ada": 1} and allocator.probes == 2
    assert decision.probe_bps == 0.25 * (CAMERA[1] + AUDIO)


def test_a_probe_ends_when_the_round_trip_shows_a_queue_or_a_report_shows_loss():
    allocator, started = held()
    run(allocator, INTERVAL, 300_000, start=started)
    assert allocator.probe_bps > 0
    assert allocator.update(started + 2 * INTERVAL, 300_000, 0.0, AUDIO, [camera()], 0.065).probe_bps > 0  # noise
    assert allocator.update(started + 3 * INTERVAL, 300_000, 0.0, AUDIO, [camera()], 0.09).probe_bps == 0  # a queue

    allocator, started = held()
    assert run(allocator, 0.0, 300_000, start=started).probe_bps > 0
    # A report from before the probe may still show loss: not the probe's.
    assert run(allocator, PROBE_REPORT_S - 2 * INTERVAL, 300_000, loss=0.05, start=started + INTERVAL).probe_bps > 0
    assert run(allocator, 0.0, 300_000, loss=0.05, start=started + PROBE_REPORT_S).probe_bps == 0
    # A link that loses (at random: no queue, so it keeps its layer) is not probed.
    assert run(allocator, 60, 300_000, loss=0.05, start=started + PROBE_REPORT_S + INTERVAL).probe_bps == 0


def test_a_subscription_that_ends_is_forgotten():
    allocator = DownlinkAllocator()
    run(allocator, 2.0, 300_000)
    assert allocator.update(3.0, 300_000, 0.0, AUDIO, []).caps == {}


# Without REMB (Chromium sends none): receiver reports' loss, and probes that lose nothing.
def test_without_an_estimate_loss_moves_the_video_down_to_what_got_through_and_no_further_at_once():
    allocator = DownlinkAllocator()
    assert allocator.update(0.0, None, 0.0, AUDIO, [camera()]).caps == {}  # a clean link: nothing held
    decision = allocator.update(0.5, None, 0.5, AUDIO, [camera()])
    assert decision.caps == {"ada": 1}  # (1.2 M + 40 k) x 0.5 got through: the 500 kbit/s layer fits
    assert allocator.learned_bps == (CAMERA[2] + AUDIO) * 0.5
    # The same report, read again before the next one can have come: not acted on twice.
    assert allocator.update(1.0, None, 0.5, AUDIO, [camera()]).caps == {"ada": 1}
    assert allocator.update(2.0, None, 0.5, AUDIO, [camera()]).caps == {"ada": 0}  # a new report: still lossy


def test_without_an_estimate_a_probe_whose_stages_queue_nothing_and_lose_nothing_moves_the_video_up():
    allocator = DownlinkAllocator()
    allocator.update(0.0, None, 0.6, AUDIO, [camera()], 0.05)
    assert allocator.caps == {"ada": 0}
    assert run(allocator, PROBE_BACKOFF_S - 2 * INTERVAL, None, start=INTERVAL).probe_bps == 0
    started = PROBE_BACKOFF_S
    decision = run(allocator, len(STAGES) * PROBE_STAGE_S - INTERVAL, None, start=started)
    assert decision.caps == {"ada": 0} and decision.probe_bps == STAGES[-1]
    decision = run(allocator, 0.0, None, start=started + len(STAGES) * PROBE_STAGE_S)
    assert decision.caps == {"ada": 1} and decision.probe_bps == 0
    assert allocator.learned_bps == CAMERA[0] + AUDIO + STAGES[-1]


def test_without_an_estimate_a_probe_that_queues_ends_and_the_video_stays():
    allocator = DownlinkAllocator()
    allocator.update(0.0, None, 0.6, AUDIO, [camera()], 0.05)
    run(allocator, PROBE_BACKOFF_S, None, start=INTERVAL)
    assert allocator.probe_bps > 0
    decision = run(allocator, 0.0, None, start=PROBE_BACKOFF_S + INTERVAL, rtt=0.2)
    assert decision.probe_bps == 0 and decision.caps == {"ada": 0}
    assert allocator.learned_bps == (CAMERA[2] + AUDIO) * 0.4  # what got through when it was congested


def fed_run(allocator, seconds, start, queue=0.0):
    """``run`` without REMB, the browser's transport-cc feedback measuring ``queue`` before each update."""
    now, decision = start, None
    while now <= start + seconds + 1e-9:
        allocator.queue_measured(now, queue)
        decision = allocator.update(now, None, 0.0, AUDIO, [camera()], 0.05)
        now += INTERVAL
    return decision


def test_with_transport_cc_a_probe_climbs_a_stage_each_interval_from_half_of_what_is_sent():
    """Feedback ten times a second: each stage lasts one allocation interval, the first half of
    what is sent; the camera is on the next layer up as soon as the last stage has passed."""
    allocator = DownlinkAllocator()
    allocator.queue_measured(0.0, 0.0)
    allocator.update(0.0, None, 0.6, AUDIO, [camera()], 0.05)  # congested: the lowest layer
    assert allocator.caps == {"ada": 0}
    started = PROBE_BACKOFF_S
    fed_run(allocator, PROBE_BACKOFF_S - 2 * INTERVAL, INTERVAL)
    assert allocator.probe_bps == 0
    first = FED_FIRST_SHARE * (CAMERA[0] + AUDIO)
    stages = [fed_run(allocator, 0.0, started + i * INTERVAL).probe_bps for i in range(3)]
    assert stages == [first, 2 * first, CAMERA[1] - CAMERA[0]]
    decision = fed_run(allocator, 0.0, started + 3 * INTERVAL)
    assert decision.caps == {"ada": 1}
    # The probe for the top layer starts at the next update, from half of what is sent now.
    assert fed_run(allocator, 0.0, started + 4 * INTERVAL).probe_bps == FED_FIRST_SHARE * (CAMERA[1] + AUDIO)


def test_with_transport_cc_a_probe_ends_the_moment_the_feedback_shows_a_queue_and_retries_within_seconds():
    allocator = DownlinkAllocator()
    allocator.queue_measured(0.0, 0.0)
    allocator.update(0.0, None, 0.6, AUDIO, [camera()], 0.05)
    fed_run(allocator, PROBE_BACKOFF_S - INTERVAL, INTERVAL)
    assert allocator.probe_bps > 0
    at = PROBE_BACKOFF_S + 0.1
    allocator.queue_measured(at, QUEUE_RISE_S / 2)  # jitter: goes on
    assert allocator.probe_bps > 0
    allocator.queue_measured(at + 0.1, 2 * QUEUE_RISE_S)  # a queue: over, between two updates
    assert allocator.probe_bps == 0 and allocator.caps == {"ada": 0}
    # Failing costs little: the back-off doubles, but only up to FED_BACKOFF_MAX_S.
    now, starts = at + 0.1, []
    while now < at + 40:
        now += INTERVAL
        if fed_run(allocator, 0.0, now).probe_bps:
            starts.append(now)
            allocator.queue_measured(now + 0.1, 2 * QUEUE_RISE_S)
    gaps = [round(b - a, 1) for a, b in zip(starts, starts[1:])]
    assert gaps and max(gaps) <= FED_BACKOFF_MAX_S + INTERVAL and gaps[-1] >= FED_BACKOFF_MAX_S, gaps
    assert allocator.caps == {"ada": 0}


def test_without_fresh_feedback_the_probe_goes_back_to_its_slow_stages():
    allocator = DownlinkAllocator()
    allocator.queue_measured(0.0, 0.0)  # once, long ago
    allocator.update(0.0, None, 0.6, AUDIO, [camera()], 0.05)
    assert run(allocator, 0.0, None, start=5.0).probe_bps == MIN_PROBE_BPS  # a quarter of what is sent, or this
    assert run(allocator, PROBE_STAGE_S - 2 * INTERVAL, None, start=5.0 + INTERVAL).probe_bps == MIN_PROBE_BPS
    assert run(allocator, 0.0, None, start=5.0 + PROBE_STAGE_S).probe_bps == 2 * MIN_PROBE_BPS


def test_loss_without_a_queue_is_not_congestion_unless_heavy():
    """A link that loses at random (no queue: the round trip stays at its floor) keeps its layer
    at 10 % loss; one whose round trip shows a queue, or that loses 20 %, is moved down."""
    allocator = DownlinkAllocator()
    run(allocator, 5.0, None, rtt=0.16)  # the floor: 160 ms
    assert allocator.update(5.5, None, 0.12, AUDIO, [camera()], 0.17).caps == {}
    assert allocator.update(6.0, None, 0.12, AUDIO, [camera()], 0.30).caps == {"ada": 1}  # 140 ms of queue
    allocator = DownlinkAllocator()
    run(allocator, 5.0, None, rtt=0.16)
    assert allocator.update(5.5, None, 0.25, AUDIO, [camera()], 0.16).caps == {"ada": 1}


def test_a_lossy_downlink_is_asked_to_hold_its_video_a_round_trip_more_until_it_has_been_clean_a_while() -> None:
    """Loss in the receiver reports: the subscriber plays its video the round trip (which a
    retransmission takes) plus 60 ms late, two round trips from 3 % of loss on (a NACK or a
    retransmission lost in its turn is then frequent), 100 to 400 ms; the longest asked for stays
    while loss goes on, and it ends 10 s after the last report of loss. A clean link, or no round
    trip measured yet, is asked nothing."""
    playout = PlayoutDelay()
    assert playout.update(0.0, 0.0, 0.16) == 0
    assert playout.update(0.5, 0.02, None) == 0  # no round trip yet: nothing to go by
    assert playout.update(1.0, 0.02, 0.16) == 220
    assert playout.update(1.5, 0.02, 0.01) == 220  # a shorter round trip does not shorten it meanwhile
    assert playout.update(2.0, 0.0, 0.16) == 220
    assert playout.update(1.5 + PLAYOUT_HOLD_S - 0.1, 0.0, 0.16) == 220
    assert playout.update(1.5 + PLAYOUT_HOLD_S, 0.0, 0.16) == 0
    assert playout.update(20.0, 0.05, 0.16) == 380  # 5 % lost: two round trips
    assert playout.update(20.5, 0.02, 0.16) == 380  # the longer stays while loss goes on
    assert playout.update(40.0, 0.3, 2.0) == 400 and playout.update(60.0, 0.3, 0.001) == 100

