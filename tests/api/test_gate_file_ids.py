"""A file a request names by id is estimated by what its upload through Sentinel held.

A file Sentinel cannot read is reserved as a 100-page PDF under the dearest image rule: 2,550,100
tokens for gpt-4o-mini. Every file id a user may name is one they uploaded through Sentinel, which
reads the upload — but it kept nothing of it, so on README's own `pro` plan (2,000,000 input tokens
an hour) any gpt-4o-mini request naming a file id, a one-page PDF or a line of text, was refused as
one that can never fit. Now the upload's pages, size or text is kept beside the file's owner; a
file Sentinel kept nothing of (uploaded before it did) has its content read from the provider once,
at its owner's first use.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import UPSTREAM_KEY, Gateway
from tests.api.test_gate_ownership import key_for
from tests.api.test_quotas import set_plan
from tests.support.attack import openai_error
from tests.support.media import pdf, png
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

PRO = "input_tokens=2000000/1h"  # README's `pro` input limit, alone: the limit its headers show
INPUT_LIMIT = 2_000_000
MINI_PAGE = 25_501  # a letter page's image under gpt-4o-mini's rule
BOUND = 100 * MINI_PAGE  # a file Sentinel cannot read: 2,550,100 tokens, more than the plan's hour


def user(gw: Gateway, name: str) -> openai.OpenAI:
    """The openai SDK for a new user `name` on the `pro`-like plan (nothing used yet: what a request
    reserves is the limit less what its headers show remaining)."""
    set_plan(gw.settings.database_url, name, "pro", PRO)
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key_for(gw, name), max_retries=0)


def chat_naming(file: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"}, {"type": "file", "file": file}]}]}


def responses_naming(part: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "summarise"}, part]}]}


def reserved(raw: Any) -> int:
    """What an admitted request reserved of the input limit (its estimate), from its headers."""
    assert raw.headers["x-ratelimit-limit"] == str(INPUT_LIMIT), raw.headers
    return INPUT_LIMIT - int(raw.headers["x-ratelimit-remaining"])


def never_fits(call: Callable[[], Any]) -> int:
    with pytest.raises(openai.RateLimitError) as refused:
        call()
    error = openai_error(refused.value.response.json())
    assert "can never be admitted" in error["message"] and error["details"]["metric"] == "input_tokens", error
    return int(error["details"]["requested"])


def test_files_uploaded_through_sentinel_are_estimated_by_what_they_hold(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/files,/v1/files/*")

    def uploaded(name: str, file: tuple[str, bytes], purpose: str = "user_data") -> tuple[openai.OpenAI, str]:
        """A new user's SDK and the id of the file they uploaded through Sentinel."""
        client = user(gw, name)
        return client, client.files.create(file=file, purpose=purpose).id  # type: ignore[arg-type]

    # chat: one page (and a word of text), not 100: admitted on the `pro` plan
    client, report = uploaded("carol", ("report.pdf", pdf(1, compressed=True)))
    raw = client.chat.completions.with_raw_response.create(**chat_naming({"file_id": report}))
    assert MINI_PAGE < reserved(raw) < MINI_PAGE + 50, raw.headers
    assert raw.parse().choices[0].message.content
    assert gw.read_stored(f"sentinel:file-facts:{report}") == b'{"pages":1}'  # kept beside its owner
    # the same on Responses; a text file is its few tokens, an image its size
    client, report = uploaded("dave", ("report.pdf", pdf(1)))
    raw = client.responses.with_raw_response.create(**responses_naming({"type": "input_file", "file_id": report}))
    assert MINI_PAGE < reserved(raw) < MINI_PAGE + 50, raw.headers
    client, notes = uploaded("erin", ("notes.txt", b"three short notes"))
    raw = client.responses.with_raw_response.create(**responses_naming({"type": "input_file", "file_id": notes}))
    assert 0 < reserved(raw) < 50, raw.headers
    assert raw.parse().status == "completed"
    client, chart = uploaded("frank", ("chart.png", png(512, 512)), "vision")
    raw = client.responses.with_raw_response.create(
        **responses_naming({"type": "input_image", "file_id": chart, "detail": "high"}))
    assert reserved(raw) < 10_000, raw.headers  # 512 x 512, not the most an image can cost (48,000+)

    # a file by URL is still the 100-page bound: more than the plan's hour
    fresh = user(gw, "grace")
    assert never_fits(lambda: fresh.chat.completions.create(
        **chat_naming({"file_url": "https://example.com/report.pdf"}))) >= BOUND


def provider_reads(gw: Gateway, file_id: str) -> list[dict[str, Any]]:
    """The reads of `file_id`'s content the provider (the mock) received, with their headers."""
    mock = str(gw.settings.openai_api_url).removesuffix("/v1")
    found: list[dict[str, Any]] = httpx.get(
        f"{mock}/__mock/requests", params={"path": f"/v1/files/{file_id}/content"}, timeout=5).json()["data"]
    return found


def lost_at_provider(gw: Gateway, file_id: str) -> None:
    """Delete `file_id` at the provider itself (not through Sentinel): its content can no longer be read."""
    gone = httpx.delete(f"{gw.settings.openai_api_url}/files/{file_id}", headers={"Authorization": "Bearer k"}, timeout=5)
    assert gone.status_code == 200, gone.text


def test_a_file_id_without_facts_is_read_from_the_provider_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A file uploaded before Sentinel kept what uploads hold (or whose facts a store outage hid) was
    reserved as 100 pages, 2,550,100 tokens under gpt-4o-mini's rule: after the upgrade every existing
    file was refused with that model on the `pro` plan. Its first use reads its content from the
    provider — with the provider key alone — and keeps its facts; a file deleted through Sentinel
    takes its facts along."""
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/files,/v1/files/*")
    client = user(gw, "dave")
    older = client.files.create(file=("old.pdf", pdf(1, compressed=True)), purpose="user_data").id
    gw.drop_stored(f"sentinel:file-facts:{older}")  # as an upload made before this version
    raw = client.chat.completions.with_raw_response.create(**chat_naming({"file_id": older}))
    assert MINI_PAGE < reserved(raw) < MINI_PAGE + 50, raw.headers  # its one page, not 100
    assert gw.read_stored(f"sentinel:file-facts:{older}") == b'{"pages":1}'
    reads = provider_reads(gw, older)
    assert len(reads) == 1, reads
    sent = {name.lower(): value for name, value in reads[0]["headers"].items()}
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"  # Sentinel's key, none of the client's headers
    assert not {name for name in sent if name.startswith(("x-stainless", "openai-"))}, sorted(sent)
    # read once: the next request (on Responses too) is estimated by the facts kept
    raw = client.responses.with_raw_response.create(**responses_naming({"type": "input_file", "file_id": older}))
    assert MINI_PAGE < reserved(raw) < MINI_PAGE + 50, raw.headers
    assert len(provider_reads(gw, older)) == 1

    gone = client.files.create(file=("gone.txt", b"a line"), purpose="user_data").id
    assert 0 < reserved(client.responses.with_raw_response.create(
        **responses_naming({"type": "input_file", "file_id": gone}))) < 50
    assert gw.read_stored(f"sentinel:file-facts:{gone}") is not None
    assert client.files.delete(gone).deleted
    assert gw.read_stored(f"sentinel:file-facts:{gone}") is None


def test_a_file_whose_content_the_provider_does_not_give_keeps_the_bound(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A file without facts whose content read fails is reserved as 100 pages, never a 5xx: for good
    when the provider says it has no such file (404: kept as unreadable, not asked again), for now
    on a provider error (500: nothing kept, asked again later)."""
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/files,/v1/files/*")
    client = user(gw, "ivan")
    older = client.files.create(file=("old.pdf", pdf(1)), purpose="user_data").id
    gw.drop_stored(f"sentinel:file-facts:{older}")
    lost_at_provider(gw, older)
    assert never_fits(lambda: client.chat.completions.create(**chat_naming({"file_id": older}))) >= BOUND
    assert gw.read_stored(f"sentinel:file-facts:{older}") == b'{"unread":true}'
    assert never_fits(lambda: client.responses.create(
        **responses_naming({"type": "input_file", "file_id": older}))) >= BOUND
    assert len(provider_reads(gw, older)) == 1

    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        failing = gateway_factory(redis_url=backend_url, openai_api_url=srv.url + "/v1",
                                  passthrough="/v1/files,/v1/files/*")
        client = user(failing, "judy")
        upstream.json({"id": "file-failing", "object": "file", "purpose": "user_data"})
        assert client.files.create(file=("a.pdf", pdf(1)), purpose="user_data").id == "file-failing"
        failing.drop_stored("sentinel:file-facts:file-failing")
        upstream.json({"error": {"message": "The server had an error", "type": "server_error"}}, status=500)
        assert never_fits(lambda: client.chat.completions.create(**chat_naming({"file_id": "file-failing"}))) >= BOUND
    assert failing.read_stored("sentinel:file-facts:file-failing") is None
    assert len(upstream.received) == 2  # the upload and the one read: no chat call, nothing reserved


def test_files_sentinel_cannot_read_are_reserved_as_the_most_a_request_may_hold_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """The bound is the most pages a provider reads from one request's files (100: OpenAI's and
    Anthropic's limit per request), so a request naming several files Sentinel cannot read — uploaded
    before it kept their facts, by URL — reserves it once: each reserved it again (two files, 200 pages:
    5,100,200 tokens under gpt-4o-mini's rule, 153,000 under gpt-4o's — a plan admitting the bound
    refused a request the provider can bill no more than it for)."""
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/files,/v1/files/*")
    client = user(gw, "heidi")
    older = [client.files.create(file=(f"old-{n}.pdf", pdf(1)), purpose="user_data").id for n in range(2)]
    for file_id in older:
        gw.drop_stored(f"sentinel:file-facts:{file_id}")  # as uploads made before this version,
        lost_at_provider(gw, file_id)  # whose content the provider no longer gives
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "compare"}, *({"type": "file", "file": {"file_id": f}} for f in older),
        {"type": "file", "file": {"file_url": "https://example.com/third.pdf"}}]}]}
    assert BOUND <= never_fits(lambda: client.chat.completions.create(**chat)) < BOUND + 100
    responses = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "compare"}, *({"type": "input_file", "file_id": f} for f in older)]}]}
    assert BOUND <= never_fits(lambda: client.responses.create(**responses)) < BOUND + 100


def test_a_file_stays_its_owners(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    """Naming another user's file by id is the 404 of a file that does not exist, facts or not:
    nothing of it is read, nothing reserved."""
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/files,/v1/files/*")
    erin = user(gw, "erin")
    theirs = erin.files.create(file=("theirs.pdf", pdf(1)), purpose="user_data").id
    gw.drop_stored(f"sentinel:file-facts:{theirs}")  # without facts: still not read for another user
    with pytest.raises(openai.NotFoundError):
        user(gw, "frank").chat.completions.create(**chat_naming({"file_id": theirs}))
    assert provider_reads(gw, theirs) == []


def test_a_pdf_hiding_its_pages_from_the_count_is_estimated_by_them(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A PDF's pages were counted by the names as written: a 60-page PDF whose page dictionaries say
    `/Type /P#61ge` (an escape every reader decodes), `/Type %…⏎/Page` (a comment between, holding
    `/Type` and white space too: `/Type %/Type x⏎/Page`, hidden until later) or no
    `/Type` at all (a leaf of its page tree, as readers take it) was kept as one page at upload, and
    a request naming it — by id, or as data — reserved one page where the provider reads 60 (a
    1,530,060-token PDF on gpt-4o-mini let through as 25,501)."""
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/files,/v1/files/*")
    page = b"/Type /Page /Parent"
    for n, hidden in enumerate([pdf(60).replace(page, b"/Type /P#61ge /Parent"),
                                pdf(60).replace(page, b"/Type %see\n/Page /Parent"),
                                pdf(60).replace(page, b"/Type %/Type x\n/Page /Parent").replace(b"/Count 60", b"/Count 1"),
                                pdf(60).replace(page, b"/Parent").replace(b"/Count 60", b"/Count %/Count 1\n60"),
                                pdf(60).replace(page, b"/Parent")]):
        client = user(gw, f"mallory{n}")
        file_id = client.files.create(file=("report.pdf", hidden), purpose="user_data").id
        raw = client.chat.completions.with_raw_response.create(**chat_naming({"file_id": file_id}))
        assert reserved(raw) > 60 * MINI_PAGE, raw.headers
        data = "data:application/pdf;base64," + base64.b64encode(hidden).decode()
        raw = client.chat.completions.with_raw_response.create(**chat_naming({"file_data": data, "filename": "r.pdf"}))
        assert reserved(raw) > 60 * MINI_PAGE, raw.headers
