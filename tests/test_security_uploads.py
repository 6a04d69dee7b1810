"""Hostile uploads and bodies against the running appliance (issue 12, findings 1 and 7).

The appliance runs with its working directory holding a WAV file, as ``/`` holds the appliance's
own files under systemd: an upload that names that file must learn nothing about it.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from appliance_server import Appliance, start_appliance
from conftest import stop

MEMBER = ("member@example.com", "member password 1")


def tone_wav(seconds: float = 1.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    samples = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def long_opus(seconds: int) -> bytes:
    """An Ogg/Opus file of ``seconds`` of silence, made without encoding it all: one 20 ms packet repeated."""
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as box:
        stream = box.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        first = next(iter(stream.encode(frame)))
        for i in range(seconds * 50):
            packet = av.Packet(bytes(first))
            packet.stream, packet.time_base = stream, first.time_base
            packet.pts = packet.dts = i * 960
            packet.duration = 960
            box.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    workdir = tmp_path_factory.mktemp("cwd")
    (workdir / "secret.wav").write_bytes(tone_wav())
    here = os.getcwd()
    os.chdir(workdir)  # the server's working directory
    try:
        app = start_appliance(tmp_path_factory.mktemp("uploads"), ai_concurrent_decodes="1")
    finally:
        os.chdir(here)
    app.add_user(*MEMBER)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


@pytest.fixture(scope="module")
def member(appliance: Appliance) -> httpx.Client:
    token = appliance.login(*MEMBER)["access_token"]
    return httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


CONCAT = b"ffconcat version 1.0\nfile secret.wav\n"
CONCAT_MISSING = b"ffconcat version 1.0\nfile no-such-file.wav\n"
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1,\nsecret.wav\n#EXT-X-ENDLIST\n"
PROC = b"ffconcat version 1.0\nfile proc/self/environ\n"


@pytest.mark.parametrize("path", ["/api/v1/ai/voice-activity", "/api/v1/ai/transcriptions"])
def test_an_upload_cannot_make_the_server_read_its_own_files(member: httpx.Client, path: str) -> None:
    answers = {name: member.post(path, content=body) for name, body in
               (("concat", CONCAT), ("concat of a missing file", CONCAT_MISSING), ("playlist", PLAYLIST),
                ("proc", PROC), ("garbage", b"\x00not audio" * 50))}
    for name, r in answers.items():
        assert r.status_code == 422, (name, r.text)
    bodies = {r.text for r in answers.values()}
    assert len(bodies) == 1, bodies  # one answer: nothing tells whether a named file exists
    assert answers["concat"].json()["error"]["field"] == "body"


def test_plain_audio_files_are_still_read(member: httpx.Client) -> None:
    r = member.post("/api/v1/ai/voice-activity", content=tone_wav())
    # decoded: 200 with the models imported, 503 without them; never refused as not audio
    assert r.status_code in (200, 503), r.text


def test_concurrent_decodes_are_capped(member: httpx.Client) -> None:
    """ai_concurrent_decodes=1: while one file decodes, another upload gets 429 with Retry-After.
    A 30-minute file and short ones are sent at once; whichever arrives second while the other
    decodes is refused (the long one too, if a short one took the slot first)."""
    long_file = long_opus(1800)
    first: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: first.setdefault(
        "r", member.post("/api/v1/ai/voice-activity", content=long_file)))
    sender.start()
    answers: list[httpx.Response] = []
    while sender.is_alive() and not any(r.status_code == 429 for r in answers):
        answers.append(member.post("/api/v1/ai/voice-activity", content=tone_wav(0.5)))
        time.sleep(0.05)
    sender.join()
    answers.append(first["r"])
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert refused[0].json()["error"]["code"] == "busy" and int(refused[0].headers["retry-after"]) >= 1
    assert any(r.status_code in (200, 503) for r in answers)  # what held the slot was decoded
    assert member.post("/api/v1/ai/voice-activity", content=tone_wav()).status_code in (200, 503)


def raw_request(appliance: Appliance, head: str, body: bytes, timeout: float = 3.0) -> bytes:
    """Send the request line, headers and ``body`` (maybe less than announced); what comes back in ``timeout``."""
    port = int(appliance.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        try:
            return s.recv(65536)
        except TimeoutError:
            return b""


def test_an_oversized_login_body_is_refused_before_it_is_read(appliance: Appliance) -> None:
    """The headers announce 5 MB; the server must answer 413 from them, not wait for (and read) 5 MB."""
    started = time.monotonic()
    reply = raw_request(appliance, "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Type: application/json\r\nContent-Length: 5000000", b"{")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 2.5
    assert b'"payload_too_large"' in reply


def test_json_routes_are_held_to_their_own_limit(member: httpx.Client, appliance: Appliance) -> None:
    """A signed-in JSON route takes at most max_request_bytes (1 MB), an anonymous one 16 KiB, even
    though uploads may be 25 MiB."""
    big = member.post("/api/v1/meetings", content=b'{"title": "' + b"x" * 1_100_000 + b'"}')
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    anonymous = httpx.post(f"{appliance.url}/api/v1/auth/login",
                           content=b'{"email": "a@example.com", "password": "' + b"p" * 20_000 + b'"}')
    assert anonymous.status_code == 413
    normal = httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": MEMBER[0], "password": MEMBER[1]})
    assert normal.status_code == 200
