"""Pass-through media calls whose answer shows no `usage`: what they reserve and what they are charged.

Speech, `dall-e-2`/`dall-e-3` images and a transcription or translation asked for as `text`, `srt`
or `vtt` come back without a `usage`: charged nothing and reserved nothing, a user on a token-limited
plan ran them at one request each. Each is now held to the plan's token limits, by one rule a kind:

- speech (`POST /v1/audio/speech`): its `input` text is what the provider bills (per character, or
  as its tokens): its tokens (the counter's estimate) are reserved and charged as input; a model that
  bills its spoken answer as audio tokens (`gpt-4o-mini-tts`: any `gpt-*` speech model) is also
  reserved and charged that audio as output (`speech_audio_tokens`: OpenAI's estimate of $0.015 a
  minute at $12 per million audio tokens is 1,250 tokens a minute, speech at 900 characters a
  minute, slower by its `speed`).
- images (`POST /v1/images/generations`, `/edits`, `/variations`): each image is what `gpt-image-1`
  bills for an image of its shape and quality (`image_tokens`: OpenAI's table, GPT_IMAGE_TOKENS),
  `n` of them reserved as output (the prompt's tokens as input), and charged for the images the
  answer shows (its `data` entries) when it shows no usage. `gpt-image-1`'s answer shows its usage,
  which is charged instead.
- a transcription or translation as `text`, `srt` or `vtt`: nothing is reserved (its audio's length
  is not known before: bounded from an upload's size, a real recording would never fit a plan); it is
  charged the audio's length its cues show (the last one's end, at the rate a `whisper-1` duration
  usage is charged: `usage.duration_usage`) or else, as plain `text`, the text's tokens as output
  (an answer over 1 MiB, relayed as it passes, a token per 4 bytes of it: `unread_output`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.quota.audio import AUDIO_TOKENS_PER_SECOND
from sentinel.quota.media import BYTES_PER_TOKEN
from sentinel.quota.tokens import TokenCounter

SPEECH = ("audio", "speech")
IMAGES = frozenset({("images", "generations"), ("images", "edits"), ("images", "variations")})
TRANSCRIPTS = frozenset({("audio", "transcriptions"), ("audio", "translations")})
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})  # a transcript's answer formats without a `usage`
# The fields of an upload (an image edit, a transcription) its charge is read from: each given once
# (`read_once`), or the provider might read another value than Sentinel did (`response_format` given
# as `json`, then as `text`: reserved and charged as a call whose answer shows its usage).
READ_FIELDS = frozenset({"model", "n", "size", "quality", "response_format", "prompt"})

# gpt-image-1's output tokens per image (OpenAI's image generation guide), by quality: a square
# (1024 x 1024), a portrait (1024 x 1536) and a landscape (1536 x 1024) image.
GPT_IMAGE_TOKENS = {"low": (272, 408, 400), "medium": (1056, 1584, 1568), "high": (4160, 6240, 6208)}
# A quality as the images API names it, by gpt-image-1's: dall-e-3's `standard` and `hd`.
_QUALITIES = {"low": "low", "medium": "medium", "standard": "medium", "high": "high", "hd": "high"}
MAX_IMAGES = 10  # the most images a call may ask for (`n`): what is reserved past it
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_DIGITS = re.compile(r"[0-9]+")

SPEECH_AUDIO_TOKENS_PER_MINUTE = 1250  # gpt-4o-mini-tts: $0.015 a minute at $12 per million audio tokens
SPEECH_CHARS_PER_MINUTE = 900  # 150 words a minute
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the speech API's `speed`

# A cue's end in an SRT (`00:01:02,500`) or VTT (`00:01:02.500`, `01:02.500`) transcript.
_CUE_END = re.compile(r"-->[ \t]*(?:([0-9]{1,6}):)?([0-9]{1,2}):([0-9]{2})[.,]([0-9]{1,3})")


@dataclass(frozen=True)
class MediaCall:
    """A pass-through media call whose answer may show no usage (see the module docstring): its kind
    (`speech`, `images`, `transcript`), the input and output tokens it reserves, and an image's."""

    kind: str
    input_tokens: int = 0
    output_tokens: int = 0
    per_image: int = 0


def media_call(counter: TokenCounter, segments: Sequence[str], fields: Mapping[str, Any]) -> MediaCall | None:
    """The media call a `POST` to the `/v1` path `segments` with the body `fields` (a JSON object, or an
    upload's fields as text) is, None for any other call (a transcript asked for as JSON shows its usage)."""
    path = _path(segments)
    model = fields.get("model")
    model = model if isinstance(model, str) else ""
    if path == SPEECH:
        text = fields.get("input")
        text = text if isinstance(text, str) else ""
        return MediaCall("speech", counter.count_text(text, model), speech_audio_tokens(model, text, fields.get("speed")))
    if path in IMAGES:
        prompt = fields.get("prompt")
        per_image = image_tokens(model or "dall-e-2", fields.get("size"), fields.get("quality"))
        return MediaCall("images", counter.count_text(prompt, model) if isinstance(prompt, str) else 0,
                         per_image * min(MAX_IMAGES, _count(fields.get("n"))), per_image)
    if path in TRANSCRIPTS and _word(fields.get("response_format")) in TEXT_FORMATS:
        return MediaCall("transcript")
    return None


def read_once(segments: Sequence[str]) -> bool:
    """Whether an upload to the `/v1` path `segments` must give each of READ_FIELDS once."""
    return _path(segments) in IMAGES | TRANSCRIPTS


def _path(segments: Sequence[str]) -> tuple[str, ...]:
    return tuple(segments[:-1] if segments and segments[-1] == "" else segments)


def speech_audio_tokens(model: str, text: str, speed: Any = None) -> int:
    """The audio output tokens a speech model that bills them (a `gpt-*` one: gpt-4o-mini-tts) is
    estimated for `text` read at `speed` (1 when none; 0.25 to 4); 0 for any other (tts-1 bills the
    characters alone)."""
    if not model.rsplit("/", 1)[-1].lower().startswith("gpt-") or not text:
        return 0
    pace = speed if isinstance(speed, int | float) and not isinstance(speed, bool) else 1.0
    pace = min(MAX_SPEED, max(MIN_SPEED, pace))  # (compared, never converted: an integer of 400 digits too)
    return math.ceil(len(text) * SPEECH_AUDIO_TOKENS_PER_MINUTE / SPEECH_CHARS_PER_MINUTE / pace)


def image_tokens(model: str, size: Any, quality: Any) -> int:
    """What one image of `size` (`WxH`) and `quality` costs: gpt-image-1's tokens for its shape and
    quality (GPT_IMAGE_TOKENS). A `dall-e-*` image is `standard` (medium) and 1024 x 1024 unless it
    says otherwise; any other quality (`auto`, none) is high, and a size that is no `WxH` (`auto`,
    none) the dearest shape, a portrait."""
    dalle = model.rsplit("/", 1)[-1].lower().startswith("dall-e")
    default = "medium" if dalle else "high"
    figures = GPT_IMAGE_TOKENS[_QUALITIES.get(_word(quality), default)]
    found = _SIZE.fullmatch(size.strip()) if isinstance(size, str) else None
    if found is None:
        return figures[0] if dalle and size is None else max(figures)
    width, height = int(found[1]), int(found[2])
    return figures[0] if width == height else figures[1] if height > width else figures[2]


def media_charge(call: MediaCall, answer: Any, raw: bytes) -> tuple[int, int | None, str]:
    """What a media call whose answer (`answer` parsed as JSON, None when it is not; `raw` its bytes)
    shows no usage is charged beside the input it reserved: (input tokens more, the output tokens —
    None to count the text —, the text to count as output)."""
    if call.kind == "images":
        data = answer.get("data") if isinstance(answer, dict) else None
        return 0, call.per_image * (len(data) if isinstance(data, list) else 0), ""
    if call.kind == "transcript":
        text = raw.decode("utf-8", "replace")
        seconds = transcript_seconds(text)
        if seconds:
            return min(MAX_TOKENS, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)), 0, ""
        return 0, None, text
    return 0, call.output_tokens, ""  # speech: as reserved (its audio is not read)


def unread_output(call: MediaCall | None, size: int, reserved: int) -> int:
    """The output a media call's answer too large to keep (`size` bytes, relayed as it passed) is
    charged: a transcript a token per 4 bytes of its text (BYTES_PER_TOKEN; it reserved none), any
    other call — and any answer not a media call's — what it `reserved`."""
    return -(-size // BYTES_PER_TOKEN) if call is not None and call.kind == "transcript" else reserved


def transcript_seconds(text: str) -> float:
    """The audio length an SRT or VTT transcript shows: its last cue's end, in seconds (0 for none)."""
    last = 0.0
    for found in _CUE_END.finditer(text):
        hours, minutes, seconds, fraction = found.groups()
        last = max(last, int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000)
    return last


def _word(value: Any) -> str:
    """An option's value as a lenient reader may take it (` Text`: `text`); "" for no text."""
    return value.strip().lower() if isinstance(value, str) else ""


def _count(value: Any) -> int:
    """An image count (`n`: a JSON integer, or an upload's text), 1 when it is none or no count."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip()[:6])
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
