"""The captions' Prometheus metrics, observed where caption events reach signaling (the sink
may run in an SFU worker process; its events carry their own timestamps, see sink.py).

Labels stay few and fixed: ``stage`` (endpoint, queue, asr, fanout) and ``kind`` (final,
interim, first_interim); no meeting or participant ever becomes a label.

- ``confmeet_captions_latency_seconds{kind}``: final — from the end of the sound (the arrival
  of the last packet the browser marked as sound) to the caption sent to the seats; interim —
  from the end of the audio it covers; first_interim — from the start of the sound.
- ``confmeet_captions_stage_seconds{stage}``: endpoint — end of the sound → end of the
  utterance (the silence that ends it, and the decoding and VAD on the way); queue — the
  request for ASR → ASR starts; asr — the recognition itself; fanout — the sink's event →
  sent to every seat. A final recognised at a pause started its ASR before the utterance ended:
  its stages overlap, and the latency is less than their sum.
- ``confmeet_captions_total{kind}``: captions sent (final, interim).
- ``confmeet_captions_gaps_total`` and ``confmeet_captions_skipped_seconds_total``: speech never
  transcribed (marked "[…]" in the transcript) and how long it was.
- ``confmeet_captions_interim_off_total``: how often interim captions turned themselves off.

Counted where the sinks run (the SFU workers), summed by the main process (process_metrics.py):

- ``confmeet_captions_asr_queue_utterances`` and ``confmeet_captions_asr_queue_seconds``: final
  utterances waiting for ASR, and their seconds of speech, over every meeting with captions on.
- ``confmeet_captions_utterances_merged_total``: utterances merged into the one queued before them
  (a speaker's consecutive utterances, when ASR falls behind).
"""

from __future__ import annotations

import weakref
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from ..process_metrics import REGISTRY as PROCESS

BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

LATENCY = Histogram("confmeet_captions_latency_seconds", "Caption latency (see appliance/captions/metrics.py)",
                    ["kind"], buckets=BUCKETS)
STAGE = Histogram("confmeet_captions_stage_seconds", "Time a final caption spends in each stage",
                  ["stage"], buckets=BUCKETS)
CAPTIONS = Counter("confmeet_captions", "Captions sent to the seats", ["kind"])
GAPS = Counter("confmeet_captions_gaps", "Speech skipped, marked [...] in the transcript")
SKIPPED = Counter("confmeet_captions_skipped_seconds", "Seconds of speech skipped")
INTERIM_OFF = Counter("confmeet_captions_interim_off", "Times interim captions turned themselves off (busy CPU)")
MERGED = Counter("confmeet_captions_utterances_merged", "Utterances merged into the one queued before them",
                 registry=PROCESS)
SINKS: weakref.WeakSet[Any] = weakref.WeakSet()  # the caption sinks running in this process


class AsrQueues:
    """The ASR queues of this process's caption sinks, at collection time."""

    def collect(self):
        queues = [sink.queue for sink in list(SINKS)]
        yield GaugeMetricFamily("confmeet_captions_asr_queue_utterances", "final utterances waiting for ASR",
                                value=sum(len(q) for q in queues))
        yield GaugeMetricFamily("confmeet_captions_asr_queue_seconds", "seconds of speech waiting for ASR",
                                value=sum(q.waiting_seconds for q in queues))


PROCESS.register(AsrQueues())


def _between(timing: dict[str, Any], start: str, end: str) -> float | None:
    if timing.get(start) and timing.get(end):
        return max(0.0, timing[end] - timing[start])
    return None


def caption_sent(event: dict[str, Any], sent: float, first_interim: bool) -> None:
    """A caption event of the sink went to the seats at ``sent`` (wall clock)."""
    if event.get("gap"):
        GAPS.inc()
        SKIPPED.inc(event.get("dropped_seconds", 0.0))
        return
    timing = {**event.get("timing", {}), "sent": sent}
    if not event.get("final", True):
        CAPTIONS.labels("interim").inc()
        if (latency := _between(timing, "audio_end", "sent")) is not None:
            LATENCY.labels("interim").observe(latency)
        if first_interim and (latency := _between(timing, "sound_start", "sent")) is not None:
            LATENCY.labels("first_interim").observe(latency)
        return
    if not event.get("text"):
        return
    CAPTIONS.labels("final").inc()
    if (latency := _between(timing, "sound_end", "sent")) is not None:
        LATENCY.labels("final").observe(latency)
    for stage, (start, end) in {"endpoint": ("sound_end", "cut"), "queue": ("queued", "asr_start"),
                                "asr": ("asr_start", "asr_end"), "fanout": ("emitted", "sent")}.items():
        if (seconds := _between(timing, start, end)) is not None:
            STAGE.labels(stage).observe(seconds)


def interim_turned_off() -> None:
    INTERIM_OFF.inc()
