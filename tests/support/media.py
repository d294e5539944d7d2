"""Images and PDFs built in code for the estimate's tests: real file structure, no fixtures on disk."""

from __future__ import annotations

import base64
import struct
import zlib
from functools import cache


def png(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR chunk (all a size reader sees)."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def jpeg(width: int, height: int) -> bytes:
    """A JPEG's start, a JFIF APP0 segment and a baseline SOF0 frame header (its size), then its end."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes(3)
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def gif(width: int, height: int, frame: tuple[int, int, int, int] | None = None, *, extensions: bytes = b"",
        palette: bool = True) -> bytes:
    """A GIF's header, logical screen of `width` x `height` (with a 2-color global color table when
    `palette`), `extensions` (whole extension blocks), then its first frame's image descriptor —
    `frame` (left, top, width, height), by default the whole screen — and a trailer."""
    left, top, frame_width, frame_height = frame or (0, 0, width, height)
    screen = struct.pack("<HHBBB", width, height, 0x80 if palette else 0, 0, 0) + (bytes(6) if palette else b"")
    descriptor = b"\x2c" + struct.pack("<HHHHB", left, top, frame_width, frame_height, 0)
    return b"GIF89a" + screen + extensions + descriptor + b"\x02\x02\x44\x01\x00\x3b"


def gif_comment(text: bytes, block: int = 255) -> bytes:
    """A GIF comment extension holding `text` in data sub-blocks of `block` bytes."""
    pieces = [text[i : i + block] for i in range(0, len(text), block)]
    return b"\x21\xfe" + b"".join(bytes([len(piece)]) + piece for piece in pieces) + b"\x00"


@cache
def whole_png(width: int, height: int) -> bytes:
    """A complete, decodable PNG: `width` x `height` black RGB pixels (IHDR, IDAT, IEND)."""
    rows = (b"\x00" + bytes(3 * width)) * height  # filter byte 0, then the row
    return png(width, height) + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b"")


def data_url(raw: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(raw).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pdf(pages: int, *, compressed: bool = False) -> bytes:
    """A PDF of `pages` empty letter pages. `compressed`: the page objects live in a Flate-compressed
    object stream (PDF 1.5), as most current writers put them. (Its cross-reference is a plain table
    of the objects written out, where a reader of a compressed one wants a cross-reference stream:
    the estimate reads neither.)"""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"
    objects = [(1, b"<< /Type /Catalog /Pages 2 0 R >>"),
               (2, f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())]
    if compressed:
        index = " ".join(f"{3 + i} {i * (len(page) + 1)}" for i in range(pages)).encode() + b"\n"
        data = zlib.compress(index + b"".join(page + b"\n" for _ in range(pages)))
        objects.append((3 + pages, b"<< /Type /ObjStm /N %d /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
                        % (pages, len(index), len(data)) + data + b"\nendstream"))
    else:
        objects += [(3 + i, page) for i in range(pages)]
    out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, obj in objects:
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def wav(seconds: float, rate: int = 24_000, channels: int = 1, bits: int = 16, *, tag: int = 1,
        align: int | None = None, before_data: bytes = b"") -> bytes:
    """A RIFF WAV of `seconds` of silence: its `fmt ` chunk (format `tag`, `align` as stated, else
    channels times sample bytes), any chunks `before_data`, then its `data` chunk."""
    frame = channels * -(-bits // 8)
    samples = bytes(round(seconds * rate) * frame)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * frame, frame if align is None else align, bits)
    body = b"WAVE" + _riff_chunk(b"fmt ", fmt) + before_data + _riff_chunk(b"data", samples)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) & 1 else b"")
