"""``confmeet loadtest``: a real run against the real appliance, its operator errors, and its parts."""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import random
import subprocess
import threading
from collections.abc import Iterator

import httpx
import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import decoder_worker
from rich.console import Console

from appliance_server import CONFMEET, Appliance, start_appliance
from cli.client.api import ApplianceApi
from cli.client.clips import LoopedTrack, encode_audio_clip, encode_simulcast_clips, encode_video_clip
from cli.client.participant import Participant
from cli.client.received import count_decode_errors
from cli.loadtest import MetricsSample, render_report, sfu_figures
from conftest import free_port, stop

ADMIN = ("admin@example.com", "correct horse battery")
PASSWORD_VAR = "CONFMEET_TEST_LOADTEST_PASSWORD"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    # Media ports of its own, below the ephemeral range: other appliances on this machine use the
    # default range, and clients' sockets take ephemeral ports.
    base = random.randrange(20000, 30000, 100)
    app = start_appliance(tmp_path_factory.mktemp("loadtest"), media_loopback="true",
                          media_udp_min=str(base), media_udp_max=str(base + 99))
    app.add_user(*ADMIN, admin=True)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def loadtest(url: str, *args: str, password: str = ADMIN[1]) -> subprocess.CompletedProcess:
    return subprocess.run([*CONFMEET, "loadtest", "--url", url, "--email", ADMIN[0], "--password-env", PASSWORD_VAR,
                           *args], env={**os.environ, PASSWORD_VAR: password}, capture_output=True, text=True,
                          timeout=90)


def test_two_rooms_of_one_publisher_and_two_subscribers_measured_end_to_end(appliance: Appliance) -> None:
    """One worker process; in it the first subscriber decodes, the three others count frames
    from the RTP without decoding."""
    run = loadtest(appliance.url, "--rooms", "2", "--publishers", "1", "--subscribers", "2", "--workers", "1",
                   "--decode", "1", "--duration", "6", "--join-rate", "4", "--settle", "1", "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(run.stdout)

    summary = report["summary"]
    assert (summary["subscribers_ok"], summary["subscribers_failed"], summary["subscribers_decoding"]) == (4, 0, 1)
    assert summary["decode_errors"] == 0
    assert summary["video_fps_min"] >= 25
    assert 0 < summary["first_frame_ms_max"] <= 2000
    results = report["subscriber_results"]
    assert [r["decoded"] for r in results] == [True, False, False, False]
    assert sorted(r["room"] for r in results) == [0, 0, 1, 1]
    for subscriber in results:
        # Each sees its own room's publisher only.
        assert subscriber["error"] is None and subscriber["video_tracks"] == 1
        assert subscriber["window_s"] >= 5.5
        assert subscriber["audio_packets"] >= 40 * subscriber["window_s"]  # Opus: 50 packets/s
    assert all(fps >= 28 for fps in report["published_media"]["video_fps_sent"])
    assert 600 <= report["published_media"]["video_kbps"] <= 1000

    sfu = report["sfu"]
    assert sfu["cpu_us_per_forwarded_packet"] > 0
    # Four subscribers of one publisher each: four times the ~90 video and 50 audio packets a second.
    assert sfu["forwarded_packets"]["video"] >= 4 * 60 * sfu["window_s"]
    assert sfu["forwarded_packets"]["audio"] >= 4 * 40 * sfu["window_s"]
    assert sfu["memory_per_participant_bytes"] is not None
    assert 5.5 <= report["window"]["end"] - report["window"]["start"] <= 7
    assert report["generator"]["cpu_seconds"] > 0 and report["generator"]["cores"] == os.cpu_count()
    # Each room's downlink as its two subscribers' receivers saw it: ~850 kbit/s of media each.
    for room in report["rooms"]:
        assert room["subscribers"]["loss"] == 0.0  # loopback
        assert 1400 <= room["subscribers"]["kbps"] <= 2200, room
        assert 0 <= room["subscribers"]["jitter_ms"] < 50
        assert 0 < room["subscribers"]["rtt_ms"] < 100
        assert room["appliance"]["loss"] == 0.0 and room["appliance"]["rtt_ms"] > 0

    # What an operator reads: the subscribers, the results, each room's downlink.
    out = io.StringIO()
    render_report(report, Console(file=out, width=220))
    printed = out.getvalue()
    assert f"2 meetings ({', '.join(report['meetings'])}), each with 1 publisher(s), 2 subscriber(s)" in printed
    assert "each room's downlink" in printed and "load generator CPU" in printed

    # The meetings it created for the run are ended afterwards.
    token = httpx.post(f"{appliance.url}/api/v1/auth/login",
                       json={"email": ADMIN[0], "password": ADMIN[1]}).json()["access_token"]
    assert len(set(report["meetings"])) == 2
    for code in report["meetings"]:
        meeting = httpx.get(f"{appliance.url}/api/v1/meetings/by-code/{code}",
                            headers={"Authorization": f"Bearer {token}"}).json()
        assert meeting["status"] == "ended"


@pytest.mark.parametrize("args, password, message", [
    (["--url", f"http://127.0.0.1:{free_port()}"], ADMIN[1], "cannot reach the appliance at"),
    (["--url", "ftp://example.org"], ADMIN[1], "is not an http:// or https:// URL"),
    ([], "wrong password", f"cannot sign in as {ADMIN[0]}"),
    (["--meeting", "zzz-zzzz-zzz"], ADMIN[1], "meeting 'zzz-zzzz-zzz' not found"),
])
def test_operator_errors_are_one_line_and_exit_non_zero(
        appliance: Appliance, args: list[str], password: str, message: str) -> None:
    url_args = [] if "--url" in args else ["--url", appliance.url]
    run = subprocess.run([*CONFMEET, "loadtest", *url_args, *args, "--email", ADMIN[0], "--password-stdin",
                          "--duration", "1"], input=password + "\n", capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert message in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_metrics_parsing_is_tolerant_and_figures_follow() -> None:
    exposition = """# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
process_cpu_seconds_total 12.5
process_resident_memory_bytes 1.2e+08
confmeet_sfu_forwarded_packets_total{kind="audio"} 1000.0
confmeet_sfu_forwarded_packets_total{kind="video",room="r"} 3000.0
confmeet_sfu_forwarded_packets_created{kind="video"} 1.7e+09
confmeet_http_requests_total{method="GET",route="/metrics",status="200"} 3.0
confmeet_sfu_worker_cpu_seconds_total{worker="0"} 2.0
confmeet_sfu_worker_forwarded_packets_total{worker="0"} 100.0
confmeet_sfu_worker_cpu_seconds_total{worker="1"} 3.0
confmeet_sfu_worker_forwarded_packets_total{worker="1"} 200.0
"""
    start = MetricsSample.parse(exposition, at=100.0)
    assert (start.cpu_seconds, start.rss_bytes, start.forwarded) == (12.5, 1.2e8, {"audio": 1000, "video": 3000})
    assert start.worker_cpu_seconds == 5.0
    end = MetricsSample.parse(exposition.replace("12.5", "13.5").replace("1.2e+08", "1.3e+08")
                              .replace("1000.0", "6000.0").replace("3000.0", "18000.0")
                              .replace("} 2.0", "} 4.0").replace("} 100.0", "} 10100.0")
                              .replace("} 200.0", "} 150.0"),
                              at=110.0)
    before = MetricsSample.parse("process_resident_memory_bytes 1.1e+08\n", at=90.0)
    assert before.forwarded is None and before.cpu_seconds is None

    figures = sfu_figures(before, start, end, participants=4)
    assert figures["forwarded_packets"] == {"audio": 5000, "video": 15000}
    assert figures["forwarded_packets_per_s"] == 2000.0
    assert figures["cpu_percent"] == 30.0  # the appliance's process (1 s) and its workers (2 s)
    assert figures["cpu_us_per_forwarded_packet"] == 150.0  # 3 s of CPU for 20,000 packets
    # Each worker alone: worker 0 used 2 s for 10,000 packets; worker 1's packet counter went
    # back (a worker replaced it), so it has no figure.
    assert figures["workers"] == {"0": {"cpu_percent": 20.0, "forwarded_packets_per_s": 1000.0,
                                        "cpu_us_per_forwarded_packet": 200.0}}
    assert figures["memory_per_participant_bytes"] == 5_000_000
    # A counter without labels, under the name without _total, still counts.
    unlabelled = MetricsSample.parse("confmeet_sfu_forwarded_packets 42\n", at=0.0)
    assert unlabelled.forwarded == {"all": 42}
    assert sfu_figures(None, None, end, 4)["cpu_us_per_forwarded_packet"] is None


async def test_looped_clips_rise_in_time_and_restart_at_the_keyframe_on_request() -> None:
    video, audio = encode_video_clip(seconds=1), encode_audio_clip(seconds=1)
    assert len(video.frames) == 30 and video.frames[0][0] & 0x01 == 0  # a VP8 keyframe
    assert not any(frame[0] & 0x01 == 0 for frame in video.frames[1:])
    assert 45 <= len(audio.frames) <= 52 and 20_000 <= audio.bitrate <= 60_000

    track = LoopedTrack(video)
    packets = [await track.recv() for _ in range(35)]  # past the end of the clip
    assert [p.pts for p in packets] == [3000 * i for i in range(35)]
    assert [bytes(p) for p in packets[30:]] == video.frames[:5]
    track.request_keyframe()
    assert bytes(await track.recv()) == video.frames[0]
    assert bytes(await track.recv()) == video.frames[1]
    track.stop()


async def test_a_simulcast_camera_sends_three_layers_the_sfu_chooses_among(appliance: Appliance) -> None:
    """The load test's simulcast camera offers its layers as a browser does (rids, no SSRCs) and
    sends each with its rid: a subscriber decodes the whole picture, then, asking for the lowest
    layer (``video_layer``), a quarter of it."""
    api = ApplianceApi(appliance.url)
    await api.sign_in(*ADMIN)
    meeting = await api.create_meeting("simulcast")
    publisher = Participant(api.url, api.token, name="camera", receive=False)
    viewer = Participant(api.url, api.token, name="viewer")
    try:
        await publisher.connect()
        await publisher.join(meeting["code"], check=True)
        camera = publisher.publish_simulcast(encode_simulcast_clips(seconds=1))
        await publisher.offer(check=True)
        sent = publisher.pc.localDescription.sdp
        assert "a=simulcast" not in sent  # aiortc's own description: the rids go in what is offered
        assert [layer.track.clip.frames[0][0] & 0x01 for layer in camera.layers] == [0, 0, 0]
        await publisher.connected()
        await viewer.connect()
        await viewer.join(meeting["code"], check=True)
        await viewer.offer(check=True)
        await viewer.wait_for_video(1, timeout=20)
        await viewer.wait_until(lambda: viewer.frames_from(publisher.joined["participant"]["id"], "video") >= 15)
        video = viewer.video()[0]
        assert video.sizes == {(640, 480)}, video.sizes

        track_id = next(t["track_id"] for t in viewer.joined["tracks"] if t["kind"] == "video")
        reply = await viewer.request({"type": "video_layer", "publisher": publisher.joined["participant"]["id"],
                                      "track_id": track_id, "max_layer": 0})
        assert reply["type"] == "ok", reply
        await viewer.wait_until(lambda: (160, 120) in video.sizes, timeout=10)
        assert video.decode_errors is not None and video.decode_errors.count == 0
        assert camera.sent > 0 and publisher.failures == [] and viewer.failures == []
    finally:
        await viewer.leave()
        await publisher.leave()
        await api.end_meeting(meeting["id"])


async def test_decode_errors_are_counted_where_aiortc_reports_them() -> None:
    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    counter = count_decode_errors(receiver)
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    frames: queue.Queue = queue.Queue()
    decoded: asyncio.Queue = asyncio.Queue()
    worker = threading.Thread(target=decoder_worker, args=(
        asyncio.get_running_loop(), frames, decoded, receiver._RTCRtpReceiver__decoder_error))
    worker.start()
    keyframe = encode_video_clip(seconds=0.1).frames[0]
    frames.put((vp8, JitterFrame(data=keyframe, timestamp=0)))
    frames.put((vp8, JitterFrame(data=keyframe[:10] + bytes(200), timestamp=3000)))  # truncated
    frames.put(None)
    await asyncio.to_thread(worker.join)
    assert counter.count == 1 and counter.is_set()
    assert await decoded.get() is not None
    await pc.close()


async def test_a_signaling_connection_that_broke_under_a_send_closes_quietly() -> None:
    """A server (real websockets, 1 KiB message limit) that closes the connection while the
    client's send of a large message is still blocked: the request fails with the connection's
    end, and closing the client afterwards raises nothing (websockets' closing handshake on that
    aborted transport raised AttributeError, a traceback at a load test's exit)."""
    from websockets.asyncio.server import serve

    from cli.client.signaling import SignalingClient, SignalingError

    async def handler(websocket) -> None:  # noqa: ANN001 - websockets' server connection
        await websocket.wait_closed()

    async with serve(handler, "127.0.0.1", 0, max_size=1024) as server:
        port = server.sockets[0].getsockname()[1]
        for _ in range(3):
            client = await SignalingClient.connect(f"ws://127.0.0.1:{port}/", lambda m: None, lambda c: None)
            with pytest.raises(SignalingError) as failed:
                await client.request({"type": "chat", "text": "y" * 20_000_000}, timeout=10)
            assert failed.value.code == "closed"
            await client.close()
            assert client.close_code == 1009  # message too big
