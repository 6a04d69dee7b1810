"""The retransmission budget over what the forwarding path in C counts (_fastpath.Down notes its
byte count every 0.1 s at most; the budget reads the count at its window's start)."""

from __future__ import annotations

from appliance.sfu import _fastpath
from appliance.sfu.forwarder import RtpRewriter
from appliance.sfu.retransmissions import RetransmissionBudget


def _down() -> tuple[_fastpath.Down, list[bytes]]:
    down = _fastpath.Down(0x1234, True, RtpRewriter(90000), _fastpath.Counters())
    down.payload_type = 96
    down.rewriter.restart(1, 0, 0.0)
    sent: list[bytes] = []
    down.bind_output(sent.append)
    return down, sent


def forward(down: _fastpath.Down, start: float, end: float, bytes_per_second: int) -> None:
    """Forwarding at a steady rate from ``start`` to ``end``, a packet every 10 ms."""
    t = start
    while t < end:
        seq = (down.last_sequence or 0) + 1
        down.forward(bytes(bytes_per_second // 100), False, seq, seq * 900, -1, 0, [], t, 0)
        t = round(t + 0.01, 6)


def test_retransmissions_get_a_share_of_the_last_seconds_media() -> None:
    down, sent = _down()
    budget = RetransmissionBudget(share=0.15, window=1.0)
    forward(down, 0.0, 2.0, 100_000)  # 100 kB/s: 15 kB of retransmissions a second
    assert len(sent) == 200 and down.bytes == 200_000
    allowed = sum(budget.allow(2.0, 1000, down) for _ in range(40))
    assert 14 <= allowed <= 17  # the window is known to a sample interval (0.1 s)
    forward(down, 2.0, 2.5, 100_000)
    assert budget.allow(2.5, 1000, down) is False  # still within the same second
    forward(down, 2.5, 3.05, 100_000)
    assert sum(budget.allow(3.05, 1000, down) for _ in range(40)) >= 14  # a new second, a new share


def test_nothing_forwarded_lately_means_nothing_to_retransmit() -> None:
    down, _ = _down()
    budget = RetransmissionBudget(share=0.15, window=1.0)
    assert budget.allow(0.0, 100, down) is False
    forward(down, 0.0, 1.0, 100_000)
    assert budget.allow(5.0, 100, down) is False  # forwarding stopped four seconds ago
    assert budget.allow(5.0, 100, down, always=True) is True  # a keyframe's packet: sent all the same
    forward(down, 5.0, 5.5, 100_000)  # resumed: half a second of media counts
    assert 6 <= sum(budget.allow(5.5, 1000, down) for _ in range(20)) <= 8


def test_the_window_starts_at_the_count_noted_last_before_it() -> None:
    down, _ = _down()
    assert down.window_base(0.0) is None  # nothing forwarded
    forward(down, 10.0, 11.0, 100_000)
    # Noted at 10.0, 10.1, ... (at the first packet at or after each tenth), 1000 bytes a packet.
    assert down.window_base(9.5) == 0  # the track began within the window
    forward(down, 11.0, 12.0, 100_000)
    assert down.window_base(11.05) == 101_000  # noted at 11.0, its packet counted
    assert down.window_base(11.95) is None  # nothing noted since 11.9
