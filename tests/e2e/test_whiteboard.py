"""The shared whiteboard in real Chromium against the real appliance: two people draw at the same
time and their boards converge, undo takes back only one's own strokes, the eraser and the lock
reach everyone, a late joiner (on a touch screen) gets the same board, and the export gives a PNG
of the page and a PDF of every page. The tests run in order and share one meeting."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from pypdf import PdfReader

from appliance_server import Appliance

from .meeting_page import PEOPLE, MeetingPage, poll
from .test_accessibility import AXE, assert_accessible

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1600, 900  # appliance/web/whiteboard.js: the board's units, and the export's pixels
BOARD = "() => window.confmeet.whiteboard"
CANVAS = "() => document.querySelector('.wb-canvas').toDataURL()"
# How many pixels of the shown canvas are not the board's white.
INKED = """() => {
  const canvas = document.querySelector('.wb-canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] < 200 || data[i + 1] < 200 || data[i + 2] < 200) inked++;
  return inked;
}"""


@dataclass
class Room:
    meeting: dict
    pages: dict[str, MeetingPage] = field(default_factory=dict)


@pytest.fixture(scope="module")
def room(host: httpx.Client) -> Iterator[Room]:
    r = host.post("/api/v1/meetings", json={"title": "Design sketch"})
    assert r.status_code == 201, r.text
    room = Room(r.json())
    yield room
    for page in room.pages.values():
        assert not page.errors, page.errors
        page.close()


def board(page: MeetingPage) -> dict:
    return page.page.evaluate(BOARD)


def open_board(page: MeetingPage) -> None:
    page.button("Whiteboard").click()
    expect(page.button("Whiteboard")).to_have_attribute("aria-pressed", "true")
    expect(page.page.get_by_role("region", name="Whiteboard", exact=True)).to_be_visible()


def to_screen(page: Page, x: float, y: float) -> tuple[float, float]:
    """Where on the screen the board's point (x, y) is."""
    box = page.locator(".wb-canvas").bounding_box()
    return box["x"] + x * box["width"] / WIDTH, box["y"] + y * box["height"] / HEIGHT


def drag(page: Page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*to_screen(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*to_screen(page, *point))
    page.mouse.up()


def wave(x0: float, y0: float, steps: int = 14) -> list[tuple[float, float]]:
    return [(x0 + 30 * i, y0 + (25 if i % 2 else -25)) for i in range(steps)]


def settled(*pages: MeetingPage) -> dict:
    """The board once every page has sent all its changes and they all hold the same."""
    def same() -> dict | None:
        boards = [board(p) for p in pages]
        if any(b["pending"] for b in boards):
            return None
        first = {k: boards[0][k] for k in ("pages", "state")}
        return boards[0] if all({k: b[k] for k in ("pages", "state")} == first for b in boards) else None
    return poll(same, "the boards converge", timeout=15)


def items(state: dict, page: int = 0) -> list[dict]:
    return state["pages"][page]


def test_two_people_draw_at_once_and_their_boards_converge(browser: Browser, appliance: Appliance,
                                                           room: Room) -> None:
    code = room.meeting["code"]
    ada = room.pages["ada"] = MeetingPage(browser, appliance.url, PEOPLE["ada"])
    grace = room.pages["grace"] = MeetingPage(browser, appliance.url, PEOPLE["grace"])
    ada.context.add_init_script(path=str(AXE))  # axe-core, for the accessibility check at the end
    for person in (ada, grace):
        person.join(code, publish=False)
        open_board(person)

    # Three strokes each, drawn at the same time: the pointer moves alternate between the pages, so
    # both send their changes while the other's are on the way.
    for stroke in range(3):
        a, g = wave(100, 120 + 200 * stroke), wave(900, 120 + 200 * stroke)
        ada.page.mouse.move(*to_screen(ada.page, *a[0]))
        grace.page.mouse.move(*to_screen(grace.page, *g[0]))
        ada.page.mouse.down()
        grace.page.mouse.down()
        for pa, pg in zip(a[1:], g[1:]):
            ada.page.mouse.move(*to_screen(ada.page, *pa))
            grace.page.mouse.move(*to_screen(grace.page, *pg))
        ada.page.mouse.up()
        grace.page.mouse.up()
    state = settled(ada, grace)
    strokes = items(state)
    assert len(strokes) == 6 and all(s["kind"] == "pen" and len(s["points"]) >= 20 for s in strokes)
    assert sorted(s["points"][0] < 800 for s in strokes) == [False] * 3 + [True] * 3  # three on each side
    assert ada.page.evaluate(CANVAS) == grace.page.evaluate(CANVAS)  # the same picture, pixel for pixel
    assert ada.page.evaluate(INKED) > 2000

    # Undo takes back Ada's own last stroke only, on both boards; redo brings it back.
    ada.page.get_by_role("button", name="Undo (Ctrl+Z)", exact=True).click()
    undone = items(settled(ada, grace))
    assert len(undone) == 5 and all(s["id"] in {t["id"] for t in strokes} for s in undone)
    gone = next(s for s in strokes if s["id"] not in {t["id"] for t in undone})
    assert gone["points"][0] < 800 and sum(s["points"][0] > 800 for s in undone) == 3  # Ada's, not Grace's
    ada.page.locator(".wb-canvas").press("Control+Shift+Z")
    assert sorted(items(settled(ada, grace)), key=str) == sorted(strokes, key=str)

    # Grace erases Ada's first stroke, at the top left: it goes from both boards.
    first = min((s for s in strokes if s["points"][0] < 800), key=lambda s: s["points"][1])
    grace.page.get_by_role("button", name="Eraser", exact=True).click()
    drag(grace.page, [(60, 95), (100, 95), (140, 95)])
    erased = items(settled(ada, grace))
    assert sorted(s["id"] for s in erased) == sorted(s["id"] for s in strokes if s is not first)

    # Shapes and text.
    ada.page.get_by_role("button", name="Red", exact=True).click()
    for tool, points in (("Rectangle", [(1000, 630), (1500, 860)]), ("Ellipse", [(560, 630), (860, 860)]),
                         ("Arrow", [(880, 745), (985, 745)])):
        ada.page.get_by_role("button", name=tool, exact=True).click()
        drag(ada.page, points)
    ada.page.get_by_role("button", name="Text", exact=True).click()
    ada.page.mouse.click(*to_screen(ada.page, 1040, 665))
    ada.page.get_by_role("textbox", name="Text to put on the whiteboard").fill("Launch plan")
    ada.page.keyboard.press("Enter")
    shapes = items(settled(ada, grace))[-4:]
    assert [(s["kind"], s["colour"]) for s in shapes] == [("rect", "#dc2626"), ("ellipse", "#dc2626"),
                                                          ("arrow", "#dc2626"), ("text", "#dc2626")]
    assert shapes[0]["points"] == [1000, 630, 1500, 860] and shapes[3]["text"] == "Launch plan"
    assert ada.page.evaluate(CANVAS) == grace.page.evaluate(CANVAS)
    ada.page.get_by_role("button", name="Pen", exact=True).click()
    ada.screenshot("whiteboard.png")
    assert_accessible(ada.page, "the open whiteboard")


def test_a_locked_board_is_for_the_moderators(room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    ada.page.get_by_role("button", name="Lock", exact=True).click()
    expect(grace.page.get_by_role("status").filter(has_text="The whiteboard is locked")).to_be_visible()
    expect(grace.page.get_by_role("button", name="Pen", exact=True)).to_be_disabled()
    before = board(grace)
    drag(grace.page, wave(200, 400))  # nothing happens
    assert board(grace)["pages"] == before["pages"]
    expect(ada.page.get_by_role("button", name="Pen", exact=True)).to_be_enabled()
    ada.page.get_by_role("button", name="Unlock", exact=True).click()
    expect(grace.page.get_by_role("button", name="Pen", exact=True)).to_be_enabled()


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height of a well-formed PNG: its signature, every chunk's CRC, IHDR first and IEND last."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, kinds = 8, []
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body), kind
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        kinds.append(kind)
        at += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    return size


def jpeg_size(data: bytes) -> tuple[int, int]:
    """The width and height in a JPEG's frame header."""
    assert data[:2] == b"\xff\xd8"
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    raise AssertionError("no frame header in the JPEG")


# The browser's own decoding of a PNG file: how many pixels are not white, and one pixel's colour.
DECODE = """async ([data, x, y]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], {type: 'image/png'}));
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  const pixels = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let inked = 0;
  for (let i = 0; i < pixels.length; i += 4) if (Math.min(pixels[i], pixels[i + 1], pixels[i + 2]) < 200) inked++;
  const at = (y * bitmap.width + x) * 4;
  return {inked, pixel: [pixels[at], pixels[at + 1], pixels[at + 2]]};
}"""


def touch_stroke(page: MeetingPage, points: list[tuple[float, float]]) -> None:
    """A finger drawn across the board (touch events, as a phone's screen sends them)."""
    cdp = page.context.new_cdp_session(page.page)
    for kind, point in (("touchStart", points[0]), *(("touchMove", p) for p in points[1:]), ("touchEnd", None)):
        touch = [] if point is None else [dict(zip(("x", "y"), to_screen(page.page, *point)))]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touch})
    cdp.detach()


def test_a_late_joiner_on_a_touch_screen_gets_the_board_and_it_exports(browser: Browser, appliance: Appliance,
                                                                       room: Room) -> None:
    ada, grace = room.pages["ada"], room.pages["grace"]
    linus = room.pages["linus"] = MeetingPage(browser, appliance.url, PEOPLE["linus"], has_touch=True)
    linus.join(room.meeting["code"], publish=False)
    expect(linus.page.locator("#whiteboard-button .badge")).to_be_hidden()
    open_board(linus)
    assert items(settled(ada, grace, linus)) == items(board(ada))
    assert linus.page.evaluate(CANVAS) == ada.page.evaluate(CANVAS)

    # A second page, drawn on with a finger; Ada, on the first page, sees the new page in the count.
    linus.page.get_by_role("button", name="Add a page", exact=True).click()
    expect(linus.page.get_by_role("status").filter(has_text="Page 2 of 2")).to_be_visible()
    touch_stroke(linus, wave(300, 450, 20))
    state = settled(ada, grace, linus)
    assert len(state["pages"]) == 2 and [s["kind"] for s in items(state, 1)] == ["pen"]
    assert len(items(state, 1)[0]["points"]) >= 30
    expect(ada.page.get_by_role("status").filter(has_text="Page 1 of 2")).to_be_visible()

    # This page as a PNG: the board's size, drawn on.
    with ada.page.expect_download() as download:
        ada.page.get_by_role("button", name="Download this page as a picture (PNG)", exact=True).click()
    assert download.value.suggested_filename == "Design-sketch-whiteboard-page-1.png"
    data = Path(download.value.path()).read_bytes()
    assert png_size(data) == (WIDTH, HEIGHT)
    shown = ada.page.evaluate(DECODE, [base64.b64encode(data).decode(), 1000, 630])  # the rectangle's corner
    assert shown["inked"] > 5000
    red, green, blue = shown["pixel"]
    assert red > 180 and green < 100 and blue < 100, shown["pixel"]

    # Every page in a PDF: one page each, each the picture of its page.
    with ada.page.expect_download() as download:
        ada.page.get_by_role("button", name="Download all pages as a PDF", exact=True).click()
    assert download.value.suggested_filename == "Design-sketch-whiteboard.pdf"
    pdf = PdfReader(download.value.path())
    assert len(pdf.pages) == len(state["pages"]) == 2
    for page in pdf.pages:
        image = page["/Resources"]["/XObject"]["/Im0"]
        assert (image["/Width"], image["/Height"], image["/Filter"]) == (WIDTH, HEIGHT, "/DCTDecode")
        assert jpeg_size(image.get_data()) == (WIDTH, HEIGHT)
        assert [float(v) for v in page.mediabox] == [0, 0, 960, 540]
