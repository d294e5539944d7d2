"""The model catalogue's value types: a model clients may name, its prices, and where it resolves to.

`CatalogueModel` is what an operator writes in the providers file (`models:`) and what the default
catalogue is made of; `ModelTarget` is one resolved destination (a provider, the model name that
provider knows, its wire format and prices). An alias resolves to one or more targets, in order.
Pure data: the catalogue itself (resolution, validation) is `sentinel.routing.catalogue`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from sentinel.domain.numbers import MAX_TOKENS

__all__ = [
    "MAX_PRICE", "MODEL_NAME_PATTERN", "UPSTREAM_MODEL_PATTERN", "CatalogueModel", "ModelTarget", "Price", "Prices",
    "UpstreamModelName", "reasons_by_name", "stored_price",
]

# What a client may send as `model` and what the ledger's model column holds (at most 200 characters).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"

# A model name as a provider knows it (a tier table's `model`, a catalogue model's `upstream_name`, a
# file provider's `cheap_model`/`mid_model`): printable ASCII, spaces only inside, at most 200
# characters — looser than MODEL_NAME_PATTERN (a local server may serve `/models/llama-3` or
# `Llama 3 8B Instruct`). It is sent back in `X-Sentinel-Model`: a character outside it (a control
# character, a line break, a `‑` pasted from a web page) made every answer of that model a 500 after
# the provider had served it, or a dropped connection. The one home of that rule: every source of
# the tier table and of the catalogue is this type.
UPSTREAM_MODEL_PATTERN = r"^[!-~](?:[ -~]{0,198}[!-~])?$"
UpstreamModelName = Annotated[str, Field(pattern=UPSTREAM_MODEL_PATTERN)]

# A provider's name as a tier table's entry or a catalogue model names it: 1 to 40 characters (the
# tier table's column is VARCHAR(40)). The one home of that bound: a stored session naming a longer
# one is no session (`sentinel.routing.sessions`), it made every turn of its conversation a 500.
MAX_PROVIDER_NAME = 40
ProviderName = Annotated[str, Field(min_length=1, max_length=MAX_PROVIDER_NAME)]

# The most a price may be, USD per million tokens: far above any real model's, and low enough that
# a cost (at most MAX_TOKENS tokens per call) and the sums of many stay finite. Above it, a cost was
# `inf`, which the ledger stored and the console's charts could not scale (a 500).
MAX_PRICE = 1_000_000.0

# A price as operators and Zion write it (USD per million tokens): 0 to MAX_PRICE (`inf`, `1e400`,
# `nan` and `1e308` are refused). The one home of price validation: the providers file's models, the
# tier table's entries (`sentinel tiers set`, the console, the admin API, the providers file's
# `tiers:`, Zion's tier config) are all this type.
Price = Annotated[float, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False)]


def stored_price(value: float) -> float:
    """A price read back from the database, brought within 0..MAX_PRICE (a row written before the
    bound held up to 1e308; refusing it would make the whole tier table unreadable)."""
    if 0.0 <= value <= MAX_PRICE:
        return value
    return MAX_PRICE if value > MAX_PRICE else 0.0  # nan: 0


# The models that reason when a request does not ask them to (their hidden reasoning billed as
# output), told by the name their provider knows (after the last `/`, as OpenRouter's `openai/o3`):
# OpenAI's o-series (`o1`, `o3`, `o4-mini`, their snapshots, `-pro` and `-deep-research`), `codex-mini`
# and the gpt-5 family, except `gpt-5-chat(-latest)`, ChatGPT's non-reasoning model
# (`gpt-5.1-chat-latest` reasons). `gpt-5.1` is counted in although its default effort is `none`:
# gpt-5, -mini, -nano, -codex and -pro reason by default, a name cannot tell every later snapshot's
# default, and a wrong "yes" costs only a cut stream charged as reserved (the client may send
# `reasoning_effort: "none"`). Anthropic's models think only when asked (`thinking`). A providers-file
# model's `reasons` overrides this rule.
_REASONS = re.compile(r"(?:o[134]|codex-mini|gpt-5)(?:[-.].*)?", re.IGNORECASE)
_DOES_NOT_REASON = re.compile(r"gpt-5-chat(?:-.*)?", re.IGNORECASE)


def reasons_by_name(upstream_model: str) -> bool:
    """Whether the model its provider knows as `upstream_model` reasons without being asked (see
    `_REASONS`): what a model the providers file gives no `reasons` is taken to do."""
    name = upstream_model.rsplit("/", 1)[-1]
    return _REASONS.fullmatch(name) is not None and _DOES_NOT_REASON.fullmatch(name) is None


def takes_completion_cap(upstream_model: str) -> bool:
    """Whether the OpenAI-format model its provider knows as `upstream_model` is one of OpenAI's
    reasoning models by its own name (`reasons_by_name`; a providers file's `reasons` tells how a
    model bills, not which fields its API takes), which refuse `max_tokens` and take the output cap
    as `max_completion_tokens`: what a translated or native request's cap is sent as. A router's
    name (`openai/o3`, with a `/`) is not: a router reads `max_tokens` and passes it on as the model
    takes it."""
    return "/" not in upstream_model and reasons_by_name(upstream_model)


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens. Cache writes and reads cost the input price unless priced themselves."""

    input: float = 0.0
    output: float = 0.0
    cache_write: float | None = None
    cache_read: float | None = None

    @property
    def known(self) -> bool:
        """Whether any price is set (an all-zero table means "unknown": no cost is recorded)."""
        return any((self.input, self.output, self.cache_write, self.cache_read))

    def cost(self, input_tokens: int, output_tokens: int, cache_write: int = 0, cache_read: int = 0) -> float | None:
        """The USD cost of a request; `input_tokens` includes the cache writes and reads. None when unknown."""
        if not self.known:
            return None
        plain = max(0, input_tokens - cache_write - cache_read)
        write = self.input if self.cache_write is None else self.cache_write
        read = self.input if self.cache_read is None else self.cache_read
        total = plain * self.input + cache_write * write + cache_read * read + output_tokens * self.output
        return round(total / 1_000_000, 8)


class CatalogueModel(BaseModel):
    """One model of the catalogue, as the providers file spells it.

    `name` is what clients send; `upstream_name` (default: `name`) what the provider is sent.
    `created` (Unix time) is only shown in the model list. `reasons`: whether the model reasons
    without being asked (its hidden reasoning billed as output); unset, told by its upstream name
    (`reasons_by_name`). `max_output_tokens`: the most output one answer of the model may have (its
    provider's maximum), to which a native request's `max_tokens` is brought down; unset, unknown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    provider: ProviderName
    upstream_name: UpstreamModelName | None = None
    input_price_per_million: Price = 0.0
    output_price_per_million: Price = 0.0
    cache_write_price_per_million: Price | None = None
    cache_read_price_per_million: Price | None = None
    created: int = Field(0, ge=0)
    reasons: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)

    @property
    def upstream(self) -> str:
        """The model name the provider is sent."""
        return self.upstream_name or self.name

    @property
    def reasoning(self) -> bool:
        """Whether the model reasons without being asked: `reasons`, else by its upstream name."""
        return reasons_by_name(self.upstream) if self.reasons is None else self.reasons

    @property
    def prices(self) -> Prices:
        return Prices(
            self.input_price_per_million, self.output_price_per_million,
            self.cache_write_price_per_million, self.cache_read_price_per_million,
        )


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """Where a catalogue name sends a request: `kind` is the provider's wire format (openai, anthropic);
    `reasons` whether the model reasons without being asked (`CatalogueModel.reasoning`)."""

    name: str
    provider: str
    kind: str
    upstream_model: str
    prices: Prices
    reasons: bool = False
