"""A Responses request's hosted tools that run a model of their own, as an attacker with a user key
would use them: the `image_generation` tool draws with its image model, whose tokens the answer
shows apart from its own `usage` (`tool_usage.image_gen`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.services.answers import MAX_BUFFERED
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import wait_for

IMAGE_USAGE = {"input_tokens": 50, "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
               "output_tokens": 6240, "total_tokens": 6290}


def _answer(result: str) -> dict[str, Any]:
    return {"id": "resp_img", "object": "response", "status": "completed", "model": "gpt-4o-mini",
            "output": [{"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": result}],
            "tools": [{"type": "image_generation", "model": "gpt-image-1"}],
            "usage": {"input_tokens": 300, "output_tokens": 40, "total_tokens": 340},
            "tool_usage": {"image_gen": IMAGE_USAGE, "web_search": {"num_requests": 0}}}


@pytest.mark.parametrize("shape", ["plain", "large", "stream"])
def test_the_image_tools_own_tokens_are_charged_as_its_models(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, shape: str,
) -> None:
    """The answer's `usage` is the request's model's alone: what its `image_generation` tool drew
    (6,240 image tokens of gpt-image-1, ~$0.25 an image at high quality) is shown only in its
    `tool_usage`, which nothing read — every image free of any limit, and of `cost_usd`. It is
    recorded as the tool's model's (the catalogue name the request gave), beside the answer's own
    record: plain, over 1 MiB (its base64 relayed as it arrives) and streamed."""
    doc = {"models": [{"name": "gpt-4o-mini", "provider": "openai"},
                      {"name": "house-image", "provider": "openai", "upstream_name": "gpt-image-1"}]}
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump(doc))
    upstream = ScriptedUpstream()
    answer = _answer("A" * (MAX_BUFFERED + 10 if shape == "large" else 16))
    if shape == "stream":
        created = {**answer, "status": "in_progress", "output": [], "usage": None, "tool_usage": None}
        upstream.sse({"type": "response.created", "sequence_number": 0, "response": created},
                     {"type": "response.completed", "sequence_number": 1, "response": answer})
    else:
        upstream.json(answer)
    with serving(upstream) as srv:
        gw = gateway_factory(providers_file=tmp_path / "tools.yaml", openai_api_url=srv.url + "/v1",
                             usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "draw a cat", "stream": shape == "stream",
                                                 "tools": [{"type": "image_generation", "model": "house-image"}]})
            assert r.status_code == 200, r.text
            assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2), \
                ledger_rows(gw.settings.database_url, "alice")
    rows = {row["model"]: row for row in ledger_rows(gw.settings.database_url, "alice")}
    assert (rows["gpt-4o-mini"]["input_tokens"], rows["gpt-4o-mini"]["output_tokens"]) == (300, 40)
    assert (rows["house-image"]["input_tokens"], rows["house-image"]["output_tokens"]) == (50, 6240)
