"""The mock's Uploads API through the official SDK: create, parts, complete (the file it makes is a
file of `/v1/files`), cancel, expiry, and the real API's errors; what it holds is bounded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import openai
import pytest

from sentinel.mock.app import create_mock_app
from sentinel.mock.openai_uploads import MAX_PART_BYTES, MAX_UPLOAD_BYTES, UPLOAD_SECONDS
from tests.support.servers import serving

MADE = {"filename": "notes.txt", "purpose": "user_data", "mime_type": "text/plain"}


@pytest.fixture
def mock() -> Iterator[tuple[openai.OpenAI, object]]:
    """The SDK on a mock of its own (its uploads' clock can be set), and that mock's state."""
    app = create_mock_app()
    with serving(app) as srv, openai.OpenAI(api_key="sk-test", base_url=srv.url + "/v1", max_retries=0) as client:
        yield client, app.state.mock  # type: ignore[attr-defined]


def test_an_upload_completed_is_a_file_of_the_account(mock: tuple[openai.OpenAI, object]) -> None:
    client, _ = mock
    upload = client.uploads.create(bytes=11, **MADE)
    assert (upload.object, upload.status, upload.bytes, upload.filename) == ("upload", "pending", 11, "notes.txt")
    assert upload.expires_at == upload.created_at + UPLOAD_SECONDS and upload.file is None
    first = client.uploads.parts.create(upload.id, data=b"hello ")
    second = client.uploads.parts.create(upload.id, data=b"world")
    assert (first.object, first.upload_id) == ("upload.part", upload.id)
    done = client.uploads.complete(upload.id, part_ids=[first.id, second.id],
                                   md5=hashlib.md5(b"hello world").hexdigest())
    assert done.status == "completed" and done.file is not None and done.file.bytes == 11
    assert client.files.retrieve(done.file.id).filename == "notes.txt"
    assert client.files.content(done.file.id).content == b"hello world"
    batch = client.batches.create(input_file_id=done.file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.input_file_id == done.file.id
    with pytest.raises(openai.BadRequestError, match="status 'completed'"):
        client.uploads.parts.create(upload.id, data=b"more")


def test_the_real_apis_errors(mock: tuple[openai.OpenAI, object]) -> None:
    client, state = mock
    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create("upload_unknown", data=b"x")
    with pytest.raises(openai.NotFoundError):
        client.uploads.complete("upload_unknown", part_ids=[])
    upload = client.uploads.create(bytes=5, **MADE)
    part = client.uploads.parts.create(upload.id, data=b"abc")
    with pytest.raises(openai.BadRequestError, match="created with 5 bytes"):
        client.uploads.complete(upload.id, part_ids=[part.id])
    rest = client.uploads.parts.create(upload.id, data=b"de")
    with pytest.raises(openai.BadRequestError, match="MD5"):
        client.uploads.complete(upload.id, part_ids=[part.id, rest.id], md5="0" * 32)
    cancelled = client.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="status 'cancelled'"):
        client.uploads.parts.create(upload.id, data=b"x")
    with pytest.raises(openai.BadRequestError, match="status 'cancelled'"):
        client.uploads.complete(upload.id, part_ids=[part.id, rest.id])
    late = client.uploads.create(bytes=1, **MADE)
    state.uploads.clock = lambda: late.expires_at  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="status 'expired'"):
        client.uploads.parts.create(late.id, data=b"x")


def test_what_it_holds_is_bounded(mock: tuple[openai.OpenAI, object]) -> None:
    client, state = mock
    with pytest.raises(openai.BadRequestError):
        client.uploads.create(bytes=MAX_UPLOAD_BYTES + 1, **MADE)
    upload = client.uploads.create(bytes=MAX_UPLOAD_BYTES, **MADE)
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.uploads.parts.create(upload.id, data=b"x" * (MAX_PART_BYTES + 1))
    small = client.uploads.create(bytes=2, **MADE)
    client.uploads.parts.create(small.id, data=b"ab")
    with pytest.raises(openai.BadRequestError, match="more than the upload's 2 bytes"):
        client.uploads.parts.create(small.id, data=b"c")
    uploads = state.uploads  # type: ignore[attr-defined]
    for _ in range(uploads.limit):
        client.uploads.create(bytes=1, **MADE)
    assert len(uploads.uploads) == uploads.limit and upload.id not in uploads.uploads  # the oldest forgotten


def test_the_files_hold_at_most_their_bytes_in_all_the_oldest_forgotten_first(
    mock: tuple[openai.OpenAI, object],
) -> None:
    """Files uploaded, made by a batch or assembled from parts count towards one byte bound (the
    embedded mock runs in the gateway's process: 1,000 files of 10 MiB each were ~10 GB); a deleted
    file's bytes no longer count."""
    client, state = mock
    state.objects.file_bytes = 25  # type: ignore[attr-defined]
    first = client.files.create(file=("a.jsonl", b"x" * 10), purpose="batch")
    second = client.files.create(file=("b.jsonl", b"y" * 10), purpose="batch")
    client.files.delete(second.id)
    third = client.files.create(file=("c.jsonl", b"z" * 10), purpose="batch")
    assert {f.id for f in client.files.list()} == {first.id, third.id}  # 20 bytes: both kept
    upload = client.uploads.create(bytes=10, **MADE)
    part = client.uploads.parts.create(upload.id, data=b"w" * 10)
    assembled = client.uploads.complete(upload.id, part_ids=[part.id]).file
    assert assembled is not None
    assert {f.id for f in client.files.list()} == {third.id, assembled.id}  # 30 > 25: the oldest went
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(first.id)
    assert client.files.content(third.id).content == b"z" * 10
