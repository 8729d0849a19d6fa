"""Cross-reference checks that a schema alone cannot express.

Each check yields ``(path, message)``; the loader turns paths into ``file:line``. The same
function serves ``gateway policy check`` and every (re)load, so the linter and the runtime
can never disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from gateway.config.model import GatewayConfig, Rule, When
from gateway.config.yamlsource import Path_
from gateway.metering.pricing import PriceCatalog

Problem = tuple[Path_, str]


def cross_check(cfg: GatewayConfig, catalog: PriceCatalog) -> list[Problem]:
    return [
        *_deployments(cfg, catalog),
        *_model_refs(cfg),
        *_fallback_cycles(cfg),
        *_rule_reachability(cfg),
        *_keys(cfg),
    ]


def _deployments(cfg: GatewayConfig, catalog: PriceCatalog) -> Iterator[Problem]:
    for name, model in cfg.models.items():
        for i, d in enumerate(model.deployments):
            path: Path_ = ("models", name, "deployments", i)
            if d.provider not in cfg.providers:
                yield (
                    (*path, "provider"),
                    f"unknown provider {d.provider!r} (known: {', '.join(cfg.providers)})",
                )
            price = d.price or d.model
            if price not in catalog.models:
                yield (
                    (*path, "price" if d.price else "model"),
                    (
                        f"no price for {price!r} in the price catalog: add it to {cfg.prices} "
                        "or set `price:` (a model without a price would be metered as $0)"
                    ),
                )


def _model_refs(cfg: GatewayConfig) -> Iterator[Problem]:
    known = cfg.models

    def check(path: Path_, name: str) -> Iterator[Problem]:
        if name not in known:
            yield path, f"unknown model {name!r} (known: {', '.join(sorted(known))})"

    for team, t in cfg.teams.items():
        if t.budget and t.budget.action == "downgrade":
            yield from check(("teams", team, "budget", "downgrade_to"), t.budget.downgrade_to)
        for i, k in enumerate(t.keys):
            if k.budget and k.budget.action == "downgrade":
                yield from check(("teams", team, "keys", i, "budget", "downgrade_to"), k.budget.downgrade_to)
    for i, rule in enumerate(cfg.routing.rules):
        path: Path_ = ("routing", "rules", i)
        targets = [rule.route_to] if isinstance(rule.route_to, str) else list(rule.route_to or [])
        for j, target in enumerate(targets):
            yield from check((*path, "route_to") + ((j,) if isinstance(rule.route_to, list) else ()), target)
        for j, target in enumerate(rule.fallbacks):
            yield from check((*path, "fallbacks", j), target)
        if rule.auto:
            yield from check((*path, "auto", "strong"), rule.auto.strong)
            yield from check((*path, "auto", "weak"), rule.auto.weak)
        if rule.when.teams:
            for j, team in enumerate(rule.when.teams):
                if team not in cfg.teams:
                    yield (*path, "when", "teams", j), f"unknown team {team!r}"
    for name, chain in cfg.routing.fallbacks.items():
        yield from check(("routing", "fallbacks", name), name)
        for j, target in enumerate(chain):
            yield from check(("routing", "fallbacks", name, j), target)


def _fallback_cycles(cfg: GatewayConfig) -> Iterator[Problem]:
    graph = cfg.routing.fallbacks
    for start in graph:
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, []):
                if nxt == start:
                    yield ("routing", "fallbacks", start), f"fallback cycle: {' -> '.join((*trail, nxt))}"
                    stack = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))


def _covers(a: When, b: When) -> bool:
    """True if every request that ``b`` matches is also matched by ``a`` (conservative)."""
    for field_name in When.model_fields:
        av, bv = getattr(a, field_name), getattr(b, field_name)
        if av is None:
            continue
        if bv is None:
            return False
        if field_name == "teams" and not set(bv) <= set(av):
            return False
        if field_name == "models" and not (set(bv) <= set(av) or "*" in av):
            return False
        if field_name == "tags" and not all(bv.get(k) == v or (v == "*" and k in bv) for k, v in av.items()):
            return False
        if field_name not in ("teams", "models", "tags") and av != bv:
            return False
    return True


def _rule_reachability(cfg: GatewayConfig) -> Iterator[Problem]:
    rules: list[Rule] = cfg.routing.rules
    names: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in names:
            yield ("routing", "rules", i, "name"), f"duplicate rule name {rule.name!r}"
        names.add(rule.name)
        for j in range(i):
            if _covers(rules[j].when, rule.when):
                earlier = rules[j]
                what = (
                    "unreachable: it follows a rule that matches everything"
                    if earlier.when == When()
                    else "shadowed"
                )
                yield (
                    ("routing", "rules", i),
                    f"rule {rule.name!r} is {what} (rule {earlier.name!r} always matches first)",
                )
                break


def _keys(cfg: GatewayConfig) -> Iterator[Problem]:
    ids: set[str] = set()
    digests: set[str] = set()
    for team_name, team in cfg.teams.items():
        for i, k in enumerate(team.keys):
            path: Path_ = ("teams", team_name, "keys", i)
            digest = k.sha256 or hashlib.sha256(k.key.encode()).hexdigest()
            if k.id in ids:
                yield (*path, "id"), f"duplicate key id {k.id!r}"
            if digest in digests:
                yield path, "the same key is declared twice"
            ids.add(k.id)
            digests.add(digest)
