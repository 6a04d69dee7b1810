"""Debian's firefox-esr in the browser tests, through tests/e2e/firefox/bridge.mjs (puppeteer-core
over WebDriver BiDi, no driver or browser download), and the meeting page driven in it the way
:class:`MeetingPage` drives it in Chromium."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from .meeting_page import REMOTE_TILES, SCREENSHOTS, Person, poll

FIREFOX = "/usr/bin/firefox-esr"
BRIDGE = Path(__file__).with_name("firefox") / "bridge.mjs"


class BridgeError(Exception):
    pass


def aria(name: str, role: str = "button") -> str:
    """puppeteer's selector for an element by its accessible name and role."""
    return f'::-p-aria({name}[role="{role}"])'


class Firefox:
    """One firefox-esr; each :meth:`new_page` is a tab in a context of its own."""

    def __init__(self) -> None:
        missing = [what for what, ok in ((FIREFOX, os.access(FIREFOX, os.X_OK)),
                                         ("node", shutil.which("node") is not None),
                                         ("puppeteer-core", (BRIDGE.parent / "node_modules" / "puppeteer-core").is_dir()))
                   if not ok]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: run `make test-setup` (apt-get install firefox-esr, "
                               "npm ci --prefix tests/e2e/firefox)")
        self.proc = subprocess.Popen(["node", str(BRIDGE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=BRIDGE.parent)
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


class FirefoxPage:
    def __init__(self, firefox: Firefox, index: int) -> None:
        self.firefox = firefox
        self.index = index

    def _call(self, op: str, **args: Any) -> Any:
        return self.firefox.call(op, page=self.index, **args)

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
        self._call("screenshot", path=str(path))

    def errors(self) -> list[str]:
        return self._call("errors")

    def close(self) -> None:
        self._call("closePage")


class FirefoxMeetingPage:
    """The meeting page in Firefox, with what :func:`meeting_page.media_flows` reads."""

    def __init__(self, firefox: Firefox, base_url: str, person: Person) -> None:
        self.person = person
        self.base_url = base_url
        self.page = firefox.new_page()

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
