"""Load, validate and compile ``gateway.yaml`` (and the price catalog it names).

Every problem is reported as ``file:line: dotted.path: message``; all problems are collected
before failing, so one run of ``gateway policy check`` shows everything that is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.config.model import BudgetConfig, CacheSettings, GatewayConfig, TeamConfig
from gateway.config.runtime import (
    UNLIMITED,
    BudgetSpec,
    CachePolicy,
    Config,
    DeploymentSpec,
    ModelSpec,
    Principal,
    ProviderSpec,
    TeamSpec,
)
from gateway.config.validate import cross_check
from gateway.config.yamlsource import ConfigError, YamlDoc, format_path, load_yaml
from gateway.metering.pricing import PriceCatalog, Rates, usd_to_nano
from gateway.policy.engine import RuleSet, _globs

M = TypeVar("M", bound=BaseModel)

_DEFAULT_SYSTEM = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic"}


def pydantic_problems(doc: YamlDoc, exc: ValidationError) -> list[str]:
    problems: dict[str, list[str]] = {}  # where -> messages, in order
    for err in exc.errors():
        loc = _data_path(doc.data, err["loc"], keep_missing=err["type"] == "missing")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}" if loc else "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["loc"] and err["loc"][-1] == "[key]":
            msg = f"invalid name {loc[-1]!r}: {msg}" if loc else msg
        messages = problems.setdefault(doc.where(loc), [])
        if msg not in messages:
            messages.append(msg)
    # A value that fits no member of a union (``str | list[str]``) fails once per member: one line.
    return [f"{where}: {' or '.join(messages)}" for where, messages in problems.items()]


def _data_path(data: Any, loc: tuple[int | str, ...], keep_missing: bool) -> tuple[int | str, ...]:
    """The part of a pydantic location that exists in the document.

    Pydantic adds the names of union members and validators (``str``, ``list[str]``,
    ``function-after[...]``) to locations; those are not keys a user can find in the file.
    A key that is not in the document is kept only when it is the one reported missing.
    """
    out: list[int | str] = []
    node = data
    for i, part in enumerate(loc):
        if part == "[key]":  # a mapping key failed validation: the path ends at that key
            break
        if isinstance(node, dict) and (part in node or (keep_missing and i == len(loc) - 1)):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
    return tuple(out)


def validate_model(doc: YamlDoc, model: type[M]) -> M:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(doc, exc)) from None


def load_prices(path: Path, env: Mapping[str, str] | None = None) -> PriceCatalog:
    return validate_model(load_yaml(path, env), PriceCatalog)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    doc = load_yaml(path, env)
    source = validate_model(doc, GatewayConfig)
    prices_path = (path.parent / source.prices).resolve()
    catalog = load_prices(prices_path, env)
    problems = [f"{doc.where(p)}: {msg}" for p, msg in cross_check(source, catalog)]
    if problems:
        raise ConfigError(problems)
    return compile_config(source, catalog, str(path), doc)


def compile_config(source: GatewayConfig, catalog: PriceCatalog, path: str, doc: YamlDoc) -> Config:
    prices = {name: entry.rates() for name, entry in catalog.models.items()}
    providers = {
        name: ProviderSpec(
            name=name,
            type=p.type,
            base_url=p.base_url,
            api_key=p.api_key,
            api_version=p.api_version,
            system=p.system or _DEFAULT_SYSTEM[p.type],
            headers=dict(p.headers),
            max_connections=p.max_connections,
            forward=_globs([h.lower() for h in p.forward_headers]) if p.forward_headers else None,
        )
        for name, p in source.providers.items()
    }
    models = {name: _compile_model(name, m, providers, catalog) for name, m in source.models.items()}
    teams = {name: _compile_team(name, t) for name, t in source.teams.items()}
    keys = _compile_keys(source, teams)
    return Config(
        source=source,
        path=path,
        providers=providers,
        models=models,
        teams=teams,
        keys=keys,
        rules=RuleSet(source.routing),
        prices=prices,
    )


def _compile_model(
    name: str, model: Any, providers: dict[str, ProviderSpec], catalog: PriceCatalog
) -> ModelSpec:
    deployments = []
    for i, d in enumerate(model.deployments):
        entry = catalog.models[d.price or d.model]
        overrides = d.prices.model_dump(exclude_none=True) if d.prices else None
        rates: Rates = entry.rates(discount=d.discount, overrides=overrides)
        deployments.append(
            DeploymentSpec(
                id=f"{name}#{i}",
                logical=name,
                provider=providers[d.provider],
                upstream_model=d.model,
                price_name=d.price or d.model,
                rates=rates,
                weight=d.weight,
                priority=d.priority,
                region=d.region,
                context_window=d.context_window or rates.context_window or 128_000,
                max_output_tokens=d.max_output_tokens or rates.max_output_tokens or 4096,
            )
        )
    return ModelSpec(
        name=name, operation=model.operation, strategy=model.strategy, deployments=tuple(deployments)
    )


def compile_budget(b: BudgetConfig | None) -> BudgetSpec | None:
    if b is None:
        return None
    return BudgetSpec(
        usd_nano=usd_to_nano(b.usd) if b.usd is not None else UNLIMITED,
        tokens=b.tokens if b.tokens is not None else UNLIMITED,
        period=b.period,
        thresholds=tuple(sorted(b.soft_thresholds)),
        action=b.action,
        downgrade_to=b.downgrade_to,
    )


def cache_policy(team: str, settings: CacheSettings, default: CacheSettings | None = None) -> CachePolicy:
    mode = settings.mode or (default.mode if default else None) or "off"
    ttl = settings.ttl_s or (default.ttl_s if default else None) or 3600
    namespace = f"group:{settings.group}" if settings.group else f"team:{team}"
    return CachePolicy(mode=mode, ttl_s=ttl, namespace=namespace)


def _compile_team(name: str, team: TeamConfig) -> TeamSpec:
    rl = team.rate_limits
    return TeamSpec(
        name=name,
        allow=_globs(team.models),  # an empty allow-list allows nothing
        budget=compile_budget(team.budget),
        rpm=rl.rpm if rl else None,
        tpm=rl.tpm if rl else None,
        on_store_error=team.on_store_error,
        cache=cache_policy(name, team.cache),
        tags=dict(team.tags),
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _compile_keys(source: GatewayConfig, teams: dict[str, TeamSpec]) -> dict[str, Principal]:
    """Duplicate ids and keys were rejected by ``cross_check``."""
    keys: dict[str, Principal] = {}
    for team_name, team in source.teams.items():
        for k in team.keys:
            digest = k.sha256 or hash_key(k.key)
            rl = k.rate_limits
            keys[digest] = Principal(
                key_id=k.id,
                team=teams[team_name],
                name=k.name,
                budget=compile_budget(k.budget),
                rpm=rl.rpm if rl else None,
                tpm=rl.tpm if rl else None,
            )
    return keys


__all__ = ["ConfigError", "format_path", "hash_key", "load_config", "load_prices"]
