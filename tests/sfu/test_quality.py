from __future__ import annotations

import pytest

from appliance.sfu.quality import Quality


@pytest.mark.parametrize(("loss", "jitter_ms", "level"), [
    (0.0, 5.0, "good"), (0.019, 29.9, "good"), (0.02, 5.0, "fair"), (0.0, 30.0, "fair"),
    (0.099, 99.0, "fair"), (0.10, 5.0, "poor"), (0.0, 150.0, "poor")])
def test_grades(loss: float, jitter_ms: float, level: str) -> None:
    assert Quality.grade(loss, jitter_ms).level == level


def test_described_rounded() -> None:
    assert Quality.grade(0.01234, 12.345).describe() == {"quality": "good", "loss": 0.012, "jitter_ms": 12.3}
