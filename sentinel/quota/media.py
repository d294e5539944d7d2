"""Images and files (PDFs) in OpenAI-format content parts, as the admission estimate reads them.

The text of a request is not all it is billed for: an image or a PDF page costs the same whether or
not the answer's usage comes back, and a stream cut before its usage is charged the estimate. So every
OpenAI-format estimate (chat, Responses, the native API) adds, per part:

- an image (a chat `image_url` part, its `image_url` an object `{"url", "detail"}` or the URL itself;
  a Responses `input_image`, by `image_url` or `file_id`, with its `detail`; a `computer_screenshot`):
  the image rule of the models that may serve the request (`sentinel.quota.images.ImageRule`; by
  default OpenAI's tile rule with gpt-4o's figures) on the size read from a `data:` URL's header; an
  image whose size cannot be read (an http(s) URL, a `file_id`, an unknown format) at its detail's
  maximum (gpt-4o's: high or auto 1445, low 85);
- a PDF sent as data (a chat `file` part's `file.file_data`, a Responses `input_file`'s `file_data`;
  a `data:application/pdf;base64,` URL or bare base64): OpenAI puts "both the extracted text and an
  image of each page" into the model's context, so each page is estimated as the image of a
  portrait US-letter page under the same rule (gpt-4o: 2 x 2 tiles at any resolution,
  PDF_PAGE_TOKENS); the page's
  text is not counted (it lies in the PDF's compressed content streams), so this is a floor under
  that reading of the docs. Pages are the page objects (`/Type /Page`, not `/Pages`) in the file and
  in its compressed object streams (inflated up to a bound, see `pdf_pages`); a PDF in which none is
  found counts as one page.

- a file sent as data that is not a PDF: an image (by its header) under the image rule; text (its
  bytes UTF-8) counted as the text the provider extracts, by the request's tokenizer when the caller
  passes one (`count`), else a token per 4 bytes; any other file (an Office document, compressed:
  its text may be many times its size) as a file Sentinel cannot read, below, or a token per 4
  bytes when that is more;
- a file by `file_id` as what it holds (`upload_facts`, read at its upload through Sentinel —
  `POST /v1/files` —, or else from the provider at its first use: `sentinel.services.file_facts`;
  kept beside its owner: `sentinel.domain.files.FileFacts`), by the request's rule as its data
  would be (`facts_tokens`): a PDF's pages, an image's size, a text file's tokens — counted by
  every tokenizer Sentinel has, the most kept (its model was not known then); an image by
  `file_id` (`input_image`) by its size too;
- a file Sentinel cannot read — by `file_url`, by an id without facts (its content could not be
  read from the provider, or facts not found in a store outage) or whose facts say so
  (`FileFacts.unread`: another kind of file, one larger than Sentinel reads) — as a PDF of
  UNREAD_FILE_PAGES pages (`unread_file_tokens`): the most pages OpenAI and Anthropic read from one
  request's files, so reserved once per request however many such files it names (`RequestFiles`,
  `unread_bound`). Estimated at nothing, such a file was free in a stream cut before its usage, and
  a burst of them passed an input limit before the first settled (one 100-page PDF by URL: ~80,000
  tokens billed, 0 reserved). It is a bound for a PDF's page images, not for a text file's text.

- audio (`input_audio`) by its length: `sentinel.quota.audio` (a WAV's exact, an MP3's bounded by
  its size).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from sentinel.domain.files import FileFacts
from sentinel.offload import spend
from sentinel.quota.audio import audio_part_tokens
from sentinel.quota.images import (
    HEADER_BYTES,
    TILES,
    ImageRule,
    base64_data_start,
    base64_head,
    image_size,
    openai_image_tokens,
    url_image_tokens,
)

# Content parts with an estimate of their own (`part_tokens`); a part of another type costs nothing here.
MEDIA_KINDS = frozenset({"image_url", "input_image", "computer_screenshot", "file", "input_file", "input_audio"})

PDF_PAGE_TOKENS = openai_image_tokens(612, 792)  # a letter page (points): 2 x 2 tiles, 765 tokens (gpt-4o)
PDF_PAGE = (612, 792)  # a portrait US-letter page, in points: how each page is estimated (the request's rule)
PDF_MAGIC_WITHIN = 1024  # a PDF's `%PDF-` may follow some bytes of junk (PDF 32000-1, annex H)
# A file Sentinel cannot read is reserved as a PDF of this many pages: OpenAI reads at most 100 pages
# across a request's files, Anthropic 100 pages of a request's PDFs.
UNREAD_FILE_PAGES = 100
BYTES_PER_TOKEN = 4  # a file's text Sentinel does not tokenize: a token per 4 bytes
TextCount = Callable[[str], int]
Files = Mapping[str, FileFacts]  # what was read of the files a request names, by id (`upload_facts`)
NO_FILES: Files = {}


class RequestFiles(dict[str, FileFacts]):
    """`Files` for one estimate of one request, which also notes whether a file Sentinel cannot read
    by id or URL was reserved for (`unread`): the bound is the most a request's files may hold
    together, so it is reserved once per request, not once per such file (`unread_bound`)."""

    unread = False

# PDF names end at white space or a delimiter: `/Type /Page` and `/Type/Page>>`, never `/Type /Pages`
# (nor `/Type /Page#73`, the same name escaped).
_NAME_END = rb"(?![^\x00\t\n\x0c\r ()<>\[\]{}/%])"


def _name(word: str) -> bytes:
    """The pattern of the PDF name `/word` as a reader reads it: each character as itself or as its
    `#xx` escape, in either case (`/P#61ge` is `/Page`); a reader finds pages by the names it
    decodes, so a count of the names as written alone missed every page whose name was escaped."""
    def escaped(char: str) -> str:
        return "#" + "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{ord(char):02x}")

    return ("/" + "".join(f"(?:{re.escape(char)}|{escaped(char)})" for char in word)).encode()


def _gap(*words: str) -> bytes:
    """The pattern of white space and comments between two tokens (a comment is white space to a
    reader), after one of the names `words` (possessive: a run of `%` is read one way only). A
    comment is read up to its line's end or the next of those names, where a search starts anew:
    read to its line's end, a line of 40,000 `/Type%` had each of them search the rest of the line
    (a 240 KB PDF took 18 s, a 10 MB one would take hours). Ended there, what one search covers
    holds no start of another that reads on past it (one the comment holds followed by anything but
    white space or a comment, `/Type(` or `/Typex`, is read through: its own search ends at once), so
    each byte is read about once; a page whose comment holds the name followed by a gap is found by
    the search from the name in it (`/Type %/Type` then `/Page`: one page), and one whose comment
    holds it followed by other tokens (`/Type %/Type x`) by the second reading (`_read`)."""
    # (a name whose own search reads on: followed by white space or a comment, not `/Typex` nor `/Type(`)
    starts = b"(?:" + b"|".join(_name(word) for word in words) + rb")[\x00\t\n\x0c\r %]"
    return rb"(?:[\x00\t\n\x0c\r ]|%(?:[^\r\n/]|(?!" + starts + rb")/)*+)*+"


# The second reading of a name followed by a comment (`_read`; a name with none is the first's
# alone): white space, then whole comments and white space — each comment read to its line's end, as
# a reader skips it whatever names it holds. A comment holding the name before it followed by white
# space (`/Type %/Type x⏎/Page`) ended the first reading's comment (`_gap`), and the name in it read
# ` x` as tokens: the page was hidden. Searched with `finditer`, a match takes the whole comment and
# a name in it starts no search of its own, so each byte is read once.
_READ_GAP = rb"[\x00\t\n\x0c\r ]*+%[^\r\n]*+(?:[\x00\t\n\x0c\r ]|%[^\r\n]*+)*+"


def _read(name: bytes, after: bytes) -> re.Pattern[bytes]:
    """`name`, a comment (white space around it) and `after` in a group — optional: once its
    comment starts, a name is matched whatever follows, so that its comment is not searched again."""
    return re.compile(name + _READ_GAP + b"(" + after + b")?")


_PAGE = re.compile(_name("Type") + _gap("Type") + _name("Page") + _NAME_END)
_PAGE_READ = _read(_name("Type"), _name("Page") + _NAME_END)
# An object stream: its `/Type /ObjStm`, or its `/First` offset (a direct integer; an outline's
# `/First` is a reference, `n 0 R`), which a reader needs and reads without its `/Type`.
_OBJECT_GAP = _gap("Type", "First")
_OBJECT_STREAM = re.compile(_name("Type") + _OBJECT_GAP + _name("ObjStm") + _NAME_END + rb"|"
                            + _name("First") + _OBJECT_GAP + rb"[0-9]++" + _OBJECT_GAP + rb"(?=/|>>)")
# (`/First`'s offset and what follows it are taken whether or not a name or `>>` comes next: given
# back, the comments after it were searched again from each name they hold.)
_OBJECT_STREAM_READ = re.compile(
    _name("Type") + _READ_GAP + b"(" + _name("ObjStm") + _NAME_END + b")?|"
    + _name("First") + _READ_GAP + rb"(?:[0-9]++" + _OBJECT_GAP + rb"((?=/|>>))?)?")
# A page tree node's `/Count` (the pages below it; the root's is the document's): readers take a
# document's pages from it, so a page dictionary without `/Type` (which readers accept) is counted
# by it. Only a `/Count` in a dictionary that has `/Kids` is a node's (an outline's is not).
_COUNT = re.compile(_name("Count") + _gap("Count") + rb"\+?([0-9]+)")
_COUNT_READ = _read(_name("Count"), rb"\+?[0-9]++")
MAX_COUNTED_PAGES = 10**7  # a `/Count` past it (leading zeros aside) is read as this many
_KIDS = re.compile(_name("Kids") + _NAME_END)
_OPEN = re.compile(rb"<<")
_CLOSE = re.compile(rb">>")
_STREAM = re.compile(rb"stream\r?\n")
DICT_BYTES = 4096  # from an object stream's `/Type` to its `stream` keyword: its dictionary
# What a PDF's object streams may inflate to, in all: a page dictionary is ~100 to 300 bytes
# (4 MiB is over 10,000 pages of them), and no more than 32 times the file (object streams compress
# text about 4 to 10 times): a small body cannot buy a long inflation (bodies under 64 KiB are
# counted on the event loop).
PDF_MAX_INFLATED = 4 * 1024 * 1024
PDF_INFLATE_RATIO = 32
# Inflating and searching this many bytes costs about what encoding one character does: a count on
# the event loop (`sentinel.offload.count_off_loop`) goes on in a worker thread before it inflates
# an object stream that may hold more than its characters' worth (a 47 KB file inflated to its
# 1.5 MB budget took ~17 ms).
INFLATED_PER_CHAR = 32


def part_tokens(
    part: Mapping[str, Any], rule: ImageRule = TILES, count: TextCount | None = None, files: Files = NO_FILES,
) -> int:
    """The estimate for one OpenAI-format content part that is an image, a file or audio (a type in
    MEDIA_KINDS; see the module docstring) under `rule` (the image rule of the models that may serve
    the request, `images.image_rule_for`), 0 for any other part. `count` counts a text file's text
    (the request's tokenizer; without it, a token per 4 bytes); `files` are the facts of the files
    the request names by id (those uploaded through Sentinel: `upload_facts`)."""
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, Mapping):
            return url_image_tokens(image.get("url"), image.get("detail"), rule)
        return url_image_tokens(image, part.get("detail"), rule)
    if kind in ("input_image", "computer_screenshot"):
        facts = _facts(part, files) if part.get("image_url") is None else None
        if facts is not None and facts.image is not None and rule.flat(part.get("detail")) is None:
            return rule.tokens(*facts.image, part.get("detail"))
        return url_image_tokens(part.get("image_url"), part.get("detail"), rule)
    if kind == "file":
        file = part.get("file")
        return _file_part(file, rule, count, files) if isinstance(file, Mapping) else 0
    if kind == "input_file":
        return _file_part(part, rule, count, files)
    if kind == "input_audio":
        return audio_part_tokens(part)
    return 0


def _facts(part: Mapping[str, Any], files: Files) -> FileFacts | None:
    """The facts of the file `part` names by `file_id`, when Sentinel has them."""
    file_id = part.get("file_id")
    return files.get(file_id) if isinstance(file_id, str) and files else None


def _file_part(file: Mapping[str, Any], rule: ImageRule, count: TextCount | None, files: Files) -> int:
    """A file part's estimate: its data's (`file_tokens`), or — named by `file_id` or `file_url`, its
    bytes elsewhere — what its upload held (`facts_tokens`: a `file_id` Sentinel read at upload, and
    no `file_url`) or else a file Sentinel cannot read (`unread_file_tokens`), whichever is more."""
    tokens = file_tokens(file.get("file_data"), rule, count)
    if isinstance(file.get("file_url"), str) and file.get("file_url"):
        return max(tokens, unread_bound(rule, files))
    if isinstance(file.get("file_id"), str) and file.get("file_id"):
        facts = _facts(file, files)
        return max(tokens, unread_bound(rule, files) if facts is None or facts.unread else facts_tokens(facts, rule))
    return tokens


def unread_bound(rule: ImageRule, files: Files) -> int:
    """`unread_file_tokens`, but once per request when `files` is its `RequestFiles`: 0 for a second
    file Sentinel cannot read (the provider reads UNREAD_FILE_PAGES pages from all of them together;
    two such files reserved twice the most it can bill). The one rule of every surface: a PDF by
    URL on `/v1/messages` too (`anthropic_usage.estimate_messages`)."""
    if isinstance(files, RequestFiles):
        if files.unread:
            return 0
        files.unread = True
    return unread_file_tokens(rule)


def facts_tokens(facts: FileFacts, rule: ImageRule = TILES) -> int:
    """The estimate for a file uploaded through Sentinel under `rule`, as its data would be
    (`file_tokens`): a PDF's pages times a page's image, an image by its size, a text file's tokens;
    one it read but cannot estimate (`FileFacts.unread`) as one it cannot read (`unread_file_tokens`)."""
    if facts.unread:
        return unread_file_tokens(rule)
    if facts.pages is not None:
        return facts.pages * rule.tokens(*PDF_PAGE)
    if facts.image is not None:
        return rule.tokens(*facts.image)
    return facts.text or 0


def upload_facts(raw: bytes, count: TextCount) -> FileFacts | None:
    """What the estimate needs of a file uploaded with the bytes `raw` (read as `file_tokens` reads
    a file's data): a PDF's pages (`pdf_pages`), an image's size (from its header), UTF-8 text's
    tokens by `count` (at upload, the most of every tokenizer: `TokenCounter.most_tokens`); None for
    any other file (an Office document, compressed), estimated as one Sentinel cannot read."""
    if b"%PDF-" in raw[:PDF_MAGIC_WITHIN]:
        return FileFacts(pages=pdf_pages(raw))
    if (size := image_size(raw[:HEADER_BYTES])) is not None:
        return FileFacts(image=size)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return FileFacts(text=count(text))


def unread_file_tokens(rule: ImageRule = TILES) -> int:
    """The estimate for a file Sentinel cannot read (by id or URL; data neither a PDF, an image nor
    text): a PDF of UNREAD_FILE_PAGES pages under `rule` (76,500 tokens under gpt-4o's)."""
    return UNREAD_FILE_PAGES * rule.tokens(*PDF_PAGE)


def file_tokens(file_data: Any, rule: ImageRule = TILES, count: TextCount | None = None) -> int:
    """The estimate for a file sent as base64 `file_data` (a data URL or bare base64) under `rule`: a
    PDF's pages times a page's image (PDF_PAGE: PDF_PAGE_TOKENS under gpt-4o's rule); an image as an
    image; UTF-8 text by `count` (else a token per 4 bytes); any other file as one Sentinel cannot
    read (`unread_file_tokens`, or a token per 4 bytes when more). 0 for no data, or a data URL
    that is not base64 (no file a provider reads)."""
    if not isinstance(file_data, str) or not file_data:
        return 0
    start = base64_data_start(file_data)
    if start is None:
        return 0
    head = base64_head(file_data, start)
    if b"%PDF-" in head[:PDF_MAGIC_WITHIN]:
        return pdf_pages(_decoded(file_data, start)) * rule.tokens(*PDF_PAGE)
    if (size := image_size(head)) is not None:
        return rule.tokens(*size)
    spend((len(file_data) - start) // BYTES_PER_TOKEN)  # decoding costs about what encoding a quarter of it does
    raw = _decoded(file_data, start)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return max(unread_file_tokens(rule), -(-len(raw) // BYTES_PER_TOKEN))
    return count(text) if count is not None else -(-len(raw) // BYTES_PER_TOKEN)


def _decoded(file_data: str, start: int) -> bytes:
    try:  # extra padding is ignored, so data sent without its padding is read too
        return base64.b64decode(file_data[start:] + "==", validate=False)
    except (binascii.Error, ValueError):
        return b""


def pdf_pages(raw: bytes) -> int:
    """The pages of a PDF, at least 1: its page objects, written out or inside its Flate-compressed
    object streams (PDF 1.5's, where most current writers put them), or its page tree's `/Count`
    when that says more (`_page_count`: a page dictionary need not say `/Type /Page` to a reader) —
    their names read as a reader reads them (`_name`: escaped, a comment between — read two ways,
    `_gap` and `_read`, each byte about once by each). Inflation stops at a budget
    (PDF_MAX_INFLATED, PDF_INFLATE_RATIO times the file; on the event loop, a count goes on in a worker
    thread first: `INFLATED_PER_CHAR`) and each byte is searched about once: an
    object stream is read to its `endstream` and a dictionary (DICT_BYTES) searched for its
    `stream`, and the next `/Type /ObjStm` is looked for after them (a crafted file repeating the
    marker would otherwise make every search cover the same bytes). A file with an object stream
    left unread — past the budget, or not Flate data (LZW, ASCIIHex, corrupt) — is at least
    UNREAD_FILE_PAGES pages: its pages may be there (an object stream inflating to the budget of
    zeros hid the 100 pages in the next, estimated as one)."""
    pages, counted = _pages(raw), _page_count(raw)
    budget = min(PDF_MAX_INFLATED, PDF_INFLATE_RATIO * len(raw))
    view = memoryview(raw)
    at = 0
    unread = False
    streams = _ObjectStreams(raw)
    while (marked := streams.next(at)) is not None:
        if budget <= 0:
            unread = True
            break
        stream = _STREAM.search(raw, marked, marked + DICT_BYTES)
        if stream is None:
            at = marked + DICT_BYTES
            continue
        end = raw.find(b"endstream", stream.end())
        if end < 0:
            break  # none after this stream, so none after any later one
        at = end
        spend(budget // INFLATED_PER_CHAR)
        inflating = zlib.decompressobj()
        try:
            inflated = inflating.decompress(view[stream.end() : end], budget)
        except zlib.error:
            unread = True
            continue
        unread = unread or bool(inflating.unconsumed_tail)
        budget -= len(inflated)
        pages += _pages(inflated)
        counted = max(counted, _page_count(inflated))
    return max(UNREAD_FILE_PAGES if unread else 1, pages, counted)


def _pages(data: bytes) -> int:
    """The page objects in `data` (`/Type /Page`): those either reading finds (`_PAGE`, `_PAGE_READ`),
    each once. Each alone misses some: a name in a string or a comment before (`(%) /Type /Page`)
    makes the second read the page as its comment; a comment holding `/Type` and white space
    (`/Type %/Type x⏎/Page`) ended the first's comment too early. A page is known by where its
    `/Page` ends: both may find it, from the same `/Type` or not (`/Type %/Type⏎/Page`)."""
    read = [match.end() for match in _PAGE_READ.finditer(data) if match[1] is not None]
    if not read:  # (no page behind a comment: most files)
        return len(_PAGE.findall(data))
    return len({match.end() for match in _PAGE.finditer(data)}.union(read))


class _ObjectStreams:
    """Where each object stream's marker ends, in order, as either reading finds it (`_OBJECT_STREAM`,
    searched from where the caller is; `_OBJECT_STREAM_READ`, found once): each byte is searched
    about once by each."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.plain = _OBJECT_STREAM.search(raw)
        self.read = [match.span() for match in _OBJECT_STREAM_READ.finditer(raw)
                     if match[1] is not None or match[2] is not None]

    def next(self, at: int) -> int | None:
        """The end of the first marker that starts at or after `at` (None: no more)."""
        if self.plain is not None and self.plain.start() < at:
            self.plain = _OBJECT_STREAM.search(self.raw, at)  # (one ahead of `at` is kept, not searched again)
        spans = [self.plain.span()] if self.plain is not None else []
        later = bisect.bisect_left(self.read, (at, -1))
        if later < len(self.read):
            spans.append(self.read[later])
        return min(spans)[1] if spans else None


def _page_count(data: bytes) -> int:
    """The largest page tree `/Count` in `data` (a PDF's bytes, or an object stream's inflated); 0
    for none."""
    pages = 0
    kids = [found.start() for found in _KIDS.finditer(data)]  # (each byte searched once, then bisected)
    if not kids:
        return pages
    opens = [found.start() for found in _OPEN.finditer(data)]
    closes = [found.start() for found in _CLOSE.finditer(data)]
    for count in itertools.chain(_COUNT.finditer(data), _COUNT_READ.finditer(data)):
        if count[1] is None:  # (a name `_COUNT_READ` matched with no count after it)
            continue
        digits = count[1].lstrip(b"+0")
        value = MAX_COUNTED_PAGES if len(digits) > 7 else int(digits or b"0")
        if value <= pages:
            continue
        # Its dictionary: from the nearest `<<` before it to the nearest `>>` after it.
        before, after = bisect.bisect_left(opens, count.start()), bisect.bisect_left(closes, count.end())
        start = opens[before - 1] if before else 0
        end = closes[after] if after < len(closes) else len(data)
        near = bisect.bisect_left(kids, start)
        if near < len(kids) and kids[near] < end:
            pages = value
    return pages
