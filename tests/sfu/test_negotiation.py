from __future__ import annotations

import pytest
from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from appliance.sfu import IceSettings, internals
from appliance.sfu.errors import SfuError
from appliance.sfu.forwarder import ForwardedTrack
from appliance.sfu.ice import CandidateGatherer, drop_mdns_candidates
from appliance.sfu.negotiation import (
    SessionPayloads,
    SfuPeerConnection,
    check_offer,
    codec_preferences,
    parse_description,
)

from .chrome_sdp import CHROME_OFFER
from .participants import ColourTrack, Meeting, Participant

LOOPBACK = CandidateGatherer(IceSettings(loopback=True))
CHROME = RTCSessionDescription(sdp=drop_mdns_candidates(CHROME_OFFER), type="offer")


def _codecs(media: aiortc_sdp.MediaDescription) -> dict[str, int | None]:
    return {f"{c.mimeType}/{c.parameters.get('apt', '')}".rstrip("/"): c.payloadType
            for c in media.rtp.codecs}


def _extensions(media: aiortc_sdp.MediaDescription) -> dict[str, int]:
    return {e.uri.rsplit(":", 1)[-1].rsplit("/", 1)[-1]: e.id for e in media.rtp.headerExtensions}


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
            codec = internals.codecs(upstream)[0]
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
        assert _extensions(media[3]) == {"mid": 4, "abs-send-time": 2}
        assert [m.direction for m in media] == ["recvonly", "recvonly", "sendonly", "sendonly"]
        # The transceivers send with what was offered.
        assert internals.codecs(pc.getTransceivers()[3])[0].payloadType == 96
    finally:
        await pc.close()


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
    published = len([e for e in bob.events_of("track_published") if e["source"] == "screen"])

    screen.direction = "inactive"
    assert (await alice.offer())["type"] == "answer"
    await bob.wait_until(lambda: any(e["source"] == "screen" for e in bob.events_of("track_unpublished")))

    screen.direction = "sendonly"
    again = ColourTrack((20, 20, 200))
    again._id = screen.sender.track.id  # Chromium keeps the msid of a transceiver's sender
    screen.sender.replaceTrack(again)
    reply = await alice.offer(tracks=[{"track_id": screen.sender.track.id, "source": "screen"}])
    assert reply["type"] == "answer"
    await bob.wait_until(lambda: len([e for e in bob.events_of("track_published")
                                      if e["source"] == "screen"]) == published + 1)
    shares = [e for e in bob.events_of("track_published") if e["source"] == "screen"]
    assert shares[-1]["track_id"] == shares[-2]["track_id"] == again.id
    before = len(bob.received)
    await bob.wait_until(lambda: any(r.frames > 3 for r in bob.received[before:] if r.track.kind == "video"),
                         timeout=10)
