"""Files a request names count against the input limit, on every surface that takes them: a text file
sent as data (the Responses API extracts its text) and a file by URL (its bytes elsewhere, fetched and
billed by the provider) were estimated at nothing, so a client under a 10,000-token input limit had a
file of any length read (a stream it left at once charged nothing for it), and a burst of such
requests all passed admission before the first settled."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import anthropic
import openai
import pytest

from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan
from tests.support.attack import SpyUpstream, openai_error, recorded_ids
from tests.support.media import data_url, pdf

LIMITED = "requests=100/1h,input_tokens=10000/1h"
NOTES = " ".join(f"note{i} about the quarter" for i in range(10_000))  # ~50,000 tokens of text
SLOW = "read it #mock:chunk_delay_ms=200"  # a stream still running while the next request is admitted


def responses_with(file: dict[str, Any], text: str = "summarise it") -> dict[str, Any]:
    return {"model": "gpt-4o", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": text}, {"type": "input_file", **file}]}]}


def test_a_text_file_sent_as_data_counts_as_its_text(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """~50,000 tokens of notes sent as a `text/plain` file were admitted under a 10,000-token limit."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    data = "data:text/plain;base64," + base64.b64encode(NOTES.encode()).decode()
    with pytest.raises(openai.RateLimitError) as refused:
        gw.openai().responses.create(**responses_with({"filename": "notes.txt", "file_data": data}))
    error = openai_error(refused.value.response.json())
    assert "can never be admitted" in error["message"], error
    assert error["details"]["metric"] == "input_tokens" and error["details"]["requested"] >= 40_000, error
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()
    # A short one is its text's few tokens: admitted.
    short = "data:text/plain;base64," + base64.b64encode(b"three short notes").decode()
    answer = gw.openai().responses.create(**responses_with({"filename": "notes.txt", "file_data": short}))
    assert answer.status == "completed"


def test_a_file_by_url_is_reserved_as_the_longest_pdf(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """A PDF by URL may be 100 pages (~80,000 tokens billed): it was reserved 0, so under a
    10,000-token limit it was admitted, and a cut stream was charged nothing for it."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    with pytest.raises(openai.RateLimitError) as refused:
        gw.openai().responses.create(**responses_with({"file_url": "https://example.com/report.pdf"}))
    details = openai_error(refused.value.response.json())["details"]
    assert (details["metric"], details["requested"] >= 100 * 765) == ("input_tokens", True), details
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def test_a_burst_of_files_by_url_stops_at_the_input_limit(gateway_factory: Callable[..., Gateway]) -> None:
    """Two streams naming a file by URL are running (each reserved 76,500 tokens under a 200,000-token
    limit); the third is refused before it is sent — before, every one of a burst was admitted at a
    few tokens while the provider billed each its whole file."""
    gw = gateway_factory()
    set_plan(gw.settings.database_url, "alice", "medium", "requests=100/1h,input_tokens=200000/1h")
    body = {**responses_with({"file_url": "https://example.com/report.pdf"}, SLOW), "stream": True}
    with gw.client() as http, ExitStack() as running:
        for _ in range(2):
            stream = running.enter_context(http.stream("POST", "/v1/responses", json=body))
            assert stream.status_code == 200, stream.read()
        third = http.post("/v1/responses", json=body)
        assert third.status_code == 429, third.text
        assert openai_error(third.json())["details"]["metric"] == "input_tokens"


def test_pages_hidden_past_the_inflation_budget_are_not_one_page(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A PDF whose first object stream inflates to the page count's whole budget (megabytes of zeros
    in a few KB) had the 300 pages of the next estimated as one: admitted under a 10,000-token limit."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    junk = b"1 0 obj<</Type/ObjStm/Filter/FlateDecode>>stream\n" + zlib.compress(bytes(5 << 20), 9) + b"\nendstream endobj\n"
    crafted = pdf(300, compressed=True).replace(b"%PDF-1.7\n", b"%PDF-1.7\n" + junk, 1)
    file = {"filename": "report.pdf", "file_data": data_url(crafted, "application/pdf")}
    with pytest.raises(openai.RateLimitError) as refused:
        gw.openai().responses.create(**responses_with(file))
    details = openai_error(refused.value.response.json())["details"]
    assert (details["metric"], details["requested"] >= 100 * 765) == ("input_tokens", True), details
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def test_a_pdf_document_by_url_on_messages_is_reserved_as_the_longest_pdf(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`/v1/messages`: a `document` whose source is a URL (up to 100 pages, each billed its text and
    an image) was estimated at nothing."""
    gw = gateway_factory(anthropic_api_url=spy.url)
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    document = {"type": "document", "source": {"type": "url", "url": "https://example.com/report.pdf"}}
    with pytest.raises(anthropic.RateLimitError) as refused:
        gw.anthropic(api_key=gw.key).messages.create(
            model="claude-3-5-haiku-20241022", max_tokens=50,
            messages=[{"role": "user", "content": [document, {"type": "text", "text": "summarise it"}]}],
        )
    error = refused.value.response.json()["error"]
    assert error["type"] == "rate_limit_error" and "can never be admitted" in error["message"], error
    requested = int(error["message"].split(" needs ", 1)[1].split()[0])
    assert requested >= 100 * 647, error
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def test_pdf_documents_by_url_on_messages_reserve_the_bound_once(gateway_factory: Callable[..., Gateway]) -> None:
    """Anthropic reads at most 100 PDF pages per request, so the bound is reserved once per request
    however many PDFs by URL it names (as on chat and Responses: `media.RequestFiles`): two reserved
    200 pages (129,400 tokens under Anthropic's rule), refused on a plan the provider's most fits."""
    gw = gateway_factory()
    set_plan(gw.settings.database_url, "alice", "medium", "input_tokens=100000/1h")
    documents = [{"type": "document", "source": {"type": "url", "url": f"https://example.com/{name}.pdf"}}
                 for name in ("first", "second", "third")]
    raw = gw.anthropic(api_key=gw.key).messages.with_raw_response.create(
        model="claude-3-5-haiku-20241022", max_tokens=50,
        messages=[{"role": "user", "content": [*documents, {"type": "text", "text": "compare them"}]}],
    )
    assert raw.headers["x-ratelimit-limit"] == "100000", raw.headers
    assert 100 * 647 <= 100_000 - int(raw.headers["x-ratelimit-remaining"]) < 100 * 647 + 100, raw.headers
    assert raw.parse().content
