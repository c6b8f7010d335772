"""workflows.yaml → Engine: the catalog, indicators, knowledge base, mapper and cache a workflow names.

Every caller builds its engine here (the CLI's enrich, explain and eval, the flows, the worker), so
one workflows file means one configuration wherever it runs; `EngineOptions` are the overrides
command-line flags add on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mitre.cache import DAY_SECONDS, MappingCache
from mitre.cache_guard import GuardedCache
from mitre.catalog import Catalog, load_catalog
from mitre.config import Environment, WorkflowsFile
from mitre.engine import Engine
from mitre.indicators import load_indicators
from mitre.knowledge_store import defer_knowledge, load_knowledge
from mitre.mappers import default_registry
from mitre.mappers.base import Mapper, MapperContext, MapperRegistry
from mitre.mappers.local import LocalMapper


@dataclass(frozen=True)
class EngineOptions:
    """Command-line overrides on top of workflows.yaml and the environment."""

    workflow: str | None = None
    mapper: str | None = None
    catalog: Path | None = None
    knowledge_base: tuple[Path, ...] | None = None
    cache: bool = True
    cache_dir: Path | None = None


def resolve_catalog(config: WorkflowsFile, env: Environment, override: Path | None = None) -> Catalog:
    """Explicit path → ATTACKMAP_CATALOG → workflows.yaml → installed active catalog → bundled package."""
    path = override or env.catalog or config.catalog.path
    if path is None and (env.home / "catalog.json").is_file():
        path = env.home / "catalog.json"
    return load_catalog(path, config.catalog.crosswalks)


def build_engine(
    config: WorkflowsFile,
    env: Environment | None = None,
    options: EngineOptions | None = None,
    registry: MapperRegistry | None = None,
) -> Engine:
    env = env or Environment()
    options = options or EngineOptions()
    catalog = resolve_catalog(config, env, options.catalog)
    indicators = load_indicators(catalog)
    workflow = config.workflow(options.workflow)
    settings = workflow.mapper
    if options.mapper:
        settings = settings.model_copy(update={"provider": options.mapper})
    kb_paths: tuple[Path, ...] = (
        options.knowledge_base
        if options.knowledge_base is not None
        else tuple(settings.knowledge_base) + ((env.knowledge_base,) if env.knowledge_base else ())
    )
    if settings.provider == LocalMapper.name:
        knowledge, kb_fingerprint, warnings = defer_knowledge(kb_paths, catalog, env.home / "knowledge")
    else:  # an LLM provider shortlists candidates with the local mapper on every call
        knowledge, kb_fingerprint, warnings = load_knowledge(kb_paths, catalog, env.home / "knowledge")
    local = (
        LocalMapper(catalog, indicators, settings, load_knowledge=knowledge, knowledge_fingerprint=kb_fingerprint)
        if callable(knowledge)
        else LocalMapper(catalog, indicators, settings, knowledge=knowledge, knowledge_fingerprint=kb_fingerprint)
    )
    registry = registry or default_registry()
    mapper: Mapper = (
        local
        if settings.provider == local.name
        else registry.create(settings.provider, MapperContext(catalog=catalog, settings=settings, local=local))
    )
    observer = None
    if mapper is not local:
        from mitre.mappers.budgeted import with_budget

        mapper, observer = with_budget(mapper, local, workflow, env)
    cache = None
    if options.cache:
        directory = options.cache_dir or env.cache_dir or config.cache.directory or env.home / "cache"
        size_limit_bytes = config.cache.size_limit_mb * 2**20
        ttl_seconds = config.cache.ttl_days * DAY_SECONDS
        cache = GuardedCache(
            lambda: MappingCache(directory, size_limit_bytes=size_limit_bytes, ttl_seconds=ttl_seconds),
            where=str(directory),
        )
    engine = Engine(catalog, indicators, config, options.workflow, mapper, cache, warnings)
    if observer is not None:
        engine.observers.append(observer)
    return engine
