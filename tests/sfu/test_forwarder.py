from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    wrap_rtx,
)

from appliance.sfu import _fastpath, aiortc_private
from appliance.sfu.forwarder import (DownlinkEstimate, DownTrack, HeaderTemplate, RtpRewriter, UpTrack,
                                     audio_level_byte)
from appliance.sfu.stats import SfuStats

VP8_KEY = b"\x10\x00\x9d\x01\x2a"  # descriptor S=1 PID=0, frame tag with P=0
VP8_DELTA = b"\x10\x01\x00\x00\x00"
VP8_MORE = b"\x00\x00\x00\x00\x00"  # continuation of a frame


def test_rewriter_continues_numbering_across_restarts() -> None:
    rewriter = RtpRewriter(clock_rate=90000, last_seq=1000, last_ts=5000)
    rewriter.restart(seq=65534, ts=4_294_967_000, now=10.0)
    assert rewriter.rewrite(65534, 4_294_967_000, 10.0) == (1001, 5001)
    assert rewriter.rewrite(65535, 4_294_967_000, 10.0) == (1002, 5001)
    assert rewriter.rewrite(0, 704, 10.1) == (1003, 5001 + 1000)  # both numbers wrapped
    assert rewriter.rewrite(1, 704, 10.1) == (1004, 5001 + 1000)
    assert rewriter.rewrite(65533, 4_294_966_000, 10.1) is None  # older than the restart
    # The source restarts 0.5 s later with unrelated numbers: the subscriber sees no jump.
    rewriter.restart(seq=42, ts=777, now=10.6)
    assert rewriter.rewrite(42, 777, 10.6) == (1005, 5001 + 1000 + 45000)
    assert rewriter.rewrite(41, 700, 10.6) is None


def test_rewriter_stops_dropping_old_numbers_once_far_past_the_restart() -> None:
    rewriter = RtpRewriter(clock_rate=48000, last_seq=0, last_ts=0)
    rewriter.restart(seq=100, ts=0, now=0.0)
    for seq in range(100, 100 + 0x4002):
        assert rewriter.rewrite(seq % 65536, seq * 960, 0.0) is not None
    assert rewriter.start_seq is None
    assert rewriter.rewrite(99, 0, 0.0) is not None  # a late packet is now just late


class Wire:
    """A connected DTLS transport that records what is written to it, in clear: RTCP through
    ``_send_rtp``, forwarded RTP through the selected ICE pair's socket as the SFU writes it
    (aiortc_private.ForwardingSender), with SRTP that leaves packets as they are."""

    state = "connected"
    _state = DtlsState.CONNECTED

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._tx_srtp = SimpleNamespace(protect=lambda data: data)
        self._RTCDtlsTransport__tx_bytes = self._RTCDtlsTransport__tx_packets = 0
        socket = SimpleNamespace(sendto=lambda data, addr: self.sent.append(data), is_closing=lambda: False)
        pair = SimpleNamespace(protocol=SimpleNamespace(transport=socket), remote_addr=("127.0.0.1", 9))
        self._connection = SimpleNamespace(_nominated={1: pair})

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)

    @property
    def transport(self) -> Wire:
        return self

    async def stop(self) -> None:
        self.state = "closed"


VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
RTX = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96})
MID = RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid")
ABS_SEND_TIME = RTCRtpHeaderExtensionParameters(
    id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")


def _transceiver(pc: RTCPeerConnection, codecs: list[RTCRtpCodecParameters], mid: str, direction: str,
                 wire: Wire) -> RTCRtpTransceiver:
    transceiver = pc.addTransceiver("video", direction=direction)
    aiortc_private.set_codecs(transceiver, codecs)
    aiortc_private.set_header_extensions(transceiver, [MID, ABS_SEND_TIME])
    transceiver._set_mid(mid)
    transceiver._setCurrentDirection(direction)
    transceiver.sender.setTransport(wire)  # type: ignore[arg-type]
    transceiver.receiver.setTransport(wire)  # type: ignore[arg-type]
    transceiver.receiver._set_rtcp_ssrc(123)
    return transceiver


def _packet(seq: int, ts: int, payload: bytes, ssrc: int = 1111, pt: int = 96) -> RtpPacket:
    return RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload)


@pytest.fixture
async def pair() -> Any:
    pc = RTCPeerConnection()
    upstream, downstream = Wire(), Wire()
    stats = SfuStats()
    up = UpTrack("pub", "track-1", "camera", _transceiver(pc, [VP8, RTX], "0", "recvonly", upstream), stats)
    sub_vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100)
    down = DownTrack("sub", up, _transceiver(pc, [sub_vp8], "3", "sendonly", downstream), stats)
    yield up, down, upstream, downstream, stats
    up.close()
    await pc.close()


async def test_video_waits_for_a_keyframe_then_flows_rewritten(pair: Any) -> None:
    up, down, upstream, downstream, stats = pair
    assert down.accept_negotiation() and (down.payload_type, down.mid) == (100, "3")
    down.start()
    assert up.downs == (down,) and up.keyframe_wanted(0)
    await up.on_rtp(_packet(10, 9000, VP8_DELTA))
    await asyncio.sleep(0.01)
    assert downstream.sent == [] and down.gated
    pli = [p for data in upstream.sent for p in RtcpPacket.parse(data)]
    assert isinstance(pli[0], RtcpPsfbPacket) and pli[0].media_ssrc == 1111 and stats.plis_sent == 1

    for seq, payload in [(11, VP8_KEY), (12, VP8_MORE), (13, VP8_DELTA)]:
        await up.on_rtp(_packet(seq, 12000 + (seq - 11) * 3000, payload))
    extensions = HeaderExtensionsMap()
    extensions.configure(type("P", (), {"headerExtensions": [MID, ABS_SEND_TIME]})())
    out = [RtpPacket.parse(data, extensions) for data in downstream.sent]
    assert [p.payload for p in out] == [VP8_KEY, VP8_MORE, VP8_DELTA]
    assert {p.payload_type for p in out} == {100} and {p.ssrc for p in out} == {down.ssrc}
    assert {p.extensions.mid for p in out} == {"3"} and out[0].extensions.abs_send_time is not None
    assert [p.sequence_number - out[0].sequence_number for p in out] == [0, 1, 2]
    assert [p.timestamp - out[0].timestamp for p in out] == [0, 3000, 6000]
    await asyncio.sleep(0.01)
    assert not up.keyframe_wanted(0) and not down.gated
    history = down.sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]
    assert {p.sequence_number for p in history.values()} == {p.sequence_number for p in out}
    assert aiortc_private.sender_counts(down.sender) == (3, 3 * len(VP8_KEY))
    assert stats.forwarded_packets["video"] == 3

    # A retransmission (RTX) of packet 14, lost on its way here, goes out as packet 14; one of
    # packet 12, which came (a browser's padding while it probes its uplink), goes nowhere.
    await up.on_rtp(wrap_rtx(_packet(14, 18000, VP8_MORE), payload_type=97, sequence_number=500, ssrc=2222))
    again = RtpPacket.parse(downstream.sent[-1], extensions)
    assert (again.sequence_number, again.payload) == ((out[-1].sequence_number + 1) % 65536, VP8_MORE)
    for sequence_number, seq in ((501, 12), (502, 14)):
        assert await up.on_rtp(wrap_rtx(_packet(seq, 15000, VP8_MORE), payload_type=97,
                                        sequence_number=sequence_number, ssrc=2222))
    assert len(downstream.sent) == 4 and up.duplicates == stats.duplicates_dropped == 2

    # The publisher restarts with a new SSRC: gated again, then numbering continues.
    await up.on_rtp(_packet(7000, 1, VP8_DELTA, ssrc=3333))
    assert down.gated and len(downstream.sent) == 4
    await up.on_rtp(_packet(7001, 3001, VP8_KEY, ssrc=3333))
    restarted = RtpPacket.parse(downstream.sent[-1], extensions)
    assert restarted.sequence_number == (again.sequence_number + 1) % 65536
    assert 0 < (restarted.timestamp - out[-1].timestamp) % 2**32 < 90000


async def test_a_stopped_down_track_receives_nothing(pair: Any) -> None:
    up, down, _, downstream, _ = pair
    down.accept_negotiation()
    down.start()
    await up.on_rtp(_packet(1, 0, VP8_KEY))
    down.stop()
    await up.on_rtp(_packet(2, 3000, VP8_DELTA))
    assert len(downstream.sent) == 1 and up.downs == ()


async def test_subscriber_feedback_is_served_nack_from_history_pli_upstream(pair: Any) -> None:
    up, down, upstream, downstream, stats = pair
    aiortc_private.on_keyframe_request(down.sender, down.keyframe_requested)
    down.accept_negotiation()
    down.start()
    for seq, payload in [(1, VP8_KEY), (2, VP8_MORE), (3, VP8_DELTA)]:
        await up.on_rtp(_packet(seq, seq * 3000, payload))
    sent = [RtpPacket.parse(data) for data in downstream.sent]
    await asyncio.sleep(0.01)
    plis_before = len(upstream.sent)

    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=99, media_ssrc=down.ssrc)
    nack.lost = [sent[1].sequence_number]
    await down.sender._handle_rtcp_packet(nack)
    resent = RtpPacket.parse(downstream.sent[-1])
    assert (resent.sequence_number, resent.payload) == (sent[1].sequence_number, VP8_MORE)
    assert resent.ssrc == down.ssrc

    await down.sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=99, media_ssrc=down.ssrc))
    await asyncio.sleep(0.35)  # past the 300 ms between two PLIs to one publisher
    pli = RtcpPacket.parse(upstream.sent[-1])[0]
    assert len(upstream.sent) == plis_before + 1 and isinstance(pli, RtcpPsfbPacket)
    assert (pli.fmt, pli.media_ssrc) == (RTCP_PSFB_PLI, 1111)
    # The request made at start was served by the first packet, a keyframe: no PLI for it.
    assert stats.keyframe_requests == {"honoured": 1, "throttled": 0} and stats.plis_sent == 1


class Publisher:
    """The browser behind an up track: answers each PLI it receives with a keyframe 20 ms later,
    and notes when each PLI came."""

    def __init__(self, up: UpTrack, upstream: Wire) -> None:
        self.up, self.upstream = up, upstream
        self.plis: list[float] = []
        self.seq = 100
        self._seen = 0
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def frame(self, payload: bytes) -> None:
        self.seq += 1
        await self.up.on_rtp(_packet(self.seq, self.seq * 3000, payload))

    async def _serve(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            for data in self.upstream.sent[self._seen:]:
                if any(isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI for p in RtcpPacket.parse(data)):
                    self.plis.append(time.monotonic())
                    asyncio.get_running_loop().call_later(0.02, lambda: asyncio.ensure_future(self.frame(VP8_KEY)))
            self._seen = len(self.upstream.sent)

    def close(self) -> None:
        self._task.cancel()


def _more_downs(pc: RTCPeerConnection, up: UpTrack, stats: SfuStats, count: int) -> list[DownTrack]:
    downs = []
    for i in range(count):
        codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100)
        down = DownTrack(f"sub-{i}", up, _transceiver(pc, [codec], str(10 + i), "sendonly", Wire()), stats)
        assert down.accept_negotiation()
        aiortc_private.on_keyframe_request(down.sender, down.keyframe_requested)  # as Peer does
        downs.append(down)
    return downs


async def _pli_from(down: DownTrack) -> None:
    await down.sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=99, media_ssrc=down.ssrc))


async def test_a_weak_subscribers_requests_do_not_set_the_publishers_keyframe_rate(pair: Any) -> None:
    """A subscriber on a bad link asks for a keyframe every 50 ms: the first request reaches the
    publisher at once, the rest are held to the subscriber's budget (one per 5 s)."""
    up, down, upstream, _, stats = pair
    aiortc_private.on_keyframe_request(down.sender, down.keyframe_requested)
    down.accept_negotiation()
    down.start()
    publisher = Publisher(up, upstream)
    await publisher.frame(VP8_KEY)
    await asyncio.sleep(0.05)
    for _ in range(24):
        await _pli_from(down)
        await asyncio.sleep(0.05)
        await publisher.frame(VP8_DELTA)
    publisher.close()
    assert len(publisher.plis) == 1, publisher.plis
    assert stats.keyframe_requests == {"honoured": 1, "throttled": 23}


async def test_subscribers_keyframe_requests_reach_a_publisher_once_a_second_at_most(pair: Any) -> None:
    """Three subscribers each ask once, 200 ms apart: one PLI now, one a second later for the others."""
    up, _, upstream, _, stats = pair
    pc = RTCPeerConnection()
    publisher = Publisher(up, upstream)
    subscribers = _more_downs(pc, up, stats, 3)
    for down in subscribers:
        down.start()
    await publisher.frame(VP8_KEY)
    await asyncio.sleep(0.05)
    for down in subscribers:
        await _pli_from(down)
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.55)
    publisher.close()
    await pc.close()
    assert len(publisher.plis) == 2 and publisher.plis[1] - publisher.plis[0] >= 0.95, publisher.plis
    assert stats.keyframe_requests == {"honoured": 3, "throttled": 0}


@pytest.mark.parametrize("event", ["a subscriber starts", "the track resumes"])
async def test_a_keyframe_someone_waits_for_is_asked_for_within_300_ms_of_the_last(pair: Any, event: str) -> None:
    """Right after a PLI for a subscriber's repair, a newcomer's (or a resumed track's) keyframe is
    not held to the publisher's one-a-second limit."""
    up, down, upstream, _, stats = pair
    pc = RTCPeerConnection()
    publisher = Publisher(up, upstream)
    aiortc_private.on_keyframe_request(down.sender, down.keyframe_requested)
    down.accept_negotiation()
    down.start()
    await publisher.frame(VP8_KEY)
    await asyncio.sleep(0.05)
    await _pli_from(down)
    await asyncio.sleep(0.1)  # the PLI went out and its keyframe came
    assert len(publisher.plis) == 1
    if event == "a subscriber starts":
        _more_downs(pc, up, stats, 1)[0].start()
    else:
        up.hold(True)
        up.hold(False)
    await asyncio.sleep(0.35)
    publisher.close()
    await pc.close()
    assert len(publisher.plis) == 2 and publisher.plis[1] - publisher.plis[0] < 0.45, publisher.plis


async def test_a_subscriber_that_loses_most_packets_gets_retransmissions_within_its_budget(
        pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """~1.8 Mbit/s forwarded to a subscriber whose 300 kbit/s link loses three packets in four:
    it NACKs each lost packet once a round trip later, and again and again. Without a budget the
    retransmissions outgrow the media; with it they stay within 15 % of the media's bytes.

    The forwarder reads a clock that moves 20 ms per tick, so the run is one window of the
    budget however slowly the machine runs it (a slow CI machine once stretched it past a second
    and the window slid: one retransmission more than the bound)."""
    import appliance.sfu.forwarder as forwarder
    clock = [time.monotonic()]
    monkeypatch.setattr(forwarder, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    up, down, _, downstream, stats = pair
    aiortc_private.gate_retransmissions(down.sender, down.allow_retransmission)  # as Peer does
    down.accept_negotiation()
    down.start()
    payload = VP8_KEY + bytes(1095)
    lost: list[int] = []
    seq, forwarded_bytes = 1, 0
    for tick in range(50):  # one second, 20 ms at a time, 4 packets each
        for _ in range(4):
            await up.on_rtp(_packet(seq, seq * 750, payload if seq == 1 else VP8_MORE + bytes(1095)))
            sent = RtpPacket.parse(downstream.sent[-1])
            forwarded_bytes += len(sent.payload)
            if seq % 4:
                lost.append(sent.sequence_number)
            seq += 1
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=99, media_ssrc=down.ssrc)
        nack.lost = lost[-60:]  # still missing: asked for again
        await down.sender._handle_rtcp_packet(nack)
        await asyncio.sleep(0.02)
        clock[0] += 0.02
    resent_bytes = sum(len(RtpPacket.parse(data).payload) for data in downstream.sent) - forwarded_bytes
    assert 0 < resent_bytes <= 0.15 * forwarded_bytes + 1100, (resent_bytes, forwarded_bytes)
    assert down.retransmitted == stats.retransmissions["sent"] > 0
    assert down.retransmissions_refused == stats.retransmissions["refused"] > 10 * down.retransmitted


async def test_a_lost_packet_of_the_keyframe_a_subscriber_starts_from_is_sent_again_whatever_the_budget(
        pair: Any) -> None:
    """A video just started (or resumed) has forwarded too little for its budget to carry one
    packet, and nothing shows until its keyframe is whole: a NACKed packet of the latest keyframe
    is sent again regardless, three times at most; a lost packet of another frame is not."""
    up, down, _, downstream, stats = pair
    aiortc_private.gate_retransmissions(down.sender, down.allow_retransmission)  # as Peer does
    down.accept_negotiation()
    down.start()
    for seq, ts, payload in [(1, 3000, VP8_KEY + bytes(1095)), (2, 3000, VP8_MORE + bytes(1095)),
                             (3, 6000, VP8_DELTA + bytes(1095))]:
        await up.on_rtp(_packet(seq, ts, payload))
    sent = [RtpPacket.parse(data) for data in downstream.sent]
    for _ in range(5):  # the second packet of the keyframe, then the delta frame's, lost and asked for again
        for lost in (sent[1], sent[2]):
            nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=99, media_ssrc=down.ssrc)
            nack.lost = [lost.sequence_number]
            await down.sender._handle_rtcp_packet(nack)
    again = [RtpPacket.parse(data) for data in downstream.sent[3:]]
    assert [p.sequence_number for p in again] == [sent[1].sequence_number] * 3
    assert (down.retransmitted, down.retransmissions_refused) == (3, 7)


async def test_a_subscribers_remb_and_receiver_reports_make_its_downlink_estimate(pair: Any) -> None:
    """Chromium's REMB (one for every stream it receives) and its receiver reports, as they come
    off the wire, become the estimate the layer allocator will read (Peer.downlink_estimate)."""
    from aiortc.rtp import RTCP_PSFB_APP, RtcpReceiverInfo, RtcpRrPacket, pack_remb_fci

    from appliance.sfu.peer import Peer

    up, down, _, downstream, _ = pair
    downstream._stats_id = "transport"  # what aiortc's receiver-report handling names
    aiortc_private.on_remb(down.sender, down.remb_received)  # as Peer does
    down.accept_negotiation()
    down.start()
    peer = SimpleNamespace(downs={up.key: down})
    assert Peer.downlink_estimate(peer) == DownlinkEstimate(None, None, None)  # type: ignore[arg-type]

    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=99, media_ssrc=0, fci=pack_remb_fci(287_000, [down.ssrc, 4242]))
    report = RtcpRrPacket(ssrc=99, reports=[RtcpReceiverInfo(
        ssrc=down.ssrc, fraction_lost=64, packets_lost=30, highest_sequence=100, jitter=900, lsr=0, dlsr=0)])
    for packet in RtcpPacket.parse(bytes(remb) + bytes(report)):
        await down.sender._handle_rtcp_packet(packet)
    assert down.remb_bps == 287_000
    estimate = Peer.downlink_estimate(peer)  # type: ignore[arg-type]
    assert (estimate.bitrate_bps, estimate.loss) == (287_000, 0.25) and 0 <= estimate.age_s < 1

    other = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=99, media_ssrc=0, fci=pack_remb_fci(1_000_000, [4242]))
    await down.sender._handle_rtcp_packet(other)  # names another stream only
    assert down.remb_bps == 287_000


def _sent_with(template: HeaderTemplate, packet: RtpPacket) -> bytes:
    """What a _fastpath.Down writing ``template`` sends for ``packet``, numbered as it is."""
    sent: list[bytes] = []
    rewriter = RtpRewriter(90000, last_seq=(packet.sequence_number - 1) % 65536, last_ts=(packet.timestamp - 1) % 2**32)
    rewriter.restart(packet.sequence_number, packet.timestamp, 0.0)
    down = _fastpath.Down(packet.ssrc, True, rewriter, _fastpath.Counters())
    down.payload_type = packet.payload_type
    down.set_template(template.constant, template.abs_send_time_id, template.audio_level_id, template.transport_cc_id)
    if packet.extensions.transport_sequence_number is not None:
        down.send_times = _fastpath.SendTimes(16)
        down.send_times.next_sequence = packet.extensions.transport_sequence_number
    down.bind_output(sent.append)
    assert down.forward(packet.payload, packet.marker, packet.sequence_number, packet.timestamp,
                        audio_level_byte(packet), packet.padding_size,
                        packet.csrc, 0.0, (packet.extensions.abs_send_time or 0) << 14) == (
        packet.sequence_number, packet.timestamp)
    assert down.sent(packet.sequence_number) == sent[0] and (down.packets, down.bytes) == (1, len(packet.payload))
    return sent[0]


@pytest.mark.parametrize("mid", ["0", "3", "video-16-chars-x"])
@pytest.mark.parametrize("level", [None, (True, 30), (False, 127)])
@pytest.mark.parametrize("ids", [(4, 2, 1, 3), (1, 14, 0, 0), (0, 3, 5, 14)])
@pytest.mark.parametrize("sequence", [None, 0, 0xABCD])
def test_the_forwarding_path_writes_what_rtp_packet_serialize_writes(
        mid: str, level: tuple[bool, int] | None, ids: tuple[int, int, int, int], sequence: int | None) -> None:
    mid_id, abs_id, level_id, transport_cc_id = ids
    negotiated = [RTCRtpHeaderExtensionParameters(id=i, uri=uri) for i, uri in
                  [(mid_id, "urn:ietf:params:rtp-hdrext:sdes:mid"),
                   (abs_id, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
                   (level_id, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                   (transport_cc_id, "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01")]
                  if i]
    extensions = HeaderExtensionsMap()
    extensions.configure(type("P", (), {"headerExtensions": negotiated})())
    template = HeaderTemplate.for_subscriber(mid, negotiated)
    assert template is not None
    for marker, payload, csrc, padding in [(0, VP8_KEY, [], 0), (1, b"x" * 1100, [], 0),
                                           (0, b"y" * 7, [1, 0xFFFFFFFF], 5)]:
        packet = RtpPacket(payload_type=111, marker=marker, sequence_number=65535, timestamp=2**32 - 1,
                           ssrc=0xDEADBEEF, payload=payload)
        packet.csrc, packet.padding_size = csrc, padding
        packet.extensions.mid = mid
        packet.extensions.abs_send_time = 0xABCDEF
        packet.extensions.audio_level = level
        packet.extensions.transport_sequence_number = sequence
        ours, aiortcs = _sent_with(template, packet), packet.serialize(extensions)
        if not padding:
            assert ours == aiortcs
            continue
        end = len(ours) - padding  # the padding: zeros here, random bytes there, then its length
        assert (ours[:end], ours[end:-1], ours[-1]) == (aiortcs[:end], bytes(padding - 1), aiortcs[-1])


def test_header_template_adds_the_playout_delay_asked_for_when_negotiated() -> None:
    """The playout-delay element (ID, length 2, then 12-bit minimum and maximum in 10 ms units)
    goes after the MID while a delay is asked for; the maximum is left at its largest."""
    delay = RTCRtpHeaderExtensionParameters(id=5, uri="http://www.webrtc.org/experiments/rtp-hdrext/playout-delay")
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=b"x")
    packet.extensions.abs_send_time = 0xABCDEF
    template = HeaderTemplate.for_subscriber("1", [MID, ABS_SEND_TIME, delay])
    plain = _sent_with(template, packet)
    template.set_playout_delay(220)
    delayed = _sent_with(template, packet)
    assert delayed[12:16] == b"\xbe\xde\x00\x03"  # three words of extensions now
    assert delayed[16:18] == plain[16:18] == b"\x40" + b"1"  # the MID (ID 4)
    assert delayed[18:22] == bytes([0x52, 0x01, 0x6F, 0xFF])  # 22 x 10 ms, 4095 x 10 ms
    template.set_playout_delay(0)
    assert _sent_with(template, packet) == plain
    without = HeaderTemplate.for_subscriber("1", [MID, ABS_SEND_TIME])
    without.set_playout_delay(220)  # not negotiated: nothing written
    assert _sent_with(without, packet) == plain


def test_header_template_refuses_what_the_one_byte_form_cannot_carry() -> None:
    wide = [RTCRtpHeaderExtensionParameters(id=15, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]
    assert HeaderTemplate.for_subscriber("0", wide) is None
    assert HeaderTemplate.for_subscriber("m" * 17, [MID]) is None


# ---------------------------------------------------------------- simulcast
LAYER_SSRCS = {"q": 5001, "h": 5002, "f": 5003}
LAYER_RTX_SSRCS = {"q": 6001, "h": 6002, "f": 6003}


def _layer_packet(rid: str, seq: int, payload: bytes, with_rid: bool = True) -> RtpPacket:
    packet = _packet(seq, seq * 3000, payload, ssrc=LAYER_SSRCS[rid])
    if with_rid:  # browsers send the rid until the SFU's receiver reports acknowledge the stream
        packet.extensions.rtp_stream_id = rid
    return packet


def _plis(wire: Wire) -> list[int]:
    return [p.media_ssrc for data in wire.sent for p in RtcpPacket.parse(data)
            if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI]


@pytest.fixture
async def simulcast_pair() -> Any:
    pc = RTCPeerConnection()
    upstream, downstream = Wire(), Wire()
    stats = SfuStats()
    up = UpTrack("pub", "cam", "camera", _transceiver(pc, [VP8, RTX], "1", "recvonly", upstream), stats,
                 rids=["q", "h", "f"])
    sub_vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100)
    down = DownTrack("sub", up, _transceiver(pc, [sub_vp8], "3", "sendonly", downstream), stats)
    assert down.accept_negotiation()
    yield up, down, upstream, downstream, stats
    up.close()
    await pc.close()


async def _forwarding_from_a_keyframe(up: UpTrack, down: DownTrack) -> None:
    """Every layer sending, the down track started, and a keyframe (sequence number 100) on each."""
    for rid in "qhf":
        await up.on_rtp(_layer_packet(rid, 99, VP8_DELTA))
    down.start()
    for rid in "qhf":
        await up.on_rtp(_layer_packet(rid, 100, VP8_KEY))


async def test_simulcast_layers_are_told_apart_by_rid_then_by_ssrc(simulcast_pair: Any) -> None:
    """Each layer's SSRC is learned from the rid of its first packets, its RTX stream's from the
    repaired-rid; later packets carry neither and still reach their layer. A down track forwards
    the highest layer only, from its keyframe; its start asks that layer (its SSRC) for one."""
    up, down, upstream, downstream, stats = simulcast_pair
    assert [layer.rid for layer in up.layers] == ["q", "h", "f"] and down.target == 2
    # An SSRC no rid names yet: dropped, and left unacknowledged (False) so that its rid keeps coming.
    assert await up.on_rtp(_packet(1, 0, VP8_KEY, ssrc=9999)) is False
    for rid in "qhf":
        assert await up.on_rtp(_layer_packet(rid, 9, VP8_DELTA)) is True
    assert up.sending == (0, 1, 2) and up.packets == 3
    down.start()
    for seq, payload in [(10, VP8_KEY), (11, VP8_DELTA)]:
        for rid in "qhf":
            await up.on_rtp(_layer_packet(rid, seq, payload))
    for rid in "qhf":
        assert await up.on_rtp(_layer_packet(rid, 12, VP8_DELTA, with_rid=False)) is True
    assert {layer.rid: layer.media_ssrc for layer in up.layers} == LAYER_SSRCS
    assert [layer.packets for layer in up.layers] == [4, 4, 4] and up.packets == 12
    out = [RtpPacket.parse(data) for data in downstream.sent]
    assert len(out) == 3 and [p.sequence_number - out[0].sequence_number for p in out] == [0, 1, 2]
    assert down.layer == 2

    # A retransmission of the top layer, on its RTX stream named by the repaired-rid, of a packet
    # lost on its way here.
    rtx = wrap_rtx(_layer_packet("f", 13, VP8_DELTA, with_rid=False), payload_type=97, sequence_number=1,
                   ssrc=LAYER_RTX_SSRCS["f"])
    rtx.extensions.repaired_rtp_stream_id = "f"
    await up.on_rtp(rtx)
    assert up.layers[2].rtx_ssrc == LAYER_RTX_SSRCS["f"]
    again = RtpPacket.parse(downstream.sent[-1])
    assert (again.sequence_number, again.payload) == ((out[-1].sequence_number + 1) % 65536, VP8_DELTA)
    assert aiortc_private.media_streams(up.receiver) == {}  # nothing received through aiortc here
    assert up.receiver._RTCRtpReceiver__rtx_ssrc == {LAYER_RTX_SSRCS["f"]: LAYER_SSRCS["f"]}  # type: ignore[attr-defined]

    # A subscriber's PLI asks the layer it receives, by that layer's SSRC.
    await asyncio.sleep(0.01)
    down.keyframe_requested()
    await asyncio.sleep(0.01)
    assert _plis(upstream)[-1] == LAYER_SSRCS["f"]


async def test_a_layer_switch_waits_for_the_target_layers_keyframe_with_numbers_continuing(
        simulcast_pair: Any) -> None:
    up, down, upstream, downstream, stats = simulcast_pair
    await _forwarding_from_a_keyframe(up, down)
    await asyncio.sleep(0.01)
    plis_before = len(_plis(upstream))

    down.set_max_layer(0)  # to the lowest layer: its keyframe is asked for at once
    await asyncio.sleep(0.01)
    assert _plis(upstream)[plis_before:] == [LAYER_SSRCS["q"]]
    for seq in (101, 102):  # until it comes, the top layer goes on; the low layer's deltas do not
        for rid in "qhf":
            await up.on_rtp(_layer_packet(rid, seq, VP8_DELTA))
    assert down.layer == 2 and len(downstream.sent) == 3
    await up.on_rtp(_layer_packet("q", 103, VP8_KEY))  # the switch
    await up.on_rtp(_layer_packet("f", 103, VP8_DELTA))  # the old layer stops here
    await up.on_rtp(_layer_packet("q", 104, VP8_DELTA))
    out = [RtpPacket.parse(data) for data in downstream.sent]
    assert [p.payload for p in out] == [VP8_KEY, VP8_DELTA, VP8_DELTA, VP8_KEY, VP8_DELTA]
    assert [p.sequence_number - out[0].sequence_number for p in out] == [0, 1, 2, 3, 4]
    assert {p.ssrc for p in out} == {down.ssrc}
    assert all(0 <= (b.timestamp - a.timestamp) % 2**32 < 90000 for a, b in zip(out, out[1:]))
    assert (down.layer, down.layer_switches, stats.layer_switches) == (0, 1, 1)

    # Back up: the same again, the top layer's keyframe asked for.
    down.set_max_layer(5)  # clamped to the highest layer
    assert down.target == 2
    await up.on_rtp(_layer_packet("f", 104, VP8_DELTA))
    await up.on_rtp(_layer_packet("f", 105, VP8_KEY))
    await up.on_rtp(_layer_packet("q", 105, VP8_DELTA))
    last = RtpPacket.parse(downstream.sent[-1])
    assert len(downstream.sent) == 6 and last.payload == VP8_KEY
    assert last.sequence_number == (out[-1].sequence_number + 1) % 65536
    assert (down.layer, stats.layer_switches) == (2, 2)


async def test_a_paused_video_sends_nothing_and_resumes_from_a_keyframe_with_numbers_continuing(
        simulcast_pair: Any) -> None:
    """A tile the subscriber does not show (max_layer -1) or a camera the room's last-N leaves
    out: nothing of it is forwarded from that moment, not even the rest of the frame; shown
    again, it asks for a keyframe and starts from it, its numbers going on where they stopped."""
    up, down, upstream, downstream, stats = simulcast_pair
    await _forwarding_from_a_keyframe(up, down)
    await asyncio.sleep(0.01)
    for pause, resume in [(lambda: down.set_max_layer(-1), lambda: down.set_max_layer(None)),
                          (lambda: down.set_shown(False), lambda: down.set_shown(True))]:
        sent = len(downstream.sent)
        pause()
        assert down.paused and down.target is None and not down.gated
        for seq, payload in [(201, VP8_DELTA), (202, VP8_KEY), (203, VP8_DELTA)]:
            for rid in "qhf":
                await up.on_rtp(_layer_packet(rid, seq, payload))
        down.keyframe_requested()  # a late PLI of the subscriber's asks the publisher nothing
        await asyncio.sleep(0.01)
        plis = len(_plis(upstream))
        assert len(downstream.sent) == sent and plis <= 3
        resume()
        await asyncio.sleep(0.05)
        assert _plis(upstream)[plis:] == [LAYER_SSRCS["f"]] and down.gated
        await up.on_rtp(_layer_packet("f", 204, VP8_DELTA))  # not from a delta
        await up.on_rtp(_layer_packet("f", 205, VP8_KEY))
        out = [RtpPacket.parse(data) for data in downstream.sent[sent - 1:]]
        assert [p.payload for p in out[1:]] == [VP8_KEY] and down.layer == 2
        assert out[1].sequence_number == (out[0].sequence_number + 1) % 65536
        await asyncio.sleep(0.35)  # urgent PLIs of one layer are 300 ms apart at least


async def test_a_track_without_simulcast_has_one_layer_and_learns_its_ssrc_as_before(pair: Any) -> None:
    up, down, _, _, _ = pair
    assert not up.simulcast and len(up.layers) == 1 and up.layers[0].rid is None
    await up.on_rtp(_packet(1, 0, VP8_KEY, ssrc=4242))
    assert up.layers[0].media_ssrc == 4242 and down.target == 0


async def test_a_down_track_follows_the_layers_the_publisher_sends(simulcast_pair: Any, monkeypatch: Any) -> None:
    """A browser sends its upper layers only while its bandwidth estimate allows: a subscriber
    wanting the top layer starts on what is sent, moves down when the top layer stops and up
    again when it comes back, each time at a keyframe."""
    from appliance.sfu import forwarder

    monkeypatch.setattr(forwarder, "LAYER_TIMEOUT", 0.1)
    monkeypatch.setattr(forwarder, "LAYER_CHECK_INTERVAL", 0.01)
    up, down, upstream, downstream, stats = simulcast_pair
    assert down.target == 2  # nothing sent yet
    await up.on_rtp(_layer_packet("q", 9, VP8_DELTA))
    down.start()  # made before the first layer came, started after: it heads for what is sent
    assert down.target == 0
    for rid in "qh":
        await up.on_rtp(_layer_packet(rid, 10, VP8_KEY))
    assert up.sending == (0, 1) and down.target == 1 and down.layer == 1
    for seq in range(11, 14):
        for rid in "qhf":
            await up.on_rtp(_layer_packet(rid, seq, VP8_KEY if (rid, seq) == ("f", 13) else VP8_DELTA))
        await asyncio.sleep(0.01)
        if seq == 11:  # a keyframe of the top layer is asked for as soon as it is sent
            assert up.sending == (0, 1, 2) and down.target == 2 and _plis(upstream) == [LAYER_SSRCS["f"]]
    assert (down.target, down.layer) == (2, 2)

    await asyncio.sleep(0.15)  # the top layer stops; the others go on
    for seq, payload in [(14, VP8_DELTA), (15, VP8_KEY), (16, VP8_DELTA)]:
        for rid in "qh":
            await up.on_rtp(_layer_packet(rid, seq, payload))
    assert up.sending == (0, 1) and (down.target, down.layer) == (1, 1)
    out = [RtpPacket.parse(data) for data in downstream.sent]
    assert [p.sequence_number - out[0].sequence_number for p in out] == list(range(len(out)))
    assert stats.layer_switches == 3  # q (the first keyframe) -> h -> f -> h


async def test_taps_get_the_highest_layer_sent_from_its_keyframe(simulcast_pair: Any, monkeypatch: Any) -> None:
    """A recording of a simulcast track gets one layer: the highest the publisher sends, moved to
    at that layer's keyframe (asked for) when a higher one starts or the top one stops."""
    from appliance.sfu import forwarder

    monkeypatch.setattr(forwarder, "LAYER_TIMEOUT", 0.1)
    monkeypatch.setattr(forwarder, "LAYER_CHECK_INTERVAL", 0.01)
    up, _, upstream, _, _ = simulcast_pair
    tapped: list[tuple[int, int]] = []
    up.add_tap(lambda _, packet: tapped.append((packet.ssrc, packet.sequence_number)))
    for seq, payload in [(1, VP8_DELTA), (2, VP8_KEY), (3, VP8_DELTA)]:
        for rid in "qh":
            await up.on_rtp(_layer_packet(rid, seq, payload))
    assert tapped == [(LAYER_SSRCS["h"], 2), (LAYER_SSRCS["h"], 3)]
    for seq, payload in [(4, VP8_DELTA), (5, VP8_KEY)]:
        for rid in "qhf":
            await up.on_rtp(_layer_packet(rid, seq, payload))
        await asyncio.sleep(0.01)
        if seq == 4:
            assert _plis(upstream) == [LAYER_SSRCS["f"]]  # the top layer appeared: its keyframe asked for
    assert tapped[2:] == [(LAYER_SSRCS["h"], 4), (LAYER_SSRCS["h"], 5), (LAYER_SSRCS["f"], 5)]


def _allocating_peer(down: DownTrack, stats: SfuStats) -> Any:
    """What Peer.allocate reads of a peer: its down tracks, allocator, round trip and room's stats."""
    from appliance.sfu.allocation import DownlinkAllocator, PlayoutDelay
    from appliance.sfu.peer import Peer

    from appliance.sfu.twcc import SendHistory

    peer = SimpleNamespace(downs={down.up.key: down}, allocator=DownlinkAllocator(), room=SimpleNamespace(stats=stats),
                           rtt_s=0.05, playout=PlayoutDelay(), transport_sequence=SendHistory())
    peer.downlink_estimate = lambda: Peer.downlink_estimate(peer)  # type: ignore[arg-type]
    return peer


async def test_a_subscriber_whose_downlink_is_narrow_gets_the_layer_that_fits(simulcast_pair: Any) -> None:
    """The layers' bitrates, measured from what the publisher sends, and the subscriber's REMB
    decide its layer: at 300 kbit/s the 150 kbit/s layer, its keyframe asked for; nothing is
    held back before the first REMB."""
    from appliance.sfu.peer import Peer

    up, down, upstream, downstream, stats = simulcast_pair
    await _forwarding_from_a_keyframe(up, down)
    t0 = time.monotonic()
    up.measure(t0)
    for rid, kbit in zip("qhf", (150, 500, 1200)):  # half a second of each layer
        await up.on_rtp(_layer_packet(rid, 101, VP8_DELTA + bytes(kbit * 1000 // 16 - len(VP8_DELTA))))
    rtx = wrap_rtx(_layer_packet("f", 100, VP8_KEY + bytes(50_000), with_rid=False), payload_type=97,
                   sequence_number=1, ssrc=LAYER_RTX_SSRCS["f"])
    rtx.extensions.repaired_rtp_stream_id = "f"
    assert await up.on_rtp(rtx)  # a retransmission, or a browser's padding while it probes: not the layer's rate
    up.measure(t0 + 0.5)
    assert [round(layer.bitrate_bps) for layer in up.layers] == [150_000, 500_000, 1_200_000]
    peer = _allocating_peer(down, stats)
    Peer.allocate(peer, t0 + 0.5)
    assert down.bandwidth_layer is None and down.target == 2  # no REMB yet: the estimate is unknown

    await asyncio.sleep(0.01)
    plis_before = len(_plis(upstream))
    down.remb_received(300_000)
    Peer.allocate(peer, t0 + 1.0)  # over the estimate: not yet moved (a dip is not a link)
    assert down.target == 2
    Peer.allocate(peer, t0 + 2.0)
    assert (down.bandwidth_layer, down.target) == (0, 0)
    await asyncio.sleep(0.01)
    assert _plis(upstream)[plis_before:] == [LAYER_SSRCS["q"]]
    assert (await Peer.describe_stats(SimpleNamespace(  # type: ignore[arg-type]
        pc=SimpleNamespace(connectionState="connected"), ups={}, downs=peer.downs, quality=None,
        allocator=peer.allocator, downlink_estimate=peer.downlink_estimate,
        transport_sequence=peer.transport_sequence)))["subscribed"][0]["bandwidth_layer"] == 0


async def test_probe_padding_is_the_latest_packet_again_over_rtx_stamped_with_the_time_it_is_sent(
        pair: Any) -> None:
    up, down, _, downstream, _ = pair
    assert down.accept_negotiation()
    down.start()
    assert down.output.pad(aiortc_private.current_ntp_time()) == 0  # nothing sent yet
    await up.on_rtp(_packet(1, 0, VP8_KEY + b"picture"))
    assert down.output.pad(aiortc_private.current_ntp_time()) == 0  # no RTX negotiated with this subscriber
    down.sender._RTCRtpSender__rtx_payload_type = 101  # as sender.send() sets it when RTX is negotiated
    extensions = HeaderExtensionsMap()
    extensions.configure(SimpleNamespace(headerExtensions=[MID, ABS_SEND_TIME]))  # type: ignore[arg-type]
    down.sender._RTCRtpSender__rtp_header_extensions_map = extensions
    original = RtpPacket.parse(downstream.sent[-1], extensions)
    ntp_time = aiortc_private.current_ntp_time() + (5 << 32)  # five seconds on
    sent = [down.output.pad(ntp_time) for _ in range(2)]
    pads = [RtpPacket.parse(data, extensions) for data in downstream.sent[-2:]]
    assert sent == [len(data) for data in downstream.sent[-2:]]
    for pad in pads:
        assert (pad.payload_type, pad.ssrc) == (101, down.sender._rtx_ssrc)
        assert pad.payload == original.sequence_number.to_bytes(2, "big") + original.payload
        assert pad.extensions.abs_send_time == (ntp_time >> 14) & 0xFFFFFF != original.extensions.abs_send_time
        assert pad.extensions.mid == original.extensions.mid == "3"
    assert (pads[1].sequence_number - pads[0].sequence_number) % 65536 == 1
    assert down.output._history[original.sequence_number % aiortc_private.RTP_HISTORY_SIZE].extensions.abs_send_time == original.extensions.abs_send_time


def test_the_downlinks_loss_weighs_each_tracks_report_by_the_packets_it_was_sent() -> None:
    """An audio stream's few packets losing a quarter is not a link losing a quarter."""
    from appliance.sfu.forwarder import Downlink
    from appliance.sfu.peer import Peer

    def down(loss: float, packets: int) -> Any:
        return SimpleNamespace(remb_at=None, packets=packets, downlink=lambda: Downlink(loss, 0.0))

    peer = SimpleNamespace(downs={"audio": down(0.25, 100), "video": down(0.0, 300)})
    assert Peer.downlink_estimate(peer).loss == 0.0625  # type: ignore[arg-type]
    peer = SimpleNamespace(downs={"audio": down(0.25, 0)})  # nothing sent yet: the report as it is
    assert Peer.downlink_estimate(peer).loss == 0.25  # type: ignore[arg-type]


async def test_a_layer_switch_carries_the_vp8_picture_id_and_tl0picidx_on(simulcast_pair: Any) -> None:
    """Each layer numbers its pictures on its own: after a switch the subscriber sees them go
    on from the last it was sent, as Chromium's frame buffer needs (vp8.py)."""
    from .test_vp8 import descriptor, values

    def vp8(picture_id: int, tl0: int, key: bool) -> bytes:
        return descriptor(picture_id, tl0, 0, 0, frame=b"\x00\x9d\x01\x2a" if key else b"\x01\x00\x00")

    up, down, upstream, downstream, stats = simulcast_pair
    await up.on_rtp(_layer_packet("q", 9, vp8(499, 49, False)))
    down.start()
    await up.on_rtp(_layer_packet("q", 10, vp8(500, 50, True)))
    await up.on_rtp(_layer_packet("q", 11, vp8(501, 51, False)))
    assert down.layer == 0
    for seq, picture_id, key in [(10, 20000, True), (11, 20001, False)]:
        await up.on_rtp(_layer_packet("h", seq, vp8(picture_id, 200 + seq, key)))
    assert down.layer == 1
    sent = [values(RtpPacket.parse(data).payload)[:2] for data in downstream.sent]
    assert sent == [(500, 50), (501, 51), (502, 52), (503, 53)]
