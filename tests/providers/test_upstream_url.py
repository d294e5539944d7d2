"""The upstream URL of a relayed path: each segment percent-encoded whole, never normalised."""

from __future__ import annotations

import pytest

from sentinel.providers import openai as provider

BASE = "http://upstream.test/v1"


@pytest.mark.parametrize(
    ("segments", "path"),
    [
        (["chat", "completions"], "/v1/chat/completions"),
        (["files", "a/b"], "/v1/files/a%2Fb"),  # a slash inside a segment stays inside it
        (["files", ".."], "/v1/files/.."),  # not normalised away
        (["files", "%2e%2e"], "/v1/files/%252e%252e"),  # a percent is encoded, not decoded
        (["models", "ü ?#"], "/v1/models/%C3%BC%20%3F%23"),
    ],
)
def test_segments_are_encoded_whole(segments: list[str], path: str) -> None:
    url = provider.upstream_url(BASE, segments)
    assert url.raw_path == path
    assert url.raw_query_string == "" and url.raw_fragment == ""
    assert provider.upstream_url(BASE, segments) == url  # the remembered URL is the same URL


def test_only_short_paths_are_remembered() -> None:
    provider._remembered_url.cache_clear()
    provider.upstream_url(BASE, ["chat", "completions"])
    long = ["files", "x" * (provider._REMEMBERED_PATH_CHARS + 1)]
    url = provider.upstream_url(BASE, long)
    assert url.raw_path == "/v1/files/" + "x" * (provider._REMEMBERED_PATH_CHARS + 1)
    assert provider._remembered_url.cache_info().currsize == 1
