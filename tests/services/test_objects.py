"""Which ids a multipart upload names, read part by part as a provider reads it."""

from __future__ import annotations

import pytest

from sentinel.services.objects import MalformedUpload, TooManyReferences, multipart_references

TYPE = 'multipart/form-data; boundary="XyZ"'


def part(disposition: str, value: bytes, *extra: str) -> bytes:
    head = "\r\n".join([f"Content-Disposition: {disposition}", *extra]).encode()
    return b"--XyZ\r\n" + head + b"\r\n\r\n" + value + b"\r\n"


def test_named_fields_are_read_file_parts_too() -> None:
    body = (part('form-data; name="purpose"', b"batch")
            + part('form-data; name="file"; filename="a.jsonl"', b'{"file_id": "not-a-field"} --XyZ is data',
                   "Content-Type: application/jsonl")
            + part('form-data; name="file_id"', b"file-alice1")
            + part('form-data; name="file_ids[]"', b"file-2")
            + part('form-data; name="container_id"; filename="x"', b"cntr_3")
            + b"--XyZ--\r\n")
    assert multipart_references(body, TYPE) == ["file-alice1", "file-2", "cntr_3"]


@pytest.mark.parametrize("body, content_type", [
    (part('form-data; name="file_id"', b"f"), "multipart/form-data"),  # no boundary
    (part("form-data", b"f"), TYPE),  # no name
    (part("form-data; name*=utf-8''file_id", b"f"), TYPE),  # RFC 2231: readers differ
    (part('form-data; name="a"', b"f", 'Content-Disposition: form-data; name="file_id"'), TYPE),  # two
    (b"--XyZ\r\nno colon here\r\n\r\nf\r\n--XyZ--", TYPE),
])
def test_a_part_that_cannot_be_read_is_malformed(body: bytes, content_type: str) -> None:
    with pytest.raises(MalformedUpload):
        multipart_references(body, content_type)


def test_too_many_ids_are_refused() -> None:
    body = b"".join(part('form-data; name="file_ids[]"', b"f") for _ in range(5)) + b"--XyZ--"
    with pytest.raises(TooManyReferences):
        multipart_references(body, TYPE, limit=4)


@pytest.mark.parametrize("body, content_type", [
    (b"hello", TYPE),  # no part at all
    (part('form-data; name="file_id"', b"f").replace(b"\r\n", b"\n") + b"--XyZ--\n", TYPE),  # LF only
    (part('form-data; name="file_id"', b"f"), TYPE),  # no closing boundary
    (part('form-data; name="purpose"; name="file_id"', b"f") + b"--XyZ--", TYPE),  # a parameter twice
    (part('form-data; name="file_id"', b"f") + b"--XyZ--", 'multipart/form-data; boundary=XyZ; boundary=Q'),
])
def test_a_body_a_lenient_reader_could_read_otherwise_is_malformed(body: bytes, content_type: str) -> None:
    """Once each of these came back as naming nothing (and was forwarded): a provider reading LF
    line ends, the last of two parameters, or a body this reader found no part in, saw the ids."""
    with pytest.raises(MalformedUpload):
        multipart_references(body, content_type)


def test_bracketed_names_are_read_by_their_components() -> None:
    body = (part('form-data; name="tool_resources[code_interpreter][file_ids][]"', b"file-a")
            + part('form-data; name="timestamp_granularities[]"', b"word") + b"--XyZ--")
    assert multipart_references(body, TYPE) == ["file-a"]
