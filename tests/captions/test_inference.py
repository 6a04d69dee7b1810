"""The inference interface against both backends: local:// in this process and a real Triton
serving the model repository (the same model code), and Triton going away and coming back;
Mandarin in the script its language tag asks for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from opencc import OpenCC

from appliance.captions.files import utterances_of
from appliance.inference import Inference, InferenceError, InferenceUnavailable, open_inference
from appliance.inference.base import SAMPLE_RATE, VAD_CHUNK, VAD_STATE
from triton_server import Triton

from .conftest import MANDARIN, SCRIPT, character_error_rate, mandarin_audio, word_error_rate


@pytest.fixture(params=["local", "triton"])
async def inference(request: pytest.FixtureRequest, model_repository: Path) -> AsyncIterator[Inference]:
    url = request.getfixturevalue("triton").url if request.param == "triton" else "local://"
    backend = open_inference(url, model_repository)
    yield backend
    await backend.close()


async def test_voice_activity_and_transcription(inference: Inference, script_audio: np.ndarray) -> None:
    health = await inference.health()
    assert health.ready and health.models == {"vad": True, "asr": True}, health

    silence = np.zeros(16 * VAD_CHUNK, np.float32)
    probs, state = await inference.vad(silence, np.zeros(VAD_STATE, np.float32))
    assert probs.shape == (16,) and state.shape == (VAD_STATE,) and probs.max() < 0.2

    utterances = await utterances_of(inference, script_audio)
    assert len(utterances) == len(SCRIPT)  # one per sentence: the pauses between them cut
    for utterance, sentence in zip(utterances, SCRIPT):
        result = await inference.transcribe(utterance.audio, "en")
        assert result.language == "en"
        assert word_error_rate(sentence, result.text) <= 0.15, (sentence, result.text)
    detected = await inference.transcribe(utterances[0].audio, "")
    assert detected.language == "en"
    assert (await inference.transcribe(np.zeros(0, np.float32))).text == ""


async def test_bad_requests_are_refused_not_retried(inference: Inference) -> None:
    with pytest.raises(InferenceError, match="multiple of 512"):
        await inference.vad(np.zeros(100, np.float32), np.zeros(VAD_STATE, np.float32))
    with pytest.raises(InferenceError, match="at most 30 s"):
        await inference.transcribe(np.zeros(31 * SAMPLE_RATE, np.float32))


async def test_local_inference_without_models_is_unavailable(tmp_path: Path) -> None:
    backend = open_inference("local://", tmp_path / "empty")
    health = await backend.health()
    assert not health.ready and health.models == {"vad": False, "asr": False}
    assert "confmeet models import" in health.detail
    with pytest.raises(InferenceUnavailable, match="confmeet models import"):
        await backend.vad(np.zeros(VAD_CHUNK, np.float32), np.zeros(VAD_STATE, np.float32))
    await backend.close()


async def test_triton_down_is_unavailable_until_it_returns(triton: Triton, model_repository: Path) -> None:
    backend = open_inference(triton.url, model_repository)
    chunk, state = np.zeros(VAD_CHUNK, np.float32), np.zeros(VAD_STATE, np.float32)
    await backend.vad(chunk, state)
    triton.kill()
    try:
        with pytest.raises(InferenceUnavailable, match="unreachable"):
            await backend.vad(chunk, state)
        health = await backend.health()
        assert not health.ready and "does not answer" in health.detail
    finally:
        triton.start()
    assert (await backend.health()).ready
    probs, _ = await backend.vad(chunk, state)  # the same client reconnects
    assert probs.shape == (1,)
    await backend.close()


async def test_mandarin_in_the_script_its_tag_asks_for(inference: Inference) -> None:
    """zh and zh-CN write Simplified characters, zh-TW Traditional ones (Whisper itself writes
    Traditional more often than not), each within 10 % of the characters of the sentences read."""
    heard: dict[str, list[str]] = {"zh": [], "zh-CN": [], "zh-TW": []}
    for item in MANDARIN:
        [utterance] = await utterances_of(inference, mandarin_audio(item["name"]))
        for tag in heard:
            result = await inference.transcribe(utterance.audio, tag)
            assert result.language == tag
            heard[tag].append(result.text)
    simplified = "".join(item["zh-CN"] for item in MANDARIN)
    for tag in ("zh", "zh-CN"):
        text = "".join(heard[tag])
        assert OpenCC("t2s").convert(text) == text, text  # not one Traditional character
        assert character_error_rate(simplified, text) <= 0.10, (simplified, text)
        assert " " not in text and "," not in text, text  # written as a Chinese reader expects
    traditional = "".join(item["zh-TW"] for item in MANDARIN)
    assert character_error_rate(traditional, "".join(heard["zh-TW"])) <= 0.10, heard["zh-TW"]
    detected = await inference.transcribe(mandarin_audio(MANDARIN[0]["name"]), "")
    assert detected.language == "zh" and OpenCC("t2s").convert(detected.text) == detected.text
    with pytest.raises(InferenceError, match="not a caption language"):
        await inference.transcribe(mandarin_audio(MANDARIN[0]["name"]), "zh-XX")


def test_a_final_caption_is_decoded_with_a_beam_and_interim_text_greedily(model_repository: Path,
                                                                          script_audio: np.ndarray) -> None:
    """The real model, its CTranslate2 decoder watched: a final's decoding asks for a beam of 5
    (fewer words wrong, docs/benchmarks.md), an interim draft's for greedy decoding (quick)."""
    from appliance.inference.base import FINAL_WINDOW, INTERIM_WINDOW
    from appliance.inference.models import load_model

    model = load_model(model_repository, "asr")
    decoder, beams = model.model.model, []

    class Watched:
        def __getattr__(self, name: str) -> object:
            return getattr(decoder, name)

        def generate(self, *args: object, **options: object) -> object:
            beams.append(options["beam_size"])
            return decoder.generate(*args, **options)

    model.model.model = Watched()
    sentence = script_audio[:5 * SAMPLE_RATE]
    final = model.transcribe(sentence, "en", FINAL_WINDOW)[0]
    interim = model.transcribe(sentence, "en", INTERIM_WINDOW)[0]
    assert beams == [5, 1]
    assert "morning" in final.lower() and "morning" in interim.lower(), (final, interim)
