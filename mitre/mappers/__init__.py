"""Mapping providers, each registered here by name; `local` is one of them like the others."""

from __future__ import annotations

from mitre.mappers.base import Mapper, MapperContext, MapperRegistry

LOCAL = "local"


def _local(context: MapperContext) -> Mapper:
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
    registry.register(LOCAL, _local)
    registry.register("anthropic", _anthropic)
    registry.register("openai", _openai)
    registry.register("openai-compatible", _openai_compatible)
    return registry
