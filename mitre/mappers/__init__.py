"""Mapping providers, each registered here by name; `local` is one of them like the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mitre.mappers.base import Mapper, MapperContext, MapperRegistry

LOCAL = "local"


if TYPE_CHECKING:
    from mitre.mappers.local import LocalWeights


def local_mapper(context: MapperContext, weights: LocalWeights | None = None) -> Mapper:
    """The local mapper over the context's indicators and knowledge base (`weights`: the tuned defaults
    unless given, e.g. raw confidences for fitting the calibration)."""
    from mitre.mappers.local import LocalMapper

    if context.indicators is None:
        raise ValueError("the local mapper needs the indicator set (MapperContext.indicators)")
    knowledge = context.knowledge
    base = knowledge.base if knowledge is not None else None
    return LocalMapper(
        context.catalog,
        context.indicators,
        context.settings,
        knowledge=None if callable(base) else base,
        load_knowledge=base if callable(base) else None,
        knowledge_fingerprint=knowledge.fingerprint if knowledge is not None else "",
        weights=weights,
    )


def _anthropic(context: MapperContext) -> Mapper:
    from mitre.mappers.llm.anthropic import create_anthropic_mapper

    return create_anthropic_mapper(context)


def _openai(context: MapperContext) -> Mapper:
    from mitre.mappers.llm.openai import create_openai_mapper

    return create_openai_mapper(context)


def _openai_compatible(context: MapperContext) -> Mapper:
    from mitre.mappers.llm.openai import create_compatible_mapper

    return create_compatible_mapper(context)


def default_registry() -> MapperRegistry:
    """The providers this installation knows."""
    registry = MapperRegistry()
    registry.register(LOCAL, local_mapper)
    registry.register("anthropic", _anthropic)
    registry.register("openai", _openai)
    registry.register("openai-compatible", _openai_compatible)
    return registry
