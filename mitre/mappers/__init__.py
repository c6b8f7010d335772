"""Mapping providers. `local` is built by the engine itself; others register here by name."""

from __future__ import annotations

from mitre.mappers.base import Mapper, MapperContext, MapperRegistry


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
    """The providers this installation knows. LLM providers add their factories here."""
    registry = MapperRegistry()
    registry.register("anthropic", _anthropic)
    registry.register("openai", _openai)
    registry.register("openai-compatible", _openai_compatible)
    return registry
