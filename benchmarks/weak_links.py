"""Weak links: what one subscriber on a shaped link receives, and what that does to the others
(issue 24's table). A benchmark, not a CI test.

Usage: python benchmarks/weak_links.py [--case cap --case loss --case clean] [--seconds 20]
       [--warmup 10] [--repeat 1] [--json]

Each run is a fresh ``confmeet serve`` (listening on the link's host address, default settings
otherwise: media on the machine's own addresses, two SFU workers on 2 cores) and three Debian
Chromiums (Playwright), each joining one meeting through the web client:
  presenter  sends a 960x540 camera (``--camera``; an ffmpeg testsrc2 clip with motion, 24 fps,
             fed to Chromium's fake capture) and the fake microphone: three simulcast layers,
             240, 480 and 960 px wide;
  A          on the host, a clean link; camera and microphone off;
  B          in a network namespace joined to the host by tests/impair.py's ImpairedLink (a TUN
             relay: this kernel has no netem), camera and microphone off. Cases:
               cap    B's downlink capped at 300 kbit/s (200 ms queue), uplink clean;
               loss   5 % loss and 80 ms delay, each way;
               clean  the same relay, no impairment (the control);
               lift   capped as in ``cap`` until the window starts, then nothing: how long B
                      takes to reach the presenter's top layer;
               busy   clean, and a process spinning on one core through the window: is the
                      presenter's estimate cut when the machine is busy and the network is not?
Every browser runs at nice 10 (on 2 cores a busy browser is read as congestion by the SFU's
estimator); the relay at nice -10. After everyone has joined and ``--warmup`` seconds, each page's
RTCPeerConnection (``window.confmeet.pc``, the web client's own debug handle) is read with
getStats() every second for ``--seconds`` seconds, with /metrics of the appliance and the relay's
counters. Per run:
  A, B       received video fps (framesDecoded), the share of the window frozen (seconds with
             no frame decoded, and Chromium's totalFreezesDuration for the shorter freezes, see
             frozen_seconds), B's mean jitter-buffer delay (jitterBufferDelay over the frames
             it emitted: what a playout delay the SFU asks for lengthens), frame width (the
             most common over the seconds with frames decoded), video packets lost, NACK
             messages and PLIs sent;
  to B, to A packets per second the SFU sent that way: for B the relay's count of packets
             offered to B's downlink (everything, retransmissions and audio included) and the
             share of them the link dropped; for A the packets A's transport received (clean
             link: what was sent);
  presenter  keyframes encoded in the window, frames per second sent, frame width, the
             encoder's quality limitation, the available outgoing bitrate (its estimate, from
             the SFU's transport-cc feedback; REMB before) and its deepest cut (the largest
             fall below the highest estimate before it in the window), PLIs received;
  SFU        video RTP packets forwarded per second (all subscribers), PLIs it sent to the
             presenter, NACKed packets and PLIs it received from subscribers, CPU of its workers.
The 1-minute load average is printed beside each run: the machine is shared, figures from a
loaded machine are what they are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Playwright, expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from appliance_server import Appliance, start_appliance  # noqa: E402
from conftest import stop  # noqa: E402
from e2e.conftest import CHROMIUM, chromium_behind  # noqa: E402
from e2e.meeting_page import PEOPLE, MeetingPage, poll  # noqa: E402
from impair import HOST_ADDRESS, ImpairedLink, Impairment, Traffic  # noqa: E402
from recording.accounts import add_users  # noqa: E402

CASES: dict[str, tuple[str, Impairment, Impairment]] = {
    # name: (what B's link is, downlink, uplink)
    "cap": ("downlink capped at 300 kbit/s", Impairment(rate_kbps=300), Impairment()),
    "loss": ("5 % loss + 80 ms delay each way", Impairment(delay_ms=80, loss=0.05),
             Impairment(delay_ms=80, loss=0.05)),
    "clean": ("no impairment, the control", Impairment(), Impairment()),
    "lift": ("capped at 300 kbit/s, lifted as the window starts", Impairment(rate_kbps=300), Impairment()),
    "busy": ("clean, a CPU hog on one core from the window's start", Impairment(), Impairment()),
}
# Cases whose link changes to this (downlink and uplink) when the window starts.
LIFTED = {"lift": Impairment()}
# Cases with a process spinning on one core through the window (at nice 0, like the appliance).
HOGGED = {"busy"}
HOG = [sys.executable, "-c", "while True: pass"]
BROWSER_NICE = 10
# Opening the meeting, signing in and joining, each step: over 300 kbit/s, or beside other work on
# 2 cores, the page loads slowly (Playwright's default is 30 s).
JOIN_TIMEOUT_S = 60
FREEZE_GAP_S = 0.5  # no frame decoded for longer than this reads as frozen
ROLES = ("presenter", "a", "b")

# One getStats() of the page's peer connection: the video RTP streams, the transport and its
# selected candidate pair, stamped with the page's clock (ms).
READ_STATS = """async () => {
  const pc = window.confmeet.pc;
  if (!pc) return null;
  const all = [];
  (await pc.getStats()).forEach((s) => all.push(s));
  const transports = all.filter((s) => s.type === "transport");
  const selected = new Set(transports.map((t) => t.selectedCandidatePairId));
  return {
    timestamp: performance.timeOrigin + performance.now(),
    inbound: all.filter((s) => s.type === "inbound-rtp" && s.kind === "video"),
    outbound: all.filter((s) => s.type === "outbound-rtp" && s.kind === "video"),
    transports,
    pairs: all.filter((s) => s.type === "candidate-pair" && selected.has(s.id)),
  };
}"""


# ---------------------------------------------------------------------------- samples and figures
@dataclass
class Sample:
    """One second's reading: every page's stats, the SFU's metrics, the link's counters."""

    at: float  # time.monotonic()
    pages: dict[str, dict[str, Any] | None]
    sfu: dict[str, float]
    link: dict[str, dict[str, Any]]


def _largest(streams: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The busiest of a page's video streams (a receive-only page has one; the presenter's camera
    is its only video sender): the one with most ``key``."""
    return max(streams, key=lambda s: s.get(key, 0), default={})


def _delta(first: dict[str, Any], last: dict[str, Any], key: str) -> float:
    return float(last.get(key, 0) - first.get(key, 0))


def _mode(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def frozen_seconds(readings: list[dict[str, Any]], streams: list[dict[str, Any]]) -> float:
    """How long the picture stood still in the window. Chromium adds a freeze to
    totalFreezesDuration only when a frame ends it, all of it at once (also the part before the
    window), and never one still going on: so a second between two readings with no frame
    decoded is frozen whole (a reading is ~1 s apart, longer than a freeze's 500 ms gap); one with
    frames is frozen for what the counter grew by in it, less the stalled seconds just before
    (counted already), and at most its own length."""
    frozen = stalled_run = 0.0
    for a, b, sa, sb in zip(readings, readings[1:], streams, streams[1:], strict=False):
        seconds = (b["timestamp"] - a["timestamp"]) / 1000
        if sb.get("framesDecoded", 0) == sa.get("framesDecoded", 0):
            frozen += seconds
            stalled_run += seconds
            continue
        ended = _delta(sa, sb, "totalFreezesDuration") - stalled_run
        frozen += min(seconds, max(0.0, ended))
        stalled_run = 0.0
    return frozen


def receiver_figures(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """A subscriber's figures over the window, from its per-second getStats readings."""
    streams = [_largest(r["inbound"], "packetsReceived") for r in readings]
    first, last = streams[0], streams[-1]
    seconds = (readings[-1]["timestamp"] - readings[0]["timestamp"]) / 1000
    frozen = frozen_seconds(readings, streams)
    # The size of the frames decoded in the window: frameWidth stays at the last frame's after
    # the frames stop.
    widths = [sb.get("frameWidth") for sa, sb in zip(streams, streams[1:], strict=False)
              if sb.get("framesDecoded", 0) > sa.get("framesDecoded", 0)]
    transports = [_largest(r["transports"], "packetsReceived") for r in readings]
    emitted = _delta(first, last, "jitterBufferEmittedCount")
    return {
        "fps": _delta(first, last, "framesDecoded") / seconds,
        # How long a frame waited in the jitter buffer, on average (a playout delay lengthens it).
        "delay_ms": 1000 * _delta(first, last, "jitterBufferDelay") / emitted if emitted else None,
        "frozen_share": min(1.0, frozen / seconds),
        "freezes": _delta(first, last, "freezeCount"),
        "width": _mode(widths),
        "width_min": min((w for w in widths if w), default=None),
        "packets_lost": _delta(first, last, "packetsLost"),
        "nacks_sent": _delta(first, last, "nackCount"),
        "plis_sent": _delta(first, last, "pliCount"),
        # Received + lost: the video RTP packets sent this way, plus the retransmissions that arrived.
        "video_rtp_pps": (_delta(first, last, "packetsReceived") + _delta(first, last, "packetsLost")) / seconds,
        "transport_pps": _delta(transports[0], transports[-1], "packetsReceived") / seconds,
        "transport_kbps": 8 * _delta(transports[0], transports[-1], "bytesReceived") / seconds / 1000,
    }


def presenter_figures(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """The presenter's camera over the window: its top layer's frame rate and size, keyframes
    and bytes of every layer it sends (a simulcast camera sends up to three, by rid)."""
    streams = [_largest(r["outbound"], "frameWidth") for r in readings]  # the top layer
    first, last = streams[0], streams[-1]
    seconds = (readings[-1]["timestamp"] - readings[0]["timestamp"]) / 1000

    def by_layer(reading: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {s.get("rid") or str(s.get("ssrc", "")): s for s in reading["outbound"]}

    layers_first, layers_last = by_layer(readings[0]), by_layer(readings[-1])
    keyframes = {rid: _delta(layers_first.get(rid, {}), stream, "keyFramesEncoded")
                 for rid, stream in sorted(layers_last.items())}
    estimates = [p["availableOutgoingBitrate"] for r in readings for p in r["pairs"]
                 if p.get("availableOutgoingBitrate") is not None]
    limits = Counter(s.get("qualityLimitationReason") for s in streams if s)
    return {
        "keyframes": max(keyframes.values(), default=0.0),  # a keyframe request makes one on every layer
        "keyframes_by_layer": keyframes,
        "layers": len(layers_last),
        "fps_sent": _delta(first, last, "framesEncoded") / seconds,
        "width": _mode([s.get("frameWidth") for s in streams]),
        "width_min": min((s["frameWidth"] for s in streams if s.get("frameWidth")), default=None),
        "quality_limitation": limits.most_common(1)[0][0] if limits else None,
        "quality_limited_share": sum(n for reason, n in limits.items() if reason not in (None, "none"))
        / max(1, len(streams)),
        "outgoing_kbps": 8 * sum(_delta(layers_first.get(rid, {}), stream, "bytesSent")
                                 for rid, stream in layers_last.items()) / seconds / 1000,
        "estimate_kbps": statistics.median(estimates) / 1000 if estimates else None,
        "estimate_min_kbps": min(estimates) / 1000 if estimates else None,
        "estimate_cut": estimate_cut(estimates),
        "plis_received": sum(_delta(layers_first.get(rid, {}), stream, "pliCount")
                             for rid, stream in layers_last.items()),
        "nacks_received": _delta(first, last, "nackCount"),
    }


def estimate_cut(estimates: list[float]) -> float | None:
    """The deepest fall of an estimate below its highest value before, as a share of that value."""
    if not estimates:
        return None
    highest, cut = estimates[0], 0.0
    for estimate in estimates:
        highest = max(highest, estimate)
        cut = max(cut, 1 - estimate / highest)
    return cut


def sfu_figures(first: Sample, last: Sample) -> dict[str, Any]:
    seconds = last.at - first.at

    def delta(name: str) -> float:
        return last.sfu.get(name, 0.0) - first.sfu.get(name, 0.0)

    return {
        "video_forwarded_pps": delta('confmeet_sfu_forwarded_packets_total{kind="video"}') / seconds,
        "plis_to_publishers": delta("confmeet_sfu_keyframe_requests_total"),
        "nacked_packets_received": delta('confmeet_sfu_rtcp_feedback_total{type="nack"}'),
        "plis_received": delta('confmeet_sfu_rtcp_feedback_total{type="pli"}'),
        "cpu_share": delta("confmeet_sfu_worker_cpu_seconds_total") / seconds,
        "layer_switches": delta("confmeet_sfu_layer_switches_total"),
        "probes": delta("confmeet_sfu_downlink_probes_total"),
        "padding_kbps": 8 * delta("confmeet_sfu_padding_bytes_total") / seconds / 1000,
    }


def link_figures(first: Sample, last: Sample) -> dict[str, Any]:
    """What was offered to B's downlink per second, and the share the link dropped."""
    seconds = last.at - first.at
    down0, down1 = Traffic(**first.link["down"]), Traffic(**last.link["down"])
    offered = down1.packets - down0.packets
    dropped = (down1.lost_packets + down1.overflow_packets) - (down0.lost_packets + down0.overflow_packets)
    return {"to_b_pps": offered / seconds, "to_b_kbps": 8 * (down1.bytes - down0.bytes) / seconds / 1000,
            "to_b_dropped_share": dropped / offered if offered else 0.0}


def figures(samples: list[Sample]) -> dict[str, Any]:
    """The window's figures from its samples (the first is the window's start)."""
    readings = {role: [s.pages[role] for s in samples if s.pages.get(role)] for role in ROLES}
    for role, got in readings.items():
        if len(got) < 2:
            raise RuntimeError(f"{role}: fewer than two getStats readings in the window")
    return {"b": receiver_figures(readings["b"]), "a": receiver_figures(readings["a"]),
            "presenter": presenter_figures(readings["presenter"]),
            "sfu": sfu_figures(samples[0], samples[-1]), "link": link_figures(samples[0], samples[-1])}


def parse_metrics(text: str) -> dict[str, float]:
    """The SFU's counters in Prometheus text, keyed ``name{label="value"}`` (worker CPU summed)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("confmeet_sfu_"):
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "worker"}
            named = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            key = f"{sample.name}{{{named}}}" if named else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


# ---------------------------------------------------------------------------- running a case
def camera_clip(path: Path, size: str, seconds: int = 6) -> Path:
    """``size`` (WxH) at 24 fps with motion everywhere (ffmpeg's testsrc2), as y4m for Chromium."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=24:duration={seconds}", "-pix_fmt", "yuv420p", str(path)],
                   check=True)
    return path


def read_sample(pages: dict[str, MeetingPage], app: Appliance, metrics_token: str, link: ImpairedLink) -> Sample:
    at = time.monotonic()
    stats = {role: page.page.evaluate(READ_STATS) for role, page in pages.items()}
    r = httpx.get(f"{app.url}/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=5)
    r.raise_for_status()
    traffic = link.traffic()
    return Sample(at, stats, parse_metrics(r.text), {d: asdict(t) for d, t in traffic.items()})


@dataclass
class Run:
    case: str
    number: int
    figures: dict[str, Any] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    b_first_frame_s: float | None = None  # after B's join
    b_top_layer_s: float | None = None  # from the window's start to B's first reading of the top layer
    b_seconds: list[str] = field(default_factory=list)  # B second by second: "width/frames", "!" a PLI sent
    error: str | None = None


def run_case(playwright: Playwright, case: str, number: int, args: argparse.Namespace, scratch: Path,
             camera: Path, log: Console) -> Run:
    _, downlink, uplink = CASES[case]
    run = Run(case, number)
    work = Path(tempfile.mkdtemp(prefix=f"{case}-{number}-", dir=scratch))
    metrics_token = os.urandom(16).hex()
    with ExitStack() as stack:
        link = stack.enter_context(ImpairedLink("cm-weak", downlink, uplink=uplink))
        app = start_appliance(work / "appliance", timeout=90, host=HOST_ADDRESS, metrics_token=metrics_token)
        stack.callback(stop, app.proc)
        add_users(app, {name: (PEOPLE[name].email, PEOPLE[name].password) for name in ("ada", "grace", "linus")})
        token = app.login(PEOPLE["ada"].email, PEOPLE["ada"].password)["access_token"]
        r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": f"Weak links: {case}"},
                       headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        code = r.json()["code"]

        niced = ["nice", "-n", str(BROWSER_NICE)]
        browsers = {role: stack.enter_context(chromium_behind(playwright, prefix, work, camera, app.url))
                    for role, prefix in (("presenter", niced), ("a", niced), ("b", [*niced, *link.command([])]))}
        people = {"presenter": "ada", "a": "grace", "b": "linus"}
        pages = {role: MeetingPage(browsers[role], app.url, PEOPLE[people[role]]) for role in ROLES}
        for page in pages.values():
            stack.callback(page.close)
            page.page.set_default_timeout(JOIN_TIMEOUT_S * 1000)
        for role in ROLES:
            try:
                pages[role].join(code, publish=role == "presenter")
            except Exception as exc:
                raise RuntimeError(f"{role} did not join: {str(exc).splitlines()[0]}") from exc
            log.print(f"  {case} #{number}: {role} joined", style="dim")
        joined = time.monotonic()
        try:
            poll(lambda: _largest((pages["b"].page.evaluate(READ_STATS) or {}).get("inbound", []),
                                  "framesDecoded").get("framesDecoded", 0) > 0,
                 "B's first frame", timeout=args.warmup, interval=0.25)
            run.b_first_frame_s = time.monotonic() - joined
        except AssertionError:
            pass  # no frame yet: the window says how B fares
        time.sleep(max(0.0, joined + args.warmup - time.monotonic()))

        run.load_before = os.getloadavg()
        if case in LIFTED:
            link.change(LIFTED[case], uplink=LIFTED[case])
        if case in HOGGED:
            hog = subprocess.Popen(HOG)
            stack.callback(hog.wait)
            stack.callback(hog.kill)
        samples = [read_sample(pages, app, metrics_token, link)]
        top = max((s.get("frameWidth") or 0 for s in (samples[0].pages["presenter"] or {}).get("outbound", [])),
                  default=0)
        for second in range(1, args.seconds + 1):
            time.sleep(max(0.0, samples[0].at + second - time.monotonic()))
            samples.append(read_sample(pages, app, metrics_token, link))
            width = _largest((samples[-1].pages["b"] or {}).get("inbound", []), "packetsReceived").get("frameWidth")
            if run.b_top_layer_s is None and top and width == top:
                run.b_top_layer_s = samples[-1].at - samples[0].at
        run.load_after = os.getloadavg()
        run.figures = figures(samples)
        run.b_seconds = b_seconds(samples)
        errors = [f"{role}: {e}" for role, page in pages.items() for e in page.errors]
        if errors:
            run.error = "; ".join(errors)
    output = (work / "appliance" / "serve.log").read_text()
    if "Traceback" in output:
        run.error = (run.error + "; " if run.error else "") + f"Traceback in {work / 'appliance' / 'serve.log'}"
    return run


# ---------------------------------------------------------------------------- report
def b_seconds(samples: list[Sample]) -> list[str]:
    """B's video second by second: the width decoded and the frames decoded in it, "!" for each
    PLI it sent (a picture it could not decode), "fN" when a freeze of N ms ended in it, "r" for
    each retransmission to B the link dropped (a packet of its video's RTX SSRC: that packet needs
    another round trip) and "n" for each RTCP packet from B it dropped (one may have carried a
    NACK), so a freeze can be placed against the switches and the losses."""
    streams = [_largest((s.pages["b"] or {}).get("inbound", []), "packetsReceived") for s in samples]
    down, up = samples[-1].link["down"], samples[-1].link["up"]
    rtx = {str(s["rtxSsrc"]) for s in streams if s.get("rtxSsrc")}
    retransmissions = [at for ssrc in rtx for at in down.get("rtp_dropped_at", {}).get(ssrc, [])]
    feedback = up.get("rtcp_dropped_at", [])
    out = []
    for (sa, a), (sb, b) in pairwise(zip(samples, streams, strict=True)):
        frozen_ms = round(1000 * _delta(a, b, "totalFreezesDuration"))
        out.append(f"{b.get('frameWidth') or 0}/{int(_delta(a, b, 'framesDecoded'))}" + "!" * int(_delta(a, b, "pliCount"))
                   + (f"f{frozen_ms}" if frozen_ms else "")
                   + "r" * sum(1 for at in retransmissions if sa.at < at <= sb.at)
                   + "n" * sum(1 for at in feedback if sa.at < at <= sb.at))
    return out


def _n(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _px(figures: dict[str, Any]) -> str:
    if figures["width"] is None:
        return "–"
    low = figures["width_min"]
    return f"{figures['width']} px" + (f" (min {low})" if low is not None and low != figures["width"] else "")


def _keyframes(figures: dict[str, Any]) -> str:
    layers = figures.get("keyframes_by_layer") or {}
    if len(layers) < 2:
        return _n(figures["keyframes"])
    return f"{figures['keyframes']:.0f} ({', '.join(f'{rid} {n:.0f}' for rid, n in layers.items())})"


def tables(runs: list[Run]) -> list[Table]:
    """Issue 24's table, in two: the subscribers' side, and the presenter's and the SFU's."""
    subscribers = Table(title="Subscribers over the window (B on the shaped link, A on a clean one)")
    for column in ("B's link", "run", "B fps", "B frozen", "B delay", "B width", "B lost", "B NACKs", "B PLIs",
                   "to B pkt/s, kbit/s (dropped)", "A fps", "A frozen", "A width", "to A pkt/s, kbit/s"):
        subscribers.add_column(column, justify="left" if column in ("B's link", "B width", "A width") else "right")
    sender = Table(title="Presenter and SFU over the window")
    for column in ("B's link", "run", "keyframes", "fps sent", "width", "limited by", "sent kbit/s",
                   "estimate kbit/s (min, deepest cut)", "PLIs in", "SFU video pkt/s", "SFU PLIs out", "SFU NACKed in",
                   "layer switches", "probes, padding kbit/s", "SFU CPU", "load 1 min"):
        sender.add_column(column, justify="left" if column in ("B's link", "width", "limited by") else "right")
    for run in runs:
        label = CASES[run.case][0]
        if not run.figures:
            subscribers.add_row(label, str(run.number), "failed (below)")
            sender.add_row(label, str(run.number), "failed (below)")
            continue
        b, a, p, sfu, link = (run.figures[k] for k in ("b", "a", "presenter", "sfu", "link"))
        subscribers.add_row(
            label, str(run.number), _n(b["fps"], 1), _n(100 * b["frozen_share"], 0, " %"), _n(b["delay_ms"], 0, " ms"), _px(b),
            _n(b["packets_lost"]), _n(b["nacks_sent"]), _n(b["plis_sent"]),
            f"{link['to_b_pps']:.0f}, {link['to_b_kbps']:.0f} ({100 * link['to_b_dropped_share']:.0f} %)",
            _n(a["fps"], 1), _n(100 * a["frozen_share"], 0, " %"), _px(a),
            f"{a['transport_pps']:.0f}, {a['transport_kbps']:.0f}")
        sender.add_row(
            label, str(run.number), _keyframes(p), _n(p["fps_sent"], 1), _px(p), str(p["quality_limitation"]),
            _n(p["outgoing_kbps"]),
            f"{_n(p['estimate_kbps'])} ({_n(p['estimate_min_kbps'])}, {_n(100 * (p['estimate_cut'] or 0))} %)",
            _n(p["plis_received"]), _n(sfu["video_forwarded_pps"]), _n(sfu["plis_to_publishers"]),
            _n(sfu["nacked_packets_received"]), _n(sfu.get("layer_switches")),
            f"{_n(sfu.get('probes'))}, {_n(sfu.get('padding_kbps'))}", _n(100 * sfu["cpu_share"], 0, " %"),
            f"{run.load_before[0]:.1f} → {run.load_after[0]:.1f}")
    return [subscribers, sender]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    described = ", ".join(f"{name} ({label})" for name, (label, *_) in CASES.items()).replace("%", "%%")
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help=f"B's link: {described}; repeat the option for several (default: all three, in order)")
    parser.add_argument("--seconds", type=int, default=20, help="the measured window of each run (default: 20)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="seconds after the last join before the window (default: 10)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case, in turns (default: 1)")
    parser.add_argument("--camera", default="960x540",
                        help="the presenter's camera, WxH; the web client sends three simulcast layers "
                             "from 960x540 up, one stream below (default: 960x540, the smallest with three)")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as JSON on stdout (the tables go to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("network namespaces and TUN devices need root")
    cases = args.case or list(CASES)
    log = Console(stderr=True)
    scratch = Path(tempfile.mkdtemp(prefix="weak-links-"))
    camera = camera_clip(scratch / "camera.y4m", args.camera)
    expect.set_options(timeout=JOIN_TIMEOUT_S * 1000)
    runs: list[Run] = []
    with sync_playwright() as playwright:
        for number in range(1, args.repeat + 1):
            for case in cases:
                log.print(f"{case} #{number}: {CASES[case][0]} (load average {os.getloadavg()[0]:.2f})")
                try:
                    runs.append(run_case(playwright, case, number, args, scratch, camera, log))
                except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
                    log.print(f"  {case} #{number} failed: {exc}", style="red")
                    runs.append(Run(case, number, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
    camera.unlink()
    if any(run.error for run in runs):
        log.print(f"appliance logs kept under {scratch}")
    else:
        shutil.rmtree(scratch)
    if args.json:
        print(json.dumps([asdict(run) for run in runs], indent=2))
    console = Console(width=max(240, Console().width), stderr=args.json)
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    console.print(f"{version}, {args.warmup} s warm-up, {args.seconds} s window, {os.cpu_count()} CPUs")
    for table in tables(runs):
        console.print(table)
    for run in runs:
        if run.figures:
            after = "never in the window" if run.b_top_layer_s is None else f"{run.b_top_layer_s:.1f} s after"
            lifted = f"B on the presenter's top layer {after} its cap was lifted; " if run.case in LIFTED else ""
            console.print(f"{run.case} #{run.number}: {lifted}B each second (width/frames decoded, ! a PLI, fN a "
                          f"freeze of N ms ended, r a retransmission dropped, n an RTCP packet from B dropped): "
                          f"{' '.join(run.b_seconds)}")
        if run.error:
            console.print(f"{run.case} #{run.number}: {run.error}", style="red")
    return 1 if any(run.error for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
