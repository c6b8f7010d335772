"""The mapper contract every provider implements, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.indicators import IndicatorSet
from mitre.knowledge_store import LoadedKnowledge
from mitre.models import AlertFeatures, Decision, MappingResult

if TYPE_CHECKING:
    from mitre.mappers.local import LocalMapper


class Mapper(Protocol):
    """Turns features into ranked techniques. Output is always re-checked by mitre.validate."""

    name: str
    model: str | None
    prompt_hash: str

    def map(self, features: AlertFeatures, decision: Decision) -> MappingResult: ...

    def settings_hash(self) -> str:
        """Hash of the settings that change this mapper's output (part of the cache key)."""
        ...


@runtime_checkable
class BatchMapper(Protocol):
    """A mapper that maps many alerts at once more cheaply than one by one (vectorised models)."""

    def map_many(self, features: Sequence[AlertFeatures], decisions: Sequence[Decision]) -> list[MappingResult]: ...


def maps_in_batches(mapper: Mapper) -> bool:
    return isinstance(mapper, BatchMapper)


def map_all(mapper: Mapper, features: Sequence[AlertFeatures], decisions: Sequence[Decision]) -> list[MappingResult]:
    """Every alert mapped: in one batch when the mapper can, else one by one."""
    if isinstance(mapper, BatchMapper):
        return mapper.map_many(features, decisions)
    return [mapper.map(f, d) for f, d in zip(features, decisions, strict=True)]


@dataclass(frozen=True)
class MapperContext:
    """What a mapper factory may use: the catalog, the workflow's mapper settings, the indicator set
    and knowledge base (the local mapper's evidence), and the local mapper (LLM providers use it for
    candidate shortlists and as their fallback)."""

    catalog: Catalog
    settings: MapperSettings
    local: LocalMapper | None = None
    indicators: IndicatorSet | None = None
    knowledge: LoadedKnowledge | None = None


MapperFactory = Callable[[MapperContext], Mapper]


class MapperRegistry:
    """Provider name → factory. An instance, not a module global, so tests can build their own."""

    def __init__(self) -> None:
        self._factories: dict[str, MapperFactory] = {}

    def register(self, name: str, factory: MapperFactory) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, context: MapperContext) -> Mapper:
        try:
            factory = self._factories[name]
        except KeyError:
            raise ValueError(f"unknown mapper {name!r}; known: {', '.join(self.names())}") from None
        return factory(context)
