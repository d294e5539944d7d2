"""A provider's response headers reach the client only when allowlisted (`RELAYED_RESPONSE_HEADERS`)."""

from __future__ import annotations

from sentinel.providers.openai import relayable_headers


def test_only_allowlisted_headers_are_relayed_in_any_case_as_they_came() -> None:
    upstream = [
        ("Content-Type", "application/octet-stream"), ("Content-Disposition", 'attachment; filename="a.jsonl"'),
        ("Content-Encoding", "identity"), ("Retry-After", "3"), ("x-should-retry", "true"),
        ("Content-Length", "10"), ("X-Request-Id", "req_upstream"), ("x-litellm-key-spend", "12.5"),
        ("X-Ms-Region", "East US"), ("CF-Ray", "8a1b"), ("WWW-Authenticate", "Bearer"), ("x-future-account-header", "1"),
    ]
    assert relayable_headers(upstream) == [
        ("Content-Type", "application/octet-stream"), ("Content-Disposition", 'attachment; filename="a.jsonl"'),
        ("Content-Encoding", "identity"), ("Retry-After", "3"), ("x-should-retry", "true"),
    ]


def test_a_range_or_conditional_download_keeps_the_headers_that_describe_it() -> None:
    """`Range` and `If-*` go upstream, so a 206 came back without its `Content-Range` (the bytes were
    put together wrongly by a resuming client) and a download lost its validators."""
    upstream = [
        ("Content-Range", "bytes 0-9/100"), ("Accept-Ranges", "bytes"), ("ETag", '"abc"'),
        ("Last-Modified", "Sat, 05 Dec 2026 00:00:00 GMT"), ("x-litellm-model-api-base", "http://10.0.0.1"),
    ]
    assert relayable_headers(upstream) == upstream[:4]
