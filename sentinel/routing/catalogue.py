"""The model catalogue of the `/v1` surfaces: which model names clients may send and where they go.

One catalogue serves both wire formats. A name is a model (`name`, `provider`, optional
`upstream_name`, prices) or an alias naming one or more models, tried in order. An unknown name is
404 `model_not_found`, before any quota is taken and before any upstream call. Built once at start-up
(`sentinel.wiring`) from the providers file, or — when the file lists no `models:` — from the
well-known models of each configured built-in provider plus every model the tier table and the file's
providers name (so the embeddings and legacy-completions models keep working).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sentinel.domain.catalogue import CatalogueModel, ModelTarget, reasons_by_name
from sentinel.domain.tiers import TierModelEntry
from sentinel.errors import InvalidRequest, NotFound


class CatalogueError(ValueError):
    """The configured catalogue is inconsistent (raised at start-up, with one clear line)."""


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One entry of the model list: a model, or an alias (listed under its first target's provider)."""

    id: str
    provider: str
    created: int
    alias_of: tuple[str, ...] = ()


class ModelCatalogue:
    """Resolves client model names (see the module docstring). `kinds` maps provider names to wire formats."""

    def __init__(
        self,
        models: Sequence[CatalogueModel],
        aliases: Mapping[str, Sequence[str]],
        kinds: Mapping[str, str],
    ) -> None:
        self._models: dict[str, CatalogueModel] = {}
        for model in models:
            if model.name in self._models:
                raise CatalogueError(f"model {model.name!r} is listed twice")
            if model.provider not in kinds:
                raise CatalogueError(f"model {model.name!r} names provider {model.provider!r}, which is not configured")
            self._models[model.name] = model
        self._targets: dict[str, tuple[ModelTarget, ...]] = {
            name: (self._target(model, kinds),) for name, model in self._models.items()
        }
        self._reasons: dict[tuple[str, str], bool] = {}
        for model in self._models.values():
            key = (model.provider, model.upstream)
            self._reasons[key] = self._reasons.get(key, False) or model.reasoning
        # (the least any of them says: a cap above it is refused by the provider)
        self._max_output: dict[tuple[str, str], int] = {}
        for model in self._models.values():
            key, most = (model.provider, model.upstream), model.max_output_tokens
            if most is not None:
                self._max_output[key] = min(self._max_output.get(key, most), most)
        self._aliases: dict[str, tuple[str, ...]] = {}
        for alias, names in aliases.items():
            if alias in self._models:
                raise CatalogueError(f"alias {alias!r} has the name of a model")
            missing = [n for n in names if n not in self._models]
            if missing:
                raise CatalogueError(f"alias {alias!r} names unknown model(s): {', '.join(missing)}")
            self._aliases[alias] = tuple(dict.fromkeys(names))
            self._targets[alias] = tuple(self._targets[n][0] for n in self._aliases[alias])

    @staticmethod
    def _target(model: CatalogueModel, kinds: Mapping[str, str]) -> ModelTarget:
        return ModelTarget(
            model.name, model.provider, kinds[model.provider], model.upstream, model.prices, model.reasoning
        )

    def resolve(self, name: Any, param: str = "model") -> tuple[ModelTarget, ...]:
        """The targets of a model or alias name, in order; NotFound (404 `model_not_found`, naming the
        request's `param`) otherwise."""
        targets = self._targets.get(name) if isinstance(name, str) else None
        if targets is None:
            shown = name if isinstance(name, str) else repr(name)
            raise NotFound(
                f"The model '{shown[:200]}' does not exist in this gateway's catalogue (GET /v1/models lists it)",
                code="model_not_found", details={"param": param},
            )
        return targets

    def with_tools(
        self, targets: tuple[ModelTarget, ...], tools: Sequence[tuple[str, Any]]
    ) -> tuple[ModelTarget, ...]:
        """The `targets` of a request's model that can also run the models its tools name (`tools`:
        (parameter, value) pairs, `sentinel.services.objects.tool_models`): those whose provider serves
        every one of them (`on_provider`), in order. A tool's model is held to the catalogue as the
        request's own is — resolved here (404 `model_not_found` naming its parameter), and sent under
        the name its target's provider knows it by —; one that is not a string is 400, and so is one no
        target's provider serves (`model_not_supported`): one provider answers a request."""
        for param, name in tools:
            if not isinstance(name, str):
                raise InvalidRequest(f"`{param}` must be a model name (a string)", details={"param": param})
            self.resolve(name, param)
            served = tuple(t for t in targets if self.on_provider(name, t.provider) is not None)
            if not served:
                raise InvalidRequest(
                    f"The model '{name[:200]}' (`{param}`) is not served by the provider of the request's model "
                    f"'{targets[0].name}': a tool runs on the provider that serves the request",
                    code="model_not_supported", details={"param": param},
                )
            targets = served
        return targets

    def on_provider(self, name: str, provider: str) -> ModelTarget | None:
        """The target a known model or alias `name` has on `provider` (its first there), or None."""
        return next((t for t in self._targets.get(name, ()) if t.provider == provider), None)

    def reasons(self, provider: str, upstream_model: str) -> bool:
        """Whether the model `provider` knows as `upstream_model` (a tier's candidate) reasons without
        being asked: as the catalogue's models of that provider and upstream name say (any of them),
        else by its name (`reasons_by_name`)."""
        said = self._reasons.get((provider, upstream_model))
        return reasons_by_name(upstream_model) if said is None else said

    def max_output(self, provider: str, upstream_model: str) -> int | None:
        """The most output tokens one answer of the model `provider` knows as `upstream_model` (a
        tier's candidate) may have, as the catalogue's models of that provider and upstream name say
        (`max_output_tokens`, the least of them), or None: not known."""
        return self._max_output.get((provider, upstream_model))

    def listing(self) -> list[ListedModel]:
        """Every model, then every alias, in configuration order."""
        out = [ListedModel(m.name, m.provider, m.created) for m in self._models.values()]
        for alias, names in self._aliases.items():
            first = self._models[names[0]]
            out.append(ListedModel(alias, first.provider, first.created, names))
        return out

    def names(self) -> set[str]:
        """Every name a client may send, and every upstream model name (metric label values)."""
        return {*self._targets, *(m.upstream for m in self._models.values())}


def default_models(
    well_known: Mapping[str, Sequence[CatalogueModel]],
    providers: Iterable[str],
    extra: Iterable[TierModelEntry] = (),
) -> list[CatalogueModel]:
    """The catalogue used when the providers file lists no models: the well-known models of each configured
    provider that has any, then each `extra` (provider, model) pair (tier-table entries, a file provider's
    cheap and mid models) not named yet. A name already taken keeps its first provider."""
    configured = set(providers)
    out: dict[str, CatalogueModel] = {}
    for provider, models in well_known.items():
        if provider in configured:
            for model in models:
                out.setdefault(model.name, model)
    for entry in extra:
        if entry.provider in configured and entry.model not in out:
            try:
                out[entry.model] = CatalogueModel(
                    name=entry.model, provider=entry.provider,
                    input_price_per_million=entry.input_price_per_million,
                    output_price_per_million=entry.output_price_per_million,
                )
            except ValidationError:
                continue  # a name clients could not send anyway (see MODEL_NAME_PATTERN)
    return list(out.values())
