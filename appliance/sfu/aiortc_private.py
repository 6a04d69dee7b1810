"""The aiortc and aioice internals the SFU reads or replaces, all in one place.

aiortc has no API for forwarding RTP without decoding and re-encoding, for fixing payload types
across a BUNDLE group, or for choosing UDP ports. Everything below leans on private attributes of
aiortc 1.16 / aioice 0.13: after upgrading either, check this module first
(``tests/sfu/test_aiortc_private.py`` fails when one of these attributes moves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pylibsrtp
from aioice import Connection, stun
from aioice.ice import StunProtocol
from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    clock,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
    wrap_rtx,
)
from aiortc.stats import RTCRemoteInboundRtpStreamStats
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from . import _fastpath, twcc

log = logging.getLogger("confmeet.sfu")

# libsrtp's srtp_protect, as pylibsrtp (aiortc's SRTP) exports it: _fastpath.Down protects with it.
_SRTP_PROTECT = int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect")))

# Takes a packet; False when the packet's stream is not known yet (see tap_receiver).
RtpHandler = Callable[[RtpPacket], Awaitable[bool]]


# ---------------------------------------------------------------- receivers (upstream)
def tap_receiver(receiver: RTCRtpReceiver, on_rtp: RtpHandler) -> None:
    """Hand every RTP packet the receiver gets to ``on_rtp``, then do what a forwarder needs of
    aiortc's own handling: what the publisher estimates its uplink from (transport-cc feedback,
    see ``transport_feedback``; aiortc's REMB for a client without transport-cc), each stream's
    statistics (receiver reports) and NACKs for the publisher's lost packets, one NACK generator
    per SSRC (a simulcast receiver gets a stream per layer, whose interleaved sequence numbers one
    generator would read as endless loss). Nothing is depayloaded, reassembled or decoded: aiortc
    would do all three for every packet received, for frames nobody reads (the decoder thread is
    stopped as soon as aiortc starts it).

    A packet ``on_rtp`` could not place (False: a simulcast stream whose rid it has not read yet)
    is not counted: no receiver report acknowledges its stream, and browsers send the MID and rid
    extensions until one does. Acknowledged first, the stream's later packets would come without
    its rid, and the SFU could never tell which layer it is."""
    state = vars(receiver)
    codecs: dict[int, RTCRtpCodecParameters] = state["_RTCRtpReceiver__codecs"]  # filled by receive()
    streams: dict[int, StreamStatistics] = state["_RTCRtpReceiver__remote_streams"]
    rtx_streams: dict[int, int] = state["_RTCRtpReceiver__rtx_ssrc"]
    estimator = state["_RTCRtpReceiver__remote_bitrate_estimator"]
    nacks = PerSsrc(NackGenerator) if state["_RTCRtpReceiver__nack_generator"] is not None else None
    receive = receiver.receive
    route_by_mid(receiver.transport)
    feedback = transport_feedback(receiver.transport)

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        arrived = arrival_us(receiver.transport, arrival_time_ms)
        rtcp_ssrc = state["_RTCRtpReceiver__rtcp_ssrc"]
        transport_cc = packet.extensions.transport_sequence_number is not None
        # The publisher estimates its uplink from transport-cc feedback (recorded as the
        # transport parsed the packet), or from REMB where it has no transport-cc.
        if transport_cc and arrived - feedback.last_report_us >= twcc.INTERVAL_US and rtcp_ssrc is not None:
            report = feedback.report(rtcp_ssrc, packet.ssrc, arrived)
            if report is not None:
                await receiver._send_rtcp(report)  # type: ignore[arg-type]
        if not receiver._enabled or not await on_rtp(packet):
            return
        if not transport_cc and estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(abs_send_time=packet.extensions.abs_send_time, arrival_time_ms=arrived // 1000,
                                 payload_size=len(packet.payload) + packet.padding_size, ssrc=packet.ssrc)
            if remb is not None and rtcp_ssrc is not None:
                await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                         fci=pack_remb_fci(*remb)))
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if nacks is None:
            return
        if codec.name == "rtx":  # a retransmission: the packet it repairs is no longer missing
            media_ssrc, apt = rtx_streams.get(packet.ssrc), codec.parameters.get("apt")
            if media_ssrc is None or apt not in codecs or len(packet.payload) < 2:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=media_ssrc)  # type: ignore[arg-type]
        if nacks.add(packet):
            await receiver._send_rtcp_nack(packet.ssrc, sorted(nacks.missing))

    async def receive_without_decoder(parameters: RTCRtpReceiveParameters) -> None:
        await receive(parameters)
        receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
    receiver.receive = receive_without_decoder  # type: ignore[method-assign]


def transport_feedback(transport: RTCDtlsTransport) -> twcc.FeedbackRecorder:
    """The transport-cc recorder of one transport (the receivers of a BUNDLE group share it: the
    sequence numbers are transport-wide), recording every RTP packet that carries a transport
    sequence number as the transport parses it, before routing: a browser's probe padding, too,
    whether a receiver takes it or not (unreported, it would read as lost).

    The arrival time is the kernel's: the ICE transport is made to remember the receive stamp
    of the datagram it handed out last (``ice.py`` stamps them; NTP-epoch µs, aiortc's clock),
    which is the one being parsed (aiortc handles a datagram before it reads the next). aiortc
    itself stamps it with the time its event loop got to it, late by however busy the loop was;
    that clock is the fallback, for a datagram without a stamp (a TURN relay's)."""
    recorder = getattr(transport, "transport_feedback", None)
    if recorder is not None:
        return recorder
    ice = transport.transport
    recv = ice._recv
    router = transport._rtp_router
    route_rtp = router.route_rtp

    async def recv_with_arrival() -> bytes:
        data = await recv()
        ice.last_arrival_us = getattr(data, "arrival_us", None)
        return data

    def record(packet: RtpPacket) -> Any:
        sequence = packet.extensions.transport_sequence_number
        if sequence is not None:
            recorder.add(sequence, arrival_us(transport))
        return route_rtp(packet)

    ice.last_arrival_us = None
    ice._recv = recv_with_arrival
    router.route_rtp = record
    transport.transport_feedback = recorder = twcc.FeedbackRecorder()
    return recorder


def on_transport_feedback(transport: RTCDtlsTransport, callback: Callable[[twcc.Feedback], None]) -> None:
    """Call ``callback`` with each transport-cc feedback message the transport receives (once
    per transport: a later call changes nothing). aiortc would read such a message as a NACK's
    list and drop it; the compound RTCP packet is looked through before aiortc parses it."""
    if getattr(transport, "feedback_callback", None) is not None:
        return
    handle = transport._handle_rtcp_data

    async def handle_with_feedback(data: bytes) -> None:
        offset = 0
        while offset + 4 <= len(data):
            length = (int.from_bytes(data[offset + 2:offset + 4], "big") + 1) * 4
            if data[offset + 1] == twcc.RTCP_RTPFB and data[offset] & 0x1F == twcc.FMT_TRANSPORT_CC:
                try:
                    callback(twcc.parse(data[offset:offset + length]))
                except ValueError:
                    pass  # malformed: aiortc's parser will say so
            offset += length
        await handle(data)

    transport.feedback_callback = callback
    transport._handle_rtcp_data = handle_with_feedback


def receive_srtp_directly(pc: RTCPeerConnection) -> None:
    """Once the connection's DTLS transports hold their SRTP keys, hand each SRTP and SRTCP
    datagram from the ICE socket straight to its transport, in the socket's receive callback.

    aioice would first try to parse it as STUN (raising and catching an exception), queue it for
    the ICE transport, and wake the DTLS transport's task to take it from there; aiortc would then
    read its clock again for the arrival time. Per packet received that was about a fifth of the
    SFU worker's CPU at 32 subscribers (py-spy, docs/benchmarks.md Run 8). DTLS and STUN still
    take aioice's way; the handling of each packet is aiortc's own (``_handle_rtp_data``,
    ``_handle_rtcp_data`` and what the SFU put in their place), run to its end at once. Sockets
    bound by ``ice.stamp_arrivals`` have the hook (``srtp_received``); others keep the queue."""
    for transport in {t.receiver.transport for t in pc.getTransceivers()}:
        if transport._rx_srtp is None or transport._state != DtlsState.CONNECTED:
            continue
        handler = _srtp_receiver(transport)
        for protocol in transport.transport.iceGatherer._connection._protocols:
            if hasattr(protocol, "srtp_received"):
                protocol.srtp_received = handler


def _srtp_receiver(transport: RTCDtlsTransport) -> Callable[[bytes, Callable[[], int | None]], None]:
    """Handles one datagram, given the function that reads when the kernel received it."""
    ice = transport.transport
    session = transport._rx_srtp

    def received(data: bytes, stamp: Callable[[], int | None]) -> None:
        if transport._state != DtlsState.CONNECTED:
            return  # stopped: the queue's way would not have read it either
        transport._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
        transport._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        try:
            if is_rtcp(data):
                ice.last_arrival_us = None
                handling = transport._handle_rtcp_data(session.unprotect_rtcp(data))
            else:
                ice.last_arrival_us = arrived_us = stamp()
                arrived_ms = arrived_us // 1000 if arrived_us else clock.current_ms()
                handling = transport._handle_rtp_data(session.unprotect(data), arrival_time_ms=arrived_ms)
        except pylibsrtp.Error:
            return  # replayed, forged or garbled: aiortc drops it the same way
        run_now(handling)

    return received


def run_now(coroutine: Awaitable[None]) -> None:
    """Run ``coroutine`` up to its end, now, in the caller; where it has to wait for something
    (none of aiortc's packet handling does, but nothing guarantees it), a task takes the rest."""
    try:
        waiting_for = coroutine.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return
    except Exception:
        log.exception("SFU: handling a received packet failed")
        return
    asyncio.get_running_loop().create_task(_finish(coroutine, waiting_for))


async def _finish(coroutine: Any, waiting_for: Any) -> None:
    while True:
        if waiting_for is None:  # a bare yield (asyncio.sleep(0))
            await asyncio.sleep(0)
        else:
            await asyncio.wait([waiting_for])  # done, whatever its outcome: the coroutine reads it
        try:
            waiting_for = coroutine.send(None)
        except StopIteration:
            return
        except Exception:
            log.exception("SFU: handling a received packet failed")
            return


def arrival_us(transport: RTCDtlsTransport, fallback_ms: int | None = None) -> int:
    """When the packet the transport is handling arrived (see ``transport_feedback``); when its
    datagram has no stamp, ``fallback_ms`` or else aiortc's clock now (read only then: it is not
    free, and this runs for every packet)."""
    stamp = transport.transport.last_arrival_us
    if stamp:
        return stamp
    return (clock.current_ms() if fallback_ms is None else fallback_ms) * 1000


class PerSsrc:
    """One NackGenerator per SSRC, used as one: ``add(packet)``, then ``missing`` of the
    packet's stream."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._streams: dict[int, Any] = {}
        self._last: Any = None

    def add(self, packet: RtpPacket) -> Any:
        stream = self._streams.get(packet.ssrc)
        if stream is None:
            stream = self._streams[packet.ssrc] = self._factory()
        self._last = stream
        return stream.add(packet)

    @property
    def missing(self) -> set[int]:
        return self._last.missing if self._last is not None else set()


def route_by_mid(transport: RTCDtlsTransport) -> None:
    """Route RTP with an SSRC the transport does not know by its MID header extension before
    trying its payload type (RFC 8843 section 9.2), and remember the SSRC. aiortc routes by SSRC
    and payload type only: a simulcast layer's SSRC is in no description, and two video m-lines
    of one browser use the same payload types."""
    router = transport._rtp_router
    if getattr(router, "routes_by_mid", False):
        return
    route_rtp = router.route_rtp

    def route(packet: RtpPacket) -> Any:
        if packet.ssrc not in router.ssrc_table and packet.extensions.mid is not None:
            receiver = router.mid_table.get(packet.extensions.mid)
            if receiver is not None:
                router.ssrc_table[packet.ssrc] = receiver
                return receiver
        return route_rtp(packet)

    router.route_rtp = route
    router.routes_by_mid = True


def map_rtx_stream(receiver: RTCRtpReceiver, rtx_ssrc: int, media_ssrc: int) -> None:
    """Tell the receiver which media stream an RTX stream repairs (a simulcast layer's RTX SSRC
    is in no description), so it counts retransmitted packets as received and stops NACKing them."""
    receiver._RTCRtpReceiver__rtx_ssrc[rtx_ssrc] = media_ssrc  # type: ignore[attr-defined]


def receiver_decodes(receiver: RTCRtpReceiver) -> bool:
    return receiver._RTCRtpReceiver__decoder_thread is not None  # type: ignore[attr-defined]


def media_streams(receiver: RTCRtpReceiver) -> dict[int, StreamStatistics]:
    """The receiver's statistics of each media stream it receives (packets received and lost,
    interarrival jitter in clock units), by SSRC; RTX streams left out. aiortc's getStats cannot
    serve here: it gives every inbound stream of a receiver the same stats id, so the RTX stream's
    entry replaces the media stream's."""
    rtx = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    return {ssrc: stream for ssrc, stream in streams.items() if ssrc not in rtx}


def on_receiver_reports(receiver: RTCRtpReceiver, callback: Callable[[list[RtcpReceiverInfo]], None]) -> None:
    """Call ``callback`` with the report blocks (one per stream: loss, jitter, LSR/DLSR) of every
    RTCP receiver report the receiver sends, as it sends it."""
    send_rtcp = receiver._send_rtcp

    async def observed(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket):
            callback(packet.reports)
        await send_rtcp(packet)

    receiver._send_rtcp = observed  # type: ignore[method-assign]


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


# ---------------------------------------------------------------- senders (downstream)
def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` instead of forcing a keyframe out of the (unused) encoder when the
    remote side sends a PLI or FIR for this sender."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


def on_rtcp_feedback(sender: RTCRtpSender, callback: Callable[[str, int], None]) -> None:
    """Call ``callback(kind, count)`` for each NACK (count: the packets it asks for), PLI and FIR
    the remote side sends about this sender, before aiortc handles it."""
    handle = sender._handle_rtcp_packet

    async def counting(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            callback("nack", len(packet.lost))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            callback("pli" if packet.fmt == RTCP_PSFB_PLI else "fir", 1)
        await handle(packet)

    sender._handle_rtcp_packet = counting  # type: ignore[method-assign]


def on_remb(sender: RTCRtpSender, callback: Callable[[int], None]) -> None:
    """Call ``callback(bitrate)`` with each REMB (receiver estimated maximum bitrate, bits/s) the
    remote side sends that names this sender's SSRC. Chromium sends one for all the streams it
    receives on the connection, so every sender it names gets the same estimate."""
    handle = sender._handle_rtcp_packet

    async def observed(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:  # an application-layer feedback that is not a REMB
                pass
            else:
                if sender._ssrc in ssrcs:
                    callback(bitrate)
        await handle(packet)

    sender._handle_rtcp_packet = observed  # type: ignore[method-assign]


def gate_retransmissions(sender: RTCRtpSender, allow: Callable[[RtpPacket], bool]) -> None:
    """Ask ``allow(packet)`` before the sender answers a NACK with a packet from its RTP
    history; a packet no longer there is not asked about (aiortc sends nothing for it)."""
    retransmit = sender._retransmit

    async def gated(sequence_number: int) -> None:
        history = sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]  # (ForwardingSender replaces it)
        packet = history.get(sequence_number % RTP_HISTORY_SIZE)
        if packet is not None and packet.sequence_number == sequence_number and allow(packet):
            await retransmit(sequence_number)

    sender._retransmit = gated  # type: ignore[method-assign]


def on_sender_started(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` once aiortc has started the sender: its transport is connected and
    RTCP for its SSRC is routed to it."""
    send = sender.send

    async def send_then_notify(parameters: RTCRtpSendParameters) -> None:
        await send(parameters)
        callback()

    sender.send = send_then_notify  # type: ignore[method-assign]


def sender_encodes(sender: RTCRtpSender) -> bool:
    return sender._RTCRtpSender__encoder is not None  # type: ignore[attr-defined]


class _SentPackets:
    """What a sender's RTP history is for the SFU's down tracks: aiortc's NACK handling reads
    ``get(sequence_number % RTP_HISTORY_SIZE)``; the packets are those _fastpath.Down kept,
    serialised, parsed here only when asked for."""

    def __init__(self, native: _fastpath.Down, sender: RTCRtpSender) -> None:
        self._native = native
        self._sender = sender

    def get(self, slot: int) -> RtpPacket | None:
        data = self._native.sent_slot(slot)
        if data is None:
            return None
        return RtpPacket.parse(data, self._sender._RTCRtpSender__rtp_header_extensions_map)  # type: ignore[attr-defined]

    def __getitem__(self, slot: int) -> RtpPacket:
        packet = self.get(slot)
        if packet is None:
            raise KeyError(slot)
        return packet

    def values(self) -> list[RtpPacket]:
        return [p for p in map(self.get, range(RTP_HISTORY_SIZE)) if p is not None]


def _counted(name: str) -> property:
    return property(lambda sender: getattr(sender._confmeet_sent, name), lambda sender, value: None)


class _ForwardingRtpSender(RTCRtpSender):
    """An RTCRtpSender whose sender reports and statistics state what its _fastpath.Down sent
    (aiortc's own sending, which would set these, never runs for a forwarding sender)."""

    _RTCRtpSender__packet_count = _counted("packets")
    _RTCRtpSender__octet_count = _counted("bytes")
    _RTCRtpSender__rtp_timestamp = _counted("last_rtp_timestamp")
    _RTCRtpSender__ntp_timestamp = _counted("last_ntp_timestamp")


class ForwardingSender:
    """Where a down track's packets go (_fastpath.Down does the sending): its subscriber's
    RTCRtpSender, the transport's libsrtp session and the selected ICE pair's socket and address.
    ``bind`` looks them up, and again only when ICE selects another pair; until then the C path
    checks on each packet that the DTLS transport is connected and the pair still selected. The
    sender is made to report (sender reports, statistics, NACKs answered from its history, over
    RTX when negotiated) what the Down sent. The SFU's candidates are its own host sockets (plus
    server-reflexive addresses of those), so every pair sends through a plain datagram transport."""

    __slots__ = ("_sender", "_native", "_dtls", "_connection", "_state", "_pair", "_socket", "_address")

    def __init__(self, sender: RTCRtpSender, native: _fastpath.Down) -> None:
        sender.__class__ = _ForwardingRtpSender
        sender._confmeet_sent = native  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_history = _SentPackets(native, sender)  # type: ignore[attr-defined]
        self._sender = sender
        self._native = native
        self._dtls = sender.transport
        self._connection = self._dtls.transport._connection
        self._state = vars(sender)  # the sender's (name-mangled) RTX state, by name
        self._pair = None
        self._socket = None
        self._address = None

    @property
    def _history(self) -> _SentPackets:
        return self._sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]

    def bind(self) -> None:
        """Point the Down at the selected pair (when it changed). Raises ConnectionError when
        the subscriber's transport is closed."""
        dtls = self._dtls
        if dtls._state is not DtlsState.CONNECTED:
            raise ConnectionError("the subscriber's transport is not connected")
        pair = self._connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            raise ConnectionError("the subscriber's ICE connection is closed")
        if pair is self._pair and self._native.bound:
            return
        self._pair, self._socket, self._address = pair, pair.protocol.transport, pair.remote_addr
        if self._socket.is_closing():
            raise ConnectionError("the subscriber's ICE connection is closed")
        session = dtls._tx_srtp
        if isinstance(session, pylibsrtp.Session):
            try:
                self._native.bind_socket(
                    keep=session, session=int(_srtp_ffi.cast("uintptr_t", session._srtp[0])),
                    protect=_SRTP_PROTECT, fd=self._socket.get_extra_info("socket").fileno(),
                    host=self._address[0], port=self._address[1], dtls=dtls, connected=DtlsState.CONNECTED,
                    nominated=self._connection._nominated, pair=pair)
                return
            except ValueError:  # not a numeric address: sent from Python
                pass
        self._native.bind_output(self._write)

    def pad(self, ntp_time: int, numbers: twcc.SendHistory | None = None) -> int:
        """Send the latest packet again over RTX, as padding a browser counts towards its
        bandwidth estimate and then drops (it has the packet): stamped with the send time now,
        so the estimate reads it as sent now, and numbered from ``numbers`` (the transport's
        transport-wide sequence) when given. The bytes sent; 0 when RTX was not negotiated or
        nothing was sent yet. Raises ConnectionError when the subscriber's transport is closed."""
        state = self._state
        payload_type = state["_RTCRtpSender__rtx_payload_type"]
        last = self._native.last_sequence
        if payload_type is None or last is None:
            return 0
        extensions = state["_RTCRtpSender__rtp_header_extensions_map"]
        sequence_number = state["_RTCRtpSender__rtx_sequence_number"]
        state["_RTCRtpSender__rtx_sequence_number"] = (sequence_number + 1) & 0xFFFF
        rtx = wrap_rtx(RtpPacket.parse(self._native.sent(last), extensions), payload_type=payload_type,
                       sequence_number=sequence_number, ssrc=state["_rtx_ssrc"])
        rtx.extensions = dataclasses.replace(
            rtx.extensions, abs_send_time=(ntp_time >> 14) & 0xFFFFFF,
            transport_sequence_number=None if numbers is None else numbers.take(time.monotonic()))
        self.bind()
        return self._write(rtx.serialize(extensions))

    def _write(self, data: bytes) -> int:
        """Protect and send a packet from Python (RTX padding; a pair without a numeric address)."""
        if self._socket.is_closing():  # type: ignore[union-attr]
            raise ConnectionError("the subscriber's ICE connection is closed")
        protected = self._dtls._tx_srtp.protect(data)
        self._socket.sendto(protected, self._address)  # type: ignore[union-attr]
        return len(protected)


def detach_track(sender: RTCRtpSender) -> MediaStreamTrack | None:
    """Take the sender's track off it without stopping the track (aiortc stops a sender's track
    when the sender stops), so that another connection can send it."""
    track = sender._RTCRtpSender__track  # type: ignore[attr-defined]
    sender._RTCRtpSender__track = None  # type: ignore[attr-defined]
    return track


def sender_counts(sender: RTCRtpSender) -> tuple[int, int]:
    """(packets, octets) as the sender's next sender report will state them."""
    return (sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
            sender._RTCRtpSender__octet_count)  # type: ignore[attr-defined]


def latest_receiver_report(sender: RTCRtpSender) -> RTCRemoteInboundRtpStreamStats | None:
    """What the remote side's latest RTCP receiver report says of the sender's media stream
    (cumulative packets lost, fraction lost, jitter), read without awaiting getStats; None before
    the first report."""
    stats = sender._RTCRtpSender__stats  # type: ignore[attr-defined]
    return stats.get(f"remote-inbound-rtp_{id(sender)}")


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The msid stream id the remote side sees for this sender's track."""
    sender._stream_id = stream_id


NTP_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01


def current_ntp_time() -> int:
    """aiortc's ``clock.current_ntp_time()`` (64-bit NTP time, the wall clock), from
    ``time.time()`` rather than through a datetime: it is read for every packet forwarded."""
    now = time.time()
    seconds = int(now)
    return ((seconds + NTP_OFFSET_S) << 32) | int((now - seconds) * 4294967296)


# ---------------------------------------------------------------- transceivers (negotiation)
def codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs aiortc negotiated (or is about to offer) for the transceiver, in order."""
    return transceiver._codecs


def set_codecs(transceiver: RTCRtpTransceiver, value: list[RTCRtpCodecParameters]) -> None:
    transceiver._codecs = value


def header_extensions(transceiver: RTCRtpTransceiver) -> list[RTCRtpHeaderExtensionParameters]:
    return transceiver._headerExtensions


def set_header_extensions(transceiver: RTCRtpTransceiver,
                          value: list[RTCRtpHeaderExtensionParameters]) -> None:
    transceiver._headerExtensions = value


def parse_header_extensions(transceiver: RTCRtpTransceiver, value: list[RTCRtpHeaderExtensionParameters]) -> None:
    """Have the transport read these header extensions (aiortc configures its one map per
    transport, adding to it, when a receiver or sender starts)."""
    transport = transceiver.receiver.transport
    transport._rtp_header_extensions_map.configure(RTCRtpParameters(headerExtensions=value))


def offered_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction the remote offer asks of us (``recvonly`` when the remote side sends)."""
    return transceiver._offerDirection


def mline_index(transceiver: RTCRtpTransceiver) -> int | None:
    return transceiver._get_mline_index()


def is_bundled(transceiver: RTCRtpTransceiver) -> bool:
    """True for a transceiver riding on another one's transport (all but the first)."""
    return transceiver._bundled


def dtls_role(pc: RTCPeerConnection) -> str | None:
    """The DTLS role of the connection's (bundled) transport: ``client``, ``server`` or ``auto``
    while none is negotiated yet; None before the first transceiver exists."""
    transceivers = pc.getTransceivers()
    return transceivers[0].receiver.transport._role if transceivers else None


# ---------------------------------------------------------------- ICE
def ice_connections(pc: RTCPeerConnection) -> Iterator[Connection]:
    """The aioice connections behind the peer connection's transports."""
    for transceiver in pc.getTransceivers():
        yield transceiver.receiver.transport.transport.iceGatherer._connection
    if pc.sctp is not None:
        yield pc.sctp.transport.transport.iceGatherer._connection


async def ice_round_trip(pc: RTCPeerConnection) -> float | None:
    """Seconds from a STUN binding request on the selected candidate pair of the connection's
    (bundled) transport to its response — an ICE consent check (RFC 7675), what a browser's
    ``currentRoundTripTime`` measures. None when the request or its response is lost (it is not
    sent again), the connection is closed, or no pair is selected yet."""
    connection = next(ice_connections(pc), None)
    pair = connection._nominated.get(1) if connection is not None else None
    if pair is None or connection.remote_password is None:  # type: ignore[union-attr]
        return None
    request = connection.build_request(pair, nominate=False)  # type: ignore[union-attr]
    started = time.perf_counter()
    try:
        await pair.protocol.request(request, pair.remote_addr, retransmissions=0,
                                    integrity_key=connection.remote_password.encode())  # type: ignore[union-attr]
    except (stun.TransactionError, ConnectionError, AttributeError):  # AttributeError: its socket is gone
        return None
    return time.perf_counter() - started


ComponentGatherer = Callable[[int, list[str], int], Awaitable[list]]


def wrap_component_gathering(connection: Connection,
                             wrap: Callable[[ComponentGatherer], ComponentGatherer]) -> None:
    """Replace how the connection gathers candidates for one component by ``wrap(original)``."""
    connection.get_component_candidates = wrap(  # type: ignore[method-assign,assignment]
        connection.get_component_candidates)


def add_host_protocols(connection: Connection, protocols: list[StunProtocol]) -> None:
    """Make the connection check and receive on sockets bound outside aioice."""
    connection._protocols += protocols
