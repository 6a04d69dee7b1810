"""The aiortc/aioice internals appliance.sfu.aiortc_private relies on still exist and mean the same."""

from __future__ import annotations

from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpsender import RTCRtpSender

from appliance.sfu import aiortc_private


async def test_private_attributes_used_by_the_sfu_exist() -> None:
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        sender, receiver = transceiver.sender, transceiver.receiver
        assert aiortc_private.sender_counts(sender) == (0, 0)
        assert aiortc_private.sender_encodes(sender) is False
        assert receiver._RTCRtpReceiver__decoder_thread is None  # type: ignore[attr-defined]
        assert aiortc_private.receiver_decodes(receiver) is False
        assert callable(receiver._RTCRtpReceiver__stop_decoder)  # type: ignore[attr-defined]
        assert sender._RTCRtpSender__rtp_history == {}  # type: ignore[attr-defined]
        assert isinstance(sender._RTCRtpSender__ntp_timestamp, int)  # type: ignore[attr-defined]
        assert isinstance(sender._RTCRtpSender__rtp_timestamp, int)  # type: ignore[attr-defined]
        assert aiortc_private.codecs(transceiver) == []
        assert aiortc_private.header_extensions(transceiver) == []
        assert aiortc_private.offered_direction(transceiver) is None
        assert aiortc_private.mline_index(transceiver) is None
        assert aiortc_private.is_bundled(transceiver) is False
        assert aiortc_private.dtls_role(pc) == "auto"
        assert aiortc_private.detach_track(sender) is None and sender.track is None
        connections = list(aiortc_private.ice_connections(pc))
        assert len(connections) == 1 and connections[0]._protocols == []
        assert callable(connections[0].get_component_candidates)
        assert callable(RTCRtpSender._send_keyframe) and callable(receiver._handle_rtp_packet)
        assert callable(RTCRtpSender._retransmit) and callable(RTCRtpSender._handle_rtcp_packet)
        transport = receiver.transport  # what receive_srtp_directly reads and calls
        assert transport._rx_srtp is None and transport._state.name == "NEW"
        assert transport._RTCDtlsTransport__rx_bytes == transport._RTCDtlsTransport__rx_packets == 0  # type: ignore[attr-defined]
        assert callable(transport._handle_rtp_data) and callable(transport._handle_rtcp_data)
    finally:
        await pc.close()


@pytest.mark.parametrize("name", ["_send_rtcp_pli", "_handle_rtp_packet", "receive", "_send_rtcp"])
def test_receiver_methods_the_tap_wraps_exist(name: str) -> None:
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    assert callable(getattr(RTCRtpReceiver, name))


async def test_forwarded_packets_reach_the_socket_of_the_selected_pair(
        alice_and_bob: tuple[Any, Any]) -> None:
    """The forwarding path (_fastpath.Down) writes straight to a duplicate of the selected pair's
    datagram socket, through the DTLS transport's libsrtp session; the SFU's pairs are all on its
    own host sockets (StunProtocol), which that relies on. Bob's media arriving decoded shows the
    SRTP and the address are right."""
    from aioice.ice import StunProtocol

    alice, bob = alice_and_bob
    await alice.wait_for_media("bob", video_frames=3)
    room = alice.host._rooms["room"]
    for peer in room.peers.values():
        for down in peer.downs.values():
            dtls = down.sender.transport
            pair = dtls.transport._connection._nominated[1]
            assert type(pair.protocol) is StunProtocol and not pair.protocol.transport.is_closing()
            assert down.native.bound == "native" and down.native.send_errors == 0
            assert aiortc_private.sender_counts(down.sender) == (down.packets, down.bytes) and down.packets > 0


async def test_media_streams_are_the_media_ssrcs_of_a_receiver_without_rtx() -> None:
    """A video receiver gets ten packets of its media stream with one missing, and that one again
    over RTX: media_streams counts the media stream only (nine received, one lost), where aiortc's
    getStats keeps a single inbound-rtp entry, the RTX stream's."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpparameters import (RTCRtpCodecParameters, RTCRtpDecodingParameters, RTCRtpReceiveParameters,
                                         RTCRtpRtxParameters)
    from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver
    from aiortc.rtp import RtpPacket, wrap_rtx

    media_ssrc, rtx_ssrc = 1111, 2222
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("video", transport)
    receiver._track = RemoteStreamTrack(kind="video")  # as RTCPeerConnection gives it one
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    rtx = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96})
    await receiver.receive(RTCRtpReceiveParameters(
        codecs=[vp8, rtx], encodings=[RTCRtpDecodingParameters(ssrc=media_ssrc, payloadType=96,
                                                               rtx=RTCRtpRtxParameters(ssrc=rtx_ssrc))]))
    try:
        packets = [RtpPacket(payload_type=96, sequence_number=seq, timestamp=3000 * seq, ssrc=media_ssrc,
                             payload=b"\x10\x00\x00\x00") for seq in range(100, 110)]
        for packet in packets:
            if packet.sequence_number != 105:
                await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
        await receiver._handle_rtp_packet(wrap_rtx(packets[5], payload_type=97, sequence_number=7, ssrc=rtx_ssrc),
                                          arrival_time_ms=0)

        streams = aiortc_private.media_streams(receiver)
        assert list(streams) == [media_ssrc]
        assert (streams[media_ssrc].packets_received, streams[media_ssrc].packets_lost) == (9, 1)
        inbound = [s for s in (await receiver.getStats()).values() if s.type == "inbound-rtp"]
        assert [s.ssrc for s in inbound] == [rtx_ssrc]  # why media_streams exists
    finally:
        await receiver.stop()


async def test_an_ice_round_trip_is_a_consent_check_on_the_selected_pair(alice_and_bob: tuple[Any, Any]) -> None:
    alice, _ = alice_and_bob
    unconnected = RTCPeerConnection()
    assert await aiortc_private.ice_round_trip(unconnected) is None  # nothing selected
    await unconnected.close()
    await alice.wait_for_media("bob", video_frames=3)
    round_trips = [await aiortc_private.ice_round_trip(alice.pc) for _ in range(5)]
    # Loopback: quick, and none lost (a None is a check unanswered for 0.5 s: a stalled machine).
    measured = [rtt for rtt in round_trips if rtt is not None]
    assert len(measured) >= 4 and all(0 < rtt < 0.5 for rtt in measured), round_trips


async def test_rtcp_feedback_is_counted_before_aiortc_handles_it() -> None:
    from aiortc.rtp import (RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPacket, RtcpPsfbPacket,
                            RtcpRtpfbPacket)

    pc = RTCPeerConnection()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        counted: list[tuple[str, int]] = []
        keyframes: list[bool] = []
        aiortc_private.on_keyframe_request(sender, lambda: keyframes.append(True))
        aiortc_private.on_rtcp_feedback(sender, lambda kind, count: counted.append((kind, count)))
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=sender._ssrc)
        nack.lost = [100, 101, 105]
        wire = b"".join(bytes(p) for p in (nack, RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc),
                                           RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=sender._ssrc)))
        for packet in RtcpPacket.parse(wire):  # as they come off the wire
            await sender._handle_rtcp_packet(packet)
        assert counted == [("nack", 3), ("pli", 1), ("fir", 1)]
        assert keyframes == [True, True]  # aiortc's own handling still ran
    finally:
        await pc.close()


async def _tapped_video_receiver(on_rtp: Any) -> tuple[Any, list[Any]]:
    """A started video receiver (VP8 on 96, its RTX on 97) tapped as the SFU taps publishers'
    receivers, and the RTCP it sends (its own SSRC 5)."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
    from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("video", transport)
    receiver._track = RemoteStreamTrack(kind="video")
    sent: list[Any] = []

    async def send_rtcp(packet: Any) -> None:
        sent.append(packet)

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]
    receiver._set_rtcp_ssrc(5)
    aiortc_private.tap_receiver(receiver, on_rtp)
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    rtx = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96})
    await receiver.receive(RTCRtpReceiveParameters(codecs=[vp8, rtx]))
    return receiver, sent


async def test_a_tapped_receiver_keeps_each_simulcast_stream_apart() -> None:
    """Three layers' packets interleaved: a gap in one stream is NACKed for that stream only, and
    nothing else is (aiortc alone would read the interleaving as loss, NACK it and send PLIs);
    once map_rtx_stream names the RTX stream, a retransmitted packet is no longer missing."""
    from aiortc.rtp import RtcpPsfbPacket, RtcpRtpfbPacket, RtpPacket, wrap_rtx

    async def on_rtp(packet: Any) -> bool:
        return packet.ssrc != 9999  # a stream the SFU cannot place yet

    receiver, sent = await _tapped_video_receiver(on_rtp)
    try:
        starts = {1111: 100, 2222: 30000, 3333: 60000}
        packets = {ssrc: [RtpPacket(payload_type=96, sequence_number=(start + i) % 65536, timestamp=3000 * i,
                                    ssrc=ssrc, payload=b"\x10\x00\x00\x00") for i in range(20)]
                   for ssrc, start in starts.items()}
        for i in range(20):
            for ssrc in starts:
                if not (ssrc == 2222 and i == 10):
                    await receiver._handle_rtp_packet(packets[ssrc][i], arrival_time_ms=0)
        nacks = [p for p in sent if isinstance(p, RtcpRtpfbPacket)]
        assert [(n.media_ssrc, n.lost) for n in nacks] == [(2222, [30010])]
        assert not [p for p in sent if isinstance(p, RtcpPsfbPacket) and p.fmt == 1]  # no PLI
        aiortc_private.map_rtx_stream(receiver, 4444, 2222)
        await receiver._handle_rtp_packet(wrap_rtx(packets[2222][10], payload_type=97, sequence_number=1,
                                                   ssrc=4444), arrival_time_ms=0)
        await receiver._handle_rtp_packet(RtpPacket(payload_type=96, sequence_number=1, timestamp=0, ssrc=9999,
                                                    payload=b"\x10\x00\x00\x00"), arrival_time_ms=0)
        # The RTX stream left out, and the stream the SFU could not place: no report acknowledges it.
        assert set(aiortc_private.media_streams(receiver)) == set(starts)
        # The next gap is NACKed alone: the retransmitted packet counts as received.
        await receiver._handle_rtp_packet(RtpPacket(payload_type=96, sequence_number=30021, timestamp=0,
                                                    ssrc=2222, payload=b"\x10\x00\x00\x00"), arrival_time_ms=0)
        nacks = [p for p in sent if isinstance(p, RtcpRtpfbPacket)]
        assert [(n.media_ssrc, n.lost) for n in nacks] == [(2222, [30010]), (2222, [30020])]
    finally:
        await receiver.stop()


async def test_a_tapped_receiver_tells_the_publisher_its_bandwidth_and_builds_no_frames() -> None:
    """The tap keeps aiortc's bandwidth estimate (REMB, which sets the publisher's bitrate) and
    statistics but skips its depayloading and frame assembly, for a decoder that is stopped."""
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, unpack_remb_fci

    async def on_rtp(packet: Any) -> bool:
        return True

    receiver, sent = await _tapped_video_receiver(on_rtp)
    frames = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    try:
        for i in range(600):  # 6 s of 100 packets/s of 1,000 bytes, one frame each
            packet = RtpPacket(payload_type=96, sequence_number=i, timestamp=3000 * i, ssrc=1111, marker=1,
                               payload=b"\x10\x00\x00\x00" + bytes(996))
            packet.extensions.abs_send_time = int(i * 0.01 * (1 << 18)) & 0xFFFFFF
            await receiver._handle_rtp_packet(packet, arrival_time_ms=1000 + 10 * i)
        rembs = [unpack_remb_fci(p.fci) for p in sent if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP]
        assert rembs and rembs[-1][1] == [1111] and rembs[-1][0] > 0
        assert aiortc_private.media_streams(receiver)[1111].packets_received == 600
        assert frames._origin is None  # aiortc's jitter buffer never saw a packet
    finally:
        await receiver.stop()


async def test_a_publisher_with_transport_cc_gets_feedback_with_the_kernels_arrival_times_and_no_remb() -> None:
    """Packets with a transport sequence number are recorded as the transport routes them (a
    packet no receiver takes, like a browser's probe padding, too) at the arrival time of their
    datagram, not at the time the event loop handles them; the publisher gets transport-cc
    feedback every 50 ms, and no REMB, which would cap its own estimate."""
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket

    from appliance.sfu import twcc

    async def on_rtp(packet: Any) -> bool:
        return True

    receiver, sent = await _tapped_video_receiver(on_rtp)
    transport = receiver.transport
    router = transport._rtp_router
    router.register_receiver(receiver, ssrcs=[1111], payload_types=[96, 97])
    ice = transport.transport
    start_us = 3_900_000_000 * 1_000_000
    try:
        for i in range(100):  # 1 s: 100 packets 10 ms apart, handled all at once by a busy loop
            if i == 50:
                continue  # lost on the way
            packet = RtpPacket(payload_type=96, sequence_number=i, timestamp=900 * i, ssrc=1111 if i != 70 else 4242,
                               payload=bytes(1000))  # SSRC 4242: no receiver takes it
            packet.extensions.transport_sequence_number = 65500 + i & 0xFFFF
            packet.extensions.abs_send_time = int(i * 0.01 * (1 << 18)) & 0xFFFFFF
            ice.last_arrival_us = start_us + 10_000 * i  # as ice.py's stamped datagram gives it
            routed = router.route_rtp(packet)
            if routed is not None:
                await routed._handle_rtp_packet(packet, arrival_time_ms=0)
        reports = [twcc.parse(bytes(p)) for p in sent if isinstance(p, twcc.Feedback)]
        assert len(reports) == 20  # the first packet, then every 5th (50 ms)
        arrivals: dict[int, int | None] = {}
        for report in reports:
            for n, at in enumerate(report.arrivals):
                arrivals[(report.base_sequence + n) & 0xFFFF] = at
        assert arrivals[(65500 + 50) & 0xFFFF] is None and arrivals[(65500 + 70) & 0xFFFF] is not None
        received = [arrivals[(65500 + i) & 0xFFFF] for i in range(96) if i != 50]
        gaps = {b - a for a, b in zip(received, received[1:])}
        assert gaps <= {10_000, 20_000}, gaps  # the kernel's 10 ms, and 20 ms across the lost one
        assert not [p for p in sent if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP]
    finally:
        await receiver.stop()


def test_unknown_ssrcs_are_routed_by_mid_before_payload_type() -> None:
    """Two video m-lines of one browser share payload types: a simulcast layer's SSRC, in no
    description, reaches its receiver by the MID extension and is remembered."""
    from aiortc.rtcdtlstransport import RtpRouter
    from aiortc.rtp import RtpPacket

    camera, screen = object(), object()
    transport = type("T", (), {})()
    transport._rtp_router = router = RtpRouter()
    router.register_receiver(camera, ssrcs=[], payload_types=[96, 97], mid="1")  # type: ignore[arg-type]
    router.register_receiver(screen, ssrcs=[7777], payload_types=[96, 97], mid="2")  # type: ignore[arg-type]
    aiortc_private.route_by_mid(transport)
    aiortc_private.route_by_mid(transport)  # once is enough; twice changes nothing

    packet = RtpPacket(payload_type=96, ssrc=1234)
    assert router.route_rtp(packet) is None  # no MID: ambiguous payload type, as in aiortc
    packet.extensions.mid = "1"
    assert router.route_rtp(packet) is camera
    assert router.route_rtp(RtpPacket(payload_type=96, ssrc=1234)) is camera  # later packets carry no MID
    assert router.route_rtp(RtpPacket(payload_type=96, ssrc=7777)) is screen
