"""`sentinel mock-upstream` as a process: `--api-key` makes it accept that key only, in both wire formats."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest

from tests.support.process import MockUpstreamProcess

KEY = "mock-cli-key-0123456789"
USER = [{"role": "user", "content": "hello from the cli test"}]


def test_mock_upstream_api_key_option(tmp_path: Path) -> None:
    with MockUpstreamProcess(tmp_path, api_key=KEY) as mock:
        good = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY, max_retries=0)
        answer = good.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=mock.url + "/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=mock.url, api_key="wrong", max_retries=0).messages.create(
                model="claude-3-5-haiku-latest", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
        message = anthropic.Anthropic(base_url=mock.url, api_key=KEY, max_retries=0).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content


def test_mock_upstream_without_api_key_accepts_any(tmp_path: Path) -> None:
    with MockUpstreamProcess(tmp_path) as mock:
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key="anything", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices  # type: ignore[arg-type]
