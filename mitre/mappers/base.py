"""The mapper contract every provider implements, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mitre.catalog import Catalog
from mitre.config import MapperSettings
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


@dataclass(frozen=True)
class MapperContext:
    """What a mapper factory may use: the catalog, the workflow's mapper settings, and the local
    mapper (LLM providers use it for candidate shortlists and as their fallback)."""

    catalog: Catalog
    settings: MapperSettings
    local: LocalMapper | None = None


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
