"""The rules of `sentinel.quota.media_calls`: what a media call whose answer shows no usage reserves
and is charged (through HTTP: tests/api/test_gate_media.py)."""

from __future__ import annotations

import pytest

from sentinel.errors import InvalidRequest
from sentinel.quota.media_calls import (
    GPT_IMAGE_TOKENS,
    VIDEO_TOKENS_PER_SECOND,
    MediaCall,
    image_tokens,
    media_call,
    media_charge,
    speech_audio_tokens,
    transcript_seconds,
    video_seconds,
    video_source,
    video_tokens,
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
        ("dall-e-3", "1792x1024", "hd", GPT_IMAGE_TOKENS["high"][2]),  # the largest an OpenAI model makes
        ("dall-e-2", "2048x2048", None, 4 * GPT_IMAGE_TOKENS["medium"][0]),  # larger: by its area
        ("gpt-image-1", "3072x2048", "low", 4 * GPT_IMAGE_TOKENS["low"][2]),
        ("gpt-image-1", "1024x3073", "high", -(-GPT_IMAGE_TOKENS["high"][1] * 1024 * 3073 // (1536 * 1024))),
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
    assert media_call(COUNTER, ["images", "variations"], {"size": "512x512"}) == \
        MediaCall("images", 0, per_image, per_image)  # none given: one image
    # no count, or more than the 10 a call may ask for: refused (a provider may read it as one, or make them all)
    for n in ("x", "-2", "²", "0", "1.5", 2.0, True, 0, 11, "11", 10**9):
        with pytest.raises(InvalidRequest) as refused:
            media_call(COUNTER, ["images", "variations"], {"n": n, "size": "512x512"})
        assert refused.value.details == {"param": "n"}
    assert media_call(COUNTER, ["images", "generations"], {"model": "dall-e-2", "n": 10}).output_tokens == \
        10 * image_tokens("dall-e-2", None, None)


def test_only_a_transcript_without_usage_is_a_media_call() -> None:
    for format_, cues in (("vtt", True), (" Text", False), ("SRT\n", True)):  # as a lenient reader takes it
        assert media_call(COUNTER, ["audio", "transcriptions"], {"response_format": format_}) == \
            MediaCall("transcript", cues=cues)
    # as JSON: charged only when its answer shows no usage (`usage` is optional)
    for shown in ({}, {"response_format": "json"}, {"response_format": "verbose_json"}):
        assert media_call(COUNTER, ["audio", "translations"], shown) == MediaCall("transcript", as_json=True)
    assert media_call(COUNTER, ["files"], {"purpose": "batch"}) is None


def test_a_transcript_is_charged_its_cues_length_or_else_its_text() -> None:
    vtt = "WEBVTT\n\n00:01.000 --> 00:04.250\nhello\n\n01:02:03.5 --> 01:02:09.125\nbye\n"
    assert transcript_seconds(vtt) == 3729.125
    assert media_charge(MediaCall("transcript", cues=True), None, vtt.encode()) == (37292, 0, "")
    assert media_charge(MediaCall("transcript", cues=True), None, b"just words") == (0, None, "just words")
    as_json = MediaCall("transcript", as_json=True)
    assert media_charge(as_json, {"text": "hi", "duration": 9.21}, b"") == (93, 0, "")
    assert media_charge(as_json, {"text": "just words"}, b"") == (0, None, "just words")
    assert media_charge(as_json, {"text": "x", "duration": True}, b"") == (0, None, "x")
    # plain text is the speaker's words, never cues
    assert media_charge(MediaCall("transcript"), None, vtt.encode()) == (0, None, vtt)


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
    assert media_call(COUNTER, ["audio", "speech"], {"model": "gpt-4o-mini-tts", "input": text, "speed": 4}).output_tokens \
        == speech_audio_tokens("gpt-4o-mini-tts", text, 4)
    for speed in ("fast", "0.5", False, 0, 0.2, 4.01, 10**400):  # no speed in range: refused (not read as 1)
        with pytest.raises(InvalidRequest) as refused:
            media_call(COUNTER, ["audio", "speech"], {"model": "tts-1", "input": text, "speed": speed})
        assert refused.value.details == {"param": "speed"}


@pytest.mark.parametrize(
    ("model", "size", "rate"),
    [
        ("sora-2", "720x1280", 2_500),
        ("sora-2-2025-10-06", " 1280x720", 2_500),  # a dated snapshot is its model's
        ("sora-2-pro", "1280x720", 7_500),
        ("openai/SORA-2-PRO", "1024x1792", 12_500),
        ("sora-2-pro", "auto", 12_500),  # no `WxH`: the larger size
        ("sora-3", "720x1280", 7_500),  # a model not in the table: the dearest
        (None, None, 12_500),
        ("sora-2-proper", "720x1280", 7_500),  # no prefix match: `sora-2-proper` is not sora-2's
    ],
)
def test_a_second_of_video_is_its_price_in_tokens(model: str | None, size: str | None, rate: int) -> None:
    assert video_tokens(model, size, 4) == 4 * rate
    assert max(VIDEO_TOKENS_PER_SECOND.values()) == (7_500, 12_500)


def test_a_video_reserves_what_it_asks_and_is_charged_what_it_did_not_ask_as_its_answer_shows() -> None:
    creation = media_call(COUNTER, ["videos"], {"prompt": "a lighthouse"})  # the provider's defaults
    assert creation == MediaCall("video", output_tokens=4 * 2_500, video=("sora-2", "720x1280", 4))
    assert media_charge(creation, {"model": "sora-2-pro", "seconds": "12"}, b"") == (0, 4 * 2_500, "")  # as asked
    # An extension names its length, not its source's model or size: the dearest reserved, its answer's charged.
    extension = media_call(COUNTER, ["videos", "extensions"], {"prompt": "on", "seconds": " 8"})
    assert extension is not None and extension.output_tokens == 8 * 12_500
    assert media_charge(extension, {"model": "sora-2", "size": "1280x720", "seconds": "20"}, b"") == (0, 8 * 2_500, "")
    remix = media_call(COUNTER, ["videos", "video_1", "remix"], {"prompt": "at night"})
    assert remix is not None and remix.output_tokens == 12 * 12_500  # its source's length: the longest creation
    assert media_charge(remix, {"model": "sora-2", "size": "720x1280", "seconds": "8"}, b"") == (0, 8 * 2_500, "")
    assert media_charge(remix, {"seconds": 10**9}, b"") == (0, 12 * 12_500, "")  # no answer read: as reserved


def test_a_remix_or_an_edit_of_a_video_sentinel_recorded_reserves_its_source() -> None:
    source = ("sora-2", "720x1280", 4)  # what `Ownership.remember_video` kept of it
    assert video_source(["videos", "video_1", "remix"], {}) == "video_1"
    assert video_source(["videos", "edits"], {"video": {"id": "video_2"}}) == "video_2"
    assert video_source(["videos", "edits"], {"video": "file"}) is None  # (a file part: not known)
    assert video_source(["videos"], {"video": {"id": "video_2"}}) is None
    remix = media_call(COUNTER, ["videos", "video_1", "remix"], {"prompt": "at night"}, source)
    assert remix is not None and remix.output_tokens == 4 * 2_500
    edit = media_call(COUNTER, ["videos", "edits"], {"video": {"id": "video_1"}, "model": "sora-2-pro"}, source)
    assert edit is not None and edit.output_tokens == 4 * 7_500  # what it names wins over its source's
    # An extension's length is its own (the dearest's when not named), its model and size its source's.
    extension = media_call(COUNTER, ["videos", "extensions"], {"video": {"id": "video_1"}}, source)
    assert extension is not None and extension.output_tokens == 12 * 2_500
    assert media_call(COUNTER, ["videos"], {"prompt": "a lighthouse"}, ("sora-2-pro", "1792x1024", 12)) == \
        media_call(COUNTER, ["videos"], {"prompt": "a lighthouse"})  # a creation has no source


@pytest.mark.parametrize("given", [0, -1, 61, "61", "4.0", 4.0, True, "", [4], 10**400])
def test_a_video_length_is_a_whole_number_of_seconds_within_bounds(given: object) -> None:
    with pytest.raises(InvalidRequest):
        video_seconds(given)
    assert video_seconds(None) is None and video_seconds(" 12 ") == video_seconds(12) == 12


def test_a_vector_store_search_is_a_media_call_only_when_it_rewrites_its_query() -> None:
    tokens = COUNTER.count_text("old lighthouses", "")
    path = ["vector_stores", "vs_1", "search"]
    assert media_call(COUNTER, path, {"query": "old lighthouses", "rewrite_query": True}) == MediaCall("search", tokens)
    assert media_call(COUNTER, path, {"query": ["old lighthouses", 3, "old lighthouses"], "rewrite_query": "yes"}) == \
        MediaCall("search", 2 * tokens)
    for off in ({}, {"rewrite_query": False}, {"rewrite_query": None}):
        assert media_call(COUNTER, path, {"query": "old lighthouses", **off}) is None
    assert media_charge(MediaCall("search", tokens), {"search_query": ["x"]}, b"") == (0, 0, "")
