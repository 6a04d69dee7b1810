"""Firefox and Chromium in one meeting, over and over: the scenarios that used to leave a Firefox
participant without media, run many times in a row (a stress run, not a CI test).

Usage: python benchmarks/firefox_stress.py [--rounds 10] [--rejoins 3]

Against a fresh appliance (media on loopback), with Debian's chromium (Playwright) and
firefox-esr (puppeteer-core over WebDriver BiDi, tests/e2e/firefox.py):
  late join  each round a new meeting: Ada joins in Chromium, then Grace joins in Firefox;
  first      Grace opens a meeting alone in Firefox, then Ada joins in Chromium;
  rejoin     in that meeting Grace leaves and rejoins --rejoins times while Ada stays.
An attempt passes when each side shows the other's picture and receives their sound, and both
keep coming (tests/e2e/meeting_page.py media_flows), within 10 s. Prints one line per attempt
(seconds from the start of the join — opening the link and signing in, or the click on Leave for
a rejoin — to media both ways) and a summary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from appliance_server import start_appliance  # noqa: E402
from conftest import stop  # noqa: E402
from e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from e2e.fake_camera import write_y4m  # noqa: E402
from e2e.firefox import Firefox, FirefoxMeetingPage  # noqa: E402
from e2e.meeting_page import PEOPLE, MeetingPage, media_flows  # noqa: E402
from recording.accounts import add_users  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="late joins, each in a new meeting")
    parser.add_argument("--rejoins", type=int, default=3, help="leave/rejoin rounds of the Firefox participant")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="firefox-stress-"))
    app = start_appliance(scratch / "appliance", media_loopback="true")
    add_users(app, {name: (PEOPLE[name].email, PEOPLE[name].password) for name in ("ada", "grace")})
    token = app.login(PEOPLE["ada"].email, PEOPLE["ada"].password)["access_token"]
    results: dict[str, list[float | None]] = {"late join": [], "first": [], "rejoin": []}

    def new_meeting(title: str) -> str:
        r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": title},
                       headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json()["code"]

    def attempt(kind: str, join, a, b) -> None:
        started = time.monotonic()
        try:
            join()
            media_flows(a, b)
            media_flows(b, a)
            took: float | None = time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - a failed attempt is a result, reported below
            took = None
            print(f"{kind:9} #{len(results[kind]) + 1}: FAILED {str(exc).splitlines()[0]}", flush=True)
        else:
            print(f"{kind:9} #{len(results[kind]) + 1}: media both ways after {took:.2f} s", flush=True)
        results[kind].append(took)

    camera = write_y4m(scratch / "camera.y4m")
    firefox = None
    try:
        firefox = Firefox()
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"])
            print(f"{chromium.version} (Chromium) and {firefox.version}", flush=True)
            for i in range(args.rounds):
                code = new_meeting(f"late join {i + 1}")
                ada = MeetingPage(chromium, app.url, PEOPLE["ada"])
                grace = FirefoxMeetingPage(firefox, app.url, PEOPLE["grace"])
                ada.join(code)
                attempt("late join", lambda: grace.join(code), grace, ada)
                grace.close()
                ada.close()

            code = new_meeting("Firefox first")
            grace = FirefoxMeetingPage(firefox, app.url, PEOPLE["grace"])
            ada = MeetingPage(chromium, app.url, PEOPLE["ada"])
            grace.join(code)
            attempt("first", lambda: ada.join(code), grace, ada)

            def rejoin() -> None:
                grace.leave()
                grace.page.click("#rejoin")
                grace.type_name()
                grace.page.click("#join")
                grace.wait_joined()

            for _ in range(args.rejoins):
                attempt("rejoin", rejoin, grace, ada)
            grace.close()
            ada.close()
            chromium.close()
    finally:  # neither browser nor appliance outlives the run, whatever failed
        if firefox is not None:
            firefox.close()
        stop(app.proc)

    print("\nscenario   passed   seconds to media both ways (median, max)")
    failed = 0
    for kind, times in results.items():
        ok = [t for t in times if t is not None]
        failed += len(times) - len(ok)
        spread = f"{statistics.median(ok):.2f}, {max(ok):.2f}" if ok else "-"
        print(f"{kind:9}  {len(ok):2}/{len(times):<2}    {spread}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
