"""Images and PDFs in OpenAI-format requests: OpenAI's image rule, each kind of part, PDF pages, and
every OpenAI-format estimate adding them (once, none did: a stream cut before its usage was charged
the text of a request with a hundred images)."""

from __future__ import annotations

import base64
import re
import threading
import zlib
from typing import Any

import pytest

from sentinel.domain.files import UNREAD, FileFacts
from sentinel.offload import ON_LOOP_CHARS, count_off_loop
from sentinel.quota import media
from sentinel.quota.estimate import REFERENCE_TOKENS, estimate_input
from sentinel.quota.images import (
    OPENAI_MAX_IMAGE_TOKENS,
    openai_image_rule,
    openai_image_tokens,
    url_image_tokens,
)
from sentinel.quota.media import PDF_PAGE_TOKENS, file_tokens, part_tokens, pdf_pages
from sentinel.quota.tokens import TokenCounter
from tests.support.media import data_url, jpeg, pdf, png, whole_png

MODEL = "gpt-4o"
COUNTER = TokenCounter()


@pytest.mark.parametrize(("width", "height", "detail", "tokens"), [
    (1024, 1024, "high", 765),  # OpenAI's example: 768 x 768, 2 x 2 tiles
    (2048, 4096, "high", 1105),  # OpenAI's example: 1024 x 2048, then 768 x 1536: 2 x 3 tiles
    (4096, 8192, None, 1105),  # fitted within 2048 x 2048 first: as above
    (1024, 1024, "auto", 765),
    (1024, 1024, "low", 85),
    (8000, 8000, "low", 85),
    (512, 512, "high", 255),  # one tile, not scaled up
    (100, 100, None, 255),
    (513, 512, "high", 425),  # one pixel past a tile: two tiles
    (768, 2048, "high", 1445),  # the most tiles there are: 2 x 4
    (10_000, 10, "high", 765),  # 2048 x 2: 4 x 1 tiles
    (0, 600, "high", OPENAI_MAX_IMAGE_TOKENS),
])
def test_openai_image_rule(width: int, height: int, detail: str | None, tokens: int) -> None:
    assert openai_image_tokens(width, height, detail) == tokens


def test_no_image_costs_more_than_the_rules_maximum() -> None:
    sizes = [(w, h) for w in (1, 511, 512, 767, 768, 769, 1536, 2048, 2049, 5000, 65_535) for h in (1, 700, 768, 3000)]
    assert max(openai_image_tokens(w, h) for w, h in sizes) == OPENAI_MAX_IMAGE_TOKENS == 1445


@pytest.mark.parametrize(("url", "detail", "tokens"), [
    (data_url(png(1024, 1024)), "high", 765),
    (data_url(whole_png(2048, 4096)), None, 1105),  # a whole file: only its header is read
    (data_url(jpeg(1024, 768), "image/jpeg"), "auto", 765),
    ("DATA:image/png;base64," + base64.b64encode(png(512, 512)).decode(), None, 255),  # a scheme's case is no matter
    # Of another form than the one rule of an image's data URL (`native.types.image_data_url_head`,
    # which the native API and the translations refuse it by, and vLLM refuses `BASE64`): not read.
    ("data:image/png;BASE64," + base64.b64encode(png(512, 512)).decode(), None, OPENAI_MAX_IMAGE_TOKENS),
    ("data:text/plain;base64," + base64.b64encode(png(512, 512)).decode(), None, OPENAI_MAX_IMAGE_TOKENS),
    ("data:image/png;name=a.png;base64," + base64.b64encode(png(512, 512)).decode(), None, OPENAI_MAX_IMAGE_TOKENS),
    ("data:image/png;base64:" + base64.b64encode(png(512, 512)).decode(), None, OPENAI_MAX_IMAGE_TOKENS),  # no comma
    ("https://example.com/cat.png", "high", OPENAI_MAX_IMAGE_TOKENS),  # a URL cannot be read: the maximum
    ("https://example.com/cat.png", "low", 85),
    ("data:image/png;base64,AAAAAAAA", None, OPENAI_MAX_IMAGE_TOKENS),  # no format Sentinel reads
    ("data:image/png;base64,%%%%", None, OPENAI_MAX_IMAGE_TOKENS),
    ("data:image/png," + "x" * 400, None, OPENAI_MAX_IMAGE_TOKENS),  # not base64
    (None, None, OPENAI_MAX_IMAGE_TOKENS),
    (17, "low", 85),
])
def test_an_image_url_is_read_from_its_header_or_estimated_at_its_maximum(url: Any, detail: Any, tokens: int) -> None:
    assert url_image_tokens(url, detail) == tokens


IMAGE = data_url(png(1024, 1024))  # 765 tokens at high detail


@pytest.mark.parametrize(("part", "tokens"), [
    ({"type": "image_url", "image_url": {"url": IMAGE}}, 765),
    ({"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}, 85),
    ({"type": "image_url", "image_url": IMAGE}, 765),  # the URL as a plain string
    ({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}, 1445),
    ({"type": "image_url"}, 1445),
    ({"type": "input_image", "image_url": IMAGE, "detail": "auto"}, 765),
    ({"type": "input_image", "file_id": "file-abc", "detail": "high"}, 1445),  # its bytes are elsewhere
    ({"type": "input_image", "file_id": "file-abc", "detail": "low"}, 85),
    ({"type": "computer_screenshot", "image_url": IMAGE}, 765),
    ({"type": "file", "file": {"file_data": data_url(pdf(3), "application/pdf"), "filename": "a.pdf"}}, 3 * 765),
    ({"type": "input_file", "file_data": data_url(pdf(2), "application/pdf"), "filename": "a.pdf"}, 2 * 765),
    ({"type": "input_file", "file_data": base64.b64encode(pdf(4)).decode()}, 4 * 765),  # bare base64
    # A file Sentinel cannot read: the longest PDF a request may hold (100 pages). Estimated at
    # nothing, a 100-page PDF by URL was free in a cut stream, and a burst of them passed a limit.
    ({"type": "input_file", "file_id": "file-abc"}, 100 * 765),
    ({"type": "input_file", "file_url": "https://x/y.pdf"}, 100 * 765),
    ({"type": "file", "file": {"file_id": "file-abc"}}, 100 * 765),
    ({"type": "input_file", "file_url": ""}, 0),
    # Text is the text the provider extracts (a token per 4 bytes without the request's tokenizer);
    # a binary file (an Office document) is a file Sentinel cannot read; an image is an image.
    ({"type": "input_file", "file_data": data_url(b"just some notes", "text/plain")}, 4),
    ({"type": "input_file", "file_data": data_url(b"PK\x03\x04\xff\xfe" * 10, "application/zip")}, 100 * 765),
    ({"type": "input_file", "file_data": data_url(whole_png(1024, 1024), "image/png")}, 765),
    # Audio by its length (`sentinel.quota.audio`): 48,000 bytes that are no WAV, at 4 kbit/s at most.
    ({"type": "input_audio", "input_audio": {"data": base64.b64encode(bytes(48_000)).decode(), "format": "wav"}}, 960),
    ({"type": "text", "text": "hi"}, 0),
])
def test_each_kind_of_media_part(part: dict[str, Any], tokens: int) -> None:
    assert part_tokens(part) == tokens


def test_pdf_pages_are_its_page_objects_written_out_or_compressed() -> None:
    assert PDF_PAGE_TOKENS == 765  # a portrait letter page's image: 2 x 2 tiles
    assert [pdf_pages(pdf(n)) for n in (1, 5, 40)] == [1, 5, 40]  # `/Type /Pages` is not a page
    assert [pdf_pages(pdf(n, compressed=True)) for n in (1, 5, 40)] == [1, 5, 40]
    assert pdf_pages(b"%PDF-1.4\n1 0 obj<</Type/Page>>endobj 2 0 obj<</Type/Page/Parent 3 0 R>>endobj") == 2
    assert pdf_pages(b"%PDF-1.4\n<</Type /PageLabel>> <</Type /Pages /Count 9>>") == 1  # none found: one page
    # An object stream that does not inflate (corrupt, or another filter: LZW, ASCIIHex) may hold
    # the pages: the file is the longest a request may hold.
    corrupt = pdf(3, compressed=True).replace(b"stream\n", b"stream\nXX")  # no zlib stream there
    assert pdf_pages(corrupt) == media.UNREAD_FILE_PAGES


def test_pages_past_the_inflation_budget_are_not_one_page() -> None:
    """An object stream inflating to the whole budget (4 MiB of zeros in ~4 KB) left the next one,
    holding 300 pages, unread: the file was estimated as one page. Now an object stream left unread
    makes it the longest a request may hold (100 pages), and pages counted before stay counted."""
    junk = b"1 0 obj<</Type/ObjStm/Filter/FlateDecode>>stream\n" + zlib.compress(bytes(5 << 20), 9) + b"\nendstream endobj\n"
    hidden = pdf(300, compressed=True)
    crafted = hidden.replace(b"%PDF-1.7\n", b"%PDF-1.7\n" + junk, 1)
    assert len(crafted) < 200_000 and pdf_pages(hidden) == 300
    assert pdf_pages(crafted) == 300  # (its page tree's `/Count` says so)
    crafted = crafted.replace(b"/Count 300", b"/Count 1")
    assert pdf_pages(crafted) == media.UNREAD_FILE_PAGES
    assert file_tokens(base64.b64encode(crafted).decode()) == 100 * PDF_PAGE_TOKENS
    written_out = pdf(150).replace(b"%PDF-1.7\n", b"%PDF-1.7\n" + junk, 1)
    assert pdf_pages(written_out) == 150


def test_pages_are_found_by_the_names_a_reader_reads() -> None:
    """A reader decodes a name's `#xx` escapes (`/P#61ge` is `/Page`), skips a comment between two
    tokens, takes a page dictionary without `/Type` (a leaf of the page tree) and an object stream
    without `/Type /ObjStm` (its `/First` and `/N` are what it reads), and counts the pages its page
    tree's `/Count` says: each of these PDFs of 300 pages was estimated as one (by pypdf: 300)."""
    page = b"/Type /Page /Parent"
    hiding = {
        "escaped": pdf(300).replace(page, b"/Type /P#61ge /Parent"),
        "escaped key": pdf(300).replace(page, b"/T#79pe/Pag#65 /Parent"),
        "commented": pdf(300).replace(page, b"/Type % not a page?\r/Page /Parent"),
        "untyped": pdf(300).replace(page, b"/Parent"),
        "untyped, counted with zeros": pdf(300).replace(page, b"/Parent").replace(b"/Count 300", b"/Count +0000000000300"),
        "escaped stream": pdf(300, compressed=True).replace(b"/Type /ObjStm", b"/Type /Obj#53tm"),
        "untyped stream": pdf(300, compressed=True).replace(b"/Type /ObjStm", b"").replace(b"/Count 300", b"/Count 1"),
        # A comment holding the name before it followed by white space: each search stopped there
        # and the name's own search read its comment as tokens (`/Type %/Type x⏎/Page`).
        "commented twice": pdf(300).replace(page, b"/Type %/Type x\n/Page /Parent").replace(b"/Count 300", b"/Count 1"),
        "counted, commented twice": pdf(300).replace(page, b"/Parent").replace(b"/Count 300", b"/Count %/Count 1\r300"),
        "stream commented twice": pdf(300, compressed=True).replace(b"/Type /ObjStm", b"/Type %/Type x\n/ObjStm")
        .replace(b"/First ", b"/First %/First x\n").replace(b"/Count 300", b"/Count 1"),
        "untyped stream commented twice": pdf(300, compressed=True).replace(b"/Type /ObjStm", b"")
        .replace(b"/First ", b"/First %/First x\n").replace(b"/Count 300", b"/Count 1"),
    }
    assert {name: pdf_pages(raw) for name, raw in hiding.items()} == dict.fromkeys(hiding, 300)
    # Not a page, nor a page tree's count: `/Pages`, escaped too; an outline's `/Count` (no `/Kids`)
    outline = b"<< /Type /Outlines /First 9 0 R /Last 9 0 R /Count 40 >>"
    assert pdf_pages(b"%PDF-1.4\n1 0 obj<</Type/Page#73/Kids[]>>endobj 2 0 obj<</Type /Pag#65s>>endobj") == 1
    assert pdf_pages(pdf(3).replace(b"<< /Type /Catalog", outline + b" << /Type /Catalog")) == 3


def test_pdf_page_counting_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crafted file cannot buy a long count: inflation stops at its budget, and a file that repeats
    the object-stream marker is searched about once (not once per marker)."""
    page = b"<</Type/Page>>"
    bomb = zlib.compress(page * 2_000_000, 9)  # 28 MB of page objects in ~27 KB
    raw = b"%PDF-1.5\n1 0 obj<</Type/ObjStm/Filter/FlateDecode>>stream\n" + bomb + b"\nendstream endobj"
    markers = b"%PDF-1.5 " + b"/Type /ObjStm " * 500_000 + b"stream\n" + zlib.compress(b"x") + b"endstream"
    streams = b"%PDF-1.5 " + b"/Type /ObjStm stream\n" * 400_000 + b"endstream"  # each would search to the end
    assert pdf_pages(raw) == 32 * len(raw) // len(page)  # inflated up to 32 times the file, no further
    scanned = _ScanCounter(media._OBJECT_STREAM)
    monkeypatch.setattr(media, "_OBJECT_STREAM", scanned)
    for crafted, pages in ((markers, 1), (streams, media.UNREAD_FILE_PAGES)):  # (no Flate data: unread)
        scanned.bytes = 0
        assert pdf_pages(crafted) == pages
        assert scanned.bytes <= 2 * len(crafted), (scanned.bytes, len(crafted))  # not once per marker


async def test_a_pdf_inflated_by_a_count_on_the_event_loop_is_inflated_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body under 64 KiB is counted on the event loop: a 47 KB file whose object stream inflates to
    its budget (32 times the file, 1.5 MB of page objects) held it ~17 ms. The count goes on in the
    counts' pool before it inflates; a PDF written out (no object stream) is read where it is."""
    inflated: list[str] = []
    decompressobj = zlib.decompressobj

    def recording() -> Any:
        inflated.append(threading.current_thread().name)
        return decompressobj()

    monkeypatch.setattr(media.zlib, "decompressobj", recording)
    raw = pdf(600, compressed=True)
    assert len(raw) * media.PDF_INFLATE_RATIO // media.INFLATED_PER_CHAR > ON_LOOP_CHARS
    compressed = data_url(raw, "application/pdf")
    assert await count_off_loop(lambda: file_tokens(compressed), len(compressed)) == 600 * PDF_PAGE_TOKENS
    assert inflated and all(name.startswith("sentinel-count") for name in inflated), inflated
    small = data_url(pdf(3, compressed=True), "application/pdf")  # (its budget is small: read on the loop)
    plain = data_url(pdf(600), "application/pdf")
    here = threading.current_thread().name
    inflated.clear()
    for file in (small, plain):
        assert await count_off_loop(lambda file=file: file_tokens(file), len(file)) in (3 * PDF_PAGE_TOKENS,
                                                                                        600 * PDF_PAGE_TOKENS)
    assert inflated == [here]


def test_pdf_names_with_comments_are_searched_about_once_per_byte() -> None:
    """A comment between two names was read to its line's end from each name before it: a line of
    `/Type%` repeated had every `/Type` search the rest of the line (240 KB took 18 s, 10 MB would
    take hours, one request pinning a worker thread and the GIL). A search now ends a comment at the
    next name it starts from, so what one match covers holds no other start; pages still count."""
    names = {media._PAGE: b"/Type%", media._COUNT: b"/Count%", media._OBJECT_STREAM: b"/First%"}
    ends = {media._PAGE: b"\n/Page", media._COUNT: b"\n7", media._OBJECT_STREAM: b"\n7\n/N"}
    for pattern, unit in names.items():
        sample = unit * 2_000 + ends[pattern]
        found = list(pattern.finditer(sample))
        assert len(found) == 1 and found[0][0].count(unit[:-1]) == 1, (unit, found[0].span() if found else None)
    # The second reading (a name's comment read to its line's end) takes the whole line in one match.
    reread = {media._PAGE_READ: b"/Type%", media._COUNT_READ: b"/Count%", media._OBJECT_STREAM_READ: b"/First%"}
    for pattern, unit in reread.items():
        sample = unit * 2_000 + ends[media._PAGE if unit == b"/Type%" else media._COUNT]
        assert [found.span() for found in pattern.finditer(sample)] == [(0, len(sample))], unit
    assert pdf_pages(b"%PDF-1.7\n<</Type %/Type\n/Page>> <</Type %/ %\n/Page>> <</Type %/Typex\n/Page>>"
                     b" <</Type %/Type(\n/Page>> <</Type %/Type x\n/Page>>") == 5
    tree = b"<</Type /Pages /Kids [] /Count %/Count\n5>>"
    assert pdf_pages(b"%PDF-1.7\n" + tree) == 5
    # 10 MB crafted files finish (each byte read about once; no time is asserted, the suite's
    # timeout bounds them: before, each took hours).
    size = 10 * 1024 * 1024
    for unit in (b"/Type%", b"/Kids /Count%", b"/First%", b"/Type %x\n%y\n", b"/Type%/Typex%",
                 b"/Type%/Type(%", b"/Type %/Type x\n", b"/Kids /Count %/Count x\n", b"/First %/First x\n",
                 b"/First 1 %/First 1 %", b"(%) /Type %/Type x\n"):
        assert pdf_pages(b"%PDF-1.7\n" + unit * (size // len(unit))) == 1


class _ScanCounter:
    """A compiled pattern that counts the bytes its searches cover (from `pos` to the match's end, or
    to the end of the data when none is found)."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.bytes = 0

    def search(self, data: bytes, pos: int = 0) -> re.Match[bytes] | None:
        found = self.pattern.search(data, pos)
        self.bytes += (found.end() if found is not None else len(data)) - pos
        return found


def test_a_file_that_does_not_decode_is_one_page_if_it_starts_as_a_pdf() -> None:
    good = base64.b64encode(pdf(2) + b"x").decode()  # ends in "=="
    assert file_tokens(good.rstrip("=")) == 2 * 765  # its padding missing: still read
    assert file_tokens(good[:-8]) == 2 * 765  # its last bytes missing: still read
    assert file_tokens(good[:200] + "é" + good[200:]) == 0  # its start does not decode: no PDF
    big = base64.b64encode(pdf(1500)).decode()
    assert len(big) > 100_000 and file_tokens(big[:-100] + "é" + big[-100:]) == 765  # past the header: one page
    assert file_tokens("data:application/pdf,%PDF-1.7") == 0  # a data URL that is not base64
    assert file_tokens("DATA:application/pdf,%PDF-1.7") == 0
    # The scheme in any case is a data URL (requests are checked and translated so): its PDF counts.
    for scheme in ("Data", "DATA"):
        assert file_tokens(scheme + data_url(pdf(2), "application/pdf")[4:]) == 2 * 765, scheme
    assert file_tokens(None) == 0


# --- every OpenAI-format estimate adds them ----------------------------------------------------
class MediaOnly(TokenCounter):
    """A counter for which every text is 0 tokens: an estimate is its overheads plus its media."""

    def _counting(self, model: str, user: str | None = None) -> tuple[str, Any]:
        return "none", lambda text: 0


def media_of(endpoint: str, body: dict[str, Any]) -> int:
    return estimate_input(MediaOnly(), endpoint, MODEL, body)


def test_chat_and_native_estimates_add_images_and_pdfs() -> None:
    parts = [{"type": "text", "text": "what is in these?"}, *[{"type": "image_url", "image_url": {"url": IMAGE}}] * 10,
             {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
             {"type": "file", "file": {"file_data": data_url(pdf(2), "application/pdf")}}]
    for endpoint in ("chat", "native"):
        body = {"messages": [{"role": "system", "content": "look"}, {"role": "user", "content": parts}]}
        assert media_of(endpoint, body) == 3 + 2 * 3 + 10 * 765 + 85 + 2 * 765, endpoint


def test_responses_estimates_add_images_wherever_they_are() -> None:
    message = {"role": "user", "content": [
        {"type": "input_text", "text": "what is in these?"}, {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
        {"type": "input_image", "file_id": "file-abc", "detail": "high"}]}
    screenshot = {"type": "computer_call_output", "call_id": "c1",
                  "output": {"type": "computer_screenshot", "image_url": IMAGE}}
    output = {"type": "function_call_output", "call_id": "c2",
              "output": [{"type": "input_image", "image_url": IMAGE, "detail": "low"},
                         {"type": "input_file", "file_data": data_url(pdf(3, compressed=True), "application/pdf")}]}
    variables = {"photo": {"type": "input_image", "image_url": IMAGE}, "note": {"type": "input_file", "file_id": "f"}}
    body = {"input": [message, screenshot, output], "prompt": {"id": "pmpt_1", "variables": variables}}
    # (the prompt's file by id: a file Sentinel cannot read, 100 pages; its own text, by id, a reference)
    assert media_of("responses", body) == (3 + 3 + (765 + 1445) + 765 + (85 + 3 * 765) + 765 + 100 * 765
                                           + REFERENCE_TOKENS)


def test_a_text_only_request_walks_no_media(monkeypatch: pytest.MonkeyPatch) -> None:
    """The media rules are reached only through a part whose `type` names a media kind."""
    from sentinel.quota import media, tokens

    calls: list[Any] = []
    monkeypatch.setattr(tokens, "part_tokens", lambda part, rule, count, files: calls.append(part) or media.part_tokens(part, rule))
    text = [{"type": "text", "text": "hi"}, "plain", {"type": {}}, {"type": "output_text", "text": "x"}]
    estimate_input(COUNTER, "chat", MODEL, {"messages": [{"role": "user", "content": text}]})
    assert calls == []
    estimate_input(COUNTER, "chat", MODEL, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": IMAGE}}]}]})
    assert len(calls) == 1


@pytest.mark.parametrize(("model", "width", "height", "detail", "tokens"), [
    # gpt-4o-mini bills images at ~33 times gpt-4o's tokens (2833 + 5667 a tile): the estimate once
    # used gpt-4o's figures for every model, so its images were reserved and cut streams charged 1/33.
    ("gpt-4o-mini", 1024, 1024, None, 2833 + 4 * 5667),
    ("gpt-4o-mini-2024-07-18", 1024, 1024, "low", 2833),
    ("openai/gpt-4o-mini", 100, 100, "high", 2833 + 5667),
    ("gpt-4o", 1024, 1024, None, 85 + 4 * 170),
    ("gpt-5", 1024, 1024, None, 70 + 4 * 140),
    ("o3", 1024, 1024, None, 75 + 4 * 150),
    # The patch rule: 32-px patches up to 1536, times the model's multiplier, whatever the detail.
    ("gpt-4.1-mini", 1024, 1024, "low", 1659),  # 32 x 32 patches x 1.62
    ("gpt-4.1-nano", 100, 50, None, 20),  # 4 x 2 patches x 2.46 = 19.68
    ("o4-mini", 4000, 4000, None, 2642),  # capped at 1536 patches x 1.72
    ("gpt-5-mini", 0, 0, None, 2489),  # unknown size: the most, 1536 x 1.62
])
def test_each_models_image_rule(model: str, width: int, height: int, detail: str | None, tokens: int) -> None:
    assert openai_image_tokens(width, height, detail, model) == tokens


def test_an_image_of_unknown_size_costs_the_most_its_models_rule_allows() -> None:
    mini = openai_image_rule("gpt-4o-mini")
    assert url_image_tokens("https://example.com/cat.png", None, mini) == 2833 + 8 * 5667
    assert url_image_tokens("https://example.com/cat.png", "low", mini) == 2833
    assert url_image_tokens("https://example.com/cat.png", "low", openai_image_rule("gpt-4.1-mini")) == 2489  # no low
    assert part_tokens({"type": "image_url", "image_url": {"url": data_url(png(1024, 1024))}}, mini) == 25501
    # A PDF page is the image of a letter page under the model's rule: 2 x 2 tiles.
    assert file_tokens(data_url(pdf(3), "application/pdf"), mini) == 3 * 25501


def test_an_upload_is_read_for_what_a_request_naming_it_costs() -> None:
    """What a file uploaded through Sentinel holds (`upload_facts`) estimates it by id as its data
    would be: a PDF's pages and an image's size under the request's rule, a text's tokens (the most
    of every tokenizer); a file Sentinel cannot read, nothing (the bound)."""
    mini = openai_image_rule("gpt-4o-mini")
    facts = media.upload_facts(pdf(3, compressed=True), COUNTER.most_tokens)
    assert facts == FileFacts(pages=3)
    assert media.facts_tokens(facts) == 3 * PDF_PAGE_TOKENS
    assert media.facts_tokens(facts, mini) == file_tokens(data_url(pdf(3), "application/pdf"), mini) == 3 * 25_501
    assert media.upload_facts(png(512, 512), COUNTER.most_tokens) == FileFacts(image=(512, 512))
    assert media.upload_facts(jpeg(1024, 1024), COUNTER.most_tokens) == FileFacts(image=(1024, 1024))
    text = "\ufeffnotes about the quarter " * 100
    facts = media.upload_facts(text.encode(), COUNTER.most_tokens)
    assert facts is not None and facts.text == max(
        COUNTER.count_text(text[1:], "gpt-4o"), COUNTER.count_text(text[1:], "gpt-4"), len(text[1:].encode()) // 4 + 1)
    assert media.upload_facts(b"PK\x03\x04\xff\xfe compressed", COUNTER.most_tokens) is None
    for value in (facts, FileFacts(pages=3), FileFacts(image=(5, 7)), UNREAD):
        assert FileFacts.decode(value.encode()) == value
    assert media.facts_tokens(UNREAD, mini) == media.unread_file_tokens(mini)  # read, and not estimable
    for stored in (None, b"", b"{}", b'{"pages":-1}', b'{"pages":true}', b'{"image":[1]}', b'{"text":1,"pages":1}',
                   b'{"unread":false}', b'{"unread":1}'):
        assert FileFacts.decode(stored) is None, stored


@pytest.mark.parametrize(("part", "tokens"), [
    ({"type": "file", "file": {"file_id": "file-pdf"}}, 2 * PDF_PAGE_TOKENS),
    ({"type": "input_file", "file_id": "file-pdf"}, 2 * PDF_PAGE_TOKENS),
    ({"type": "input_file", "file_id": "file-text"}, 40),
    ({"type": "input_file", "file_id": "file-image"}, 255),
    ({"type": "input_image", "file_id": "file-image", "detail": "high"}, 255),
    ({"type": "input_image", "file_id": "file-image", "detail": "low"}, 85),
    ({"type": "input_image", "file_id": "file-pdf"}, OPENAI_MAX_IMAGE_TOKENS),  # no image: its most
    ({"type": "input_file", "file_id": "file-unread"}, media.unread_file_tokens()),  # uploaded before, or elsewhere
    ({"type": "input_file", "file_id": "file-other"}, media.unread_file_tokens()),  # read: another kind of file
    ({"type": "input_image", "file_id": "file-other"}, OPENAI_MAX_IMAGE_TOKENS),
    ({"type": "input_file", "file_id": "file-pdf", "file_url": "https://example.com/a.pdf"}, media.unread_file_tokens()),
    ({"type": "input_file", "file_url": "https://example.com/a.pdf"}, media.unread_file_tokens()),
])
def test_a_file_by_id_is_estimated_by_its_facts(part: dict[str, Any], tokens: int) -> None:
    files = {"file-pdf": FileFacts(pages=2), "file-text": FileFacts(text=40), "file-image": FileFacts(image=(512, 512)),
             "file-other": UNREAD}
    assert part_tokens(part, files=files) == tokens
    assert estimate_input(COUNTER, "responses", MODEL, {"input": [{"type": "message", "role": "user", "content": [
        part]}]}, files=files) == estimate_input(COUNTER, "responses", MODEL, {"input": [{"type": "message",
        "role": "user", "content": []}]}) + tokens
