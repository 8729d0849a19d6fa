"""The typed schema of ``gateway.yaml``: every key is known, unknown keys are errors.

These models are used once, at load time. The hot path reads the compiled, plain-Python
structures that ``gateway.config.compile`` builds from them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NonNegDecimal = Annotated[Decimal, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- server and store


class Timeouts(Strict):
    connect_s: float = Field(5.0, gt=0)
    first_byte_s: float = Field(120.0, gt=0, description="max wait for a non-streamed answer (each read)")
    idle_s: float = Field(60.0, gt=0, description="max silence on a stream, before its first chunk included")
    total_s: float = Field(600.0, gt=0, description="overall deadline per request, retries included")


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_in_flight: int = Field(
        4096,
        ge=0,
        description="LLM requests (streams included) one worker serves at once; past it a request gets"
        " 503 (Anthropic: 529) with Retry-After at once, before any budget work; 0: no cap",
    )
    timeouts: Timeouts = Timeouts()
    admin_token_env: str = "GATEWAY_ADMIN_TOKEN"
    log_prompts: bool = False
    shutdown_grace_s: float = Field(30.0, ge=0)
    mock_upstream: bool = Field(False, description="start the mock provider in-process (demo only)")
    mock_upstream_port: int = Field(0, ge=0, le=65535)


class StoreConfig(Strict):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = ""
    state_dir: str = ".gateway-state"
    pool_size: int = Field(64, ge=1, le=10_000)
    expected_replicas: int = Field(1, ge=1, description="divides the fail-open guard")
    socket_timeout_s: float = Field(1.0, gt=0, description="Redis socket timeout (bounds an outage's cost)")
    lease_grace_s: float = Field(
        60.0, ge=0, description="how long a reservation outlives the deadline before it is charged in full"
    )


# ---------------------------------------------------------------- providers and models


class ProviderConfig(Strict):
    type: Literal["openai", "azure", "anthropic"]
    base_url: str
    api_key: str = ""
    api_version: str = Field("", description="Azure OpenAI api-version query parameter")
    system: str = Field("", description="OTel gen_ai.provider.name for metrics; defaults from type")
    headers: dict[str, str] = Field(default_factory=dict)
    forward_headers: list[str] = Field(
        default_factory=lambda: ["anthropic-beta", "openai-beta"],
        description="client request headers (globs) passed upstream; auth and hop-by-hop headers never are",
    )
    max_connections: int = Field(256, ge=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _azure(self) -> ProviderConfig:
        if self.type == "azure" and not self.api_version:
            raise ValueError("azure providers need api_version")
        return self


class PriceOverride(Strict):
    input: NonNegDecimal | None = None
    cached_input: NonNegDecimal | None = None
    cache_write: NonNegDecimal | None = None
    output: NonNegDecimal | None = None
    reasoning: NonNegDecimal | None = None


class Deployment(Strict):
    provider: Name
    model: str = Field(min_length=1, description="the upstream model (or Azure deployment) name")
    price: str = Field("", description="price catalog entry; defaults to `model`")
    weight: float = Field(1.0, gt=0)
    priority: int = 0
    region: str = ""
    discount: Decimal = Field(Decimal(0), ge=0, le=1)
    prices: PriceOverride | None = None
    context_window: int | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)


class LogicalModel(Strict):
    deployments: list[Deployment] = Field(min_length=1)
    strategy: Literal["weighted", "least_latency", "least_cost", "priority"] = "weighted"
    operation: Literal["chat", "text_completion", "embeddings"] = "chat"


class BreakerConfig(Strict):
    consecutive_failures: int = Field(5, ge=1)
    error_rate: Fraction = 0.5
    min_requests: int = Field(20, ge=1)
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(15.0, gt=0)


class RetryConfig(Strict):
    max_attempts: int = Field(2, ge=1, le=10, description="attempts per deployment")
    base_backoff_ms: float = Field(100, ge=0)
    max_backoff_ms: float = Field(4000, ge=0)
    max_retry_after_s: float = Field(
        10, ge=0, description="a longer upstream Retry-After moves to the next model"
    )


# ---------------------------------------------------------------- teams, keys, budgets


class BudgetConfig(Strict):
    usd: NonNegDecimal | None = None
    tokens: int | None = Field(None, ge=0)
    period: Literal["daily", "weekly", "monthly", "total"] = "monthly"
    soft_thresholds: list[Fraction] = Field(default_factory=lambda: [0.5, 0.8, 0.95])
    action: Literal["deny", "downgrade"] = "deny"
    downgrade_to: str = ""

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs `usd`, `tokens` or both")
        if self.action == "downgrade" and not self.downgrade_to:
            raise ValueError("action `downgrade` needs `downgrade_to`")
        return self


class RateLimits(Strict):
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


class CacheSettings(Strict):
    mode: Literal["auto", "always", "off"] | None = None
    ttl_s: int | None = Field(None, ge=1, le=30 * 86400)
    group: str | None = Field(None, pattern=_NAME, description="shared cache group; default: the team")


class KeyConfig(Strict):
    id: Name
    name: str = ""
    key: str = Field("", description="the plaintext key, normally an ${ENV} reference; hashed at load")
    sha256: str = Field("", description="hex sha256 of the key")
    budget: BudgetConfig | None = None
    rate_limits: RateLimits | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if bool(self.key) == bool(self.sha256):
            raise ValueError("set exactly one of `key` (usually ${ENV}) or `sha256`")
        if self.sha256 and not _HEX64.match(self.sha256):
            raise ValueError("`sha256` must be 64 lowercase hex characters")
        return self


class TeamConfig(Strict):
    models: list[str] = Field(default_factory=lambda: ["*"], description="allow-list of model globs")
    budget: BudgetConfig | None = None
    rate_limits: RateLimits | None = None
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    cache: CacheSettings = CacheSettings()
    tags: dict[str, str] = Field(default_factory=dict)
    keys: list[KeyConfig] = Field(default_factory=list)


# ---------------------------------------------------------------- routing rules


class Range(Strict):
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> Range:
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        return self


class TimeWindow(Strict):
    between: str = Field(
        pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
        description="UTC HH:MM-HH:MM, end exclusive; may wrap midnight; equal ends = the whole day",
    )
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=list,
        description="days the window opens on (a window that wraps midnight belongs to the day it opens); "
        "empty = every day",
    )


class When(Strict):
    teams: list[str] | None = None
    models: list[str] | None = Field(None, description="globs over the requested model")
    tags: dict[str, str] | None = Field(None, description="every listed tag must match; value `*` = present")
    prompt_tokens: Range | None = None
    max_tokens: Range | None = None
    has_tools: bool | None = None
    has_images: bool | None = None
    has_response_format: bool | None = None
    stream: bool | None = None
    budget_used: Range | None = Field(None, description="share (0..1) of the team's period budget spent")
    time: TimeWindow | None = None
    operation: Literal["chat", "text_completion", "embeddings"] | None = None


class AutoRoute(Strict):
    strong: str
    weak: str
    threshold: Fraction = 0.5


class Rule(Strict):
    name: Name
    when: When = When()
    route_to: str | list[str] | None = None
    fallbacks: list[str] = Field(default_factory=list)
    auto: AutoRoute | None = None
    max_tokens: int | None = Field(None, ge=1, description="cap on max_tokens")
    cache: CacheSettings | None = None
    deny: str | None = Field(None, min_length=1)
    add_tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exclusive(self) -> Rule:
        targets = sum(x is not None for x in (self.route_to, self.auto, self.deny))
        if targets > 1:
            raise ValueError("use at most one of `route_to`, `auto`, `deny`")
        return self


class RoutingConfig(Strict):
    rules: list[Rule] = Field(default_factory=list)
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    fallbacks: dict[str, list[str]] = Field(default_factory=dict, description="default fallbacks per model")


class CacheConfig(Strict):
    backend_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="embedded LRU byte limit")
    default: CacheSettings = CacheSettings(mode="off", ttl_s=3600)
    max_entry_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    compress_min_bytes: int = Field(4096, ge=0)
    lock_wait_ms: int = Field(2000, ge=0, description="cross-replica stampede lock bounded wait")


class LedgerConfig(Strict):
    retention_days: int = Field(400, ge=1)
    flush_interval_ms: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=1)


class TagLimits(Strict):
    max_tags: int = Field(10, ge=0, le=64)
    max_key_len: int = Field(64, ge=1, le=256)
    max_value_len: int = Field(128, ge=1, le=1024)


class GatewayConfig(Strict):
    version: Literal[1] = 1
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    prices: str = Field("prices.yaml", description="price catalog path, relative to this file")
    providers: dict[Name, ProviderConfig] = Field(min_length=1)
    models: dict[Name, LogicalModel] = Field(min_length=1)
    teams: dict[Name, TeamConfig] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    cache: CacheConfig = CacheConfig()
    ledger: LedgerConfig = LedgerConfig()
    tags: TagLimits = TagLimits()
