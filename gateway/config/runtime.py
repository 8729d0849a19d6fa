"""The compiled configuration the hot path reads: frozen dataclasses and plain dicts, no pydantic."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config.model import GatewayConfig
from gateway.metering.pricing import Rates

if TYPE_CHECKING:
    from gateway.policy.engine import RuleSet

UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    type: str  # openai | azure | anthropic
    base_url: str
    api_key: str
    api_version: str
    system: str  # OTel gen_ai.provider.name
    headers: dict[str, str]
    max_connections: int
    forward: re.Pattern[str] | None = None  # client headers passed upstream

    @property
    def connection_limit(self) -> tuple[str, int]:
        """The upstream client's key for this provider's cap on exchanges at once."""
        return (self.name, self.max_connections)


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    id: str  # "<logical>#<index>", stable across reloads while the file keeps its order
    logical: str
    provider: ProviderSpec
    upstream_model: str
    price_name: str
    rates: Rates
    weight: float
    priority: int
    region: str
    context_window: int
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    operation: str  # chat | text_completion | embeddings
    strategy: str
    deployments: tuple[DeploymentSpec, ...]
    # Derived once, read per request: the largest window and output cap of any deployment, and the
    # element-wise highest rates (a strict cost bound wherever the request lands).
    context_window: int = field(init=False, compare=False)
    max_output_tokens: int = field(init=False, compare=False)
    max_rates: Rates = field(init=False, compare=False)

    def __post_init__(self) -> None:
        deps = self.deployments
        object.__setattr__(self, "context_window", max((d.context_window for d in deps), default=0))
        object.__setattr__(self, "max_output_tokens", max((d.max_output_tokens for d in deps), default=0))
        object.__setattr__(self, "max_rates", highest_rates([d.rates for d in deps]))


def highest_rates(rates: list[Rates]) -> Rates:
    """Element-wise maximum: a strict bound over every rate card in the list (zero for none)."""
    return Rates(
        input=max((r.input for r in rates), default=0),
        cached_input=max((r.cached_input for r in rates), default=0),
        cache_write=max((r.cache_write for r in rates), default=0),
        output=max((r.output for r in rates), default=0),
        reasoning=max((r.reasoning for r in rates), default=0),
        provider="*",
    )


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    usd_nano: int  # UNLIMITED when unset
    tokens: int
    period: str
    thresholds: tuple[float, ...]
    action: str
    downgrade_to: str


@dataclass(frozen=True, slots=True)
class CachePolicy:
    mode: str  # auto | always | off
    ttl_s: int
    namespace: str  # the team, or an explicit shared group "group:<name>"


@dataclass(frozen=True, slots=True)
class TeamSpec:
    name: str
    allow: re.Pattern[str]
    budget: BudgetSpec | None
    rpm: int | None
    tpm: int | None
    on_store_error: str
    cache: CachePolicy
    tags: dict[str, str]

    def may_use(self, model: str) -> bool:
        return self.allow.match(model) is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a virtual key and its team."""

    key_id: str
    team: TeamSpec
    name: str = ""
    budget: BudgetSpec | None = None
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class Config:
    source: GatewayConfig
    path: str
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]
    teams: dict[str, TeamSpec]
    keys: dict[str, Principal]  # sha256 -> principal (keys declared in YAML)
    rules: RuleSet
    prices: dict[str, Rates]
    extra: dict[str, Any] = field(default_factory=dict)
