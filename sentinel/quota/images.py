"""Image sizes read from the first bytes of PNG, GIF, WebP and JPEG files, and Anthropic's image token rule.

Anthropic bills an image as about `width * height / 750` tokens after scaling it down so that its long
edge is at most 1568 px (so no image costs more than about 1600 tokens). Only the header is read; an
image whose size cannot be read (a URL source, an unknown format) is estimated at the maximum.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

MAX_EDGE = 1568
MAX_IMAGE_TOKENS = 1600
PIXELS_PER_TOKEN = 750
HEADER_BYTES = 64 * 1024  # a JPEG's size marker may follow embedded metadata


def image_tokens(width: int, height: int) -> int:
    """Anthropic's estimate for an image of `width` x `height` pixels."""
    if width <= 0 or height <= 0:
        return MAX_IMAGE_TOKENS
    scale = min(1.0, MAX_EDGE / max(width, height))
    return min(MAX_IMAGE_TOKENS, max(1, math.ceil(width * scale * height * scale / PIXELS_PER_TOKEN)))


def base64_image_tokens(data: str) -> int:
    """The estimate for a base64-encoded image (the maximum when its size cannot be read)."""
    head = data[: HEADER_BYTES * 4 // 3 // 4 * 4]
    try:
        raw = base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        return MAX_IMAGE_TOKENS
    size = image_size(raw)
    return MAX_IMAGE_TOKENS if size is None else image_tokens(*size)


def image_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's first bytes, or None."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return width, height
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        width, height = struct.unpack("<HH", raw[6:10])
        return width, height
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return _webp(raw)
    if raw[:2] == b"\xff\xd8":
        return _jpeg(raw)
    return None


def _webp(raw: bytes) -> tuple[int, int] | None:
    kind = raw[12:16]
    if kind == b"VP8 " and len(raw) >= 30:
        width, height = struct.unpack("<HH", raw[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(raw) >= 25:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(raw) >= 30:
        return int.from_bytes(raw[24:27], "little") + 1, int.from_bytes(raw[27:30], "little") + 1
    return None


def _jpeg(raw: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            at += 2
            continue
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", raw[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None
