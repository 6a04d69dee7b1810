"""The VAD cutter, the ASR queue, caption languages and transcript exports, on made-up data (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.captions.transcripts import columns, to_srt, to_text, to_vtt, wrap
from appliance.captions.utterances import CHUNK_SECONDS, AsrQueue, CutSettings, Draft, Utterance, UtteranceCutter
from appliance.inference import languages
from appliance.inference.base import SAMPLE_RATE, VAD_CHUNK


def feed(cutter: UtteranceCutter, probs: list[float], first: float = 100.0) -> list[Utterance]:
    audio = np.arange(len(probs) * VAD_CHUNK, dtype=np.float32)
    return cutter.feed(audio, np.array(probs, np.float32), [first + i * CHUNK_SECONDS for i in range(len(probs))])


def test_silence_ends_an_utterance_with_padding_around_the_speech() -> None:
    cutter = UtteranceCutter("p", CutSettings(min_silence=0.3, pad=0.1, min_speech=0.25))
    speech = [0.0] * 10 + [0.9] * 30 + [0.1] * 5
    assert feed(cutter, speech) == [] and cutter.speaking
    [utterance] = feed(cutter, [0.1] * 10)
    assert not cutter.speaking and utterance.participant == "p"
    pad = round(0.1 / CHUNK_SECONDS)
    assert utterance.audio.size == (pad + 30 + pad) * VAD_CHUNK
    assert utterance.start == 100.0 + (10 - pad) * CHUNK_SECONDS
    assert abs(utterance.end - (100.0 + 40 * CHUNK_SECONDS)) < 1e-9


def test_a_draft_at_a_pause_is_the_final_to_be_and_an_interim_draft_all_heard_so_far() -> None:
    cutter = UtteranceCutter("p", CutSettings(min_silence=0.4, pad=0.1))
    assert cutter.draft(at_pause=True) is None  # nobody speaks
    feed(cutter, [0.0] * 5 + [0.9] * 20)
    interim = cutter.draft(at_pause=False)
    assert interim is not None and interim.audio.size == (3 + 20) * VAD_CHUNK
    feed(cutter, [0.1] * 6, first=200.0)
    assert round(cutter.silence_seconds, 3) == round(6 * CHUNK_SECONDS, 3)
    pause = cutter.draft(at_pause=True)
    [final] = feed(cutter, [0.1] * 10, first=300.0)
    assert pause is not None and pause.key == final.key and pause.id == final.id
    assert np.array_equal(pause.audio, final.audio)  # the same audio: its text is the final text


def test_long_speech_is_cut_and_short_noise_dropped() -> None:
    cutter = UtteranceCutter("p", CutSettings(max_utterance=2.0, min_speech=0.25))
    cuts = feed(cutter, [0.9] * 200)  # 6.4 s of speech without a pause
    assert [round(u.seconds, 1) for u in cuts] == [2.0, 2.0, 2.0] and cutter.speaking
    assert [round(u.seconds, 1) for u in cutter.flush()] == [0.4]
    assert feed(UtteranceCutter("p", CutSettings()), [0.9] * 3 + [0.0] * 20) == []  # 96 ms: a click


def utterance(who: str, seconds: float, start: float = 0.0, queued_at: float = 0.0) -> Utterance:
    return Utterance(who, np.zeros(int(seconds * SAMPLE_RATE), np.float32), start, start + seconds,
                     queued_at=queued_at, cut_at=start + seconds)


def test_finals_come_first_then_drafts_at_a_pause_then_interim_ones() -> None:
    queue = AsrQueue()
    queue.put_draft(Draft(utterance("ann", 1, start=1), "interim"))
    queue.put_draft(Draft(utterance("bob", 1, start=2), "pause"))
    queue.put_draft(Draft(utterance("bob", 2, start=2), "pause"))  # bob's newer draft replaces his older one
    queue.put_final(utterance("cy", 2, start=3))
    first, second, third = queue.take(), queue.take(), queue.take()
    assert isinstance(first, Utterance) and first.participant == "cy"
    assert isinstance(second, Draft) and second.kind == "pause" and second.utterance.seconds == 2
    assert isinstance(third, Draft) and third.kind == "interim" and queue.take() is None
    queue.put_draft(Draft(utterance("ann", 1, start=5), "interim"))
    queue.put_final(utterance("ann", 2, start=5))  # her final supersedes her draft
    assert isinstance(queue.take(), Utterance) and queue.take() is None


def test_behind_finals_merge_and_only_past_the_bounds_are_dropped() -> None:
    queue = AsrQueue(max_seconds=10, max_utterance=6, max_wait=30)
    assert queue.put_final(utterance("ann", 3, start=0)) == []
    assert queue.put_final(utterance("ann", 2, start=4)) == []  # joins ann's waiting one: nothing lost
    assert len(queue) == 1 and queue.counters.merged == 1
    assert queue.put_final(utterance("bob", 4, start=7)) == []  # 9.2 s waiting: within the bound
    dropped = queue.put_final(utterance("cy", 3, start=12))  # 12.2 s: the oldest goes, and is returned
    assert [u.participant for u in dropped] == ["ann"] and dropped[0].merged == 2
    assert queue.counters.dropped == 2 and round(queue.counters.dropped_seconds, 1) == 5.2
    queue.finals[1].queued_at = 5.0
    assert [u.participant for u in queue.stale(now=31.0)] == ["bob"]  # waited over max_wait
    assert [u.participant for u in queue.clear()] == ["cy"] and len(queue) == 0


def test_language_tags_and_the_script_they_ask_for() -> None:
    assert languages.parse("zh_tw").tag == "zh-TW" and languages.parse("ZH-hant").traditional == "s2t"
    assert languages.parse("zh-Hans-CN").tag == "zh-Hans" and languages.parse("").whisper == ""
    assert languages.parse("EN") == languages.Language("en", "en")
    with pytest.raises(ValueError, match="zh-TW"):
        languages.parse("klingon")
    heard = "今天下午3點我們在會議室討論, 預算是 1,000 元.軟件 好嗎?"
    assert languages.write(heard, languages.parse("zh")) == "今天下午3点我们在会议室讨论，预算是1,000元。软件好吗？"
    assert languages.write(heard, languages.parse("zh-CN")) == languages.write(heard, languages.parse("zh-Hans"))
    assert languages.write(heard, languages.parse("zh-TW")) == "今天下午3點我們在會議室討論，預算是1,000元。軟體好嗎？"
    assert languages.write("大家好 我们用 Python ，好吗 ?", languages.parse("zh-CN")) == "大家好我们用 Python，好吗？"
    assert languages.write("３.５ 个", languages.parse("zh-CN")) == "3.5个"  # full-width digits, a decimal point kept
    assert languages.write("會議 10:30 開始", languages.parse(""), detected="zh") == "会议10:30开始"
    assert languages.write(" Hello, world. ", languages.parse("en")) == "Hello, world."
    assert languages.join(["大家好。", "请开始", "OK then", "fine", "谢谢"]) == "大家好。请开始 OK then fine 谢谢"
    assert languages.fold("預 算ＡＢ") == languages.fold("预算ab") == "预算ab"


def test_transcript_exports() -> None:
    segments = [{"participant": "p1", "name": "Ada", "text": "Hello  there.", "start": 1010.5, "end": 1012.25},
                {"participant": "p2", "name": "Bob", "text": "Hi --> you", "start": 4610.0, "end": 4611.0}]
    assert to_vtt(1000.0, segments) == ("WEBVTT\n\n00:00:10.500 --> 00:00:12.250\nAda: Hello there.\n\n"
                                        "01:00:10.000 --> 01:00:11.000\nBob: Hi -> you\n")
    assert to_srt(1000.0, segments).startswith("1\n00:00:10,500 --> 00:00:12,250\nAda: Hello there.\n\n2\n")
    assert to_text(1000.0, segments) == "[00:00:10] Ada: Hello there.\n[01:00:10] Bob: Hi --> you\n"


def test_chinese_exports_wrap_by_display_width_without_spaces() -> None:
    said = "大家好，今天我们讨论下个季度的预算。请把会议记录发给项目经理，新版本的软件下周开始测试。"
    segments = [{"participant": "p1", "name": "王芳", "text": said, "start": 1001.0, "end": 1009.0}]
    vtt = to_vtt(1000.0, segments)
    cue = vtt.split("\n\n")[1].splitlines()
    assert cue[0] == "00:00:01.000 --> 00:00:09.000"
    assert cue[1].startswith("王芳：大家好，")  # a full-width colon after the name
    assert all(columns(line) <= 42 for line in cue[1:]) and len(cue) > 2
    assert "".join(cue[1:]) == "王芳：" + said  # broken into lines, nothing added or lost
    assert all(line[-1] in "，。" for line in cue[1:])  # after punctuation
    assert "".join(to_srt(1000.0, segments).split("\n\n")[0].splitlines()[2:]) == "王芳：" + said
    assert to_text(1000.0, segments) == f"[00:00:01] 王芳：{said}\n"
    assert wrap("新版本的软件下周开始测试客户希望我们尽快解决这个问题明天上午我们在大会议室见面", 20) == [
        "新版本的软件下周开始", "测试客户希望我们尽快", "解决这个问题明天上午", "我们在大会议室见面"]
    assert wrap("thank you for joining the weekly planning meeting", 20) == [
        "thank you for", "joining the weekly", "planning meeting"]
