"""Audio in OpenAI-format content parts (`input_audio`), as the admission estimate reads it.

A chat message's `{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"|"mp3"}}`
and a Responses message's part of the same shape are billed by their length: OpenAI documents user
audio at 1 token per 100 ms (AUDIO_TOKENS_PER_SECOND; its Realtime cost guide, the same gpt-4o
audio models chat and Responses serve). Estimated at nothing, an hour of audio passed an input limit
of a few thousand tokens, a stream cut before its usage was charged nothing for it, and a burst of
them all passed admission. The length comes from the bytes, never from the client's word:

- a WAV (`format: "wav"`) of uncompressed samples (PCM or float, `WAVE_FORMAT_EXTENSIBLE` too) is
  exact: every byte after its `data` chunk's header (trailing chunks counted as samples: more,
  never less) over its sample rate times its frame size (the smaller of the one it states and its
  channels times its sample bytes: the longer of the two readings);
- an MP3 (`format: "mp3"`) is bounded from its size by MPEG audio's lowest bitrate, 8 kbit/s
  (MPEG-2.5 layer III): no frame holds less than 1,000 bytes a second, so no MP3 lasts longer than
  its bytes / 1,000 seconds (a 128 kbit/s file is reserved 16 times what it is billed; its usage is
  what is charged);
- anything else — another format, a WAV whose header does not read, is compressed or names
  implausible figures — is bounded at 4 kbit/s (ANY_MIN_BYTES_PER_SECOND), below any speech codec a
  provider decodes (Opus's 6 kbit/s, AMR's 4.75).

Models of other vendors behind an OpenAI-compatible provider may bill audio at a higher rate
(Gemini documents 32 tokens a second): README's "What next" says so.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from sentinel.quota.images import base64_data_start, base64_head

AUDIO_TOKENS_PER_SECOND = 10  # OpenAI: "audio tokens in user messages are 1 token per 100 ms of audio"
MP3_MIN_BYTES_PER_SECOND = 1000  # 8 kbit/s: MPEG-2.5 layer III's lowest bitrate
ANY_MIN_BYTES_PER_SECOND = 500  # 4 kbit/s: below every speech codec a provider decodes
# WAV format tags whose data is samples as they are: PCM, IEEE float, WAVE_FORMAT_EXTENSIBLE.
_PLAIN_WAV = frozenset({0x0001, 0x0003, 0xFFFE})
# Figures past these are no recording a provider takes: such a header is read as unknown audio.
_MAX_RATE = 384_000
_MAX_CHANNELS = 8
_MAX_SAMPLE_BITS = 64


def audio_part_tokens(part: Mapping[str, Any]) -> int:
    """The estimate for an `input_audio` content part (see the module docstring); 0 when it holds
    no data."""
    audio = part.get("input_audio")
    if not isinstance(audio, Mapping):
        return 0
    data = audio.get("data")
    if not isinstance(data, str) or not data:
        return 0
    start = base64_data_start(data)
    if start is None:
        return 0
    # base64's bytes (exact; anything else in it, whitespace, counted as data: more, never less)
    padding = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    size = max(0, len(data) - start - padding) * 3 // 4
    kind = audio.get("format")
    if kind == "wav":
        seconds_bytes = _wav_frames(base64_head(data, start), size)
        if seconds_bytes is not None:
            return _tokens(*seconds_bytes)
    return _tokens(size, MP3_MIN_BYTES_PER_SECOND if kind == "mp3" else ANY_MIN_BYTES_PER_SECOND)


def _tokens(size: int, bytes_per_second: int) -> int:
    """Tokens of `size` bytes of audio played at `bytes_per_second`, rounded up."""
    return -(-size * AUDIO_TOKENS_PER_SECOND // bytes_per_second)


def _wav_frames(head: bytes, size: int) -> tuple[int, int] | None:
    """(its samples' bytes, their bytes a second) of a WAV of `size` bytes whose first bytes are
    `head`, or None when `head` is no RIFF WAV of plain samples with its `fmt ` and `data` chunks."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at = 12
    rate = frame = 0
    while at + 8 <= len(head):
        chunk, length = head[at : at + 4], struct.unpack_from("<I", head, at + 4)[0]
        if chunk == b"fmt ":
            if length < 16 or at + 24 > len(head):
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", head, at + 8)
            if (tag not in _PLAIN_WAV or not 0 < channels <= _MAX_CHANNELS or not 0 < rate <= _MAX_RATE
                    or not 0 < bits <= _MAX_SAMPLE_BITS):
                return None
            frame = channels * -(-bits // 8)
            frame = min(frame, align) if align > 0 else frame
        elif chunk == b"data":
            return (max(0, size - at - 8), rate * frame) if rate and frame else None
        at += 8 + length + (length & 1)
    return None
