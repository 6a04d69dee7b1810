"""What noise suppression costs a participant's browser: Chromium's CPU time with RNNoise in the
microphone's path, beside the same microphone without it.

Usage: python benchmarks/noise_bench.py [--seconds 30] [--participants 1] [--rounds 2] [--json]

Headless Debian Chromium plays a noisy speech file (tests/e2e/noisy_speech.py: espeak-ng speech,
white noise 10 dB below it) as its fake microphone. Each page is one participant: it opens the
microphone as the meeting page does (echoCancellation, noiseSuppression and autoGainControl on)
and then, by arm:

    off        nothing more: the microphone's track as it is (noise suppression turned off)
    webaudio   an AudioContext at 48 kHz, microphone -> MediaStreamDestination, no worklet: the
               Web Audio path alone, which the suppressed track also takes
    rnnoise    appliance/web/noise.js as the meeting page uses it: microphone -> RNNoise worklet
               -> MediaStreamDestination
    switched-off  noise.js started, then turned off as in the meeting: its AudioContext is
               suspended and the microphone's own track is what would be sent

The web client is served as the appliance serves it (same paths, same Content-Security-Policy).
For each arm a fresh browser opens PARTICIPANTS pages, waits 3 s, then the user+system CPU time
of every Chromium process (from /proc) is read before and after SECONDS of audio; the arms take
turns for ROUNDS rounds. Printed per participant: CPU seconds per SECONDS of audio, the share of
one core, and the ratio to the "off" arm; then Chromium's audio threads one by one (RNNoise runs
on "Realtime AudioWorklet"). Nothing here asserts: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from playwright.sync_api import Playwright, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from appliance.security_headers import CONTENT_SECURITY_POLICY  # noqa: E402
from e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from e2e.noisy_speech import noisy_speech  # noqa: E402

WEB = ROOT / "appliance" / "web"
TICK = os.sysconf("SC_CLK_TCK")
ARMS = ("off", "webaudio", "rnnoise", "switched-off")
WARM_UP_S = 3.0

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>noise bench</title>
<script type="module" src="/bench.js"></script></head><body></body></html>"""
# Each arm's microphone path; window.state() says whether it is running.
SCRIPT = b"""import { NoiseSuppression } from "/static/noise.js";
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
window.start = async (arm) => {
  const mic = (await navigator.mediaDevices.getUserMedia({ audio: AUDIO })).getAudioTracks()[0];
  if (arm === "webaudio") {
    const context = new AudioContext({ sampleRate: 48000 });
    const output = context.createMediaStreamDestination();
    output.channelCount = 1;
    context.createMediaStreamSource(new MediaStream([mic])).connect(output);
    window.state = () => ({ context: context.state, sent: output.stream.getAudioTracks()[0].readyState });
  } else if (arm === "rnnoise" || arm === "switched-off") {
    const noise = new NoiseSuppression();
    await noise.setWanted(true);
    noise.use(mic);
    while (noise.state === "loading") await new Promise((resolve) => setTimeout(resolve, 20));
    if (arm === "switched-off") await noise.setWanted(false);
    window.state = () => ({ context: noise.context?.state ?? noise.state, running: noise.running,
                            sent: noise.sending(mic) !== mic ? "suppressed" : "raw" });
  } else {
    window.state = () => ({ context: "none", sent: mic.readyState });
  }
  return window.state();
};
"""


class Handler(SimpleHTTPRequestHandler):
    """appliance/web under /static, the bench page at /, with the appliance's CSP."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path in ("/", "/bench.js"):
            body, kind = (PAGE, "text/html") if self.path == "/" else (SCRIPT, "text/javascript")
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        return super().translate_path(path.removeprefix("/static")) if path.startswith("/static/") else "/nonexistent"

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY.format(websocket=""))
        super().end_headers()

    def log_message(self, *args: object) -> None:
        pass


def descendants(root: int) -> list[int]:
    """The processes under ``root`` (Playwright's driver, then Chromium and its children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def cpu_ticks(stat: Path) -> int:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def chromium_cpu() -> tuple[float, dict[str, float]]:
    """All Chromium processes' CPU seconds so far, and by thread name (summed over processes)."""
    total, threads = 0, {}
    for pid in descendants(os.getpid()):
        try:
            if "chromium" not in Path(f"/proc/{pid}/comm").read_text() and \
                    "chromium" not in os.readlink(f"/proc/{pid}/exe"):
                continue
            total += cpu_ticks(Path(f"/proc/{pid}/stat"))
            for task in Path(f"/proc/{pid}/task").iterdir():
                name = (task / "comm").read_text().strip()
                threads[name] = threads.get(name, 0) + cpu_ticks(task / "stat")
        except OSError:
            continue
    return total / TICK, {name: ticks / TICK for name, ticks in threads.items()}


def measure(playwright: Playwright, url: str, wav: Path, arm: str, participants: int, seconds: float) -> dict:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"])
    try:
        pages = [browser.new_page() for _ in range(participants)]
        errors: list[str] = []
        for page in pages:
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_function("typeof window.start === 'function'")
            state = page.evaluate("arm => window.start(arm)", arm)
            suspended = state["context"] == "suspended"
            if (arm == "rnnoise") != bool(state.get("running")) or (arm == "switched-off") != suspended:
                raise RuntimeError(f"{arm}: the page is not in that state: {state}")
        time.sleep(WARM_UP_S)
        before, threads_before = chromium_cpu()
        time.sleep(seconds)
        after, threads_after = chromium_cpu()
        states = [page.evaluate("window.state()") for page in pages]
        if errors:
            raise RuntimeError(f"page errors: {errors}")
    finally:
        browser.close()
    threads = {name: threads_after[name] - threads_before.get(name, 0.0) for name in threads_after}
    return {"arm": arm, "cpu_s": after - before, "threads": threads, "states": states}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--participants", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="noise-bench-"))
    wav = noisy_speech(scratch / "noisy.wav")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(WEB)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    runs: list[dict] = []
    try:
        with sync_playwright() as playwright:
            for round_ in range(args.rounds):
                for arm in ARMS:
                    run = measure(playwright, url, wav, arm, args.participants, args.seconds)
                    run["round"] = round_ + 1
                    runs.append(run)
                    print(f"round {round_ + 1} {arm:12} {run['cpu_s'] / args.participants:6.2f} CPU s per participant",
                          file=sys.stderr)
    finally:
        server.shutdown()

    if args.json:
        print(json.dumps({"seconds": args.seconds, "participants": args.participants, "runs": runs}, indent=1))
        return
    per = {arm: [r["cpu_s"] / args.participants for r in runs if r["arm"] == arm] for arm in ARMS}
    median = {arm: statistics.median(values) for arm, values in per.items()}
    load = os.getloadavg()[0]
    print(f"{args.participants} participant(s), {args.seconds:.0f} s of audio, {args.rounds} round(s), "
          f"load average {load:.1f}; Chromium's CPU per participant:")
    print(f"{'arm':12} {'CPU s (each round)':>22} {'median':>8} {'% of a core':>12} {'x off':>6}")
    for arm in ARMS:
        rounds = " / ".join(f"{v:.2f}" for v in per[arm])
        print(f"{arm:12} {rounds:>22} {median[arm]:8.2f} {100 * median[arm] / args.seconds:11.1f}% "
              f"{median[arm] / median['off']:6.2f}")
    print(f"rnnoise - webaudio: {median['rnnoise'] - median['webaudio']:.2f} CPU s per participant "
          f"({100 * (median['rnnoise'] - median['webaudio']) / args.seconds:.1f}% of a core)")
    print("Chromium's audio threads (names as /proc cuts them), median CPU s per participant:")
    names = sorted({name for r in runs for name in r["threads"] if "Audio" in name})
    print(f"{'thread':16} " + " ".join(f"{arm:>12}" for arm in ARMS))
    for name in names:
        cells = [statistics.median([r["threads"].get(name, 0.0) for r in runs if r["arm"] == arm]) / args.participants
                 for arm in ARMS]
        print(f"{name:16} " + " ".join(f"{cell:12.2f}" for cell in cells))


if __name__ == "__main__":
    main()
