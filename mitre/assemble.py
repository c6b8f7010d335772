"""workflows.yaml → Engine: the catalog, indicators, knowledge base, mapper and cache a workflow names.

Every caller builds its engine here (the CLI's enrich, explain and eval, the flows, the worker), so
one workflows file means one configuration wherever it runs; `EngineOptions` are the overrides
command-line flags add on top.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mitre.cache import DAY_SECONDS, LOCK_EXPIRE_SECONDS, MappingCache, SharedTier
from mitre.cache_guard import GuardedCache
from mitre.catalog import Catalog, load_catalog
from mitre.compliance import load_compliance
from mitre.config import Environment, MapperSettings, WorkflowsFile
from mitre.engine import Engine, EngineConfiguration
from mitre.feedback.loop import open_feedback
from mitre.indicators import load_indicators
from mitre.knowledge_store import LoadedKnowledge, Notify, open_knowledge
from mitre.mappers import LOCAL, default_registry
from mitre.mappers.base import Mapper, MapperContext, MapperRegistry
from mitre.tool_events import load_tool_events


@dataclass(frozen=True)
class EngineOptions:
    """Command-line overrides on top of workflows.yaml and the environment."""

    workflow: str | None = None
    mapper: str | None = None
    catalog: Path | None = None
    knowledge_base: tuple[Path, ...] | None = None
    cache: bool = True
    cache_dir: Path | None = None
    feedback: bool = True


def shared_tier(config: WorkflowsFile, env: Environment, warnings: list[str]) -> SharedTier | None:
    """The cache's shared tier when `cache.shared` names one (Redis: `cache.redis_url`, else
    $ATTACKMAP_REDIS_URL); a server not run as an LRU cache is reported in `warnings`."""
    if config.cache.shared == "none":
        return None
    url = config.cache.redis_url or env.redis_url
    if not url:
        raise ValueError("cache.shared is redis: set cache.redis_url or ATTACKMAP_REDIS_URL")
    from mitre.cache_redis import RedisTier, redis_client

    tier = RedisTier(redis_client(url), LOCK_EXPIRE_SECONDS)
    if (problem := tier.policy_problem()) is not None:
        warnings.append(problem)
    return tier


def resolve_catalog(
    config: WorkflowsFile, env: Environment, override: Path | None = None, warnings: list[str] | None = None
) -> Catalog:
    """Explicit path → ATTACKMAP_CATALOG → workflows.yaml → installed active catalog → bundled package.

    A catalog or crosswalk that workflows.yaml names but that is not there (the shared ATT&CK bundle on
    a machine without it) is reported in `warnings` and the next one in that order is used; an
    explicit path or ATTACKMAP_CATALOG that is missing is an error."""
    notes = warnings if warnings is not None else []
    installed = env.home / "catalog.json"
    path = override or env.catalog
    if path is None and config.catalog.path is not None:
        if config.catalog.path.is_file():
            path = config.catalog.path
        else:
            instead = f"the installed catalog {installed}" if installed.is_file() else "the bundled offline catalog"
            notes.append(f"catalog {config.catalog.path} not found: using {instead}")
    if path is None and installed.is_file():
        path = installed
    crosswalks = []
    for crosswalk in config.catalog.crosswalks:
        if crosswalk.is_file():
            crosswalks.append(crosswalk)
        else:
            notes.append(f"crosswalk {crosswalk} not found: newer ATT&CK IDs it maps are left to the built-in ones")
    return load_catalog(path, crosswalks)


def mapper_settings(config: WorkflowsFile, options: EngineOptions) -> MapperSettings:
    """The workflow's mapper settings with the command line's provider on top."""
    settings = config.workflow(options.workflow).mapper
    return settings.model_copy(update={"provider": options.mapper}) if options.mapper else settings


def knowledge_paths(config: WorkflowsFile, env: Environment, options: EngineOptions) -> tuple[Path, ...]:
    """The knowledge-base files: the command line's, else the workflow's plus ATTACKMAP_KNOWLEDGE_BASE."""
    if options.knowledge_base is not None:
        return options.knowledge_base
    configured = tuple(config.workflow(options.workflow).mapper.knowledge_base)
    return configured + ((env.knowledge_base,) if env.knowledge_base else ())


def build_engine(
    config: WorkflowsFile,
    env: Environment | None = None,
    options: EngineOptions | None = None,
    registry: MapperRegistry | None = None,
    *,
    catalog: Catalog | None = None,
    knowledge: LoadedKnowledge | None = None,
    notify: Notify | None = None,
) -> Engine:
    """The engine a workflow describes. `catalog` and `knowledge`, when given, are used instead of
    loading them (the evals build one engine per cross-validation fold over one catalog). `notify`
    hears about a slow step (training a knowledge base) as it starts."""
    env = env or Environment()
    options = options or EngineOptions()
    warnings: list[str] = []
    catalog = catalog or resolve_catalog(config, env, options.catalog, warnings)
    indicators = load_indicators(catalog)
    workflow = config.workflow(options.workflow)
    settings = mapper_settings(config, options)
    feedback = open_feedback(config.feedback, env) if config.feedback.enabled and options.feedback else None
    if knowledge is None:
        paths = knowledge_paths(config, env, options)
        if feedback is not None and options.knowledge_base is None:
            # Analysts' corrections join the knowledge base when it is next built (its fingerprint moves).
            examples = env.home / "feedback" / "knowledge.jsonl"
            if feedback.export_knowledge(examples, config.feedback.knowledge_tenants):
                paths += (examples,)
        # The local mapper alone loads a stored knowledge base on first use; an LLM provider
        # shortlists candidates with it on every call.
        knowledge = open_knowledge(
            paths,
            catalog,
            env.home / "knowledge",
            lazy=settings.provider == LOCAL,
            notify=notify,
        )
    registry = registry or default_registry()
    context = MapperContext(catalog=catalog, settings=settings, indicators=indicators, knowledge=knowledge)
    local = registry.create(LOCAL, context)
    mapper: Mapper = local
    observer = None
    if settings.provider != LOCAL:
        # LLM providers shortlist candidates with the local mapper's retriever and knowledge base,
        # and fall back to it: they need the real one, not any mapper registered as "local".
        from mitre.mappers.local import LocalMapper

        if not isinstance(local, LocalMapper):
            raise ValueError(f"provider {settings.provider!r} needs the local mapper under the name {LOCAL!r}")
        from mitre.mappers.budgeted import with_budget

        llm = registry.create(settings.provider, replace(context, local=local))
        mapper, observer = with_budget(llm, local, workflow, env)
    cache = None
    if options.cache:
        directory = options.cache_dir or env.cache_dir or config.cache.directory or env.home / "cache"
        shared = shared_tier(config, env, warnings)
        size_limit_bytes = config.cache.size_limit_mb * 2**20
        ttl_seconds = config.cache.ttl_days * DAY_SECONDS
        llm_ttl_seconds = config.cache.llm_ttl_days * DAY_SECONDS
        cache = GuardedCache(
            lambda: MappingCache(
                directory,
                size_limit_bytes=size_limit_bytes,
                ttl_seconds=ttl_seconds,
                llm_ttl_seconds=llm_ttl_seconds,
                shared=shared,
            ),
            where=str(directory),
        )
    configuration = EngineConfiguration(
        workflows=config.describe_source(),
        workflow=workflow.name,
        catalog_version=catalog.version,
        catalog_fingerprint=catalog.fingerprint,
        catalog_source=catalog.source,
        knowledge_sources=knowledge.sources,
        knowledge_fingerprint=knowledge.fingerprint,
        mapper=mapper.name,
        model=mapper.model,
    )
    tool_events = load_tool_events(catalog, workflow.tool_events.table)
    compliance, missing = load_compliance(catalog, config.compliance.mappings, config.compliance.user_mappings)
    engine = Engine(
        catalog,
        indicators,
        config,
        options.workflow,
        mapper,
        cache,
        [*warnings, *knowledge.warnings, *missing],
        configuration,
        tool_events=tool_events,
        compliance=compliance,
        feedback=feedback,
    )
    if feedback is not None:
        engine.observers.append(feedback.observe)
    if observer is not None:
        engine.observers.append(observer)
    return engine
