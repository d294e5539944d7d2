"""The Uploads API through Sentinel against the project's mock, end to end with the official SDK:
create → parts → complete → the file in `/v1/files`, estimated by what the upload held when a
request names it, refused as a batch's input (its parts were never read as lines); another user's
upload, parts and file are 404 as unknown ones, asked of no one and charged nothing; cancel."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.api.test_gate_file_ids import BOUND, chat_naming, reserved, user
from tests.support.attack import SpyUpstream, openai_error, spying
from tests.support.clock import FakeClock

ADMIN_KEY = "admin-key-for-tests-0123"

PASSTHROUGH = "/v1/uploads,/v1/uploads/*,/v1/files,/v1/files/*,/v1/batches,/v1/batches/*"
TEXT = b"The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens of text
MADE = {"filename": "notes.txt", "purpose": "user_data", "mime_type": "text/plain"}


@pytest.fixture
def upstream() -> Iterator[SpyUpstream]:
    with spying(create_mock_app()) as (_, spy):
        yield spy


def uploaded(client: openai.OpenAI, content: bytes = TEXT, parts: int = 3) -> tuple[str, list[str], str]:
    """(upload id, part ids, file id) of `content` uploaded in `parts` parts and completed."""
    upload = client.uploads.create(bytes=len(content), **MADE)
    size = -(-len(content) // parts)
    part_ids = [client.uploads.parts.create(upload.id, data=content[i:i + size]).id
                for i in range(0, len(content), size)]
    done = client.uploads.complete(upload.id, part_ids=part_ids)
    assert done.status == "completed" and done.file is not None and done.file.bytes == len(content)
    return upload.id, part_ids, done.file.id


def test_an_uploads_file_is_its_makers_estimated_by_what_it_holds_and_no_batch_input(
    gateway_factory: Callable[..., Gateway], upstream: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH)
    carol = user(gw, "carol")
    _, _, file_id = uploaded(carol)
    assert carol.files.retrieve(file_id).bytes == len(TEXT)
    assert carol.files.content(file_id).content == TEXT
    # named by a request: read from the provider once, estimated as its text, not as 100 pages
    raw = carol.chat.completions.with_raw_response.create(**chat_naming({"file_id": file_id}))
    assert 0 < reserved(raw) < 1_000 < BOUND, raw.headers
    assert upstream.paths().count(f"/v1/files/{file_id}/content") == 2  # carol's download, then Sentinel's read
    # a batch's input only when uploaded through POST /v1/files, its lines read (README)
    upstream.clear()
    with pytest.raises(openai.BadRequestError) as refused:
        carol.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.code == "unchecked_batch_input" and upstream.seen == []


def test_another_users_upload_parts_and_file_are_unknown_to_him(
    gateway_factory: Callable[..., Gateway], upstream: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH,
                         admin_key=ADMIN_KEY, window_clock=FakeClock())
    alice = user(gw, "alice")
    pending = alice.uploads.create(bytes=4, **MADE)
    hers = alice.uploads.parts.create(pending.id, data=b"ab").id
    _, part_ids, file_id = uploaded(alice)
    bob = user(gw, "bob")
    before = gw.quota_used("bob")
    upstream.clear()
    refusals = [
        lambda: bob.uploads.parts.create(pending.id, data=b"cd"),
        lambda: bob.uploads.complete(pending.id, part_ids=[hers]),
        lambda: bob.uploads.cancel(pending.id),
        lambda: bob.files.retrieve(file_id),
        lambda: bob.files.content(file_id),
        lambda: bob.files.delete(file_id),
        lambda: bob.chat.completions.create(**chat_naming({"file_id": file_id})),
    ]
    for call in refusals:
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert openai_error(refused.value.response.json())["code"] == "object_not_found"
    his = bob.uploads.create(bytes=len(TEXT), **MADE)
    upstream.clear()
    with pytest.raises(openai.NotFoundError):  # her parts completing his upload: her bytes made his file
        bob.uploads.complete(his.id, part_ids=part_ids)
    assert upstream.seen == []
    assert gw.quota_used("bob") == before
    # and all of it is still hers
    alice.uploads.parts.create(pending.id, data=b"cd")
    assert alice.files.retrieve(file_id).id == file_id
    assert alice.uploads.cancel(pending.id).status == "cancelled"


def test_a_cancelled_upload_takes_no_part_and_a_refused_completion_changes_nothing(
    gateway_factory: Callable[..., Gateway], upstream: SpyUpstream
) -> None:
    gw = gateway_factory(openai_api_url=upstream.url + "/v1", passthrough=PASSTHROUGH)
    alice = user(gw, "alice")
    upload = alice.uploads.create(bytes=4, **MADE)
    part = alice.uploads.parts.create(upload.id, data=b"abc")
    with pytest.raises(openai.BadRequestError, match="created with 4 bytes"):  # the provider's refusal, relayed
        alice.uploads.complete(upload.id, part_ids=[part.id])
    rest = alice.uploads.parts.create(upload.id, data=b"d")  # still pending: nothing was made
    cancelled = alice.uploads.cancel(upload.id)
    assert (cancelled.id, cancelled.status, cancelled.file) == (upload.id, "cancelled", None)
    with pytest.raises(openai.BadRequestError, match="status 'cancelled'"):
        alice.uploads.parts.create(upload.id, data=b"e")
    with pytest.raises(openai.BadRequestError, match="status 'cancelled'"):
        alice.uploads.complete(upload.id, part_ids=[part.id, rest.id])
    assert upstream.app.state.mock.objects.files == {}  # type: ignore[attr-defined]  # no file was made
