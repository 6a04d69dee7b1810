from __future__ import annotations

import pytest
from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from appliance.sfu import IceSettings, aiortc_private
from appliance.sfu.errors import SfuError
from appliance.sfu.forwarder import ForwardedTrack
from appliance.sfu.ice import CandidateGatherer, drop_mdns_candidates
from appliance.sfu.negotiation import (
    SessionPayloads,
    SfuPeerConnection,
    align_bundled_setup,
    check_offer,
    codec_preferences,
    parse_description,
    simulcast_layers,
    with_simulcast_receive,
)

from .chrome_sdp import CHROME_OFFER
from .chrome_simulcast_sdp import CHROME_SIMULCAST_OFFER
from .participants import ColourTrack, Meeting, Participant

LOOPBACK = CandidateGatherer(IceSettings(loopback=True))
CHROME = RTCSessionDescription(sdp=drop_mdns_candidates(CHROME_OFFER), type="offer")


def _codecs(media: aiortc_sdp.MediaDescription) -> dict[str, int | None]:
    return {f"{c.mimeType}/{c.parameters.get('apt', '')}".rstrip("/"): c.payloadType
            for c in media.rtp.codecs}


def _extensions(media: aiortc_sdp.MediaDescription) -> dict[str, int]:
    return {e.uri.rsplit(":", 1)[-1].rsplit("/", 1)[-1]: e.id for e in media.rtp.headerExtensions}


TWCC = "draft-holmer-rmcat-transport-wide-cc-extensions-01"


def _feedback(codec: RTCRtpCodecParameters) -> list[str]:
    return [f.type for f in codec.rtcpFeedback]


async def test_answer_takes_one_forwardable_codec_per_published_track() -> None:
    pc = SfuPeerConnection(IceSettings().rtc_configuration())
    try:
        await pc.setRemoteDescription(CHROME)
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        audio, video = aiortc_sdp.SessionDescription.parse(pc.localDescription.sdp).media
        assert _codecs(audio) == {"audio/opus": 111}
        assert _codecs(video) == {"video/VP8": 96, "video/rtx/96": 97}
        assert (audio.direction, video.direction) == ("recvonly", "recvonly")
    finally:
        await pc.close()


async def test_server_offer_keeps_the_browsers_numbering_in_the_bundle() -> None:
    pc = SfuPeerConnection(IceSettings().rtc_configuration())
    try:
        await pc.setRemoteDescription(CHROME)
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        publisher = pc.getTransceivers()
        for kind, upstream in (("audio", publisher[0]), ("video", publisher[1])):
            codec = aiortc_private.codecs(upstream)[0]
            transceiver = pc.addTransceiver(ForwardedTrack(kind, f"remote-{kind}"), direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(codec))
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        media = aiortc_sdp.SessionDescription.parse(pc.localDescription.sdp).media
        assert [m.rtp.muxId for m in media] == ["0", "1", "2", "3"]
        # The browser's own m-lines keep what was negotiated.
        assert _codecs(media[0]) == {"audio/opus": 111}
        assert _codecs(media[1]) == {"video/VP8": 96, "video/rtx/96": 97}
        # New m-lines reuse the browser's numbers (aiortc alone would say opus 96, VP8 97).
        assert _codecs(media[2]) == {"audio/opus": 111}
        assert _codecs(media[3]) == {"video/VP8": 96, "video/rtx/96": 97}
        assert _extensions(media[2]) == {"mid": 4, "ssrc-audio-level": 1}
        # A subscriber's video also offers playout-delay (asked of a lossy link: allocation.py)
        # and transport-cc with the browser's number for it, and asks for its feedback.
        assert _extensions(media[3]) == {"mid": 4, "abs-send-time": 2, "playout-delay": 5,
                                         "draft-holmer-rmcat-transport-wide-cc-extensions-01": 3}
        assert [c.rtcpFeedback for c in media[3].rtp.codecs if c.name == "VP8"][0][-1].type == "transport-cc"
        assert [m.direction for m in media] == ["recvonly", "recvonly", "sendonly", "sendonly"]
        # The transceivers send with what was offered.
        assert aiortc_private.codecs(pc.getTransceivers()[3])[0].payloadType == 96
    finally:
        await pc.close()


def _answer_like_firefox(offer: str, setups: list[str]) -> str:
    """The browser's answer to the server's offer, written the way Firefox 153 writes one to a
    renegotiation: its own ICE and fingerprint, directions mirrored, and ``a=setup`` per m-line
    (``setups``) although every m-line is BUNDLEd on the first one's transport."""
    flip = {"a=sendonly": "a=recvonly", "a=recvonly": "a=sendonly"}
    out, section = [], -1
    for line in offer.splitlines():
        if line.startswith("m="):
            section += 1
        if line.startswith("a=candidate:") or line == "a=end-of-candidates":
            continue
        if line.startswith("o="):
            line = "o=mozilla...THIS_IS_SDPARTA-153.0 4611731400430051336 1 IN IP4 0.0.0.0"
        elif line.startswith("a=ice-ufrag:"):
            line = "a=ice-ufrag:Abcd"
        elif line.startswith("a=ice-pwd:"):
            line = "a=ice-pwd:abcdefghijklmnopqrstuvwx"
        elif line.startswith("a=fingerprint:"):
            line = f"a=fingerprint:sha-256 {':'.join(['CD'] * 32)}"
        elif line.startswith("a=setup:"):
            line = f"a=setup:{setups[section]}"
        out.append(flip.get(line, line))
    return "\r\n".join(out) + "\r\n"


async def test_a_renegotiation_answer_with_mixed_setup_keeps_the_dtls_role() -> None:
    """RFC 8842: the DTLS role of a BUNDLE group is one and stays; Firefox's ``active`` on the new
    m-lines of its answer must not turn the SFU (DTLS client since its first answer) into a
    server, which left every late-joining Firefox without media."""
    pc = SfuPeerConnection(IceSettings().rtc_configuration())
    try:
        await pc.setRemoteDescription(CHROME)
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        assert aiortc_private.dtls_role(pc) == "client"
        for kind, upstream in zip(("audio", "video"), pc.getTransceivers()):
            transceiver = pc.addTransceiver(ForwardedTrack(kind, f"remote-{kind}"), direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(aiortc_private.codecs(upstream)[0]))
        await pc.setLocalDescription(await pc.createOffer())
        answer = _answer_like_firefox(pc.localDescription.sdp, ["passive", "passive", "active", "active"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert pc.signalingState == "stable"
        assert aiortc_private.dtls_role(pc) == "client"
        assert {t.receiver.transport for t in pc.getTransceivers()} == {pc.getTransceivers()[0].receiver.transport}
    finally:
        await pc.close()


def test_bundled_setup_follows_the_negotiated_role_then_the_tagged_mline() -> None:
    offer = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a b\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\na=setup:passive\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:b\r\na=setup:active\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:c\r\na=setup:active\r\n")

    def setups(sdp: str) -> list[str]:
        return [line.split(":", 1)[1] for line in sdp.split("\r\n") if line.startswith("a=setup:")]

    # No role yet: the tagged (first) m-line of the group decides; c is outside the group.
    assert setups(align_bundled_setup(offer, None)) == ["passive", "passive", "active"]
    assert setups(align_bundled_setup(offer, "auto")) == ["passive", "passive", "active"]
    # A negotiated role is kept whatever the m-lines say.
    assert setups(align_bundled_setup(offer, "client")) == ["passive", "passive", "active"]
    assert setups(align_bundled_setup(offer, "server")) == ["active", "active", "active"]
    # Everything else is left as it was, line endings included.
    assert align_bundled_setup(offer, "server").replace("setup:active", "setup:passive") == \
        offer.replace("setup:active", "setup:passive")
    unix = offer.replace("\r\n", "\n")
    assert align_bundled_setup(unix, None) == unix.replace("mid:b\na=setup:active", "mid:b\na=setup:passive")
    without_bundle = offer.replace("a=group:BUNDLE a b\r\n", "")
    assert align_bundled_setup(without_bundle, "server") == without_bundle


def test_new_codecs_get_payload_types_unused_in_the_session() -> None:
    payloads = SessionPayloads([CHROME_OFFER])
    h264 = parse_description(CHROME_OFFER).media[1].rtp.codecs[4]
    assert [c.payloadType for c in payloads.number_codecs([h264])] == [102]
    av1 = RTCRtpCodecParameters(mimeType="video/AV1", clockRate=90000, payloadType=35)
    renumbered = payloads.number_codecs([av1])
    assert renumbered[0].payloadType not in {111, 63, 9, 0, 8, 96, 97, 98, 99, 102, 103}
    # A second m-line of the same offer with that codec gets the same number.
    again = payloads.number_codecs([av1])
    assert again[0].payloadType == renumbered[0].payloadType


def test_offers_the_sfu_cannot_forward_are_refused_before_they_change_anything() -> None:
    audio_only_g722 = CHROME_OFFER.replace("SAVPF 111 63 9 0 8", "SAVPF 9")
    with pytest.raises(SfuError) as error:
        check_offer(audio_only_g722)
    assert error.value.code == "unsupported_codec"
    with pytest.raises(SfuError) as error:
        check_offer("v=0\r\nm=video nine UDP/TLS/RTP/SAVPF 96\r\n")
    assert error.value.code == "invalid_sdp"
    with pytest.raises(SfuError) as error:
        check_offer("hello")
    assert error.value.code == "invalid_sdp"
    check_offer(CHROME_OFFER)


async def test_a_track_stopped_and_sent_again_on_its_transceiver_is_forwarded_again(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    """A browser that stops sharing sets the transceiver inactive; sharing again reuses it."""
    alice, bob = alice_and_bob
    await alice.wait_for_media("bob", video_frames=3)
    await bob.wait_for_media("alice", video_frames=3)
    screen = alice.pc.addTransceiver(ColourTrack((20, 200, 20)), direction="sendonly")
    reply = await alice.offer(tracks=[{"track_id": screen.sender.track.id, "source": "screen"}])
    assert reply["type"] == "answer", reply
    await bob.wait_until(lambda: any(r.frames > 3 for r in bob.tracks_from("alice", "video")
                                     if r.track.id != bob.tracks_from("alice", "video")[0].track.id))
    published = len([e for e in bob.events_of("track_published") if e["track"]["source"] == "screen"])

    screen.direction = "inactive"
    assert (await alice.offer())["type"] == "answer"
    await bob.wait_until(lambda: any(e["track"]["source"] == "screen" for e in bob.events_of("track_unpublished")))

    screen.direction = "sendonly"
    again = ColourTrack((20, 20, 200))
    again._id = screen.sender.track.id  # Chromium keeps the msid of a transceiver's sender
    screen.sender.replaceTrack(again)
    reply = await alice.offer(tracks=[{"track_id": screen.sender.track.id, "source": "screen"}])
    assert reply["type"] == "answer"
    await bob.wait_until(lambda: len([e for e in bob.events_of("track_published")
                                      if e["track"]["source"] == "screen"]) == published + 1)
    shares = [e for e in bob.events_of("track_published") if e["track"]["source"] == "screen"]
    assert shares[-1]["track"]["track_id"] == shares[-2]["track"]["track_id"] == again.id
    before = len(bob.received)
    await bob.wait_until(lambda: any(r.frames > 3 for r in bob.received[before:] if r.track.kind == "video"),
                         timeout=10)


def _opus_fmtp(sdp: str) -> list[dict[str, object]]:
    return [codec.parameters for media in aiortc_sdp.SessionDescription.parse(sdp).media
            for codec in media.rtp.codecs if codec.mimeType.lower() == "audio/opus"]


async def test_opus_is_negotiated_with_in_band_fec_both_ways() -> None:
    """Chrome sends Opus FEC when the other side's description asks for it: the answer
    to its offer, the server's later offers (which re-state its own m-lines) and the m-lines
    that carry others' audio to it all do."""
    pc = SfuPeerConnection(IceSettings().rtc_configuration())
    try:
        await pc.setRemoteDescription(CHROME)
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        assert "a=fmtp:111 useinbandfec=1" in pc.localDescription.sdp.splitlines()
        upstream = aiortc_private.codecs(pc.getTransceivers()[0])[0]
        transceiver = pc.addTransceiver(ForwardedTrack("audio", "remote-audio"), direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(upstream))
        offer = await pc.createOffer()
        assert [(p.get("useinbandfec"), p.get("usedtx")) for p in _opus_fmtp(offer.sdp)] == [(1, None), (1, None)]
    finally:
        await pc.close()


CHROME_SIMULCAST = RTCSessionDescription(sdp=CHROME_SIMULCAST_OFFER, type="offer")


def _simulcast_lines(sdp: str) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    mid = ""
    for line in sdp.splitlines():
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        elif line.startswith(("a=rid:", "a=simulcast:")):
            lines.setdefault(mid, []).append(line)
    return lines


RECEIVE_QHF = ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv", "a=simulcast:recv q;h;f"]


async def test_a_chromium_simulcast_offer_is_answered_with_its_layers_and_rid_extensions() -> None:
    """The offer Chromium writes for a camera with three encodings: the answer receives the three
    rids with the rid and repaired-rid extensions at the browser's IDs, and the SFU's later
    offers, and its offers after the browser answered them, keep all of it on that m-line."""
    pc = SfuPeerConnection(IceSettings().rtc_configuration())
    try:
        await pc.setRemoteDescription(CHROME_SIMULCAST)
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        assert _simulcast_lines(answer) == {"1": RECEIVE_QHF}
        audio, video = aiortc_sdp.SessionDescription.parse(answer).media
        assert _codecs(video) == {"video/VP8": 96, "video/rtx/96": 97}
        assert _extensions(video) == {"mid": 4, "abs-send-time": 2, "rtp-stream-id": 10,
                                      "repaired-rtp-stream-id": 11, TWCC: 3}
        assert "rtp-stream-id" not in _extensions(audio) and _extensions(audio)[TWCC] == 3
        # Transport-cc feedback on the codecs the browser sends (not on RTX: it did not ask).
        assert [(c.mimeType, "transport-cc" in _feedback(c)) for c in [*audio.rtp.codecs, *video.rtp.codecs]] == [
            ("audio/opus", True), ("video/VP8", True), ("video/rtx", False)]
        assert pc.simulcast == {"1": ["q", "h", "f"]}

        transceiver = pc.addTransceiver(ForwardedTrack("video", "remote"), direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(aiortc_private.codecs(pc.getTransceivers()[1])[0]))
        for _ in range(2):
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription.sdp
            assert _simulcast_lines(offer) == {"1": RECEIVE_QHF}
            media = aiortc_sdp.SessionDescription.parse(offer).media
            assert _extensions(media[1])["rtp-stream-id"] == 10 and "rtp-stream-id" not in _extensions(media[2])
            assert _extensions(media[1])[TWCC] == 3 and "transport-cc" in _feedback(media[1].rtp.codecs[0])
            answer = _answer_like_firefox(offer, ["active"] * 3).replace(" recv", " send").replace(":recv", ":send")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            assert pc.simulcast == {"1": ["q", "h", "f"]}
            assert {e.uri.rsplit(":", 1)[-1] for e in aiortc_private.header_extensions(pc.getTransceivers()[1])} >= {
                "rtp-stream-id", "repaired-rtp-stream-id"}
    finally:
        await pc.close()


async def test_the_transport_reads_the_rids_however_the_receiver_started() -> None:
    """aiortc drops the rid extensions, which it does not know, while it sets a remote
    description, and its connection task may start the m-line's receiver in that moment (while
    setRemoteDescription waits on the remote candidates): started so, the transport would not read
    the rids, the stream would be acknowledged without them, and its layer never known (a Firefox
    rejoining a meeting sent video that nobody saw). Once the description is set, the transport
    reads them, whether a receiver started or not."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    browser = HeaderExtensionsMap()  # the IDs of the offer
    browser.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=10, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        RTCRtpHeaderExtensionParameters(id=11, uri="urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id")]))
    packet = RtpPacket(payload_type=96, ssrc=1234, payload=b"\x10")
    packet.extensions.rtp_stream_id = "h"
    pc = SfuPeerConnection(IceSettings().rtc_configuration())
    try:
        await pc.setRemoteDescription(CHROME_SIMULCAST)
        transport = pc.getTransceivers()[1].receiver.transport
        parsed = RtpPacket.parse(packet.serialize(browser), transport._rtp_header_extensions_map)
        assert parsed.extensions.rtp_stream_id == "h"
    finally:
        await pc.close()


def test_simulcast_layers_are_the_sent_rids_in_the_order_listed() -> None:
    def offer(*attributes: str) -> str:
        return "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v", *attributes, ""])

    rids = ("a=rid:lo send", "a=rid:mid send", "a=rid:hi send")
    assert simulcast_layers(offer(*rids, "a=simulcast:send lo;~mid;hi")) == {"v": ["lo", "mid", "hi"]}
    assert simulcast_layers(offer(*rids, "a=simulcast:send lo,mid;hi")) == {"v": ["lo", "hi"]}
    assert simulcast_layers(offer(*rids, "a=simulcast:recv x send hi;lo")) == {"v": ["hi", "lo"]}
    assert simulcast_layers(offer("a=rid:lo send", "a=simulcast:send lo;hi")) == {}  # one declared layer
    assert simulcast_layers(offer(*rids)) == {}
    assert simulcast_layers(CHROME_OFFER) == {}
    once = with_simulcast_receive(offer(), {"v": ["lo", "hi"]})
    assert once.endswith("a=mid:v\r\na=rid:lo recv\r\na=rid:hi recv\r\na=simulcast:recv lo;hi\r\n")
    assert with_simulcast_receive(once, {"v": ["lo", "hi"]}) == once
