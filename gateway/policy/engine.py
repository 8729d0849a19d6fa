"""Routing rules compiled once at load time; evaluated per request, first match wins.

A compiled rule is a tuple of small predicates over ``Facts``. Facts that cost something to
compute (the exact prompt-token count) are lazy: they are computed only if a rule that
needs them is reached, so a policy without token ranges never tokenizes.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.config.model import CacheSettings, Range, RoutingConfig, Rule, TimeWindow, When
from gateway.policy.complexity import complexity_score

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(slots=True)
class Facts:
    """What the rules can look at. ``prompt_tokens_fn`` is called at most once, and only if needed."""

    team: str
    model: str
    operation: str = "chat"
    tags: dict[str, str] = field(default_factory=dict)
    max_tokens: int | None = None
    has_tools: bool = False
    has_images: bool = False
    has_response_format: bool = False
    stream: bool = False
    budget_used: float = 0.0
    now: datetime | None = None
    prompt_tokens_fn: Callable[[], int] | None = None
    prompt_text_fn: Callable[[], str] | None = None
    _prompt_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = self.prompt_tokens_fn() if self.prompt_tokens_fn else 0
        return self._prompt_tokens


Predicate = Callable[[Facts], bool]


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str  # name of the rule that fired, or "default"
    chain: tuple[str, ...]  # logical models: primary first, then fallbacks
    max_tokens_cap: int | None = None
    cache: CacheSettings | None = None
    deny: str | None = None
    add_tags: tuple[tuple[str, str], ...] = ()
    trace: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    index: int
    predicates: tuple[tuple[str, Predicate], ...]
    rule: Rule

    def matches(self, facts: Facts, trace: list[str] | None) -> bool:
        for label, predicate in self.predicates:
            if not predicate(facts):
                if trace is not None:
                    trace.append(f"rule {self.name!r}: no match ({label})")
                return False
        return True


def _globs(patterns: list[str]) -> re.Pattern[str]:
    if not patterns:  # an empty list matches nothing (an empty regex would match everything)
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _in_range(r: Range) -> Callable[[float], bool]:
    def check(v: float) -> bool:
        return (
            (r.gt is None or v > r.gt)
            and (r.gte is None or v >= r.gte)
            and (r.lt is None or v < r.lt)
            and (r.lte is None or v <= r.lte)
        )

    return check


def _time_predicate(window: TimeWindow) -> Predicate:
    start_s, end_s = window.between.split("-")
    start = int(start_s[:2]) * 60 + int(start_s[3:])
    end = int(end_s[:2]) * 60 + int(end_s[3:])
    days = frozenset(window.days)

    def check(f: Facts) -> bool:
        now = _utc(f.now)
        minute = now.hour * 60 + now.minute
        day = now.weekday()
        if start == end:  # "00:00-00:00": the whole day
            inside = True
        elif start < end:
            inside = start <= minute < end
        elif minute >= start:  # wraps midnight: the evening part
            inside = True
        else:  # wraps midnight: the morning part belongs to the window that opened the day before
            inside, day = minute < end, (day - 1) % 7
        return inside and (not days or _DAYS[day] in days)

    return check


def _utc(now: datetime | None) -> datetime:
    """Windows are UTC; a naive datetime is taken to be UTC already."""
    if now is None:
        return datetime.now(UTC)
    return now.astimezone(UTC) if now.tzinfo is not None else now


def _tags_predicate(wanted_tags: dict[str, str]) -> Predicate:
    wanted = tuple(wanted_tags.items())
    present = frozenset(k for k, v in wanted if v == "*")
    exact = tuple((k, v) for k, v in wanted if v != "*")

    def check(f: Facts) -> bool:
        tags = f.tags
        if not tags:  # the common case on the hot path: an untagged request fails at once
            return not wanted
        for key, value in exact:
            if tags.get(key) != value:
                return False
        return present.issubset(tags.keys())

    return check


def _flag_predicate(flag: str, expected: bool) -> Predicate:
    def check(f: Facts) -> bool:
        return bool(getattr(f, flag) is expected)

    return check


def compile_when(when: When) -> tuple[tuple[str, Predicate], ...]:
    preds: list[tuple[str, Predicate]] = []
    if when.teams is not None:
        teams = frozenset(when.teams)
        preds.append(("teams", lambda f: f.team in teams))
    if when.models is not None:
        pattern = _globs(when.models)
        preds.append(("models", lambda f: pattern.match(f.model) is not None))
    if when.operation is not None:
        op = when.operation
        preds.append(("operation", lambda f: f.operation == op))
    if when.tags is not None:
        preds.append(("tags", _tags_predicate(when.tags)))
    for flag in ("has_tools", "has_images", "has_response_format", "stream"):
        expected = getattr(when, flag)
        if expected is not None:
            preds.append((flag, _flag_predicate(flag, expected)))
    if when.max_tokens is not None:
        check_max = _in_range(when.max_tokens)
        preds.append(("max_tokens", lambda f: f.max_tokens is not None and check_max(f.max_tokens)))
    if when.budget_used is not None:
        check_budget = _in_range(when.budget_used)
        preds.append(("budget_used", lambda f: check_budget(f.budget_used)))
    if when.time is not None:
        preds.append(("time", _time_predicate(when.time)))
    # Last: the only predicate that may need to tokenize.
    if when.prompt_tokens is not None:
        check_tokens = _in_range(when.prompt_tokens)
        preds.append(("prompt_tokens", lambda f: check_tokens(f.prompt_tokens)))
    return tuple(preds)


class RuleSet:
    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.rules = tuple(
            CompiledRule(name=r.name, index=i, predicates=compile_when(r.when), rule=r)
            for i, r in enumerate(routing.rules)
        )
        self.default_fallbacks = {m: tuple(chain) for m, chain in routing.fallbacks.items()}
        # Rules that can apply to a team (no `teams` condition, or one naming it), in order: the hot
        # path walks only these. Filled lazily, one entry per team seen; a reload builds a new RuleSet.
        self._for_team: dict[str, tuple[CompiledRule, ...]] = {}
        self._decisions: dict[tuple[int, str], Decision] = {}

    def _candidates(self, team: str) -> tuple[CompiledRule, ...]:
        found = self._for_team.get(team)
        if found is None:
            found = tuple(r for r in self.rules if r.rule.when.teams is None or team in r.rule.when.teams)
            if len(self._for_team) < 100_000:
                self._for_team[team] = found
        return found

    def needs_prompt_tokens(self) -> bool:
        return any(r.rule.when.prompt_tokens is not None for r in self.rules)

    def decide(self, facts: Facts, explain: bool = False) -> Decision:
        if not explain:
            for compiled in self._candidates(facts.team):  # other teams' rules are skipped
                if compiled.matches(facts, None):
                    if compiled.rule.auto is not None:  # depends on the prompt: decided each time
                        return self._apply(compiled.rule, facts, None)
                    return self._decision(compiled.index, compiled.rule, facts)
            return self._decision(-1, None, facts)
        trace: list[str] = []  # explaining walks every rule so the trace shows each one
        for compiled in self.rules:
            if compiled.matches(facts, trace):
                trace.append(f"rule {compiled.name!r}: MATCH")
                return self._apply(compiled.rule, facts, trace)
        trace.append("no rule matched: default route")
        return Decision(rule="default", chain=self._chain(facts.model, []), trace=tuple(trace))

    def _decision(self, index: int, rule: Rule | None, facts: Facts) -> Decision:
        """A rule's decision for a model, or the default route's (``rule`` None): the same every time
        (a ``Decision`` is frozen), so built once per rule and model rather than per request."""
        key = (index, facts.model)
        found = self._decisions.get(key)
        if found is None:
            if rule is None:
                found = Decision(rule="default", chain=self._chain(facts.model, []))
            else:
                found = self._apply(rule, facts, None)
            if len(self._decisions) >= 10_000:  # models come from clients: bounded
                self._decisions.clear()
            self._decisions[key] = found
        return found

    def _chain(self, primary: str | list[str], extra: list[str]) -> tuple[str, ...]:
        head = [primary] if isinstance(primary, str) else list(primary)
        chain = dict.fromkeys([*head, *extra])  # ordered, without duplicates
        todo = list(chain)
        while todo:  # default fallbacks apply transitively (the loader rejects cycles)
            for fallback in self.default_fallbacks.get(todo.pop(0), ()):
                if fallback not in chain:
                    chain[fallback] = None
                    todo.append(fallback)
        return tuple(chain)

    def _apply(self, rule: Rule, facts: Facts, trace: list[str] | None) -> Decision:
        common = {
            "rule": rule.name,
            "max_tokens_cap": rule.max_tokens,
            "cache": rule.cache,
            "add_tags": tuple(rule.add_tags.items()),
        }
        if rule.deny is not None:
            return Decision(chain=(), deny=rule.deny, trace=tuple(trace or ()), **common)  # type: ignore[arg-type]
        if rule.auto is not None:
            text = facts.prompt_text_fn() if facts.prompt_text_fn else ""
            score = complexity_score(text)
            target = rule.auto.strong if score >= rule.auto.threshold else rule.auto.weak
            if trace is not None:
                trace.append(f"auto: complexity {score:.3f} vs threshold {rule.auto.threshold} -> {target}")
            others = [rule.auto.weak if target == rule.auto.strong else rule.auto.strong]
            chain = self._chain(target, [*rule.fallbacks, *others])
        else:
            chain = self._chain(rule.route_to if rule.route_to is not None else facts.model, rule.fallbacks)
        return Decision(chain=chain, trace=tuple(trace or ()), **common)  # type: ignore[arg-type]
