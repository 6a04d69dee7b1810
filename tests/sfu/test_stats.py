"""The SFU's counters of keyframe requests and retransmissions add up over workers and reach /metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

from appliance.ops import SfuCollector
from appliance.sfu.stats import SfuStats


def test_keyframe_requests_and_retransmissions_add_up_and_are_exported() -> None:
    one, two = SfuStats(), SfuStats()
    one.keyframe_requests["honoured"] += 2
    two.keyframe_requests["throttled"] += 5
    one.retransmissions["sent"] += 7
    two.retransmissions["refused"] += 40
    total = SfuStats.total([one.snapshot(), two.snapshot()])
    assert total.keyframe_requests == {"honoured": 2, "throttled": 5}
    assert total.retransmissions == {"sent": 7, "refused": 40}
    assert SfuStats.total([two.snapshot()], gauges=False).retransmissions["refused"] == 40  # counters survive
    assert json.loads(json.dumps(total.snapshot())) == total.snapshot()

    host = SimpleNamespace(stats=total, rooms={}, restarts=0, worker_usage=dict, room_reports=dict,
                           worker_metrics=list)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in SfuCollector(host).collect() for s in family.samples}
    assert samples[("confmeet_sfu_subscriber_keyframe_requests_total", (("outcome", "throttled"),))] == 5
    assert samples[("confmeet_sfu_retransmissions_total", (("outcome", "refused"),))] == 40
    assert samples[("confmeet_sfu_retransmissions_total", (("outcome", "sent"),))] == 7
