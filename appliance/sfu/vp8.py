"""VP8 payload descriptors (RFC 7741) made continuous across a subscriber's source changes.

Each simulcast layer is its own VP8 stream, with its own PictureID, TL0PICIDX and KEYIDX
sequences. A subscriber moved from one layer to another (or whose publisher restarted its
stream) would see them jump; Chromium's frame reference finder and frame buffer judge frames by
them (a frame whose PictureID is not after the last one decoded is dropped, one whose TL0PICIDX
seems old is stashed waiting for its base layer), so like the RTP sequence numbers and timestamps
(``RtpRewriter``) they are carried on from the last ones sent: ``Vp8Rewriter.restart`` at the
keyframe the new source starts with, then each payload is rewritten in _fastpath.c. Until a
restart with values that differ, payloads go through untouched (nothing is parsed per packet).
"""

from __future__ import annotations

from . import _fastpath

PICTURE_ID_MOD = 1 << 15
TL0_MOD = 1 << 8
KEYIDX_MOD = 1 << 5


def fields(payload: bytes) -> tuple[int, int, int, int]:
    """Where the descriptor's fields are: (PictureID offset, its width in bytes (0: absent),
    TL0PICIDX offset (0: absent), TID/Y/KEYIDX offset (0: absent)); all absent when the
    descriptor is cut short."""
    if len(payload) < 2 or not payload[0] & 0x80:  # X: no extension byte, no fields
        return 0, 0, 0, 0
    flags = payload[1]
    position = 2
    picture_id = width = tl0 = keyidx = 0
    if flags & 0x80:  # I
        if len(payload) <= position:
            return 0, 0, 0, 0
        picture_id, width = position, 2 if payload[position] & 0x80 else 1
        position += width
    if flags & 0x40:  # L
        tl0 = position
        position += 1
    if flags & 0x30:  # T or K
        keyidx = position
        position += 1
    if len(payload) < position:
        return 0, 0, 0, 0
    return picture_id, width, tl0, keyidx


class Vp8Rewriter:
    """One down track's descriptor offsets (see the module): nothing is kept per packet; a
    restart reads the last payload sent."""

    __slots__ = ("picture_id_offset", "tl0_offset", "keyidx_offset", "active")

    def __init__(self) -> None:
        self.picture_id_offset = self.tl0_offset = self.keyidx_offset = 0
        self.active = False  # some offset is not zero: payloads are rewritten

    def restart(self, last_sent: bytes | None, first: bytes) -> None:
        """``first`` (a new source's first payload, a keyframe's) goes on from ``last_sent`` (the
        last payload sent, as sent; None: nothing yet, nothing to go on from)."""
        self.picture_id_offset = self.tl0_offset = self.keyidx_offset = 0
        if last_sent is not None:
            old_id, old_width, old_tl0, old_key = fields(last_sent)
            new_id, width, tl0, key = fields(first)
            if old_id and new_id and old_width == width:
                modulo = PICTURE_ID_MOD if width == 2 else 1 << 7
                self.picture_id_offset = (_picture_id(last_sent, old_id, width) + 1
                                          - _picture_id(first, new_id, width)) % modulo
            if old_tl0 and tl0:
                self.tl0_offset = (last_sent[old_tl0] + 1 - first[tl0]) % TL0_MOD
            if old_key and key:
                self.keyidx_offset = ((last_sent[old_key] & 0x1F) + 1 - (first[key] & 0x1F)) % KEYIDX_MOD
        self.active = bool(self.picture_id_offset or self.tl0_offset or self.keyidx_offset)

    @property
    def offsets(self) -> tuple[int, int, int]:
        """(PictureID, TL0PICIDX, KEYIDX) offsets, as _fastpath.Down.set_vp8 takes them."""
        return self.picture_id_offset, self.tl0_offset, self.keyidx_offset

    def rewrite(self, payload: bytes) -> bytes:
        """``payload`` with its descriptor's fields carried on (what _fastpath.Down does to each
        payload it sends while ``active``)."""
        return _fastpath.vp8_rewrite(payload, *self.offsets)


def _picture_id(payload: bytes, position: int, width: int) -> int:
    if width == 2:
        return ((payload[position] & 0x7F) << 8) | payload[position + 1]
    return payload[position] & 0x7F
