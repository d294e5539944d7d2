"""Image sizes read from the first bytes of PNG, GIF, WebP and JPEG files, and the image token rules
of Anthropic and OpenAI: one home for what an image costs before the provider says.

Anthropic bills an image as about `width * height / 750` tokens after scaling it down so that its long
edge is at most 1568 px (so no image costs more than about 1600 tokens).

OpenAI's tile rule, with gpt-4o's figures (gpt-4.1's and 4.5's too), bills `detail: "low"` as 85
tokens; any other detail (`high`, `auto`, none) scales the image to fit within 2048 x 2048, then
down so that its shortest side is at most 768, and bills 85 + 170 per 512-px tile: at most 8 tiles
(768 x 2048), 1445 tokens. Other OpenAI models bill images by other figures or by 32-px patches
(`OpenAIImageRule`, per model: gpt-4o-mini's images cost over 30 times gpt-4o's tokens).

Only the header is read; an image whose size cannot be read (a URL, a file id, an unknown format) is
estimated at the rule's maximum (for OpenAI, its detail's).

A request is estimated by the rule of every model that may serve it (`image_rule_for`: an alias's
targets, a tier's candidates), each by its wire format (`ANTHROPIC` for an Anthropic-format target,
whatever the `detail`: a translation drops it; `openai_image_rule` for an OpenAI-format one): each
image at the dearest of their figures (`DearestRule`), so whichever serves it is not billed more
than was reserved, and a stream cut before its usage is not charged less.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from sentinel.native.types import image_data_url_head

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


class ImageRule(Protocol):
    """What a model (or any of several) bills an image sent with `detail` (OpenAI's; None when the
    request gives none)."""

    def tokens(self, width: int, height: int, detail: Any = None) -> int:
        """An image of `width` x `height` pixels (a side of 0 or less: of unknown size, `most`)."""
        ...

    def most(self, detail: Any = None) -> int:
        """The most an image can cost: what one whose size cannot be read is estimated at."""
        ...

    def flat(self, detail: Any = None) -> int | None:
        """What every image sent with `detail` costs whatever its size (its header then goes unread), or None."""
        ...


@dataclass(frozen=True)
class AnthropicImageRule:
    """Anthropic's pixel rule (`image_tokens`): it has no `detail`, and a request translated to it
    loses its own, so a low-detail image costs what any other does."""

    def tokens(self, width: int, height: int, detail: Any = None) -> int:
        return image_tokens(width, height)

    def most(self, detail: Any = None) -> int:
        return MAX_IMAGE_TOKENS

    def flat(self, detail: Any = None) -> int | None:
        return None


ANTHROPIC = AnthropicImageRule()


def base64_image_tokens(data: str, rule: ImageRule = ANTHROPIC) -> int:
    """The estimate for a base64-encoded image sent with no detail (by default Anthropic's; the
    rule's maximum when its size cannot be read)."""
    size = image_size(base64_head(data))
    return rule.most() if size is None else rule.tokens(*size)


# OpenAI's tile rule (see the module docstring), with gpt-4o's figures: the default rule.
OPENAI_BASE_TOKENS = 85  # an image's own cost, and all a low-detail image costs
OPENAI_TILE_TOKENS = 170
OPENAI_TILE = 512
OPENAI_FIT = 2048
OPENAI_SHORT_SIDE = 768
OPENAI_MAX_TILES = 8  # 768 x 2048: 2 x 4 tiles
OPENAI_MAX_IMAGE_TOKENS = OPENAI_BASE_TOKENS + OPENAI_TILE_TOKENS * OPENAI_MAX_TILES  # 1445
# The patch rule: 32-px patches, at most this many (the image scaled down to fit), times a multiplier.
OPENAI_PATCH = 32
OPENAI_MAX_PATCHES = 1536


@dataclass(frozen=True)
class OpenAIImageRule:
    """How an OpenAI model bills an image: the tile rule with its figures (`base`, `tile`: gpt-4o's
    85 and 170; gpt-4o-mini's 2833 and 5667, its images priced as gpt-4o's at a twentieth of the
    token price) or, with a `multiplier`, the patch rule (gpt-4.1-mini and -nano, gpt-5-mini and
    -nano, o4-mini): 32-px patches up to 1536, times the multiplier, whatever the detail."""

    base: int = OPENAI_BASE_TOKENS
    tile: int = OPENAI_TILE_TOKENS
    multiplier: float = 0.0

    def tokens(self, width: int, height: int, detail: Any = None) -> int:
        """An image of `width` x `height` pixels sent with `detail`: under the tile rule any detail
        but "low" is the tiles' (`auto` lets the provider choose, and the tiles are the dearer)."""
        if detail == "low" and not self.multiplier:
            return self.base
        if width <= 0 or height <= 0:
            return self.most(detail)
        if self.multiplier:
            patches = math.ceil(width / OPENAI_PATCH) * math.ceil(height / OPENAI_PATCH)
            return math.ceil(min(patches, OPENAI_MAX_PATCHES) * self.multiplier)
        # Exact fractions: a float scale can land a side a hair above a tile boundary (one tile more).
        w, h = Fraction(width), Fraction(height)
        fit = min(Fraction(1), Fraction(OPENAI_FIT) / max(w, h))
        w, h = w * fit, h * fit
        short = min(Fraction(1), Fraction(OPENAI_SHORT_SIDE) / min(w, h))
        w, h = w * short, h * short
        tiles = math.ceil(w / OPENAI_TILE) * math.ceil(h / OPENAI_TILE)
        return self.base + self.tile * tiles  # at most OPENAI_MAX_TILES

    def most(self, detail: Any = None) -> int:
        """The most an image sent with `detail` can cost (what one whose size is unknown is estimated at)."""
        if self.multiplier:
            return math.ceil(OPENAI_MAX_PATCHES * self.multiplier)
        return self.base if detail == "low" else self.base + self.tile * OPENAI_MAX_TILES

    def flat(self, detail: Any = None) -> int | None:
        """Under the tile rule a low-detail image costs its base alone, whatever it holds."""
        return self.base if detail == "low" and not self.multiplier else None


TILES = OpenAIImageRule()
# OpenAI's published figures per model family (its vision guide), the first prefix that matches
# winning: more specific names first. Any other model (gpt-4o, gpt-4.1, gpt-4.5, a model of another
# provider behind an OpenAI-compatible URL) gets gpt-4o's tile rule.
_RULES = (
    ("gpt-4o-mini", OpenAIImageRule(2833, 5667)),
    ("gpt-4.1-mini", OpenAIImageRule(multiplier=1.62)),
    ("gpt-4.1-nano", OpenAIImageRule(multiplier=2.46)),
    ("gpt-5-mini", OpenAIImageRule(multiplier=1.62)),
    ("gpt-5-nano", OpenAIImageRule(multiplier=2.46)),
    ("o4-mini", OpenAIImageRule(multiplier=1.72)),
    ("gpt-5", OpenAIImageRule(70, 140)),
    ("o1", OpenAIImageRule(75, 150)),
    ("o3", OpenAIImageRule(75, 150)),
    ("computer-use-preview", OpenAIImageRule(65, 129)),
)


@functools.lru_cache(maxsize=256)
def openai_image_rule(model: str | None) -> OpenAIImageRule:
    """The image rule of `model` (a name as the catalogue or the client gives it, a vendor prefix
    such as `openai/` ignored); gpt-4o's tiles when it is unknown or None."""
    if not model:
        return TILES
    name = model.rsplit("/", 1)[-1].lower()
    return next((rule for prefix, rule in _RULES if name.startswith(prefix)), TILES)


def openai_image_tokens(width: int, height: int, detail: Any = None, model: str | None = None) -> int:
    """OpenAI's estimate for an image of `width` x `height` pixels sent with `detail` to `model`."""
    return openai_image_rule(model).tokens(width, height, detail)


def url_image_tokens(url: Any, detail: Any = None, rule: ImageRule = TILES) -> int:
    """The estimate under `rule` for an image given as `url` (an OpenAI-format part's): an image's data
    URL's header is read (`data:image/<type>;base64,`: the one rule, `native.types.image_data_url_head`);
    any other reference (an http(s) URL, a missing one, a data URL of another form) is estimated at the
    most its detail can cost. An image whose cost its size does not change (`ImageRule.flat`: a
    tile-rule image sent with low detail) is not read."""
    flat = rule.flat(detail)
    if flat is not None:
        return flat
    head = image_data_url_head(url) if isinstance(url, str) else None
    size = None if head is None else image_size(base64_head(url, head[1]))
    return rule.most(detail) if size is None else rule.tokens(*size, detail)


@dataclass(frozen=True)
class DearestRule:
    """Several models' rules at once (the models that may serve a request): each image at the most
    any of them bills it."""

    rules: tuple[ImageRule, ...]

    def tokens(self, width: int, height: int, detail: Any = None) -> int:
        return max(rule.tokens(width, height, detail) for rule in self.rules)

    def most(self, detail: Any = None) -> int:
        return max(rule.most(detail) for rule in self.rules)

    def flat(self, detail: Any = None) -> int | None:
        figures = [rule.flat(detail) for rule in self.rules]
        return None if None in figures else max(f for f in figures if f is not None)


def image_rule_for(targets: Iterable[tuple[str, str]]) -> ImageRule:
    """The image rule of a request that any of `targets` may serve, each a (wire format, model the
    provider is sent): Anthropic's for an "anthropic" one, the model's `openai_image_rule` for any
    other; several at once by `DearestRule` (made once per set of rules)."""
    rules = frozenset(ANTHROPIC if kind == "anthropic" else openai_image_rule(model) for kind, model in targets)
    if len(rules) == 1:
        return next(iter(rules))
    return _dearest(rules) if rules else TILES


@functools.lru_cache(maxsize=256)
def _dearest(rules: frozenset[ImageRule]) -> DearestRule:
    # Sorted: the same set of rules always compares in the same order (`repr` of frozen dataclasses).
    return DearestRule(tuple(sorted(rules, key=repr)))


DATA_URL_HEAD_CHARS = 256  # `data:<media type>[;parameters];base64,`: a media type is short


def is_data_url(url: str) -> bool:
    """Whether `url` is a `data:` URL: its scheme in any case (`Data:`, `DATA:`), as URL schemes are
    read — and as the request checks and translations read it (a PDF as `Data:application/pdf;...`
    was estimated at nothing)."""
    return url[:5].lower() == "data:"


def data_url_start(url: str) -> int | None:
    """Where the base64 data of a `data:...;base64,<data>` URL starts, or None for any other string
    (read from its first characters only: the URL may be megabytes long)."""
    if not is_data_url(url):
        return None
    comma = url.find(",", 0, DATA_URL_HEAD_CHARS)
    if comma < 0 or not url[:comma].lower().endswith(";base64"):
        return None
    return comma + 1


def base64_data_start(data: str) -> int | None:
    """Where the base64 of `data` — bare base64, or a `data:...;base64,` URL — starts: 0, or after
    the URL's comma; None for a data URL that is not base64 (no file a provider reads)."""
    start = data_url_start(data)
    if start is None:
        return None if is_data_url(data) else 0
    return start


def base64_head(data: str, start: int = 0) -> bytes:
    """The first HEADER_BYTES (or fewer) of the base64 data at `data[start:]`, decoded; b"" when they
    do not decode (only the header is sliced out: the data may be megabytes long)."""
    head = data[start : start + min(HEADER_BYTES * 4 // 3, len(data) - start) // 4 * 4]  # whole 4-char groups
    try:
        return base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's first bytes, or None."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return width, height
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 13:
        return _gif(raw)
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


# Data sub-blocks (extensions: comments, XMP, a loop count) read before a GIF's first frame: a real
# file's first frame follows a few (XMP in 255-byte blocks: some dozens).
GIF_MAX_SUB_BLOCKS = 512


def _gif(raw: bytes) -> tuple[int, int] | None:
    """A GIF's size: its logical screen, grown to hold its first frame (its image descriptor's
    offset and size) as Pillow reads it (`GifImagePlugin` expands the image to a frame past the
    screen; libvips takes the largest frame). The screen alone was the size read: a 1 x 1 screen
    around a 2048 x 2048 frame was estimated as 1 x 1. None when the first frame is not found in
    `raw` within GIF_MAX_SUB_BLOCKS (a size not read: estimated at the most)."""
    width, height, flags = struct.unpack_from("<HHB", raw, 6)
    at = 13 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0)  # past the global color table
    blocks = 0
    while at < len(raw) and raw[at] == 0x21:  # an extension: its label, then data sub-blocks up to an empty one
        at += 2
        while at < len(raw) and raw[at]:
            blocks += 1
            if blocks > GIF_MAX_SUB_BLOCKS:
                return None
            at += 1 + raw[at]
        at += 1
    if at + 9 > len(raw) or raw[at] != 0x2C:  # no image descriptor where the first frame begins
        return None
    left, top, frame_width, frame_height = struct.unpack_from("<HHHH", raw, at + 1)
    return max(width, left + frame_width), max(height, top + frame_height)


# The markers (fill bytes included) read before a JPEG's size: a real file's frame header follows
# a handful of segments (APPn metadata, quantization and Huffman tables). Read one by one, 64 KiB of
# fill bytes or length-less markers cost ~7 ms an image (~1 s of a 10 MiB body's estimate).
JPEG_MAX_MARKERS = 64


def _jpeg(raw: bytes) -> tuple[int, int] | None:
    """A JPEG's size from its frame header (SOFn), if one of its first JPEG_MAX_MARKERS markers."""
    at = 2
    for _ in range(JPEG_MAX_MARKERS):
        if at + 9 >= len(raw):
            return None
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
