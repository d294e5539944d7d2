"""The advisor tool's steps (`advisor_message` in an Anthropic answer's `usage.iterations`) are run by
the tool's model: the record's `cost_usd` prices each at that model's catalogue prices, the rest at
the request's model's (their tokens were counted already). They were priced as the request's model:
a cheap executor consulting a dear advisor was recorded at a fraction of what it cost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.domain.catalogue import Prices
from tests.api.conftest import Gateway
from tests.api.test_quotas import wait_for
from tests.api.test_usage_both_surfaces import claude_events, claude_message, ledger_rows
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

EXECUTOR = Prices(input=1.0, output=5.0, cache_read=0.1)
ADVISOR = Prices(input=15.0, output=75.0, cache_read=1.5)
ASK = {"model": "executor", "max_tokens": 30, "messages": [{"role": "user", "content": "plan this"}],
       "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "advisor"}]}


def providers_file(tmp_path: Path) -> Path:
    """The executor and the advisor on the Anthropic provider, each under a house name."""
    def model(name: str, upstream: str, prices: Prices) -> dict[str, Any]:
        return {"name": name, "provider": "anthropic", "upstream_name": upstream,
                "input_price_per_million": prices.input, "output_price_per_million": prices.output,
                "cache_read_price_per_million": prices.cache_read}

    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({"models": [model("executor", "claude-haiku-4-5", EXECUTOR),
                                              model("advisor", "claude-opus-4-8", ADVISOR)]}))
    return path


def step(kind: str, plain: int, output: int, read: int = 0, model: str | None = None) -> dict[str, Any]:
    return {"type": kind, "input_tokens": plain, "output_tokens": output, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": read, **({"model": model} if model else {})}


@pytest.mark.parametrize("advised_by", ["claude-opus-4-8", "claude-opus-4-8-20260401"],
                         ids=["its upstream name", "a name the catalogue does not know"])
def test_advisor_steps_are_priced_at_the_advisor_models_prices(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, advised_by: str
) -> None:
    """Relayed whole and streamed, the record counts the advisor's tokens (as before) and prices
    them at the advisor's prices. A step naming a model the catalogue does not know under that name
    (a dated snapshot) is priced at the dearest of the request's models — never below what it was."""
    top = {"input_tokens": 2_000, "output_tokens": 300, "cache_read_input_tokens": 1_000}
    advice = step("advisor_message", 40_000, 1_500, read=10_000, model=advised_by)
    iterations = [step("message", 1_200, 100), advice, step("message", 800, 200, read=1_000)]
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url, providers_file=providers_file(tmp_path),
                             usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.json(claude_message({**top, "iterations": iterations}))
            whole = http.post("/v1/messages", json=ASK)
            events = claude_events({"input_tokens": 2_000, "output_tokens": 1, "cache_read_input_tokens": 1_000}, 0)
            events[-2]["usage"] = {**top, "iterations": iterations}
            upstream.sse(*events)
            streamed = http.post("/v1/messages", json={**ASK, "stream": True})
    assert [whole.status_code, streamed.status_code] == [200, 200], (whole.text, streamed.text)
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    own = EXECUTOR.cost(3_000, 300, 0, 1_000)
    advised = ADVISOR.cost(50_000, 1_500, 0, 10_000)
    assert own is not None and advised is not None
    for row in ledger_rows(gw.settings.database_url):
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (53_000, 1_800, 11_000), row
        assert row["cost_usd"] == pytest.approx(own + advised), row
        assert row["cost_usd"] > EXECUTOR.cost(53_000, 1_800, 0, 11_000)  # type: ignore[operator]
