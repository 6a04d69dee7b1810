"""The SFU's counters of forwarded packets, keyframe requests, retransmissions and send errors add
up over workers and reach /metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

from appliance.ops import SfuCollector
from appliance.sfu.stats import SfuStats


def test_keyframe_requests_and_retransmissions_add_up_and_are_exported() -> None:
    one, two = SfuStats(), SfuStats()
    one.forwarded.add(True, 10, 12_000)  # as the forwarding path counts (_fastpath.c)
    two.forwarded.add(False, 3, 300, 2)
    one.keyframe_requests["honoured"] += 2
    two.keyframe_requests["throttled"] += 5
    one.retransmissions["sent"] += 7
    two.retransmissions["refused"] += 40
    total = SfuStats.total([one.snapshot(), two.snapshot()])
    assert total.keyframe_requests == {"honoured": 2, "throttled": 5}
    assert total.retransmissions == {"sent": 7, "refused": 40}
    assert (total.forwarded_packets, total.forwarded_bytes) == ({"audio": 3, "video": 10}, {"audio": 300, "video": 12_000})
    assert total.forwarded.send_errors == 2
    assert SfuStats.total([two.snapshot()], gauges=False).retransmissions["refused"] == 40  # counters survive
    assert json.loads(json.dumps(total.snapshot())) == total.snapshot()

    host = SimpleNamespace(stats=total, rooms={}, restarts=0, worker_usage=dict, room_reports=dict,
                           worker_metrics=list)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in SfuCollector(host).collect() for s in family.samples}
    assert samples[("confmeet_sfu_subscriber_keyframe_requests_total", (("outcome", "throttled"),))] == 5
    assert samples[("confmeet_sfu_retransmissions_total", (("outcome", "refused"),))] == 40
    assert samples[("confmeet_sfu_retransmissions_total", (("outcome", "sent"),))] == 7
    assert samples[("confmeet_sfu_forwarded_packets_total", (("kind", "video"),))] == 10
    assert samples[("confmeet_sfu_send_errors_total", ())] == 2
