"""Pass-through audio calls (`SENTINEL_PASSTHROUGH=/v1/audio/*`) are charged what their answer says
the provider billed. `whisper-1` bills by audio length and says so as `{"type": "duration",
"seconds": …}`, not in tokens: read as no usage, an hour transcribed counted no tokens against any
plan, so a user on a token limit transcribed without end (one request each)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, openai_error, wait_for
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

HOUR = {"text": "a long meeting", "usage": {"type": "duration", "seconds": 3599.95}}
HOUR_TOKENS = 36_000  # 10 tokens a second (OpenAI's rate for user audio), rounded up


@pytest.mark.parametrize("kind", ["transcriptions", "translations"])
def test_audio_billed_by_its_length_is_charged_and_held_to_the_input_limit(
    gateway_factory: Callable[..., Gateway], kind: str
) -> None:
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/audio/*",
                             default_plan="requests=100/1h,input_tokens=30000/1h")
        upstream.json(HOUR)
        client = gw.openai()
        made = getattr(client.audio, kind).create(model="whisper-1", file=("meeting.mp3", b"ID3" + b"\x00" * 64))
        assert made.text == "a long meeting"
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
        [row] = ledger_rows(gw.settings.database_url, "alice")
        assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, HOUR_TOKENS, 0)
        with gw.client() as alice:  # the hour spent the hour's input tokens: the next call is refused
            again = alice.post(f"/v1/audio/{kind}", data={"model": "whisper-1"}, files={"file": ("b.mp3", b"ID3")})
        assert again.status_code == 429, again.text
        assert openai_error(again.json())["code"] == "quota_exceeded"
        assert len(upstream.received) == 1  # refused before the provider
