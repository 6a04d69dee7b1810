"""Operations endpoints: /healthz (alive), /readyz (every store checked), /metrics (Prometheus,
for the monitoring server only)."""

from __future__ import annotations

import re
import secrets
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, raw

from . import __version__, logs, process_metrics
from .api.endpoint import bearer_token
from .errors import Forbidden
from .sfu.stats import Durations
from .throttle import client_address

REQUESTS = Counter("confmeet_http_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
LATENCY = Histogram("confmeet_http_request_duration_seconds", "HTTP request latency",
                    ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

# A client's (or proxy's) X-Request-ID is kept when it looks like an id; otherwise one is made.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class SfuCollector:
    """Exports the SFU's own counters at scrape time (the SFU keeps plain numbers)."""

    def __init__(self, host) -> None:
        self.host = host

    def collect(self):
        snap = self.host.stats.snapshot()
        packets = CounterMetricFamily("confmeet_sfu_forwarded_packets", "RTP packets forwarded to subscribers",
                                      labels=["kind"])
        octets = CounterMetricFamily("confmeet_sfu_forwarded_bytes", "RTP bytes forwarded to subscribers",
                                     labels=["kind"])
        for kind in ("audio", "video"):
            packets.add_metric([kind], snap["forwarded_packets"].get(kind, 0))
            octets.add_metric([kind], snap["forwarded_bytes"].get(kind, 0))
        yield packets
        yield octets
        yield CounterMetricFamily("confmeet_sfu_send_errors",
                                  "Forwarded datagrams lost before the wire: the kernel refused them (a full socket "
                                  "buffer) or SRTP could not protect them", value=snap.get("send_errors", 0))
        yield CounterMetricFamily("confmeet_sfu_keyframe_requests", "PLIs sent to publishers",
                                  value=snap["plis_sent"])
        yield CounterMetricFamily("confmeet_sfu_layer_switches",
                                  "Subscriptions moved from one simulcast layer to another",
                                  value=snap.get("layer_switches", 0))
        yield CounterMetricFamily("confmeet_sfu_downlink_probes",
                                  "Probes of a subscriber's downlink started (padding sent to see whether a "
                                  "higher layer fits)", value=snap.get("probes", 0))
        yield CounterMetricFamily("confmeet_sfu_padding_bytes",
                                  "Bytes sent as probe padding (packets already sent, again over RTX)",
                                  value=snap.get("padding_bytes", 0))
        yield CounterMetricFamily("confmeet_sfu_duplicate_packets_dropped",
                                  "Publishers' retransmissions of packets the SFU already had (the padding a "
                                  "browser sends while it probes its uplink), not forwarded",
                                  value=snap.get("duplicates_dropped", 0))
        yield from _by_label(CounterMetricFamily, "confmeet_sfu_subscriber_keyframe_requests",
                             "PLIs and FIRs from subscribers: honoured (passed on to the publisher) or throttled "
                             "(held to the subscriber's budget)", "outcome", snap["keyframe_requests"])
        yield from _by_label(CounterMetricFamily, "confmeet_sfu_retransmissions",
                             "NACKed packets the SFU still had: sent again, or refused (over the subscriber's "
                             "retransmission budget)", "outcome", snap["retransmissions"])
        yield from _by_label(CounterMetricFamily, "confmeet_sfu_received_packets",
                             "RTP packets received from publishers", "kind", snap["received_packets"])
        yield from _by_label(CounterMetricFamily, "confmeet_sfu_received_bytes",
                             "RTP payload bytes received from publishers", "kind", snap["received_bytes"])
        yield from _by_label(CounterMetricFamily, "confmeet_sfu_rtcp_feedback",
                             "RTCP feedback from subscribers: NACKed packets, PLIs, FIRs", "type",
                             snap["feedback_received"])
        yield from _by_label(CounterMetricFamily, "confmeet_sfu_connection_failures",
                             "media connections that failed, by the layer that failed (ice, dtls)", "cause",
                             snap["connection_failures"])
        yield from _by_label(GaugeMetricFamily, "confmeet_sfu_published_tracks", "tracks published, by kind",
                             "kind", snap["published_tracks"])
        yield from _by_label(GaugeMetricFamily, "confmeet_sfu_subscribed_tracks",
                             "tracks forwarded to subscribers (one per subscriber and track), by kind", "kind",
                             snap["subscribed_tracks"])
        yield _histogram("confmeet_sfu_keyframe_wait_seconds",
                         "a video subscription's start to its first frame forwarded (the wait for a keyframe)",
                         snap["keyframe_wait"])
        yield _histogram("confmeet_sfu_join_to_first_media_seconds",
                         "a participant's join of the SFU to the first media forwarded to it", snap["first_media"])
        yield GaugeMetricFamily("confmeet_sfu_active_peers", "participants with a peer connection",
                                value=snap["active_peers"])
        yield GaugeMetricFamily("confmeet_sfu_rooms", "rooms with media", value=len(self.host.rooms))
        cpu = CounterMetricFamily("confmeet_sfu_worker_cpu_seconds", "CPU time of each SFU worker process",
                                  labels=["worker"])
        forwarded = CounterMetricFamily("confmeet_sfu_worker_forwarded_packets",
                                        "RTP packets each SFU worker process forwarded to subscribers", labels=["worker"])
        for worker, (seconds, packets) in self.host.worker_usage().items():
            cpu.add_metric([str(worker)], seconds)
            forwarded.add_metric([str(worker)], packets)
        yield cpu
        yield forwarded
        yield CounterMetricFamily("confmeet_sfu_worker_restarts", "SFU worker processes that died and were replaced",
                                  value=self.host.restarts)
        yield from room_metrics(self.host.room_reports())
        # Inference and the like, counted in this process and in each worker (process_metrics.py).
        yield from process_metrics.merged([process_metrics.snapshot(), *self.host.worker_metrics()])


def _by_label(family, name: str, documentation: str, label: str, values: dict[str, int]):
    metric = family(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    yield metric


def _histogram(name: str, documentation: str, snapshot: dict) -> HistogramMetricFamily:
    durations = Durations()
    durations.add(snapshot)
    return HistogramMetricFamily(name, documentation, buckets=durations.cumulative(), sum_value=durations.sum)


# Per room (the room label is the meeting's id): low-rate series, one of each per live room.
ROOM_COUNTERS = {"received_bytes": ("confmeet_room_received_bytes", "media payload bytes the room's publishers sent"),
                 "forwarded_bytes": ("confmeet_room_forwarded_bytes", "media payload bytes forwarded to the room's subscribers"),
                 "downlink_packets_sent": ("confmeet_room_downlink_packets_sent",
                                           "RTP packets the SFU sent on the room's downlinks"),
                 "downlink_packets_lost": ("confmeet_room_downlink_packets_lost",
                                           "packets of the room's downlinks that the subscribers' RTCP receiver "
                                           "reports count as lost")}
ROOM_GAUGES = {"participants": ("confmeet_room_participants", "participants with media in the room"),
               "downlink_jitter_seconds": ("confmeet_room_downlink_jitter_seconds",
                                           "mean jitter on the room's downlinks (RTCP receiver reports)"),
               "downlink_estimate_min_bps": ("confmeet_room_downlink_estimate_min_bits_per_second",
                                             "the lowest downlink bitrate a subscriber of the room allows "
                                             "(its browser's latest REMB)"),
               "rtt_seconds": ("confmeet_room_rtt_seconds",
                               "mean round-trip time between the SFU and the room's participants (ICE checks)")}


def room_metrics(reports: dict[str, dict]):
    for key, (name, documentation) in ROOM_COUNTERS.items():
        family = CounterMetricFamily(name, documentation, labels=["room"])
        for room, report in reports.items():
            family.add_metric([room], report[key])
        yield family
    for key, (name, documentation) in ROOM_GAUGES.items():
        family = GaugeMetricFamily(name, documentation, labels=["room"])
        for room, report in reports.items():
            if report[key] is not None:
                family.add_metric([room], report[key])
        yield family


_sfu_collector: SfuCollector | None = None


def install_sfu_metrics(host) -> None:
    global _sfu_collector
    if _sfu_collector is not None:
        REGISTRY.unregister(_sfu_collector)
    _sfu_collector = SfuCollector(host)
    REGISTRY.register(_sfu_collector)


def install_ops(app: Sanic) -> None:
    @app.on_request(priority=100)
    async def _start_timer(request: Request) -> None:
        request.ctx.started = time.perf_counter()
        request.ctx.request_id = request_id(request)
        # Every log line of this request names it (and no meeting until signaling binds one).
        logs.bind(request_id=request.ctx.request_id, meeting_id=None, participant_id=None)

    @app.on_response(priority=100)
    async def _observe(request: Request, response: HTTPResponse) -> None:
        if hasattr(request.ctx, "request_id"):
            response.headers["X-Request-ID"] = request.ctx.request_id
        started = getattr(request.ctx, "started", None)
        if started is None:
            return
        # The route pattern, never the raw path: ids in paths would explode the label space.
        route = request.route.path if request.route else "unmatched"
        route = "/" + route.lstrip("/")
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status)).inc()

    @app.get("/healthz", name="healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return json({"status": "ok", "version": __version__})

    @app.get("/readyz", name="readyz")
    async def readyz(request: Request) -> HTTPResponse:
        stores = await request.app.ctx.services.stores.check()
        ready = all(item["ok"] for item in stores.values())
        return json({"status": "ready" if ready else "not_ready", "stores": stores},
                    status=200 if ready else 503)

    @app.get("/metrics", name="metrics")
    async def metrics(request: Request) -> HTTPResponse:
        """For Prometheus only: the addresses in ``metrics_addresses`` (loopback by default), or
        whoever sends ``Authorization: Bearer <metrics_token>``."""
        settings = request.app.ctx.settings
        bearer_ok = bool(settings.metrics_token) and secrets.compare_digest(
            bearer_token(request).encode("utf-8", "surrogateescape"), settings.metrics_token.encode())
        if not bearer_ok and client_address(request) not in settings.metrics_addresses:
            raise Forbidden("metrics are for the monitoring server: scrape from an address in "
                            "'metrics_addresses', or send 'Authorization: Bearer <metrics_token>'")
        return raw(generate_latest(), content_type=CONTENT_TYPE_LATEST)
