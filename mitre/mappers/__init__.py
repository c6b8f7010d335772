"""Mapping providers. `local` is built by the engine itself; others register here by name."""

from __future__ import annotations

from mitre.mappers.base import MapperRegistry


def default_registry() -> MapperRegistry:
    """The providers this installation knows. LLM providers add their factories here."""
    registry = MapperRegistry()
    return registry
