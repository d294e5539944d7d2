"""`GET /v1/models` and `GET /v1/models/{id}`: the catalogue, exactly, for both surfaces.

Answered by Sentinel alone (no upstream call). Each call reserves one request and is recorded. The
shape is OpenAI's list (`object`, `id`, `created`, `owned_by`: the provider), with the fields
Anthropic's SDK reads added (`type`, `display_name`, `created_at`; `has_more`, `first_id`,
`last_id`), so both official SDKs can list models. An alias is listed under its first model's
provider with `alias_of` naming its models. An unknown id is 404 `model_not_found` before admission.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from sentinel.domain.identity import Identity
from sentinel.quota.meter import Meter
from sentinel.routing.catalogue import ListedModel, ModelCatalogue
from sentinel.services.exchange import Exchange, Reply

JSON = [("content-type", "application/json")]


def _entry(model: ListedModel) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.provider,
        "type": "model",
        "display_name": model.id,
        "created_at": datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z"),
    }
    if model.alias_of:
        entry["alias_of"] = list(model.alias_of)
    return entry


class ModelList:
    """The catalogue as the model-list endpoints show it (see the module docstring)."""

    def __init__(self, catalogue: ModelCatalogue, meter: Meter) -> None:
        self.catalogue = catalogue
        self.meter = meter
        self._listing = [_entry(m) for m in catalogue.listing()]
        self._body = orjson.dumps({
            "object": "list",
            "data": self._listing,
            "has_more": False,
            "first_id": self._listing[0]["id"] if self._listing else None,
            "last_id": self._listing[-1]["id"] if self._listing else None,
        })

    async def list_models(self, ex: Exchange, identity: Identity) -> Reply:
        """Every model and alias of the catalogue."""
        await self._count(ex, identity, "models")
        return Reply(200, self._body, list(JSON))

    async def get_model(self, ex: Exchange, identity: Identity, model_id: str) -> Reply:
        """One catalogue entry; NotFound (404 `model_not_found`) for a name the catalogue does not have."""
        self.catalogue.resolve(model_id)
        entry = next(e for e in self._listing if e["id"] == model_id)
        await self._count(ex, identity, "model")
        return Reply(200, orjson.dumps(entry), list(JSON))

    async def _count(self, ex: Exchange, identity: Identity, endpoint: str) -> None:
        admission = await self.meter.admit_call(identity, endpoint=endpoint, request_id=ex.usage_id)
        ex.headers.extend(admission.headers.items())
        await self.meter.settle(admission, usage=None, output_text="", status=200, provider=None)
