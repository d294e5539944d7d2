"""The rules of `sentinel.quota.media_calls`: what a media call whose answer shows no usage reserves
and is charged (through HTTP: tests/api/test_gate_media.py)."""

from __future__ import annotations

import pytest

from sentinel.quota.media_calls import (
    GPT_IMAGE_TOKENS,
    MediaCall,
    image_tokens,
    media_call,
    media_charge,
    speech_audio_tokens,
    transcript_seconds,
)
from sentinel.quota.tokens import TokenCounter

COUNTER = TokenCounter()


@pytest.mark.parametrize(
    ("model", "size", "quality", "figure"),
    [
        ("dall-e-3", "1024x1024", "standard", GPT_IMAGE_TOKENS["medium"][0]),
        ("dall-e-3", "1024x1792", "hd", GPT_IMAGE_TOKENS["high"][1]),
        ("dall-e-3", "1024x1792", " HD", GPT_IMAGE_TOKENS["high"][1]),
        ("dall-e-3", "1792x1024", None, GPT_IMAGE_TOKENS["medium"][2]),
        ("dall-e-2", None, None, GPT_IMAGE_TOKENS["medium"][0]),  # dall-e's defaults: standard, 1024 x 1024
        ("dall-e-2", "256x256", None, GPT_IMAGE_TOKENS["medium"][0]),
        ("gpt-image-1", None, None, GPT_IMAGE_TOKENS["high"][1]),  # auto: the dearest
        ("gpt-image-1", "auto", "low", GPT_IMAGE_TOKENS["low"][1]),
        ("gpt-image-1", "1536x1024", "auto", GPT_IMAGE_TOKENS["high"][2]),
        ("dall-e-3", ["1024x1024"], {"q": 1}, max(GPT_IMAGE_TOKENS["medium"])),  # no size or quality read
    ],
)
def test_an_image_is_what_gpt_image_1_bills_for_its_shape_and_quality(
    model: str, size: object, quality: object, figure: int,
) -> None:
    assert image_tokens(model, size, quality) == figure


def test_an_upload_names_its_image_count_as_text() -> None:
    per_image = image_tokens("dall-e-2", "512x512", None)
    call = media_call(COUNTER, ["images", "edits"], {"model": "dall-e-2", "n": "3", "size": "512x512", "prompt": "a hat"})
    assert call == MediaCall("images", COUNTER.count_text("a hat", "dall-e-2"), 3 * per_image, per_image)
    for n in ("x", "-2", "²", "0"):  # no count: one image
        assert media_call(COUNTER, ["images", "variations"], {"n": n, "size": "512x512"}) == \
            MediaCall("images", 0, per_image, per_image)
    assert media_call(COUNTER, ["images", "generations"], {"model": "dall-e-2", "n": 10**9}).output_tokens == \
        10 * image_tokens("dall-e-2", None, None)  # at most the 10 a call may ask for


def test_only_a_transcript_without_usage_is_a_media_call() -> None:
    for format_ in ("vtt", " Text", "SRT\n"):  # as a lenient reader takes it
        assert media_call(COUNTER, ["audio", "transcriptions"], {"response_format": format_}) == MediaCall("transcript")
    for shown in ({}, {"response_format": "json"}, {"response_format": "verbose_json"}):
        assert media_call(COUNTER, ["audio", "translations"], shown) is None
    assert media_call(COUNTER, ["files"], {"purpose": "batch"}) is None


def test_a_transcript_is_charged_its_cues_length_or_else_its_text() -> None:
    vtt = "WEBVTT\n\n00:01.000 --> 00:04.250\nhello\n\n01:02:03.5 --> 01:02:09.125\nbye\n"
    assert transcript_seconds(vtt) == 3729.125
    assert media_charge(MediaCall("transcript"), None, vtt.encode()) == (37292, 0, "")
    assert media_charge(MediaCall("transcript"), None, b"just words") == (0, None, "just words")


def test_images_are_charged_for_those_the_answer_shows() -> None:
    call = MediaCall("images", 5, 3 * 1056, 1056)
    assert media_charge(call, {"data": [{"url": "a"}, {"url": "b"}]}, b"") == (0, 2 * 1056, "")
    assert media_charge(call, {"data": "none"}, b"") == (0, 0, "")


def test_speech_audio_is_estimated_for_a_model_billing_audio_tokens_at_its_speed() -> None:
    text = "x" * 900  # a minute of speech
    assert speech_audio_tokens("tts-1", text) == speech_audio_tokens("tts-1-hd", text, 0.25) == 0  # the characters alone
    assert speech_audio_tokens("gpt-4o-mini-tts", text) == 1250
    assert speech_audio_tokens("openai/gpt-4o-mini-tts", text, 0.5) == 2500
    assert speech_audio_tokens("gpt-4o-mini-tts", text, 10**400) == speech_audio_tokens("gpt-4o-mini-tts", text, 4.0)
    assert speech_audio_tokens("gpt-4o-mini-tts", text, 0) == speech_audio_tokens("gpt-4o-mini-tts", text, 0.25) == 5000
    assert speech_audio_tokens("gpt-4o-mini-tts", text, "fast") == 1250
