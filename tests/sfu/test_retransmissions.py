from __future__ import annotations

from appliance.sfu.retransmissions import RetransmissionBudget


def forward(budget: RetransmissionBudget, start: float, end: float, bytes_per_second: int, total: int) -> int:
    """Forwarding at a steady rate from ``start`` to ``end``, sampled as the forwarding path does."""
    t = start
    while t < end:
        total += bytes_per_second // 100
        if t >= budget.next_sample:
            budget.sample(t, total)
        t = round(t + 0.01, 6)
    return total


def test_retransmissions_get_a_share_of_the_last_seconds_media() -> None:
    budget = RetransmissionBudget(share=0.15, window=1.0)
    total = forward(budget, 0.0, 2.0, 100_000, 0)  # 100 kB/s: 15 kB of retransmissions a second
    allowed = sum(budget.allow(2.0, 1000, total) for _ in range(40))
    assert 14 <= allowed <= 17  # the window is known to a sample interval (0.1 s)
    assert budget.allow(2.5, 1000, total + 50_000) is False  # still within the same second
    total = forward(budget, 2.0, 3.05, 100_000, total)
    assert sum(budget.allow(3.05, 1000, total) for _ in range(40)) >= 14  # a new second, a new share


def test_nothing_forwarded_lately_means_nothing_to_retransmit() -> None:
    budget = RetransmissionBudget(share=0.15, window=1.0)
    assert budget.allow(0.0, 100, 0) is False
    total = forward(budget, 0.0, 1.0, 100_000, 0)
    assert budget.allow(5.0, 100, total) is False  # forwarding stopped four seconds ago
    total = forward(budget, 5.0, 5.5, 100_000, total)  # resumed: half a second of media counts
    assert 7 <= sum(budget.allow(5.5, 1000, total) for _ in range(20)) <= 8
