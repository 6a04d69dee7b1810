"""Media through the SFU, between aiortc clients on loopback."""

from __future__ import annotations

import asyncio
import queue
import time
from collections import Counter
from typing import Any

import pytest
from aioice import Connection
from aiortc import RTCRtpReceiver, rtcrtpreceiver
from aiortc.rtcrtpsender import RTCRtpSender

from appliance.sfu import aiortc_private

from .conftest import join_publishing
from .participants import ColourTrack, Meeting, Participant, ToneTrack


def server_peers(meeting: Meeting, room: str = "room") -> dict[str, Any]:
    return meeting.host._rooms[room].peers


async def test_two_participants_receive_each_others_camera_and_microphone(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    alice, bob = alice_and_bob
    await alice.wait_for_media("bob", video_frames=10, audio_frames=25)
    await bob.wait_for_media("alice", video_frames=10, audio_frames=25)
    frames_before = {"alice": alice.tracks_from("bob", "video")[0].frames,
                     "bob": bob.tracks_from("alice", "video")[0].frames}
    await asyncio.sleep(0.6)
    for me, other in ((alice, "bob"), (bob, "alice")):
        video = me.tracks_from(other, "video")[0]
        assert video.sizes == {(640, 480)}
        assert video.frames >= frames_before[me.id] + 4  # 15 fps: frames keep coming
    assert bob.tracks_from("alice", "audio")[0].peak > 5000  # a 0.5 tone, decoded at bob
    assert alice.tracks_from("bob", "audio")[0].peak > 300  # a 0.03 tone: quiet, not silent

    events = [e for e in alice.events_of("track_published") if e["track"]["participant"] == "bob"]
    published = [e["track"] for e in events]
    assert sorted((t["kind"], t["source"], t["stream_id"], t["codec"]) for t in published) == [
        ("audio", "microphone", "bob", "audio/opus"), ("video", "camera", "bob", "video/VP8")]
    assert {e["to"] for e in events} == {None} and {e["room"] for e in events} == {"room"}

    await alice.wait_until(lambda: bool(alice.events_of("active_speaker")))
    assert alice.events_of("active_speaker")[0]["participant_id"] == "alice"
    await alice.wait_until(lambda: {e["participant_id"] for e in alice.events_of("connection_quality")}
                           == {"alice", "bob"})
    for event in alice.events_of("connection_quality"):  # loopback: no loss; jitter depends on the load
        assert event["quality"] in ("good", "fair", "poor")
        assert event["loss"] <= 0.02 and event["jitter_ms"] >= 0

    stats = await alice.request({"type": "stats"})
    assert (stats["type"], stats["participant"], stats["connection_state"]) == ("stats", "alice", "connected")
    assert {p["kind"]: p["packets"] > 0 for p in stats["published"]} == {"audio": True, "video": True}
    assert all(s["forwarding"] and s["packets"] > 0 and not s["waiting_for_keyframe"]
               for s in stats["subscribed"])
    assert alice.failures == [] and bob.failures == []
    counters = meeting.host.stats.snapshot()
    assert counters["forwarded_packets"]["audio"] > 50 and counters["forwarded_packets"]["video"] > 20
    assert counters["forwarded_bytes"]["video"] > 10_000
    assert (counters["active_peers"], counters["rooms"]) == (2, 1)


def track_queue(receiver: RTCRtpReceiver) -> int:
    """The id of the queue the receiver's decoder thread feeds: what codec_work counts by."""
    return id(receiver.track._queue)  # type: ignore[attr-defined]


@pytest.fixture
def codec_work(monkeypatch: pytest.MonkeyPatch) -> tuple[Counter[int], Counter[int]]:
    """Count, per owner, encoded frames handed to a decoder (keyed by the id of the receiving
    track's queue) and frames encoded (keyed by the id of the sender)."""
    decoded: Counter[int] = Counter()
    encoded: Counter[int] = Counter()
    decoder_worker = rtcrtpreceiver.decoder_worker

    def counting_decoder_worker(loop: Any, input_q: queue.Queue, output_q: Any, decode_error: Any) -> None:
        class CountingQueue:
            def get(self) -> Any:
                item = input_q.get()
                if item is not None:
                    decoded[id(output_q)] += 1
                return item
        decoder_worker(loop, CountingQueue(), output_q, decode_error)  # type: ignore[arg-type]

    next_encoded_frame = RTCRtpSender._next_encoded_frame

    async def counting_next_encoded_frame(self: RTCRtpSender, codec: Any) -> Any:
        frame = await next_encoded_frame(self, codec)
        if frame is not None:
            encoded[id(self)] += 1
        return frame

    monkeypatch.setattr(rtcrtpreceiver, "decoder_worker", counting_decoder_worker)
    monkeypatch.setattr(RTCRtpSender, "_next_encoded_frame", counting_next_encoded_frame)
    return decoded, encoded


async def test_the_server_neither_decodes_nor_encodes(
        meeting: Meeting, codec_work: tuple[Counter[int], Counter[int]]) -> None:
    decoded, encoded = codec_work
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    bob = await join_publishing(meeting, "bob", 0.5, (30, 30, 200))
    await bob.wait_for_media("alice", video_frames=15)
    await alice.wait_for_media("bob", video_frames=15)

    peers = server_peers(meeting).values()
    server_receivers = [r for peer in peers for r in peer.pc.getReceivers() if r.track]
    server_senders = [d.sender for peer in server_peers(meeting).values() for d in peer.downs.values()]
    assert len(server_receivers) == 4 and len(server_senders) == 4
    assert all(up.packets > 5 for peer in server_peers(meeting).values() for up in peer.ups.values())
    assert [decoded[track_queue(r)] for r in server_receivers] == [0, 0, 0, 0]
    assert not any(aiortc_private.receiver_decodes(r) for r in server_receivers)
    assert [encoded[id(s)] for s in server_senders] == [0, 0, 0, 0]
    assert not any(aiortc_private.sender_encodes(s) for s in server_senders)
    assert all(aiortc_private.sender_counts(s)[0] > 10 for s in server_senders)  # they did send, RTP
    # Meanwhile the clients, in the same process, do decode and encode.
    client_receivers = [r for c in (alice, bob) for r in c.pc.getReceivers() if r.track]
    assert all(decoded[track_queue(r)] > 10 for r in client_receivers if r.track.kind == "video")
    assert all(encoded[id(s)] > 10 for c in (alice, bob) for s in c.pc.getSenders() if s.track)


async def test_received_srtp_goes_straight_to_its_transport_not_through_aioices_queue(
        meeting: Meeting, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once connected, the server's ICE sockets hand SRTP/SRTCP to the DTLS transport directly
    (aiortc_private.receive_srtp_directly); only what came before its DTLS handshake ended may
    take aioice's queue. The clients (plain aiortc) show that the counter counts."""
    queued: Counter[int] = Counter()
    data_received = Connection.data_received

    def counting(self: Connection, data: bytes, component: int) -> None:
        if 127 < data[0] < 192:
            queued[id(self)] += 1
        data_received(self, data, component)

    monkeypatch.setattr(Connection, "data_received", counting)
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    bob = await join_publishing(meeting, "bob", 0.5, (30, 30, 200))
    await bob.wait_for_media("alice", video_frames=15)
    await alice.wait_for_media("bob", video_frames=15)
    peers = server_peers(meeting).values()
    received = sum(up.packets for peer in peers for up in peer.ups.values())
    assert received > 100
    server = sum(queued[id(c)] for peer in peers for c in aiortc_private.ice_connections(peer.pc))
    clients = sum(queued[id(c)] for p in (alice, bob) for c in aiortc_private.ice_connections(p.pc))
    assert server <= 10 and clients > 100, (server, clients, received)


async def test_a_late_joiner_sees_everyone_within_two_seconds(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    alice, _ = alice_and_bob
    await alice.wait_for_media("bob", video_frames=5)
    await asyncio.sleep(0.5)  # the publishers' first keyframes are long gone
    keyframes_before = {p: sum(up.keyframes_seen for up in peer.ups.values())
                        for p, peer in server_peers(meeting).items()}
    plis_before = meeting.host.stats.plis_sent

    carol = meeting.participant("carol")
    started = time.monotonic()
    joined = await carol.join()
    assert [p["participant"] for p in joined["participants"]] == ["alice", "bob"]
    assert sorted((t["participant"], t["kind"]) for t in joined["tracks"]) == [
        ("alice", "audio"), ("alice", "video"), ("bob", "audio"), ("bob", "video")]
    assert (await carol.offer())["type"] == "answer"  # receive only: an offer without m-lines
    await carol.wait_for_media("alice", video_frames=1, timeout=5)
    await carol.wait_for_media("bob", video_frames=1, timeout=5)
    first_frames = [carol.tracks_from(p, "video")[0].first_frame_at for p in ("alice", "bob")]
    elapsed = max(t or float("inf") for t in first_frames) - started
    assert elapsed < 2.0
    assert meeting.host.stats.plis_sent > plis_before
    for publisher in ("alice", "bob"):
        peer = server_peers(meeting)[publisher]
        assert sum(up.keyframes_seen for up in peer.ups.values()) > keyframes_before[publisher]


async def test_tracks_added_mid_call_reach_the_others(meeting: Meeting) -> None:
    alice = meeting.participant("alice")
    bob = meeting.participant("bob")
    await alice.join()
    await bob.join()
    alice.publish(ToneTrack())
    bob.publish(ToneTrack())
    assert (await alice.offer())["type"] == "answer"
    assert (await bob.offer())["type"] == "answer"
    await bob.wait_for_media("alice", audio_frames=1)
    offers_to_bob = len(bob.events_of("offer"))

    screen = ColourTrack((10, 200, 10))
    alice.publish(screen)
    reply = await alice.offer(tracks=[{"track_id": screen.id, "source": "screen"}])
    assert reply["type"] == "answer"
    await bob.wait_until(lambda: any(e["track"]["source"] == "screen" for e in bob.events_of("track_published")))
    track = next(e["track"] for e in bob.events_of("track_published") if e["track"]["source"] == "screen")
    assert (track["participant"], track["kind"], track["track_id"]) == ("alice", "video", screen.id)
    await bob.wait_for_media("alice", video_frames=5)
    assert len(bob.events_of("offer")) == offers_to_bob + 1  # the server renegotiated once
    received = bob.tracks_from("alice", "video")[0]
    assert received.track.id == screen.id
    assert bob.tracks_from("alice", "audio")[0].frames > 0
    # The offer says which of bob's m-lines carries which publisher's track.
    listed = {t["mid"]: (t["participant"], t["source"]) for t in bob.events_of("offer")[-1]["tracks"]}
    mid = next(t.mid for t in bob.pc.getTransceivers() if t.receiver.track is received.track)
    assert listed[mid] == ("alice", "screen")
    assert sorted(listed.values()) == [("alice", "microphone"), ("alice", "screen")]


async def test_h264_is_forwarded_when_the_publisher_sends_it(meeting: Meeting) -> None:
    alice = meeting.participant("alice")
    bob = meeting.participant("bob")
    await alice.join()
    await bob.join()
    alice.publish(ColourTrack(), codec="video/H264")
    assert (await alice.offer())["type"] == "answer"
    assert (await bob.offer())["type"] == "answer"
    await bob.wait_for_media("alice", video_frames=5)
    assert bob.tracks_from("alice", "video")[0].sizes == {(640, 480)}
    assert [e["track"]["codec"] for e in bob.events_of("track_published")] == ["video/H264"]
    down = next(iter(server_peers(meeting)["bob"].downs.values()))
    assert aiortc_private.codecs(down.transceiver)[0].mimeType == "video/H264" and down.packets > 5
