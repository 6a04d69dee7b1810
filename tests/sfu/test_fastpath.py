"""The SFU's forwarding path in C (appliance/sfu/_fastpath.c) on a real socket and a real libsrtp
session: what it sends decrypts to what it kept for NACKs, it sends nothing once the transport
is gone, and what the kernel refuses is counted, not raised."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pylibsrtp
import pytest
from pylibsrtp._binding import ffi

from appliance.sfu import _fastpath, aiortc_private
from appliance.sfu.forwarder import RtpRewriter


def _session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=direction))


KEY = os.urandom(30)


@pytest.fixture
def wire() -> tuple[_fastpath.Down, socket.socket, SimpleNamespace, dict]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    protect = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    dtls, pair = SimpleNamespace(_state="connected"), object()
    nominated = {1: pair}
    down = _fastpath.Down(0x1234, True, RtpRewriter(90000, last_seq=99, last_ts=999), _fastpath.Counters())
    down.payload_type = 96
    down.set_template(b"\x10\x00", 0, 0, 0)  # a MID element: "\x00", ID 1
    down.rewriter.restart(5000, 1, 0.0)
    down.bind_socket(keep=protect, session=int(ffi.cast("uintptr_t", protect._srtp[0])),
                     protect=aiortc_private._SRTP_PROTECT, fd=sender.fileno(), host="127.0.0.1",
                     port=receiver.getsockname()[1], dtls=dtls, connected="connected", nominated=nominated, pair=pair)
    sender.close()  # the Down sends through its own duplicate of the socket
    yield down, receiver, dtls, nominated
    receiver.close()


def test_what_is_sent_is_srtp_of_what_is_kept_for_nacks(wire: tuple) -> None:
    down, receiver, _, _ = wire
    unprotect = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    for seq, payload in [(5000, b"\x10\x00\x9d\x01\x2a" + bytes(1000)), (5001, b"\x00" * 40)]:
        assert down.forward(payload, True, seq, 1 + (seq - 5000) * 3000, -1, 0, [], 0.0, 0) == (
            100 + seq - 5000, 1000 + (seq - 5000) * 3000)
        kept = down.sent(100 + seq - 5000)
        assert unprotect.unprotect(receiver.recv(2048)) == kept
        assert kept[:2] == b"\x90\xe0" and kept[8:12] == (0x1234).to_bytes(4, "big") and kept.endswith(payload)
    assert (down.packets, down.bytes, down.bound, down.send_errors) == (2, 1045, "native", 0)


def test_nothing_is_sent_once_the_transport_is_closed_or_the_pair_changed(wire: tuple) -> None:
    down, receiver, dtls, nominated = wire
    down.source_ssrc, down.fast = 77, True
    assert down.forward(b"first", False, 5000, 1, -1, 0, [], 0.0, 0) is not None
    receiver.recv(2048)
    args = dict(payload=b"x", marker=False, seq=5001, ts=1, ssrc=77, audio_level=-1, padding=0, keyframe=False,
                now=0.0, ntp=0)
    assert _fastpath.fanout((down,), **args) == []  # the steady state: sent from C
    receiver.recv(2048)
    nominated[1] = object()  # ICE selected another pair: Python rebinds first
    assert _fastpath.fanout((down,), **args) == [0]
    with pytest.raises(ConnectionError):
        down.forward(b"x", False, 5002, 1, -1, 0, [], 0.0, 0)
    nominated[1] = down_pair = object()
    dtls._state = "closed"
    assert _fastpath.fanout((down,), **args) == [0]
    with pytest.raises(ConnectionError):
        down.forward(b"x", False, 5002, 1, -1, 0, [], 0.0, 0)
    assert down_pair is not None and down.packets == 2


def test_a_datagram_the_kernel_refuses_is_counted_not_raised() -> None:
    counters = _fastpath.Counters()
    down = _fastpath.Down(1, False, RtpRewriter(48000, last_seq=0, last_ts=0), counters)
    protect = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    ipv4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pair = object()
    down.bind_socket(keep=protect, session=int(ffi.cast("uintptr_t", protect._srtp[0])),
                     protect=aiortc_private._SRTP_PROTECT, fd=ipv4.fileno(), host="::1", port=9,
                     dtls=SimpleNamespace(_state=1), connected=1, nominated={1: pair}, pair=pair)
    ipv4.close()
    assert down.forward(b"opus", False, 1, 960, 0x80 | 30, 0, [], 0.0, 0) is not None  # an IPv6 address, an IPv4 socket
    assert (down.packets, down.send_errors, counters.send_errors, counters.audio_packets) == (1, 1, 1, 1)


def test_an_address_that_is_not_numeric_is_refused() -> None:
    down = _fastpath.Down(1, False, RtpRewriter(48000, last_seq=0, last_ts=0), _fastpath.Counters())
    with pytest.raises(ValueError, match="not a numeric"):
        down.bind_socket(keep=None, session=1, protect=1, fd=0, host="example.invalid", port=9,
                         dtls=None, connected=None, nominated={}, pair=None)
    assert down.bound == ""
