"""VP8 payload descriptors carried on across a subscriber's layer switches (appliance/sfu/vp8.py)."""

from __future__ import annotations

import pytest

from appliance.sfu.vp8 import Vp8Rewriter, fields


FRAME = b"\x9d"  # a byte of the frame after it


def descriptor(picture_id: int | None = None, tl0: int | None = None, tid: int | None = None,
               keyidx: int | None = None, start: bool = True, wide: bool = True, frame: bytes = FRAME) -> bytes:
    """A descriptor as Chromium writes one (X, I with a 15-bit PictureID, L, T, K), then ``frame``."""
    flags = ((0x80 if picture_id is not None else 0) | (0x40 if tl0 is not None else 0)
             | (0x20 if tid is not None else 0) | (0x10 if keyidx is not None else 0))
    out = bytearray([0x80 | (0x10 if start else 0), flags])
    if picture_id is not None:
        out += bytes([0x80 | picture_id >> 8, picture_id & 0xFF]) if wide else bytes([picture_id & 0x7F])
    if tl0 is not None:
        out.append(tl0)
    if tid is not None or keyidx is not None:
        out.append(((tid or 0) << 6) | (keyidx or 0))
    return bytes(out) + frame


def values(payload: bytes) -> tuple[int | None, int | None, int | None]:
    picture_id, width, tl0, keyidx = fields(payload)
    pid = None if not picture_id else (
        ((payload[picture_id] & 0x7F) << 8 | payload[picture_id + 1]) if width == 2 else payload[picture_id] & 0x7F)
    return pid, payload[tl0] if tl0 else None, payload[keyidx] & 0x1F if keyidx else None


def test_fields_are_found_as_rfc_7741_lays_them_out() -> None:
    assert fields(descriptor(1234, 7, 1, 3)) == (2, 2, 4, 5)
    assert fields(descriptor(12, wide=False)) == (2, 1, 0, 0)
    assert fields(descriptor(tl0=5)) == (0, 0, 2, 0)
    assert fields(b"\x10\x9d") == (0, 0, 0, 0)  # no extension byte
    assert fields(b"\x90\xc0\x80") == (0, 0, 0, 0)  # cut short


def test_a_switch_carries_picture_id_tl0picidx_and_keyidx_on_from_what_was_sent() -> None:
    rewriter = Vp8Rewriter()
    rewriter.restart(None, descriptor(100, 10, 0, 4))  # the first source: nothing to go on from
    assert not rewriter.active
    last_sent = descriptor(32767, 255, 2, 31)  # the last packet of the first layer, at every wrap
    first = descriptor(5000, 77, 0, 9)  # the new layer's keyframe
    rewriter.restart(last_sent, first)
    assert rewriter.active
    assert values(rewriter.rewrite(first)) == (0, 0, 0)  # each one past the last sent, wrapped
    out = rewriter.rewrite(descriptor(5001, 77, 1, 9))
    assert values(out) == (1, 0, 0) and out[-1:] == b"\x9d" and out[0] == 0x90
    assert out[fields(out)[3]] >> 6 == 1  # TID kept
    assert values(rewriter.rewrite(descriptor(5002, 78, 0, 9))) == (2, 1, 0)


def test_a_source_that_goes_on_where_the_last_left_off_needs_no_rewriting() -> None:
    rewriter = Vp8Rewriter()
    rewriter.restart(descriptor(41, 3, 0, 1), descriptor(42, 4, 0, 2))
    assert not rewriter.active


@pytest.mark.parametrize("first", [descriptor(60, wide=False), descriptor(tl0=9)])
def test_fields_one_side_lacks_or_writes_narrower_are_left_as_they_are(first: bytes) -> None:
    rewriter = Vp8Rewriter()
    rewriter.restart(descriptor(1000, 3), first)
    out = rewriter.rewrite(first)
    assert values(out)[0] == values(first)[0]
    assert values(out)[1] == (4 if values(first)[1] is not None else None)
