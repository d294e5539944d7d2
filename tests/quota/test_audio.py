"""Audio in OpenAI-format requests (`input_audio`) is estimated by its length: it was estimated at
nothing, so an hour of audio (36,000 tokens billed at OpenAI's 10 a second) passed an input limit of a
few thousand, and a stream cut before its usage was charged nothing for it."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sentinel.quota.audio import audio_part_tokens
from sentinel.quota.estimate import estimate_input
from sentinel.quota.media import part_tokens
from sentinel.quota.tokens import TokenCounter
from tests.support.media import wav

COUNTER = TokenCounter()


def audio(raw: bytes | str, kind: str = "wav") -> dict[str, Any]:
    data = raw if isinstance(raw, str) else base64.b64encode(raw).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": kind}}


@pytest.mark.parametrize(("raw", "tokens"), [
    (wav(3), 30),  # 24 kHz, 16-bit mono: 10 tokens a second (OpenAI: 1 per 100 ms of user audio)
    (wav(2, rate=44_100, channels=2), 20),  # CD audio: its frame is 4 bytes
    (wav(1.05, rate=16_000), 11),  # rounded up
    (wav(60, rate=8_000, bits=8), 600),
    (wav(4, tag=3, bits=32), 40),  # IEEE float
    (wav(4, tag=0xFFFE), 40),  # WAVE_FORMAT_EXTENSIBLE
    (wav(5, before_data=b"LIST" + (5).to_bytes(4, "little") + b"notes\x00"), 50),  # a chunk before `data`, odd: padded
    # A header stating a frame of more bytes than its samples take (a shorter clip by that reading)
    # is read by the smaller frame: the longer reading.
    (wav(2, align=64), 20),
])
def test_a_wav_is_its_exact_length(raw: bytes, tokens: int) -> None:
    assert audio_part_tokens(audio(raw)) == tokens
    assert part_tokens(audio(raw)) == tokens  # the one entry every OpenAI-format estimate takes


@pytest.mark.parametrize("raw", [
    wav(2, tag=0x55),  # MP3 inside a WAV: compressed, its bytes do not give its length
    wav(2, rate=1_000_000),  # implausible figures: no recording a provider takes
    wav(2, channels=0), wav(2, bits=0),
    b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(200),  # a `fmt ` without its `data`
    bytes(4_000),  # no RIFF at all
])
def test_a_wav_whose_header_does_not_read_is_bounded_by_its_bytes(raw: bytes) -> None:
    """At 4 kbit/s (500 bytes a second), below any speech codec: 10 tokens per 500 bytes."""
    assert audio_part_tokens(audio(raw)) == -(-len(raw) * 10 // 500)


def test_an_mp3_is_bounded_by_mpeg_audios_lowest_bitrate() -> None:
    """No MP3 frame holds less than 8 kbit/s (1,000 bytes a second): a file of N bytes lasts N / 1,000
    seconds at most, whatever its first frame says (a VBR file may drop to it after)."""
    frames = b"\xff\xfb\x90\x64" + bytes(99_996)  # 100 KB: a 320 kbit/s frame header, then anything
    assert audio_part_tokens(audio(frames, "mp3")) == 1_000
    assert audio_part_tokens(audio(wav(3), "mp3")) == -(-len(wav(3)) * 10 // 1_000)  # labelled mp3: read as one


def test_another_format_is_bounded_by_its_bytes_and_the_client_label_is_not_trusted() -> None:
    raw = bytes(50_000)
    assert audio_part_tokens(audio(raw, "flac")) == 1_000
    assert audio_part_tokens(audio(raw, "")) == 1_000
    # A WAV labelled something else is not read as a WAV (the provider decodes it by its label).
    assert audio_part_tokens(audio(wav(3), "ogg")) == -(-len(wav(3)) * 10 // 500)


def test_data_urls_and_missing_data() -> None:
    raw = wav(3)
    assert audio_part_tokens(audio("data:audio/wav;base64," + base64.b64encode(raw).decode())) == 30
    assert audio_part_tokens(audio("data:audio/wav,RIFF")) == 0  # not base64: no audio a provider reads
    for empty in ({"type": "input_audio"}, {"type": "input_audio", "input_audio": {}},
                  {"type": "input_audio", "input_audio": {"data": ""}}, {"type": "input_audio", "input_audio": "x"},
                  {"type": "input_audio", "input_audio": {"data": 5, "format": "wav"}}):
        assert audio_part_tokens(empty) == 0


def test_every_openai_format_estimate_adds_audio() -> None:
    """Chat (and the native API), a Responses message's part, and a part nested in another item."""
    clip = audio(wav(600))  # ten minutes: 6,000 tokens
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is said?"}, clip]}]}
    text_only = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is said?"}]}]}
    for endpoint in ("chat", "native"):
        assert (estimate_input(COUNTER, endpoint, "gpt-4o-audio-preview", chat)
                - estimate_input(COUNTER, endpoint, "gpt-4o-audio-preview", text_only)) == 6_000
    responses = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "what is said?"}, clip]}]}
    assert estimate_input(COUNTER, "responses", "gpt-4o", responses) >= 6_000
    nested = {"input": [{"type": "function_call_output", "call_id": "c", "output": [clip]}]}
    assert estimate_input(COUNTER, "responses", "gpt-4o", nested) >= 6_000
