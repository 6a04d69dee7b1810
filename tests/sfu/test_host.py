"""The RoomHost protocol: leaving, glare, errors, ICE settings, shutdown."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator

import pytest
from aiortc import sdp as aiortc_sdp

from appliance.sfu import IceSettings, RoomHost

from .conftest import join_publishing
from .participants import Meeting, Participant, ToneTrack


async def test_leaving_releases_the_participant_everywhere(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    alice, bob = alice_and_bob
    await alice.wait_for_media("bob", video_frames=3)
    room = meeting.host._rooms["room"]
    bob_peer, alice_peer = room.peers["bob"], room.peers["alice"]
    bob_ups = list(bob_peer.ups.values())
    offers_to_alice = len(alice.events_of("offer"))
    bobs_mids = {m.rtp.muxId for m in aiortc_sdp.SessionDescription.parse(alice.pc.remoteDescription.sdp).media
                 if m.msid and m.msid.startswith("bob ")}
    assert len(bobs_mids) == 2

    assert await bob.request({"type": "leave"}) == {"type": "left"}

    await alice.wait_until(lambda: bool(alice.events_of("participant_left")))
    left = alice.events_of("participant_left")[0]
    assert (left["participant_id"], left["reason"], left["to"]) == ("bob", "left", None)
    unpublished = [e["track"] for e in alice.events_of("track_unpublished") if e["track"]["participant"] == "bob"]
    assert sorted(e["kind"] for e in unpublished) == ["audio", "video"]
    # The server's side of bob is gone: peer connection, tasks, tracks, subscriptions.
    assert bob_peer.pc.connectionState == "closed" and bob_peer.pc.iceConnectionState == "closed"
    assert bob_peer._task.done() and bob_peer.downs == {} and bob_peer.ups == {}
    assert all(up.closed and up.downs == () for up in bob_ups)
    assert all(not up.keyframe_wanted(layer.index) for up in bob_ups for layer in up.layers)
    assert list(room.peers) == ["alice"] and {k[0] for k in room.tracks} == {"alice"}
    assert meeting.host.stats.active_peers == 1
    # Alice's downstream senders for bob are stopped and renegotiated away.
    await alice.wait_until(lambda: alice_peer.downs == {} and len(alice.events_of("offer")) > offers_to_alice)
    from_bob = [r.track for r in alice.received if r.stream_id == "bob"]
    await alice.wait_until(lambda: all(track.readyState == "ended" for track in from_bob))
    # Bob's m-lines are inactive and name no track any more (he may come back with the same one).
    inactive = [(m.direction, m.msid) for m in aiortc_sdp.SessionDescription.parse(alice.pc.remoteDescription.sdp).media
                if m.rtp.muxId in bobs_mids]
    assert inactive == [("inactive", None), ("inactive", None)]
    assert (await bob.request({"type": "stats"}))["code"] == "unknown_participant"

    assert await alice.request({"type": "leave"}) == {"type": "left"}
    assert meeting.host.rooms == [] and meeting.host.stats.snapshot()["rooms"] == 0


async def test_a_client_that_closes_its_connection_is_removed(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    alice, bob = alice_and_bob
    await alice.wait_for_media("bob", audio_frames=5)
    await bob.pc.close()  # a closed tab: DTLS close_notify, no "leave"
    await alice.wait_until(lambda: bool(alice.events_of("participant_left")), timeout=5)
    left = alice.events_of("participant_left")[0]
    assert (left["participant_id"], left["reason"]) == ("bob", "connection_closed")
    assert list(meeting.host._rooms["room"].peers) == ["alice"] and meeting.host.stats.active_peers == 1


async def test_glare_an_offer_while_the_servers_waits_is_refused(meeting: Meeting) -> None:
    alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
    bob = meeting.participant("bob", auto_answer=False)
    await bob.join()
    assert (await bob.offer())["type"] == "answer"
    server_offer = await bob.server_offers.get()  # alice's tracks, offered to bob

    # Bob offers again meanwhile (the offer a polite browser then rolls back).
    reply = await bob.request({"type": "offer", "sdp": bob.pc.localDescription.sdp})
    assert reply["type"] == "error" and reply["code"] == "glare"

    assert await bob.answer(server_offer) == {"type": "ok"}
    bob.publish(ToneTrack())
    assert (await bob.offer())["type"] == "answer"
    await bob.wait_for_media("alice", video_frames=1)
    await alice.wait_until(lambda: any(e["track"]["participant"] == "bob" for e in alice.events_of("track_published")))


async def test_errors_are_typed_and_leave_the_host_working(meeting: Meeting) -> None:
    host = meeting.host
    alice = meeting.participant("alice")
    await alice.join()

    async def error(message: object, room: str = "room") -> str:
        reply = await host.request(room, message)  # type: ignore[arg-type]
        assert reply["type"] == "error" and reply["message"], reply
        return reply["code"]

    assert await error({"type": "offer", "participant": "ghost", "sdp": "v=0\r\n"}) == "unknown_participant"
    assert await error({"type": "stats", "participant": "alice"}, room="nowhere") == "unknown_participant"
    assert await error({"type": "dance", "participant": "alice"}) == "unknown_type"
    assert await error({"participant": "alice"}) == "unknown_type"
    assert await error(["join"]) == "bad_message"
    assert await error({"type": "join"}) == "bad_message"
    assert await error({"type": "join", "participant": "alice"}) == "already_joined"
    assert await error({"type": "offer", "participant": "alice", "sdp": "hello"}) == "invalid_sdp"
    broken = "v=0\r\nm=audio x RTP 1\r\n"
    assert await error({"type": "offer", "participant": "alice", "sdp": broken}) == "invalid_sdp"
    assert await error({"type": "offer", "participant": "alice", "sdp": 42}) == "bad_message"
    assert await error({"type": "offer", "participant": "alice", "sdp": "v=0\r\n",
                        "tracks": [{"mid": "0", "source": "hologram"}]}) == "bad_message"
    assert await error({"type": "answer", "participant": "alice", "sdp": "v=0\r\n"}) == "invalid_state"
    early = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}
    assert await error({"type": "candidate", "participant": "alice", "candidate": early}) == "invalid_state"

    alice.publish(ToneTrack())
    assert (await alice.offer())["type"] == "answer"
    bad = {"candidate": "candidate:x"}
    assert await error({"type": "candidate", "participant": "alice", "candidate": bad}) == "invalid_candidate"
    assert await error({"type": "candidate", "participant": "alice", "candidate": "nope"}) == "bad_message"
    bob = meeting.participant("bob")
    await bob.join()
    assert (await bob.offer())["type"] == "answer"
    await bob.wait_for_media("alice", audio_frames=10)
    assert (await alice.request({"type": "stats"}))["published"][0]["packets"] > 0


def _free_udp_range(size: int) -> int:
    for _ in range(50):
        base = random.randrange(20000, 60000 - size)
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free UDP port range")


@pytest.fixture
def busy_port() -> Iterator[tuple[int, socket.socket]]:
    base = _free_udp_range(10)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", base))
    yield base, blocker
    blocker.close()


def _candidate_ports(sdp: str) -> list[int]:
    return [c.port for m in aiortc_sdp.SessionDescription.parse(sdp).media for c in m.ice_candidates]


async def test_host_candidates_bind_inside_the_udp_port_range(busy_port: tuple[int, socket.socket]) -> None:
    base, _ = busy_port
    meeting = Meeting(RoomHost(IceSettings(loopback=True, udp_port_min=base, udp_port_max=base + 9)))
    try:
        alice = await join_publishing(meeting, "alice", 0.5, (200, 30, 30))
        bob = meeting.participant("bob")
        await bob.join()
        bob.publish(ToneTrack())
        bob_answer = await bob.offer()
        alice_ports = set(_candidate_ports(alice.pc.remoteDescription.sdp))
        bob_ports = set(_candidate_ports(bob_answer["sdp"]))
        assert len(alice_ports) == 1 and len(bob_ports) == 1 and alice_ports != bob_ports
        assert all(base < port <= base + 9 for port in alice_ports | bob_ports)  # base is taken: skipped
        await bob.wait_for_media("alice", audio_frames=1)
    finally:
        await meeting.close()


async def test_a_full_port_range_gathers_no_candidate_and_says_so(
        busy_port: tuple[int, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    base, _ = busy_port
    meeting = Meeting(RoomHost(IceSettings(loopback=True, udp_port_min=base, udp_port_max=base)))
    try:
        alice = meeting.participant("alice")
        await alice.join()
        alice.publish(ToneTrack())
        reply = await alice.offer()
        assert reply["type"] == "answer" and _candidate_ports(reply["sdp"]) == []
        assert f"every UDP port in {base}-{base} is in use" in caplog.text
    finally:
        await meeting.close()


async def test_trickled_candidates_connect_and_mdns_ones_are_ignored(meeting: Meeting) -> None:
    alice = meeting.participant("alice")
    await alice.join()
    alice.publish(ToneTrack())
    assert (await alice.offer(trickle=True))["type"] == "answer"
    hidden_host = "1f0e2d3c-aaaa-bbbb-cccc-ddddeeeeffff.local"
    mdns = {"candidate": f"candidate:9 1 udp 2122260223 {hidden_host} 50123 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}
    assert await alice.request({"type": "candidate", "candidate": mdns}) == {"type": "ok"}
    assert await alice.request({"type": "candidate", "candidate": None}) == {"type": "ok"}
    peer = meeting.host._rooms["room"].peers["alice"]
    await alice.wait_until(lambda: peer.pc.connectionState == "connected")
    remote = peer.pc.getTransceivers()[0].receiver.transport.transport.getRemoteCandidates()
    assert remote and not any(c.ip.endswith(".local") for c in remote)
    await alice.wait_until(lambda: next(iter(peer.ups.values())).packets > 10)


async def test_closing_the_host_ends_every_session_and_the_event_streams(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    host = meeting.host
    peers = list(host._rooms["room"].peers.values())
    await host.close()
    await meeting._pump  # the event stream ended
    assert all(peer.pc.connectionState == "closed" for peer in peers)
    assert sorted(e["participant_id"] for e in meeting.events if e["type"] == "participant_left") == ["alice", "bob"]
    assert {e["reason"] for e in meeting.events if e["type"] == "participant_left"} == {"closed"}
    assert host.rooms == [] and host.stats.active_peers == 0
    assert (await host.request("room", {"type": "join", "participant": "carol"}))["code"] == "closed"


async def test_a_lost_connection_after_a_leave_request_is_no_error(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    """The media connection closes and the participant's leave request arrives before the
    departure that the loss scheduled has run: the participant leaves once, nothing fails."""
    alice, bob = alice_and_bob
    room = meeting.host._rooms["room"]
    room.connection_lost("bob", "connection_closed")
    departures = set(room._departures)
    assert len(departures) == 1
    assert await bob.request({"type": "leave"}) == {"type": "left"}
    done, _ = await asyncio.wait(departures, timeout=5)
    assert done == departures and all(task.exception() is None for task in done)
    assert list(room.peers) == ["alice"]
    await alice.wait_until(lambda: bool(alice.events_of("participant_left")))
    await asyncio.sleep(0.1)
    assert [e["reason"] for e in alice.events_of("participant_left")] == ["left"]


async def test_room_reports_count_bytes_and_what_receivers_report(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    alice, bob = alice_and_bob
    await alice.wait_for_media("bob", video_frames=5, audio_frames=10)
    await bob.wait_for_media("alice", video_frames=5, audio_frames=10)
    # Receiver reports (aiortc sends one about every second) and round trips (one a second).
    for _ in range(100):
        report = meeting.host.room_reports()["room"]
        estimate = meeting.host._rooms["room"].peers["alice"].downlink_estimate()
        if (report["rtt_seconds"] is not None and report["downlink_jitter_seconds"] is not None
                and None not in (report["downlink_estimate_min_bps"], estimate.bitrate_bps, estimate.loss)):
            break
        await asyncio.sleep(0.1)
    assert report["participants"] == 2 and report["tracks"] == 4
    assert report["received_bytes"] > 0 and report["forwarded_bytes"] > 0
    assert report["downlink_packets_sent"] > 0
    assert report["downlink_packets_lost"] == 0  # loopback
    assert 0 <= report["downlink_jitter_seconds"] < 0.05
    assert 0 < report["rtt_seconds"] < 0.2
    # aiortc's receivers send REMB on the abs-send-time the SFU writes, as Chromium's do.
    assert report["downlink_estimate_min_bps"] > 0
    assert estimate.bitrate_bps and estimate.loss == 0.0  # loopback
    before = meeting.host.room_reports()["room"]
    assert await bob.request({"type": "leave"}) == {"type": "left"}
    await alice.wait_until(lambda: bool(alice.events_of("participant_left")))
    after = meeting.host.room_reports()["room"]
    assert after["participants"] == 1
    # Totals never go down when tracks go (they are Prometheus counters).
    assert after["received_bytes"] >= before["received_bytes"]
    assert after["forwarded_bytes"] >= before["forwarded_bytes"]
    assert after["downlink_packets_sent"] >= before["downlink_packets_sent"]
    assert after["downlink_packets_lost"] >= before["downlink_packets_lost"]


async def test_video_layer_caps_the_layer_a_subscriber_receives(
        meeting: Meeting, alice_and_bob: tuple[Participant, Participant]) -> None:
    """``video_layer`` sets the highest layer alice wants of bob's video; bad values and tracks
    nobody publishes are refused."""
    alice, _ = alice_and_bob
    await alice.wait_for_media("bob", video_frames=3)
    peer = meeting.host._rooms["room"].peers["alice"]
    key = next(key for key, down in peer.downs.items() if down.kind == "video")
    ask = {"type": "video_layer", "publisher": key[0], "track_id": key[1]}
    assert await alice.request({**ask, "max_layer": 0}) == {"type": "ok"}
    assert peer.max_layers[key] == 0 and peer.downs[key].max_layer == 0
    assert await alice.request({**ask, "max_layer": None}) == {"type": "ok"}
    assert peer.downs[key].max_layer == 0  # bob's camera has one layer: 0 is the highest
    reply = await alice.request({**ask, "publisher": "nobody", "max_layer": 1})
    assert (reply["type"], reply["code"]) == ("error", "unknown_track")
    for bad in (-2, "high", True, 1.5):  # -1 is "none" (tests/sfu/test_last_n.py)
        reply = await alice.request({**ask, "max_layer": bad})
        assert (reply["type"], reply["code"]) == ("error", "bad_message"), bad
