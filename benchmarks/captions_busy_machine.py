"""Captions' accuracy on a busy machine (issue 25's acceptance 4), through a Chromium meeting.

Usage:
  python benchmarks/captions_busy_machine.py [--runs 1] [--passes 2] [--no-hog]

A process spins on one of the two cores (``--no-hog``: none, for the same figures on an idle
machine) while Grace's microphone (Chromium's fake capture) reads eight held-out English sentences
nobody tuned the captions on (espeak-ng, 1.2 s pauses), ``--passes`` times over; Ada, the host,
turns captions on (local:// inference, the appliance as `confmeet serve`) and her page keeps every
caption message. Every sentence must come out as its words or as a marked gap, and the words
(insertions included) within 8 % WER over the run (~170 words at two passes: over one pass, one
misheard word moves the rate by 1.2 points). Prints, per run, the WER, the gaps, the insertions
and each sentence with its caption; exits 1 when a run misses the bound.

It was a CI test (tests/captions/test_captions_browser.py) until the suite had to fit in 30
minutes: ~90 s of a spinning core is a stress run. What it guards stays in CI at a lower cost:
speech that ASR falls behind on comes out later or as a marked gap, never silently lost
(tests/captions/test_sink.py), and captions through a Chromium meeting are within 15 % WER
(tests/captions/test_captions_browser.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from captions.conftest import HELD_OUT, speak, word_error_rate  # noqa: E402
from captions.test_captions_browser import captioned_meeting, heard, launch  # noqa: E402

from appliance.inference.models import import_models  # noqa: E402

BOUND = 0.08  # issue 25's


def read_in_order(captions: list[dict], sentences: list[str], passes: int) -> tuple[list[tuple[str, dict]], list[dict]]:
    """The captions matched to the sentences read in a loop: from the sentence the first caption
    is closest to, each sentence in turn takes the next caption that is its words (WER ≤ 0.5) or
    a gap marker; a caption that is neither is an insertion (a busy machine once made "1" of a
    breath between two sentences), which is kept apart rather than shifting every match after it.
    Returns ((sentence, caption) for up to ``passes`` times the sentences, the insertions)."""
    texts = [m for m in captions if not m.get("gap")]
    if not texts:
        return [], []
    start = min(range(len(sentences)), key=lambda i: word_error_rate(sentences[i], texts[0]["text"]))
    matched: list[tuple[str, dict]] = []
    inserted: list[dict] = []
    for caption in captions:
        if len(matched) == passes * len(sentences):
            break
        sentence = sentences[(start + len(matched)) % len(sentences)]
        if caption.get("gap") or word_error_rate(sentence, caption["text"]) <= 0.5:
            matched.append((sentence, caption))
        else:
            inserted.append(caption)
    return matched, inserted


def one_run(app, playwright, scratch: Path, passes: int, hog: bool) -> bool:
    from e2e.meeting_page import poll

    wav = speak(HELD_OUT, scratch / "held-out.wav", pause_ms=1200)
    spinner = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"]) \
        if hog else None

    def after_the_first() -> list[dict]:  # the first caption may be a sentence cut by the start
        return [m for m in heard(ada) if m["final"] and (m["text"] or m.get("gap"))][1:]

    try:
        browser = launch(playwright, wav)
        api, meeting, ada, grace = captioned_meeting(app, browser, "Busy machine")
        try:
            with wave.open(str(wav)) as w:
                loop = w.getnframes() / w.getframerate()
            poll(lambda: len(read_in_order(after_the_first(), HELD_OUT, passes)[0]) == passes * len(HELD_OUT),
                 f"{passes} passes of the sentences", timeout=loop * (passes + 1) + 30, interval=0.5)
            matched, inserted = read_in_order(after_the_first(), HELD_OUT, passes)
        finally:
            ada.close()
            grace.close()
            api.close()
            browser.close()
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    script = " ".join(sentence for sentence, _ in matched)
    words = " ".join(m["text"] for m in [*(c for _, c in matched), *inserted] if not m.get("gap"))
    rate = word_error_rate(script, words)
    gaps = sum(1 for _, m in matched if m.get("gap"))
    ok = len(inserted) <= 1 and rate <= BOUND
    print(f"WER {'under a one-core CPU hog' if hog else 'on an idle machine'}: {rate:.3f} over {len(matched)} "
          f"sentences ({len(script.split())} words), {gaps} gaps, insertions {[m['text'] for m in inserted]}, "
          f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}: {'within' if ok else 'OUTSIDE'} the bound")
    for sentence, caption in matched:
        print(f"  {sentence!r}\n  -> {caption.get('text')!r}{' (gap)' if caption.get('gap') else ''}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--no-hog", action="store_true", help="no spinning process: the idle machine's figures")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from appliance_server import start_appliance
    from conftest import stop
    from e2e.meeting_page import PEOPLE

    results = []
    with tempfile.TemporaryDirectory(prefix="captions-busy-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "model_repository"
        import_models("packages", repository)
        app = start_appliance(scratch / "data", media_loopback="true", inference="local://",
                              model_repository=str(repository))
        try:
            for i, name in enumerate(("ada", "grace")):
                app.add_user(PEOPLE[name].email, PEOPLE[name].password, admin=i == 0)
            with sync_playwright() as playwright:
                for run in range(args.runs):
                    print(f"run {run + 1} of {args.runs}", flush=True)
                    results.append(one_run(app, playwright, scratch, args.passes, not args.no_hog))
        finally:
            stop(app.proc)
        if "Traceback" in app.output():
            print(app.output()[-3000:])
            results.append(False)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
