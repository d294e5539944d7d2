"""Pass-through media calls whose answer shows no `usage`: what they reserve and what they are charged.

Speech, `dall-e-2`/`dall-e-3` images and a transcription or translation asked for as `text`, `srt`
or `vtt` come back without a `usage`: charged nothing and reserved nothing, a user on a token-limited
plan ran them at one request each. Each is now held to the plan's token limits, by one rule a kind:

- speech (`POST /v1/audio/speech`): its `input` text is what the provider bills (per character, or
  as its tokens), and its `instructions` (how to speak, which gpt-4o-mini-tts reads as text input:
  counted whatever the model, erring stricter): their tokens (the counter's estimate) are reserved
  and charged as input — `instructions` of any length were free —; a model that
  bills its spoken answer as audio tokens (`gpt-4o-mini-tts`: any `gpt-*` speech model) is also
  reserved and charged that audio as output (`speech_audio_tokens`: OpenAI's estimate of $0.015 a
  minute at $12 per million audio tokens is 1,250 tokens a minute, speech at 900 characters a
  minute, slower by its `speed`). A `speed` that is no number from 0.25 to 4.0 is refused (400).
- images (`POST /v1/images/generations`, `/edits`, `/variations`): each image is what `gpt-image-1`
  bills for an image of its shape and quality (`image_tokens`: OpenAI's table, GPT_IMAGE_TOKENS),
  `n` of them reserved as output (the prompt's tokens as input; an edit's, not `dall-e-*`, also the
  images it is given: `edit_images`), and charged for the images the answer shows (its `data`
  entries) when it shows no usage. `gpt-image-1`'s answer shows its usage, which is charged instead.
- a transcription or translation as `text`, `srt` or `vtt`: nothing is reserved (its audio's length
  is not known before: bounded from an upload's size, a real recording would never fit a plan); it is
  charged, as `srt` or `vtt`, the audio's length its cues show (the last one's end, at the rate a
  `whisper-1` duration usage is charged: `usage.duration_usage`) or else — and always as plain
  `text`, whose words are the speaker's (a "--> 00:00.001" in them is no cue) — the text's tokens
  as output (an answer over 1 MiB, relayed as it passes, a token per 4 bytes of it: `unread_output`).
- a transcription or translation as JSON (`json`, `verbose_json`, none) whose answer shows no usage
  (an OpenAI-compatible server's, or an older one's: its `usage` is optional) — reserved nothing
  either — is charged its `duration` (`verbose_json`'s) as that much audio, or else its `text`'s
  tokens as output: it was charged nothing. One answered with no JSON object at all (a server whose
  default format is `text`, or that read the format otherwise) is charged its text as a `text`
  transcript is: it was charged nothing either.
- a video (`POST /v1/videos`, `/v1/videos/edits`, `/extensions`, `/v1/videos/{id}/remix`): Sora bills
  it by the second, by model and size: each second is reserved and charged as output the tokens that
  cost as much (VIDEO_TOKENS_PER_SECOND: OpenAI's per-second prices at $40 per million tokens, what
  gpt-image-1's image output tokens cost), charged when the job is made (the provider bills what was
  asked: a creation it refuses, 4xx or 5xx, is charged nothing). What the request does not name is
  what the answer (the video job) shows — an extension's, an edit's or a remix's model and size are
  its source's, a remix's or an edit's length too —, reserved as a creation's defaults (`sora-2`,
  720 x 1280, 4 seconds) for a creation, else as its source's when Sentinel recorded it (a video
  made through it: `Ownership.remember_video`, `source`), else as the dearest (`sora-2-pro` at its
  larger sizes, 12 seconds). A `seconds` that is no whole number from 1 to MAX_VIDEO_SECONDS is refused (400).
- a vector store search with `rewrite_query` (`POST /v1/vector_stores/{id}/search`): a model rewrites
  its query: the query's tokens (each of a list's) are reserved and charged as input.
- a compaction (`POST /v1/responses/compact`): a model reads its Responses body (`input`,
  `instructions`, ...) and writes a summary; the input `/v1/responses` would estimate for that body
  is reserved (charged as input, with the text its answer shows as output, when it shows no usage).
  It reserved no token: a compaction of a 100,000-token conversation passed an input limit of
  1,000, and a burst of them passed any.
- a grader run (`POST /v1/fine_tuning/alpha/graders/run`): each model grader in its `grader` (a
  `multi` grader's nested ones too: `sentinel.domain.graders`) reads its own `input` messages (the
  prompt templates) and `labels`, filled in from the run's `item` and `model_sample`: reserved as
  input, for each model grader, the tokens of its text plus `item` and `model_sample` as text
  (`item_text`: strings, keys and scalars; an image by its estimate), at most MAX_TOKENS; a grader
  with no model (`string_check`, `text_similarity`, `python`, ...) reserves none. It is charged what
  its answer's `metadata.token_usage` shows (`answers.final_usage`), and — without one — that
  estimate as input (the graders' verdicts, a few tokens, uncounted). It reserved no token: a burst
  of runs of a long `item` passed an input limit before the first settled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sentinel.domain.graders import model_graders
from sentinel.domain.numbers import MAX_TOKENS
from sentinel.errors import InvalidRequest
from sentinel.quota.audio import AUDIO_TOKENS_PER_SECOND
from sentinel.quota.estimate import estimate_input
from sentinel.quota.images import HEADER_BYTES, image_size, openai_image_rule, url_image_tokens
from sentinel.quota.items import item_text
from sentinel.quota.media import BYTES_PER_TOKEN
from sentinel.quota.tokens import TokenCounter

SPEECH = ("audio", "speech")
IMAGES = frozenset({("images", "generations"), ("images", "edits"), ("images", "variations")})
TRANSCRIPTS = frozenset({("audio", "transcriptions"), ("audio", "translations")})
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})  # a transcript's answer formats without a `usage`
CUED_FORMATS = frozenset({"srt", "vtt"})  # ... those whose cues show the audio's length
# The fields of an upload (an image edit, a transcription) its charge is read from: each given once
# and as a field, not a file part (`read_once`), or the provider might read another value than
# Sentinel did (`response_format` given as `json`, then as `text`, or `n` sent with a filename that
# Sentinel skipped: reserved and charged as another call than the provider bills).
READ_FIELDS = frozenset({"model", "n", "size", "quality", "response_format", "prompt", "seconds"})
EDITS = ("images", "edits")
# The images an edit gives its model to read (an upload's file parts of these names, `image[]` too; a
# JSON body's `images` and `mask`): a gpt-image model bills each as image input tokens.
EDIT_IMAGES = frozenset({"image", "mask"})

# gpt-image-1's output tokens per image (OpenAI's image generation guide), by quality: a square
# (1024 x 1024), a portrait (1024 x 1536) and a landscape (1536 x 1024) image.
GPT_IMAGE_TOKENS = {"low": (272, 408, 400), "medium": (1056, 1584, 1568), "high": (4160, 6240, 6208)}
# The areas GPT_IMAGE_TOKENS' figures are for (a square's, a portrait's or landscape's), and the largest
# any OpenAI image model makes (dall-e-3's 1792 x 1024): an image larger than it is charged by its area.
IMAGE_AREA, WIDE_IMAGE_AREA, LARGEST_IMAGE_AREA = 1024 * 1024, 1536 * 1024, 1792 * 1024
# A quality as the images API names it, by gpt-image-1's: dall-e-3's `standard` and `hd`.
_QUALITIES = {"low": "low", "medium": "medium", "standard": "medium", "high": "high", "hd": "high"}
MAX_IMAGES = 10  # the most images a call may ask for (`n`, OpenAI's bound): more is refused
# Each partial image an image tool streams before its image is billed as this many more image output
# tokens (OpenAI's image generation guide); a tool streams at most MAX_PARTIAL_IMAGES of them.
PARTIAL_IMAGE_TOKENS = 100
MAX_PARTIAL_IMAGES = 3
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_DIGITS = re.compile(r"[0-9]+")

# A second of video as the tokens costing as much at $40 per million (gpt-image-1's image output
# tokens): OpenAI's per-second prices, by model, at 720 x 1280 or 1280 x 720 and at a larger size
# (1024 x 1792, 1792 x 1024): sora-2 $0.10 ($0.10), sora-2-pro $0.30 ($0.50). A model not in it (or
# none named where the request is no creation) is billed as the dearest, and so is a size not `WxH`.
VIDEO_TOKENS_PER_SECOND = {"sora-2": (2_500, 2_500), "sora-2-pro": (7_500, 12_500)}
VIDEO_SMALL_AREA = 1280 * 720  # the sizes billed at a model's first rate
VIDEO_CREATION = ("sora-2", "720x1280", 4)  # what a creation naming none of them makes (the provider's defaults)
VIDEO_UNKNOWN_SECONDS = 12  # a remix's or an edit's length (its source's) reserved: the longest creation
MAX_VIDEO_SECONDS = 60  # the longest video `seconds` may ask for (Sora's longest: an extension's 20)
VIDEOS = ("videos",)
VIDEO_CALLS = frozenset({VIDEOS, ("videos", "edits"), ("videos", "extensions")})  # and `videos/{id}/remix`
VECTOR_SEARCH = "search"  # `vector_stores/{id}/search`
COMPACT = ("responses", "compact")  # a compaction of a Responses body (`COLLECTION_ACTIONS`)
GRADER_RUN = ("fine_tuning", "alpha", "graders", "run")  # a grader run on its own (`/validate` runs none)
# What a model grader reads of its own: its messages (prompt templates) and the labels it picks from.
GRADER_TEXT = ("input", "labels")
# The paths (below `/v1`) whose calls are media calls: a path a lenient server reads as one of these
# (`/v1/Audio/Speech`, `/v1/images;x/generations`) is never pass-through (`sentinel.api.openai.SPELLED`),
# or it would be charged as another call: one request, no token.
MEDIA_PATHS = frozenset({SPEECH, *IMAGES, *TRANSCRIPTS, *VIDEO_CALLS})

SPEECH_AUDIO_TOKENS_PER_MINUTE = 1250  # gpt-4o-mini-tts: $0.015 a minute at $12 per million audio tokens
SPEECH_CHARS_PER_MINUTE = 900  # 150 words a minute
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the speech API's `speed`

# A cue's end in an SRT (`00:01:02,500`) or VTT (`00:01:02.500`, `01:02.500`) transcript.
_CUE_END = re.compile(r"-->[ \t]*(?:([0-9]{1,6}):)?([0-9]{1,2}):([0-9]{2})[.,]([0-9]{1,3})")


@dataclass(frozen=True)
class MediaCall:
    """A pass-through media call whose answer may show no usage (see the module docstring): its kind
    (`speech`, `images`, `transcript`, `video`, `search`, `compact`, `grader`), the input and output tokens it reserves,
    an image's, a video's model, size and seconds as the request named them (None: not named), and —
    a transcript — whether it was asked for with cues (`srt`, `vtt`: `CUED_FORMATS`) or as JSON."""

    kind: str
    input_tokens: int = 0
    output_tokens: int = 0
    per_image: int = 0
    video: tuple[str | None, str | None, int | None] = (None, None, None)
    cues: bool = False
    as_json: bool = False


def video_source(segments: Sequence[str], fields: Mapping[str, Any]) -> str | None:
    """The id of the video a video call makes its video of (a remix's path names it, an edit's or
    an extension's `video` as `{"id": ...}`), None for any other call (or a source given as a file)."""
    path = _path(segments)
    if len(path) == 3 and path[0] == "videos" and path[2] == "remix":
        return path[1] or None
    source = fields.get("video") if path in VIDEO_CALLS and path != VIDEOS else None
    found = source.get("id") if isinstance(source, dict) else None
    return found if isinstance(found, str) and found else None


def media_call(
    counter: TokenCounter, segments: Sequence[str], fields: Mapping[str, Any],
    source: tuple[str, str, int] | None = None, uploaded: Sequence[tuple[str, bytes]] = (),
) -> MediaCall | None:
    """The media call a `POST` to the `/v1` path `segments` with the body `fields` (a JSON object, or an
    upload's fields as text) is, None for any other call. `source`: the (model, size, seconds) of
    the video a video call makes its own of (`video_source`), when Sentinel recorded it: what the
    request does not name of its source is reserved as that (an extension's length: its own).
    `uploaded`: an upload's file parts (name, content): an edit's images (`edit_images`)."""
    path = _path(segments)
    model = fields.get("model")
    model = model if isinstance(model, str) else ""
    if path == SPEECH:
        text = fields.get("input")
        text = text if isinstance(text, str) else ""
        speed = speech_speed(fields.get("speed"))
        told = fields.get("instructions")  # (how to speak: text input too, billed as `input` is)
        tokens = counter.count_text(text, model) + (counter.count_text(told, model) if isinstance(told, str) else 0)
        return MediaCall("speech", min(MAX_TOKENS, tokens), speech_audio_tokens(model, text, speed))
    if path in IMAGES:
        prompt = fields.get("prompt")
        per_image = image_tokens(model or "dall-e-2", fields.get("size"), fields.get("quality"))
        read = counter.count_text(prompt, model) if isinstance(prompt, str) else 0
        if path == EDITS:
            read += edit_images(model, fields, uploaded)
        return MediaCall("images", min(MAX_TOKENS, read), per_image * image_count(fields.get("n")), per_image)
    if path in TRANSCRIPTS:
        format_ = _word(fields.get("response_format"))
        return MediaCall("transcript", cues=format_ in CUED_FORMATS, as_json=format_ not in TEXT_FORMATS)
    if _is_video(path):
        size = fields.get("size")
        asked = (model or None, size if isinstance(size, str) else None, video_seconds(fields.get("seconds")))
        if path == VIDEOS:  # a creation: what it did not name is the provider's default
            asked = _video_or(asked, None, creation=True)
        known: dict[str, Any] = {}
        if source is not None and path != VIDEOS:  # its source's model and size; a remix's, an edit's length
            known = {"model": source[0], "size": source[1]}
            if path != ("videos", "extensions"):
                known["seconds"] = source[2]
        return MediaCall("video", output_tokens=video_tokens(*_video_or(asked, known, creation=False)), video=asked)
    if len(path) == 3 and path[0] == "vector_stores" and path[2] == VECTOR_SEARCH \
            and fields.get("rewrite_query") not in (None, False):  # (one the provider refuses is charged nothing)
        query = fields.get("query")
        texts = query if isinstance(query, list) else [query]
        tokens = sum(counter.count_text(text, model) for text in texts if isinstance(text, str))
        return MediaCall("search", input_tokens=min(MAX_TOKENS, tokens))
    if path == COMPACT:  # its body is a Responses request's: its input, as `/v1/responses` estimates it
        tokens = estimate_input(counter, "responses", model, dict(fields))
        return MediaCall("compact", input_tokens=min(MAX_TOKENS, tokens))
    if path == GRADER_RUN:
        return MediaCall("grader", input_tokens=grader_run_input(counter, fields))
    return None


def edit_images(model: str, fields: Mapping[str, Any], uploaded: Sequence[tuple[str, bytes]]) -> int:
    """The input tokens the images an edit gives (EDIT_IMAGES: an upload's file parts, a JSON body's
    `images` and `mask`) cost a gpt-image model, each by `openai_image_rule`'s tiles for its size, read
    from its header (a data URL's), else the most an image costs (a `file_id`, an http(s) URL, a header
    not read); 0 for a `dall-e-*` edit, billed by the image made. Only the answer's usage charged them:
    a burst of edits of many large images passed an input limit before the first settled."""
    if _dalle(model):
        return 0
    rule = openai_image_rule(model)
    total = 0
    for name, content in uploaded:
        if name.partition("[")[0] in EDIT_IMAGES:
            size = image_size(content[:HEADER_BYTES])
            total += rule.most() if size is None else rule.tokens(*size)
    given = fields.get("images")
    for image in [*(given if isinstance(given, list) else []), fields.get("mask")]:
        if isinstance(image, dict):
            total += url_image_tokens(image.get("image_url"), rule=rule)
        if total >= MAX_TOKENS:
            return MAX_TOKENS
    return min(MAX_TOKENS, total)


def grader_run_input(counter: TokenCounter, fields: Mapping[str, Any]) -> int:
    """The input a grader run's body (`fields`) has its model graders read (see the module docstring):
    for each model grader in its `grader`, its own text (GRADER_TEXT) and the run's `item` and
    `model_sample` as text, counted by its model's tokenizer; at most MAX_TOKENS. 0 with none."""
    given = {key: fields[key] for key in ("item", "model_sample") if key in fields}
    read: dict[str, int] = {}  # what `item` and `model_sample` cost, by model (counted once each)
    total = 0
    for grader in model_graders(fields.get("grader")):
        model = grader.get("model")
        model = model if isinstance(model, str) else ""
        if model not in read:
            read[model] = _as_text(counter, model, given)
        total += read[model] + _as_text(counter, model, {key: grader[key] for key in GRADER_TEXT if key in grader})
        if total >= MAX_TOKENS:
            return MAX_TOKENS
    return total


def _as_text(counter: TokenCounter, model: str, values: dict[str, Any]) -> int:
    """`values` as a model reads JSON (`item_text`: its strings, keys included, and its scalars; an
    image or a file part by its estimate under `model`'s image rule), in `model`'s tokens."""
    if not values:
        return 0
    texts, counted = item_text(values, images=openai_image_rule(model))
    return counted + counter.count_text("\n".join(texts), model)


def read_once(segments: Sequence[str]) -> bool:
    """Whether an upload to the `/v1` path `segments` must give each of READ_FIELDS once."""
    path = _path(segments)
    return path in IMAGES | TRANSCRIPTS or _is_video(path)


def _is_video(path: tuple[str, ...]) -> bool:
    return path in VIDEO_CALLS or (len(path) == 3 and path[0] == "videos" and path[2] == "remix")


def video_seconds(value: Any) -> int | None:
    """A video's `seconds` (a JSON integer, or digits: an upload's text, the SDK's `"8"`), None when
    not given; InvalidRequest (400) for anything else, or past MAX_VIDEO_SECONDS."""
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip()[:6])
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VIDEO_SECONDS:
        raise InvalidRequest(f"`seconds` must be a whole number of seconds from 1 to {MAX_VIDEO_SECONDS}",
                             details={"param": "seconds"})
    return value


def video_tokens(model: str | None, size: str | None, seconds: int) -> int:
    """What `seconds` of video of `model` at `size` (`WxH`) cost, in tokens (VIDEO_TOKENS_PER_SECOND):
    a model not in it (a dated `sora-2-2025-10-06` is `sora-2`'s) or none is the dearest, and a size
    not `WxH` or none the larger."""
    name = (model or "").rsplit("/", 1)[-1].strip().lower()
    rates = max(VIDEO_TOKENS_PER_SECOND.values())
    for known in sorted(VIDEO_TOKENS_PER_SECOND, key=len, reverse=True):  # (`sora-2-pro` before `sora-2`)
        if re.fullmatch(re.escape(known) + r"(-[0-9]{4}-[0-9]{2}-[0-9]{2})?", name):
            rates = VIDEO_TOKENS_PER_SECOND[known]
            break
    found = _SIZE.fullmatch(size.strip()) if isinstance(size, str) else None
    small = found is not None and int(found[1]) * int(found[2]) <= VIDEO_SMALL_AREA
    return min(MAX_TOKENS, rates[0 if small else 1] * seconds)


def _video_or(
    asked: tuple[str | None, str | None, int | None], shown: Any, *, creation: bool,
) -> tuple[str | None, str | None, int]:
    """A video's (model, size, seconds): what the request `asked`, else what its answer (the video
    job: `shown`) shows, else a creation's defaults (VIDEO_CREATION) or — its source's, not known —
    the dearest (None: `video_tokens`), VIDEO_UNKNOWN_SECONDS long."""
    answer = shown if isinstance(shown, dict) else {}
    model, size, seconds = asked
    if model is None and isinstance(answer.get("model"), str):
        model = answer["model"]
    if size is None and isinstance(answer.get("size"), str):
        size = answer["size"]
    if seconds is None:
        try:
            seconds = video_seconds(answer.get("seconds"))
        except InvalidRequest:  # (an answer's length not read: as reserved)
            seconds = None
    default_model, default_size, default_seconds = VIDEO_CREATION if creation else (None, None, VIDEO_UNKNOWN_SECONDS)
    return model or default_model, size or default_size, seconds or default_seconds


def video_made(call: MediaCall, answer: Any) -> tuple[str, str, int] | None:
    """The (model, size, seconds) of the video a video call's answer (the job) made — what it asked,
    else what the answer shows —, None when the model or the size is known by neither."""
    model, size, seconds = _video_or(call.video, answer, creation=False)
    return (model, size, seconds) if call.kind == "video" and model and size else None


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


def speech_speed(value: Any) -> int | float | None:
    """A speech call's `speed` (a JSON number from MIN_SPEED to MAX_SPEED), None when not given;
    InvalidRequest (400) for anything else — a string, a boolean, 0, 10: read as no speed it reserved
    speech at speed 1, up to 4 times less than a lenient provider taking `"0.25"` (or clamping 0.1)
    would bill. (Compared, never converted: an integer of 400 digits too.)"""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not MIN_SPEED <= value <= MAX_SPEED:
        raise InvalidRequest(f"`speed` must be a number from {MIN_SPEED} to {MAX_SPEED}", details={"param": "speed"})
    return value


def _dalle(model: str) -> bool:
    """Whether `model` (`openai/dall-e-3` too) is a `dall-e-*` model: billed per image made, no tokens."""
    return model.rsplit("/", 1)[-1].lower().startswith("dall-e")


def image_tokens(model: str, size: Any, quality: Any) -> int:
    """What one image of `size` (`WxH`) and `quality` costs: gpt-image-1's tokens for its shape and
    quality (GPT_IMAGE_TOKENS). A `dall-e-*` image is `standard` (medium) and 1024 x 1024 unless it
    says otherwise; any other quality (`auto`, none) is high, and a size that is no `WxH` (`auto`,
    none) the dearest shape, a portrait. A size larger than any OpenAI model makes (LARGEST_IMAGE_AREA:
    `4096x4096`, which a lenient server may make) is as many images of its shape as its area covers:
    charged as one 1024 x 1024 image, it was a sixteenth of what such a server made."""
    dalle = _dalle(model)
    default = "medium" if dalle else "high"
    figures = GPT_IMAGE_TOKENS[_QUALITIES.get(_word(quality), default)]
    found = _SIZE.fullmatch(size.strip()) if isinstance(size, str) else None
    if found is None:
        return figures[0] if dalle and size is None else max(figures)
    width, height = int(found[1]), int(found[2])
    figure = figures[0] if width == height else figures[1] if height > width else figures[2]
    if width * height > LARGEST_IMAGE_AREA:  # no OpenAI model's size: as many of its shape's images as it covers
        figure = min(MAX_TOKENS, -(-figure * width * height // (IMAGE_AREA if width == height else WIDE_IMAGE_AREA)))
    return figure


def image_tool_output(payload: Mapping[str, Any]) -> int:
    """The image output a Responses request's `image_generation` tool may draw in its turn, reserved
    at admission (`Admission.tool_output`) and settled to the answer's `tool_usage`: per call the
    tool's image at its `size` and `quality` (`image_tokens`, by GPT Image's table: the tool runs no
    other) and PARTIAL_IMAGE_TOKENS for each of its `partial_images`, times the calls a turn may make
    — `max_tool_calls` when given (OpenAI's bound on a turn's built-in tool calls), else one (the
    model may call it again: settled to what it did); none when `tool_choice` is `none`. Reserved
    nothing, a burst of such requests passed an output limit before the first settled."""
    tools = payload.get("tools")
    drawn = [tool for tool in tools if isinstance(tool, dict) and tool.get("type") == "image_generation"] \
        if isinstance(tools, list) else []
    if not drawn or payload.get("tool_choice") == "none":
        return 0
    calls = payload.get("max_tool_calls")
    calls = calls if isinstance(calls, int) and not isinstance(calls, bool) and calls >= 0 else 1
    per_call = max(image_tokens("gpt-image-1", tool.get("size"), tool.get("quality"))
                   + PARTIAL_IMAGE_TOKENS * _partial_images(tool.get("partial_images")) for tool in drawn)
    return min(MAX_TOKENS, calls * per_call)


def _partial_images(value: Any) -> int:
    """An `image_generation` tool's `partial_images` (0 to MAX_PARTIAL_IMAGES; anything else none)."""
    return min(value, MAX_PARTIAL_IMAGES) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def media_charge(call: MediaCall, answer: Any, raw: bytes) -> tuple[int, int | None, str]:
    """What a media call whose answer (`answer` parsed as JSON, None when it is not; `raw` its bytes)
    shows no usage is charged beside the input it reserved: (input tokens more, the output tokens —
    None to count the text —, the text to count as output)."""
    if call.kind == "images":
        data = answer.get("data") if isinstance(answer, dict) else None
        return 0, call.per_image * (len(data) if isinstance(data, list) else 0), ""
    if call.kind == "transcript" and call.as_json and isinstance(answer, dict):  # its `duration`, else its text
        duration, said = answer.get("duration"), answer.get("text")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and 0 < duration < math.inf:
            return min(MAX_TOKENS, math.ceil(duration * AUDIO_TOKENS_PER_SECOND)), 0, ""
        return 0, None, said if isinstance(said, str) else ""
    if call.kind == "transcript":  # asked for as text, or answered so (a format the provider read otherwise)
        text = raw.decode("utf-8", "replace")
        seconds = transcript_seconds(text) if call.cues else 0.0  # (plain text: the speaker's words)
        if seconds:
            return min(MAX_TOKENS, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)), 0, ""
        return 0, None, text
    if call.kind == "video":  # what it asked, and what the job shows for what it did not
        return 0, video_tokens(*_video_or(call.video, answer, creation=False)), ""
    return 0, call.output_tokens, ""  # speech, a search's rewrite, a grader run (its input): as reserved


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


def image_count(value: Any) -> int:
    """An image call's `n` (a JSON integer, or digits: an upload's text, the SDK's `"2"`), 1 when not
    given; InvalidRequest (400) for anything else — a float, a boolean, a string of no digits, 0: read
    as no count it reserved one image, while a provider taking `10.0` for ten made ten — and past
    MAX_IMAGES, which OpenAI refuses: reserved as ten, a server making them all passed an output
    limit by the rest (charged after, each call of a burst admitted for ten)."""
    if value is None:
        return 1
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip()[:6])
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_IMAGES:
        raise InvalidRequest(f"`n` must be a whole number of images from 1 to {MAX_IMAGES}", details={"param": "n"})
    return value
