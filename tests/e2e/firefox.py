"""Debian's firefox-esr in the browser tests, through tests/e2e/firefox/bridge.mjs (puppeteer-core
over WebDriver BiDi, no driver or browser download), and the meeting page driven in it the way
:class:`MeetingPage` drives it in Chromium.

Firefox runs with a window on a private Xvfb screen rather than headless: headless Firefox has
no screen for getDisplayMedia to capture (it answers NotFoundError), and screen sharing is one
of the things tested. It also gets an audio output, a PulseAudio server of its own with a null
sink: with no output Web Audio never starts (an AudioContext stays "suspended"), and ALSA's null
device is no clock (the graph then runs many times faster than real time)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .meeting_page import REMOTE_TILES, SCREENSHOTS, Person, poll

FIREFOX = "/usr/bin/firefox-esr"
XVFB = "/usr/bin/Xvfb"
PULSEAUDIO = "/usr/bin/pulseaudio"
BRIDGE = Path(__file__).with_name("firefox") / "bridge.mjs"


class BridgeError(Exception):
    pass


def aria(name: str, role: str = "button") -> str:
    """puppeteer's selector for an element by its accessible name and role."""
    return f'::-p-aria({name}[role="{role}"])'


class Firefox:
    """One firefox-esr; each :meth:`new_page` is a tab in a context of its own."""

    def __init__(self) -> None:
        missing = [what for what, ok in ((FIREFOX, os.access(FIREFOX, os.X_OK)), (XVFB, os.access(XVFB, os.X_OK)),
                                         (PULSEAUDIO, os.access(PULSEAUDIO, os.X_OK)),
                                         ("node", shutil.which("node") is not None),
                                         ("puppeteer-core", (BRIDGE.parent / "node_modules" / "puppeteer-core").is_dir()))
                   if not ok]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: run `make test-setup` (apt-get install firefox-esr "
                               "xvfb pulseaudio, npm ci --prefix tests/e2e/firefox)")
        self.screen = subprocess.Popen([XVFB, "-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        display = self.screen.stdout.readline().strip()
        if not display:
            raise RuntimeError(f"Xvfb exited with {self.screen.wait()} before it chose a display")
        self.home = Path(tempfile.mkdtemp(prefix="firefox-sound-"))
        socket = self.home / "pulse.socket"
        self.sound = subprocess.Popen(
            [PULSEAUDIO, "--daemonize=no", "--exit-idle-time=-1", "-n", "--use-pid-file=no",
             "--load=module-null-sink sink_name=speakers",
             f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1"],
            env={**os.environ, "HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.home)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll(socket.exists, "PulseAudio's socket", timeout=10)
        env = {**os.environ, "DISPLAY": f":{display}", "FIREFOX_HEADLESS": "0", "PULSE_SERVER": f"unix:{socket}"}
        self.proc = subprocess.Popen(["node", str(BRIDGE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=BRIDGE.parent, env=env)
        self._ids = itertools.count(1)
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        ready = self._next(60)
        self.version = ready["ready"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            message = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BridgeError(f"firefox bridge silent for {timeout} s") from None
        if message is None:
            raise BridgeError("firefox bridge exited:\n" + "".join(self._stderr[-40:]))
        return message

    def call(self, op: str, timeout: float = 15, **args: Any) -> Any:
        request_id = next(self._ids)
        self.proc.stdin.write(json.dumps({"id": request_id, "op": op, "timeout": timeout * 1000, **args}) + "\n")
        self.proc.stdin.flush()
        while True:
            reply = self._next(timeout + 10)
            if reply.get("id") == request_id:
                break
        if "error" in reply:
            raise BridgeError(f"{op} {args}: {reply['error']}")
        return reply["result"]

    def new_page(self) -> FirefoxPage:
        return FirefoxPage(self, self.call("newPage"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for server in (self.screen, self.sound):
            server.terminate()
            server.wait()
        shutil.rmtree(self.home, ignore_errors=True)


class FirefoxPage:
    def __init__(self, firefox: Firefox, index: int) -> None:
        self.firefox = firefox
        self.index = index

    def _call(self, op: str, **args: Any) -> Any:
        return self.firefox.call(op, page=self.index, **args)

    def preload(self, source: str) -> None:
        """Run the script ``source`` before the page's own scripts, in every document it loads."""
        self._call("preload", source=source)

    def goto(self, url: str) -> None:
        self._call("goto", url=url)

    def click(self, selector: str) -> None:
        self._call("click", selector=selector)

    def fill(self, selector: str, value: str) -> None:
        self._call("fill", selector=selector, value=value)

    def wait_for(self, selector: str, hidden: bool = False, timeout: float = 15) -> None:
        self._call("waitFor", selector=selector, visible=not hidden, hidden=hidden, timeout=timeout)

    def evaluate(self, source: str, arg: Any = None) -> Any:
        """``source`` is a function's source; it is called with ``arg`` (JSON) in the page."""
        return self._call("evaluate", source=source, arg=arg)

    def screenshot(self, path: Path) -> None:
        self._call("screenshot", path=str(path.resolve()))

    def errors(self) -> list[str]:
        return self._call("errors")

    def close(self) -> None:
        self._call("closePage")


# getUserMedia's microphone replaced by a WAV played in a loop through Web Audio: Firefox's fake
# microphone is a tone, and a captions test needs speech (Chromium takes a WAV on its command line).
SPEECH_MICROPHONE = """(() => {
  const wav = Uint8Array.from(atob("%s"), (c) => c.charCodeAt(0)).buffer;
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    if (!constraints?.audio) return stream;
    const context = new AudioContext();
    const source = context.createBufferSource();
    source.buffer = await context.decodeAudioData(wav.slice(0));
    source.loop = true;
    const speech = context.createMediaStreamDestination();
    source.connect(speech);
    source.start();
    for (const track of stream.getAudioTracks()) { stream.removeTrack(track); track.stop(); }
    stream.addTrack(speech.stream.getAudioTracks()[0]);
    return stream;
  };
})();"""


class FirefoxMeetingPage:
    """The meeting page in Firefox, with what :func:`meeting_page.media_flows` reads."""

    def __init__(self, firefox: Firefox, base_url: str, person: Person) -> None:
        self.person = person
        self.base_url = base_url
        self.page = firefox.new_page()

    def speak(self, wav: Path) -> None:
        """From now on the page's microphone says what ``wav`` holds, in a loop."""
        self.page.preload(SPEECH_MICROPHONE % base64.b64encode(wav.read_bytes()).decode())

    def open(self, code: str) -> None:
        self.page.goto(f"{self.base_url}/m/{code}")
        self.page.click("#show-signin")  # "Have an account? Sign in"
        self.page.fill("#signin-form [name=email]", self.person.email)
        self.page.fill("#signin-form [name=password]", self.person.password)
        self.page.click("#signin-form button[type=submit]")
        self.page.wait_for("#join")

    def open_as_guest(self, code: str) -> None:
        self.page.goto(f"{self.base_url}/m/{code}")
        self.type_name()
        self.page.click(aria("Join as guest"))

    def type_name(self) -> None:
        self.page.fill("#name", self.person.name)

    def join(self, code: str) -> None:
        self.open(code)
        self.type_name()
        self.page.click("#join")
        self.wait_joined()

    def wait_joined(self) -> None:
        self.page.wait_for("#leave")

    def leave(self) -> None:
        self.page.click("#leave")
        self.page.wait_for("#leave", hidden=True)

    def click(self, name: str) -> None:
        self.page.click(aria(name))

    @property
    def participant_id(self) -> str:
        return poll(lambda: self.page.evaluate("() => document.querySelector('.tile.self')?.dataset.participant"),
                    f"{self.person.name}'s own tile", timeout=10)

    def remote_tiles(self) -> list[dict]:
        return self.page.evaluate(REMOTE_TILES)

    def screenshot(self, name: str) -> None:
        self.page.wait_for("#notice", hidden=True, timeout=6)
        self.page.screenshot(SCREENSHOTS / name)

    def close(self) -> None:
        self.page.close()
