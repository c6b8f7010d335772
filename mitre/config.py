"""Configuration as data: `workflows.yaml` (what analysts edit) plus environment settings.

The pydantic models here are the single source of the workflows schema; the JSON Schema
shipped for editors and `attackmap workflows validate` is generated from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUILT_IN = "built-in defaults (no workflows file)"
M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptOuts(Section):
    """Rules whose alerts are never mapped (noisy or deliberately untagged rules)."""

    rule_ids: list[str] = Field(default_factory=list)
    rule_name_patterns: list[str] = Field(
        default_factory=list, description="fnmatch-style, case-insensitive, e.g. '*test rule*'"
    )


class WebhookSettings(Section):
    """`attackmap serve`: how a sender (Kibana's Webhook connector, a SOAR, a script) must sign its requests."""

    secret_env: str = Field(
        "ATTACKMAP_WEBHOOK_SECRET", description="environment variable holding the HMAC-SHA256 secret (never logged)"
    )
    tolerance_seconds: float = Field(300, gt=0, description="reject timestamps further than this from now")
    max_body_bytes: int = Field(1_048_576, ge=1, description="larger bodies are rejected with 413")
    body_timeout_seconds: float = Field(
        10, gt=0, description="a body that takes longer to arrive is rejected with 408 (slow clients, slowloris)"
    )
    require_nonce: bool = Field(True, description="X-Attackmap-Nonce required; each nonce accepted once per window")
    max_alerts: int = Field(1000, ge=1, description="alerts accepted in one request")


class Trigger(Section):
    event: str = "security.alert.high-risk"
    index_pattern: str = Field(
        ".alerts-security.alerts-*", description="alert indices the poller and backfill read (Kibana: per space)"
    )
    poll_interval_seconds: float = Field(10, gt=0, description="poller schedule when deployed")
    batch_size: int = Field(500, ge=1, le=10_000, description="alerts per enrichment batch (ES read and bulk write)")
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)


class DecisionSettings(Section):
    """The hybrid rule. gap-fill: map untagged only; hybrid: also extend on indicators; always: map all."""

    mode: Literal["gap-fill", "hybrid", "always"] = "hybrid"
    min_risk_score: float = Field(
        50,
        ge=0,
        le=100,
        description="the one risk threshold: lower-risk alerts are skipped, and the poller and backfill "
        "read only alerts at or above it (alerts without a score pass)",
    )
    extend_min_confidence: float = Field(0.8, ge=0, le=1)
    opt_outs: OptOuts = Field(default_factory=OptOuts)


class MapperSettings(Section):
    provider: str = Field("local", description="local | anthropic | openai | openai-compatible")
    model: str | None = None
    base_url: str | None = None
    max_techniques: int = Field(3, ge=1, le=10)
    confidence_floor: float = Field(0.3, ge=0, le=1)
    knowledge_base: list[Path] = Field(
        default_factory=list, description="JSONL files of already-tagged rules or alerts (Sigma rules.jsonl works)"
    )
    redact: bool = Field(
        False, description="LLM providers: replace users, hosts, IPs, e-mails, secrets with stable pseudonyms"
    )
    timeout_s: float = Field(30.0, gt=0, description="LLM providers: timeout of one HTTP request")
    cascade_confidence: float | None = Field(
        0.9,
        ge=0,
        le=1,
        description="LLM providers: the local mapper answers alone when its best technique has at least this "
        "confidence (no LLM call); null asks the LLM about every mapped alert",
    )
    prompt_cache_ttl: Literal["5m", "1h"] = Field(
        "1h",
        description="anthropic: how long the cached prompt prefix lives (1h writes cost 2x input, 5m 1.25x); "
        "at the call rates of bench/cost_simulation.py 1h costs a third less",
    )


class BudgetSettings(Section):
    daily_usd: float | None = Field(None, ge=0)
    monthly_usd: float | None = Field(None, ge=0)
    soft_limit_ratio: float = Field(0.8, gt=0, le=1)
    soft_limit_action: Literal["untagged_only", "raise_risk", "local_only"] = Field(
        "untagged_only", description="past the soft limit, which alerts may still reach the LLM"
    )
    soft_limit_min_risk: float = Field(73, ge=0, le=100, description="raise_risk: the risk score still mapped")
    ledger: Literal["sqlite", "postgresql", "elasticsearch"] = "sqlite"
    ledger_path: Path | None = Field(None, description="sqlite ledger; null: $ATTACKMAP_HOME/ledger.sqlite")
    ledger_postgres_url: str | None = Field(None, description="postgresql ledger; null: $ATTACKMAP_POSTGRES_URL")
    ledger_table: str = Field("attackmap_ledger", pattern=r"^[a-z_][a-z0-9_]*$", description="postgresql ledger table")
    ledger_index: str = Field("attackmap-ledger", description="elasticsearch ledger index")
    ledger_es_url: str | None = Field(None, description="elasticsearch ledger URL; null: $ATTACKMAP_ES_URL")


class HecOutput(Section):
    """Splunk HTTP Event Collector: common events, batched, technique and tactic IDs as indexed fields."""

    type: Literal["hec"]
    url: str = Field(description="base URL, e.g. https://splunk.example:8088")
    token_env: str = Field("ATTACKMAP_HEC_TOKEN", description="environment variable holding the HEC token")
    index: str | None = None
    source: str = "attackmap"
    sourcetype: str = "attackmap:event"
    host: str | None = Field(None, description="null: the alert's host")
    ack: bool = Field(False, description="indexer acknowledgement (channel + /services/collector/ack)")
    verify_tls: bool = True
    ca_file: Path | None = None


class TaxiiOutput(Section):
    """A TAXII 2.1 collection: STIX 2.1 indicators, attack-patterns and a sighting per alert."""

    type: Literal["taxii"]
    collection_url: str
    user_env: str | None = Field("ATTACKMAP_TAXII_USER", description="environment variable with the user")
    password_env: str | None = Field("ATTACKMAP_TAXII_PASSWORD", description="environment variable, the password")
    tlp: Literal["clear", "green", "amber", "red"] = "amber"
    verify_tls: bool = True
    ca_file: Path | None = None


class ElasticsearchOutput(Section):
    """Common events into a data stream (or index) with an ECS index template, in bulk."""

    type: Literal["elasticsearch"]
    target: str = Field("logs-attackmap.events-default", description="data stream or index name")
    data_stream: bool = True
    url: str | None = Field(None, description="null: $ATTACKMAP_ES_URL")


class EventsFileOutput(Section):
    """Common events appended to an NDJSON file."""

    type: Literal["events"]
    path: Path


class FederationOutput(Section):
    """A federation peer: common events as signed findings over HTTPS with mutual TLS (README: Signed federation)."""

    type: Literal["federation"]
    url: str = Field(description="the peer's inbound endpoint, https://…/v1/federation/inbound")
    key_id: str = Field(min_length=1, description="our key id, as the peer's peers file lists it")
    private_key: Path | None = Field(None, description="Ed25519 signing key, PEM (attackmap federation keygen)")
    hmac_secret_env: str | None = Field(None, description="or HMAC-SHA256: environment variable with the secret")
    ca_file: Path | None = Field(None, description="CA bundle of the peer's certificate; null: the system's")
    cert_file: Path | None = Field(None, description="our client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="its private key, when not in cert_file")
    tenants: list[str] | None = Field(None, description="only these tenants' findings go to this peer; null: all")
    max_request_bytes: int = Field(1_048_576, ge=1024, description="the peer's max_body_bytes: larger batches split")

    @model_validator(mode="after")
    def _one_signing_key(self) -> FederationOutput:
        if (self.private_key is None) == (self.hmac_secret_env is None):
            raise ValueError("federation: give exactly one of private_key (Ed25519) and hmac_secret_env")
        if not self.url.lower().startswith("https://"):
            raise ValueError("federation: the peer's url must be https:// (findings travel over TLS only)")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("federation: key_file needs cert_file")
        return self


ExportOutput = Annotated[
    HecOutput | TaxiiOutput | ElasticsearchOutput | EventsFileOutput | FederationOutput, Field(discriminator="type")
]


class DeliverySettings(Section):
    """How exports are delivered: spooled to disk, retried, dead-lettered with the reason."""

    spool_dir: Path | None = Field(None, description="null: $ATTACKMAP_HOME/spool")
    batch_size: int = Field(500, ge=1, le=10_000)
    max_retry_seconds: float = Field(30, gt=0, description="longest wait between two tries")
    give_up_after_hours: float = Field(24, gt=0, description="then an undeliverable event is dead-lettered")


class ToolEventSettings(Section):
    """Offensive-tool telemetry (mitre/tool_events.py): the table and what an unknown tool event maps to."""

    table: Path | None = Field(None, description="tool-event table (YAML); null: the built-in one")
    unknown_techniques: list[str] = Field(
        default_factory=lambda: ["T1595"], description="an event type the table does not know; [] skips it"
    )
    unknown_tactics: list[str] = Field(default_factory=lambda: ["TA0043"])


class Outputs(Section):
    elasticsearch_write_back: bool = Field(
        False, description="flows write threat.* and provenance back to the alert (attackmap enrich writes NDJSON)"
    )
    exports: list[ExportOutput] = Field(
        default_factory=list, description="where enriched alerts also go, in near real time (flows, event worker)"
    )
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)


class TenantSettings(Section):
    """One tenant's overrides (a Kibana space, a tool platform's tenant_id, an API key's tenant)."""

    opt_outs: OptOuts = Field(default_factory=OptOuts, description="added to the workflow's opt-outs")
    budget: BudgetSettings | None = Field(None, description="a budget of its own (ledger account workflow@tenant)")


class Workflow(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    enabled: bool = True
    trigger: Trigger = Field(default_factory=Trigger)
    decision: DecisionSettings = Field(default_factory=DecisionSettings)
    mapper: MapperSettings = Field(default_factory=MapperSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    outputs: Outputs = Field(default_factory=Outputs)
    tool_events: ToolEventSettings = Field(default_factory=ToolEventSettings)
    tenants: dict[str, TenantSettings] = Field(default_factory=dict, description="per-tenant opt-outs and budgets")

    def budget_account(self, tenant: str | None) -> tuple[str, BudgetSettings]:
        """(ledger account, budget) an alert of this tenant is charged to: its own, else the workflow's."""
        own = self.tenants.get(tenant) if tenant is not None else None
        if own is not None and own.budget is not None:
            return f"{self.name}@{tenant}", own.budget
        return self.name, self.budget


class CatalogSettings(Section):
    path: Path | None = Field(None, description="official enterprise-attack.json; null: the active or bundled one")
    crosswalks: list[Path] = Field(default_factory=list)


class CacheSettings(Section):
    directory: Path | None = Field(None, description="null: $ATTACKMAP_HOME/cache")
    size_limit_mb: int = Field(512, ge=1)
    ttl_days: float = Field(7, gt=0)
    llm_ttl_days: float = Field(
        30,
        gt=0,
        description="how long an LLM answer is kept: its key already holds the catalog, prompt, model and settings, "
        "so asking again only pays for the same answer",
    )
    shared: Literal["none", "redis"] = Field(
        "none", description="redis: a second tier every machine shares behind the directory (see README: Deployment)"
    )
    redis_url: str | None = Field(None, description="the shared tier's Redis; null: $ATTACKMAP_REDIS_URL")


class ComplianceSettings(Section):
    """Compliance controls on every enriched alert (mitre/compliance.py); missing files are reported."""

    mappings: list[Path] = Field(
        default_factory=list, description="CTID Mappings Explorer JSONL (NIST 800-53 rev5, CSA CCM, CRI Profile)"
    )
    user_mappings: list[Path] = Field(
        default_factory=list, description="your own ISO 27001 / SOC 2 → ATT&CK mapping files (YAML, see README)"
    )


class FeedbackSettings(Section):
    """The analyst feedback loop (mitre/feedback/): where verdicts live and what they change."""

    enabled: bool = Field(True, description="corrections override mappings; review queue and decision telemetry")
    store: Literal["sqlite", "elasticsearch"] = Field("sqlite", description="where corrections and opt-outs live")
    path: Path | None = Field(None, description="sqlite file; null: $ATTACKMAP_HOME/feedback.sqlite")
    index: str = Field("attackmap-feedback", description="elasticsearch index of corrections and opt-outs")
    es_url: str | None = Field(None, description="elasticsearch URL; null: $ATTACKMAP_ES_URL")
    review_below: float = Field(0.6, ge=0, le=1, description="mappings below this confidence go to the review page")
    knowledge_tenants: list[str] = Field(
        default_factory=lambda: ["default"],
        description="tenants whose corrections join the knowledge base (shared by all tenants) on its next build",
    )


class Limits(Section):
    """What one input may cost: an input past a limit is dead-lettered with the limit named, never read whole."""

    max_line_bytes: int = Field(
        16 * 2**20,
        ge=1024,
        description="NDJSON: a longer line is dead-lettered (line_too_long) after being skipped in 1 MiB steps",
    )


class WorkflowsFile(Section):
    version: Literal[1] = 1
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    compliance: ComplianceSettings = Field(default_factory=ComplianceSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    limits: Limits = Field(default_factory=Limits)
    workflows: list[Workflow] = Field(default_factory=lambda: [Workflow(name="default")])
    # The file these settings were read from (None: the built-in defaults); not part of the schema.
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    def describe_source(self) -> str:
        """The workflows file in effect, as summaries and provenance name it."""
        return str(self._source) if self._source is not None else BUILT_IN

    def workflow(self, name: str | None = None) -> Workflow:
        enabled = [w for w in self.workflows if w.enabled]
        if name is None:
            if not enabled:
                raise ValueError("workflows.yaml has no enabled workflow")
            return enabled[0]
        for w in self.workflows:
            if w.name == name:
                return w
        raise ValueError(f"no workflow named {name!r} (have: {', '.join(w.name for w in self.workflows)})")


class Environment(BaseSettings):
    """Process-level settings from ATTACKMAP_* environment variables; they override workflows.yaml."""

    model_config = SettingsConfigDict(env_prefix="ATTACKMAP_", extra="ignore")

    home: Path = Path.home() / ".local" / "share" / "attackmap"
    workflows: Path | None = None
    catalog: Path | None = None
    cache_dir: Path | None = None
    knowledge_base: Path | None = None
    es_url: str | None = None  # Elasticsearch for flows, the worker and an ES ledger
    redact_salt: str | None = None  # LLM redaction: the pseudonym salt (default: $ATTACKMAP_HOME/redact.salt)
    redis_url: str | None = None  # the shared cache tier, webhook and federation nonces, event claims
    postgres_url: str | None = None  # a PostgreSQL budget ledger
    # Prefect's own variable, read here for the commands that must refuse to run without it.
    prefect_api_url: str | None = Field(None, validation_alias="PREFECT_API_URL")


def load_workflows(path: Path | None) -> WorkflowsFile:
    """Parse a workflows file; a missing path means the built-in defaults. Every relative path in it
    (catalog, crosswalks, cache, knowledge base, ledger, …) is read from the file's own folder."""
    if path is None:
        return WorkflowsFile()
    raw = yaml.safe_load(path.read_text()) or {}
    config = _anchored(WorkflowsFile.model_validate(raw), path.resolve().parent)
    config._source = path.resolve()
    return config


def _anchored(model: M, base: Path) -> M:
    """A copy of the settings with every relative Path field made absolute against `base`."""

    def anchor(value: Any) -> Any:
        if isinstance(value, Path):
            return (value if value.is_absolute() else base / value).resolve()
        if isinstance(value, BaseModel):
            return _anchored(value, base)
        if isinstance(value, list):
            return [anchor(item) for item in value]
        return value

    return model.model_copy(update={name: anchor(getattr(model, name)) for name in type(model).model_fields})


def default_workflows_path(env: Environment) -> Path | None:
    """ATTACKMAP_WORKFLOWS, else ./workflows.yaml when present, else built-in defaults."""
    if env.workflows is not None:
        return env.workflows
    local = Path("workflows.yaml")
    return local if local.is_file() else None
