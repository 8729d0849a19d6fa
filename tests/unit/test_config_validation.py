"""``load_config`` on real files: every problem is reported as ``file:line: dotted.path: message``.

Each case edits one known-good document and names the line it expects by a marker on that line,
so the tests do not depend on counting lines by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.config.yamlsource import ConfigError

PRICES = Path(__file__).resolve().parents[2] / "policies" / "prices.yaml"

BASE = f"""\
version: 1
server:
  port: 8080
  timeouts: {{connect_s: 2, total_s: 30}}
prices: {PRICES}
providers:
  mock:
    type: openai
    base_url: http://127.0.0.1:9100/v1
    api_key: secret
models:
  gpt-4o:
    deployments:
      - provider: mock
        model: mock-gpt
  gpt-4o-mini:
    deployments:
      - {{provider: mock, model: mock-gpt-mini}}
  claude:
    deployments:
      - {{provider: mock, model: mock-claude}}
teams:
  demo:
    budget: {{usd: 10}}
    keys:
      - id: demo
        key: sk-demo
  ml:
    models: [gpt-4o-mini]
    keys:
      - {{id: ml, key: sk-ml}}
routing:
  retry: {{max_attempts: 2}}
  rules:
    - name: cheap-for-ml
      when: {{teams: [ml]}}
      route_to: gpt-4o-mini
  fallbacks:
    gpt-4o: [gpt-4o-mini]
"""


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def edit(anchor: str, replacement: str, text: str = BASE) -> str:
    assert text.count(anchor) == 1, anchor
    return text.replace(anchor, replacement)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.problems


def line_of(text: str, marker: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def assert_problem(tmp_path: Path, text: str, marker: str, path: str, message: str) -> None:
    found = problems(tmp_path, text)
    expected = f"{tmp_path / 'gateway.yaml'}:{line_of(text, marker)}: {path}: {message}"
    assert any(p.startswith(expected) for p in found), "\n".join([f"want: {expected}", *found])


def test_the_base_document_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), {})
    assert sorted(cfg.models) == ["claude", "gpt-4o", "gpt-4o-mini"]
    assert [r.name for r in cfg.rules.rules] == ["cheap-for-ml"]
    assert cfg.teams["ml"].may_use("gpt-4o-mini") and not cfg.teams["ml"].may_use("gpt-4o")


# ---------------------------------------------------------------------- unknown keys, anywhere

UNKNOWN_KEYS = [
    ("top level", "version: 1\n", "version: 1\nbogus_key: 1\n", "bogus_key"),
    ("server", "  port: 8080\n", "  port: 8080\n  bogus_key: 1\n", "server.bogus_key"),
    (
        "server.timeouts",
        "{connect_s: 2, total_s: 30}",
        "{connect_s: 2, total_s: 30, bogus_key: 1}",
        "server.timeouts.bogus_key",
    ),
    (
        "provider",
        "    api_key: secret\n",
        "    api_key: secret\n    bogus_key: 1\n",
        "providers.mock.bogus_key",
    ),
    (
        "deployment",
        "        model: mock-gpt\n",
        "        model: mock-gpt\n        bogus_key: 1\n",
        "models.gpt-4o.deployments[0].bogus_key",
    ),
    ("team", "    budget: {usd: 10}\n", "    budget: {usd: 10}\n    bogus_key: 1\n", "teams.demo.bogus_key"),
    ("budget", "{usd: 10}", "{usd: 10,\n      bogus_key: 1}", "teams.demo.budget.bogus_key"),
    (
        "key",
        "        key: sk-demo\n",
        "        key: sk-demo\n        bogus_key: 1\n",
        "teams.demo.keys[0].bogus_key",
    ),
    ("retry", "{max_attempts: 2}", "{max_attempts: 2,\n    bogus_key: 1}", "routing.retry.bogus_key"),
    (
        "rule",
        "      route_to: gpt-4o-mini\n",
        "      route_to: gpt-4o-mini\n      bogus_key: 1\n",
        "routing.rules[0].bogus_key",
    ),
    ("when", "{teams: [ml]}", "{teams: [ml],\n        bogus_key: 1}", "routing.rules[0].when.bogus_key"),
    ("routing", "  retry:", "  bogus_key: 1\n  retry:", "routing.bogus_key"),
]


@pytest.mark.parametrize(
    ("anchor", "replacement", "path"), [c[1:] for c in UNKNOWN_KEYS], ids=[c[0] for c in UNKNOWN_KEYS]
)
def test_unknown_key_names_file_path_and_line(
    tmp_path: Path, anchor: str, replacement: str, path: str
) -> None:
    text = edit(anchor, replacement)
    assert_problem(tmp_path, text, "bogus_key", path, "unknown key 'bogus_key'")


def test_misspelled_when_condition_is_not_silently_ignored(tmp_path: Path) -> None:
    # A typo in a condition must not turn the rule into a catch-all.
    text = edit("{teams: [ml]}", "{team: [ml]}")
    assert_problem(tmp_path, text, "{team: [ml]}", "routing.rules[0].when.team", "unknown key 'team'")


# ---------------------------------------------------------------------- wrong types and values

WRONG_TYPES = [
    ("port string", "  port: 8080", "  port: eighty", "server.port", "Input should be a valid integer"),
    ("port range", "  port: 8080", "  port: 70000", "server.port", "Input should be less than or equal"),
    (
        "timeout zero",
        "{connect_s: 2, total_s: 30}",
        "{connect_s: 0, total_s: 30}",
        "server.timeouts.connect_s",
        "Input should be greater than 0",
    ),
    (
        "provider type",
        "    type: openai",
        "    type: gopher",
        "providers.mock.type",
        "Input should be 'openai', 'azure' or 'anthropic'",
    ),
    (
        "base_url",
        "    base_url: http://127.0.0.1:9100/v1",
        "    base_url: ftp://x",
        "providers.mock.base_url",
        "Value error, must start with http:// or https://",
    ),
    (
        "deployments not a list",
        "    deployments:\n      - {provider: mock, model: mock-claude}",
        "    deployments: flat",
        "models.claude.deployments",
        "Input should be a valid list",
    ),
    (
        "budget negative",
        "{usd: 10}",
        "{usd: -1}",
        "teams.demo.budget.usd",
        "Input should be greater than or equal to 0",
    ),
    (
        "budget empty",
        "{usd: 10}",
        "{period: daily}",
        "teams.demo.budget",
        "Value error, a budget needs `usd`, `tokens` or both",
    ),
    (
        "retry attempts",
        "{max_attempts: 2}",
        "{max_attempts: 0}",
        "routing.retry.max_attempts",
        "Input should be greater than or equal to 1",
    ),
    (
        "teams not a list",
        "{teams: [ml]}",
        "{teams: ml}",
        "routing.rules[0].when.teams",
        "Input should be a valid list",
    ),
    (
        "flag",
        "{teams: [ml]}",
        "{stream: perhaps}",
        "routing.rules[0].when.stream",
        "Input should be a valid boolean",
    ),
    (
        "range empty",
        "{teams: [ml]}",
        "{prompt_tokens: {}}",
        "routing.rules[0].when.prompt_tokens",
        "Value error, a range needs",
    ),
    (
        "range type",
        "{teams: [ml]}",
        "{budget_used: {gte: lots}}",
        "routing.rules[0].when.budget_used.gte",
        "Input should be a valid number",
    ),
    (
        "time",
        "{teams: [ml]}",
        "{time: {between: '9-5'}}",
        "routing.rules[0].when.time.between",
        "String should match pattern",
    ),
    (
        "day",
        "{teams: [ml]}",
        "{time: {between: '09:00-17:00', days: [funday]}}",
        "routing.rules[0].when.time.days[0]",
        "Input should be 'mon'",
    ),
    (
        "operation",
        "{teams: [ml]}",
        "{operation: images}",
        "routing.rules[0].when.operation",
        "Input should be 'chat'",
    ),
    # A value that fits no member of ``str | list[str]``: one line, no pydantic-internal path parts.
    (
        "route_to",
        "      route_to: gpt-4o-mini",
        "      route_to: 5",
        "routing.rules[0].route_to",
        "Input should be a valid string or Input should be a valid list",
    ),
    (
        "route_to item",
        "      route_to: gpt-4o-mini",
        "      route_to: [gpt-4o, [x]]",
        "routing.rules[0].route_to[1]",
        "Input should be a valid string",
    ),
    (
        "threshold",
        "      route_to: gpt-4o-mini",
        "      auto: {strong: gpt-4o, weak: gpt-4o-mini, threshold: 1.5}",
        "routing.rules[0].auto.threshold",
        "Input should be less than or equal to 1",
    ),
    (
        "rule name",
        "    - name: cheap-for-ml",
        "    - name: 'has spaces'",
        "routing.rules[0].name",
        "String should match pattern",
    ),
    ("mapping key", "  ml:\n", "  'bad team!':\n", "teams.bad team!", "invalid name 'bad team!'"),
    ("version", "version: 1", "version: 2", "version", "Input should be 1"),
]


@pytest.mark.parametrize(
    ("anchor", "replacement", "path", "message"),
    [c[1:] for c in WRONG_TYPES],
    ids=[c[0] for c in WRONG_TYPES],
)
def test_wrong_type_or_value(tmp_path: Path, anchor: str, replacement: str, path: str, message: str) -> None:
    text = edit(anchor, replacement)
    marker = replacement.strip().splitlines()[0]
    assert_problem(tmp_path, text, marker, path, message)


def test_a_rule_error_points_at_the_rule(tmp_path: Path) -> None:
    text = edit("      route_to: gpt-4o-mini", "      route_to: gpt-4o-mini\n      deny: not allowed")
    assert_problem(
        tmp_path,
        text,
        "- name: cheap-for-ml",
        "routing.rules[0]",
        "Value error, use at most one of `route_to`",
    )


def test_no_pydantic_internals_in_paths(tmp_path: Path) -> None:
    text = edit("      route_to: gpt-4o-mini", "      route_to: {a: b}")
    for problem in problems(tmp_path, text):
        assert "list[str]" not in problem and ".str:" not in problem and "function-" not in problem


# ---------------------------------------------------------------------- missing required keys

MISSING = [
    (
        "providers",
        "providers:\n  mock:\n    type: openai\n"
        "    base_url: http://127.0.0.1:9100/v1\n    api_key: secret\n",
        "",
        "version: 1",
        "providers",
    ),
    (
        "deployment model",
        "        model: mock-gpt\n",
        "",
        "      - provider: mock",
        "models.gpt-4o.deployments[0].model",
    ),
    (
        "provider base_url",
        "    base_url: http://127.0.0.1:9100/v1\n",
        "",
        "  mock:",
        "providers.mock.base_url",
    ),
    (
        "rule name",
        "    - name: cheap-for-ml\n      when",
        "    - when",
        "    - when",
        "routing.rules[0].name",
    ),
    (
        "auto weak",
        "      route_to: gpt-4o-mini",
        "      auto: {strong: gpt-4o}",
        "auto: {strong",
        "routing.rules[0].auto.weak",
    ),
]


@pytest.mark.parametrize(
    ("anchor", "replacement", "marker", "path"), [c[1:] for c in MISSING], ids=[c[0] for c in MISSING]
)
def test_missing_required_key(tmp_path: Path, anchor: str, replacement: str, marker: str, path: str) -> None:
    text = edit(anchor, replacement)
    assert_problem(tmp_path, text, marker, path, "required key is missing")


def test_key_needs_exactly_one_secret(tmp_path: Path) -> None:
    text = edit("        key: sk-demo\n", "")
    assert_problem(
        tmp_path, text, "      - id: demo", "teams.demo.keys[0]", "Value error, set exactly one of"
    )


# ---------------------------------------------------------------------- cross references


def test_unknown_provider(tmp_path: Path) -> None:
    text = edit("{provider: mock, model: mock-claude}", "{provider: nowhere, model: mock-claude}")
    assert_problem(
        tmp_path,
        text,
        "provider: nowhere",
        "models.claude.deployments[0].provider",
        "unknown provider 'nowhere'",
    )


def test_a_model_without_a_price_is_an_error(tmp_path: Path) -> None:
    text = edit("{provider: mock, model: mock-claude}", "{provider: mock, model: unpriced-model}")
    assert_problem(
        tmp_path,
        text,
        "unpriced-model",
        "models.claude.deployments[0].model",
        "no price for 'unpriced-model'",
    )


def test_unknown_price_entry(tmp_path: Path) -> None:
    text = edit(
        "{provider: mock, model: mock-claude}", "{provider: mock, model: my-ft, price: no-such-price}"
    )
    assert_problem(
        tmp_path, text, "no-such-price", "models.claude.deployments[0].price", "no price for 'no-such-price'"
    )


def test_a_price_entry_prices_an_unlisted_upstream_model(tmp_path: Path) -> None:
    text = edit("{provider: mock, model: mock-claude}", "{provider: mock, model: my-ft, price: mock-claude}")
    assert load_config(write(tmp_path, text), {}).models["claude"].deployments[0].price_name == "mock-claude"


UNKNOWN_MODELS = [
    ("route_to", "      route_to: gpt-4o-mini", "      route_to: ghost", "routing.rules[0].route_to"),
    (
        "route_to list",
        "      route_to: gpt-4o-mini",
        "      route_to: [gpt-4o, ghost]",
        "routing.rules[0].route_to[1]",
    ),
    (
        "rule fallbacks",
        "      route_to: gpt-4o-mini",
        "      fallbacks: [ghost]",
        "routing.rules[0].fallbacks[0]",
    ),
    (
        "auto strong",
        "      route_to: gpt-4o-mini",
        "      auto: {strong: ghost, weak: gpt-4o}",
        "routing.rules[0].auto.strong",
    ),
    (
        "auto weak",
        "      route_to: gpt-4o-mini",
        "      auto: {strong: gpt-4o, weak: ghost}",
        "routing.rules[0].auto.weak",
    ),
    (
        "default fallback target",
        "    gpt-4o: [gpt-4o-mini]",
        "    gpt-4o: [ghost]",
        "routing.fallbacks.gpt-4o[0]",
    ),
    (
        "default fallback source",
        "    gpt-4o: [gpt-4o-mini]",
        "    ghost: [gpt-4o]",
        "routing.fallbacks.ghost",
    ),
    (
        "downgrade_to",
        "{usd: 10}",
        "{usd: 10, action: downgrade, downgrade_to: ghost}",
        "teams.demo.budget.downgrade_to",
    ),
    (
        "key downgrade_to",
        "        key: sk-demo\n",
        "        key: sk-demo\n        budget: {usd: 1, action: downgrade, downgrade_to: ghost}\n",
        "teams.demo.keys[0].budget.downgrade_to",
    ),
]


@pytest.mark.parametrize(
    ("anchor", "replacement", "path"), [c[1:] for c in UNKNOWN_MODELS], ids=[c[0] for c in UNKNOWN_MODELS]
)
def test_unknown_model(tmp_path: Path, anchor: str, replacement: str, path: str) -> None:
    assert_problem(tmp_path, edit(anchor, replacement), "ghost", path, "unknown model 'ghost'")


def test_unknown_team_in_a_rule(tmp_path: Path) -> None:
    text = edit("{teams: [ml]}", "{teams: [ml, ghost]}")
    assert_problem(tmp_path, text, "ghost", "routing.rules[0].when.teams[1]", "unknown team 'ghost'")


@pytest.mark.parametrize(
    ("fallbacks", "cycle"),
    [
        pytest.param("    gpt-4o: [gpt-4o]\n", "gpt-4o -> gpt-4o", id="self"),
        pytest.param(
            "    gpt-4o: [gpt-4o-mini]\n    gpt-4o-mini: [gpt-4o]\n",
            "gpt-4o -> gpt-4o-mini -> gpt-4o",
            id="two",
        ),
        pytest.param(
            "    gpt-4o: [claude]\n    claude: [gpt-4o-mini]\n    gpt-4o-mini: [gpt-4o]\n",
            "gpt-4o -> claude -> gpt-4o-mini -> gpt-4o",
            id="three",
        ),
    ],
)
def test_fallback_cycle(tmp_path: Path, fallbacks: str, cycle: str) -> None:
    text = edit("    gpt-4o: [gpt-4o-mini]\n", fallbacks)
    marker = fallbacks.splitlines()[0]
    assert_problem(tmp_path, text, marker, "routing.fallbacks.gpt-4o", f"fallback cycle: {cycle}")


def test_a_fallback_chain_without_a_cycle_is_fine(tmp_path: Path) -> None:
    text = edit(
        "    gpt-4o: [gpt-4o-mini]\n", "    gpt-4o: [gpt-4o-mini, claude]\n    gpt-4o-mini: [claude]\n"
    )
    cfg = load_config(write(tmp_path, text), {})
    # Default fallbacks apply transitively, each model once.
    assert cfg.rules.routing.fallbacks["gpt-4o"] == ["gpt-4o-mini", "claude"]


RULES_HEAD = "  rules:\n    - name: cheap-for-ml\n      when: {teams: [ml]}\n      route_to: gpt-4o-mini\n"


def with_rules(rules: str) -> str:
    return edit(RULES_HEAD, "  rules:\n" + rules)


def test_rule_after_a_catch_all_is_unreachable(tmp_path: Path) -> None:
    text = with_rules(
        "    - name: everything\n      route_to: gpt-4o\n"
        "    - name: late\n      when: {teams: [ml]}\n      route_to: gpt-4o-mini\n"
    )
    assert_problem(
        tmp_path,
        text,
        "name: late",
        "routing.rules[1]",
        "rule 'late' is unreachable: it follows a rule that matches everything "
        "(rule 'everything' always matches first)",
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("{teams: [ml, demo]}", "{teams: [ml]}", id="teams-subset"),
        pytest.param("{models: ['*']}", "{models: [gpt-4o]}", id="models-star"),
        pytest.param("{models: [gpt-4o, claude]}", "{models: [claude]}", id="models-subset"),
        pytest.param("{tags: {env: '*'}}", "{tags: {env: prod}}", id="tag-star"),
        pytest.param("{tags: {env: prod}}", "{tags: {env: prod, app: x}}", id="tag-more-specific"),
        pytest.param("{teams: [ml]}", "{teams: [ml], stream: true}", id="extra-condition"),
        pytest.param("{prompt_tokens: {gt: 10}}", "{prompt_tokens: {gt: 10}, teams: [ml]}", id="same-range"),
    ],
)
def test_shadowed_rule(tmp_path: Path, first: str, second: str) -> None:
    text = with_rules(
        f"    - name: first\n      when: {first}\n      route_to: gpt-4o\n"
        f"    - name: second\n      when: {second}\n      route_to: gpt-4o-mini\n"
    )
    assert_problem(
        tmp_path,
        text,
        "name: second",
        "routing.rules[1]",
        "rule 'second' is shadowed (rule 'first' always matches first)",
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("{teams: [ml]}", "{teams: [ml, demo]}", id="wider-teams"),
        pytest.param("{tags: {env: prod}}", "{tags: {env: '*'}}", id="wider-tag"),
        pytest.param("{models: [gpt-4o]}", "{models: ['*']}", id="wider-models"),
        pytest.param("{stream: true}", "{stream: false}", id="other-flag"),
        pytest.param("{teams: [ml], stream: true}", "{teams: [ml]}", id="fewer-conditions"),
    ],
)
def test_reachable_rules_are_not_reported(tmp_path: Path, first: str, second: str) -> None:
    text = with_rules(
        f"    - name: first\n      when: {first}\n      route_to: gpt-4o\n"
        f"    - name: second\n      when: {second}\n      route_to: gpt-4o-mini\n"
    )
    assert [r.name for r in load_config(write(tmp_path, text), {}).rules.rules] == ["first", "second"]


def test_duplicate_rule_name(tmp_path: Path) -> None:
    text = with_rules(
        "    - name: twice\n      when: {teams: [ml]}\n      route_to: gpt-4o\n"
        "    - name: twice\n      when: {teams: [demo]}\n      route_to: gpt-4o-mini\n"
    )
    found = problems(tmp_path, text)
    assert any(": routing.rules[1].name: duplicate rule name 'twice'" in p for p in found), found


def test_duplicate_key_id(tmp_path: Path) -> None:
    text = edit("      - {id: ml, key: sk-ml}", "      - {id: demo, key: sk-ml}")
    assert_problem(tmp_path, text, "{id: demo, key: sk-ml}", "teams.ml.keys[0].id", "duplicate key id 'demo'")


def test_the_same_key_twice(tmp_path: Path) -> None:
    text = edit("      - {id: ml, key: sk-ml}", "      - {id: ml, key: sk-demo}")
    assert_problem(
        tmp_path, text, "{id: ml, key: sk-demo}", "teams.ml.keys[0]", "the same key is declared twice"
    )


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = edit("  port: 8080\n", "  port: 8080\n  port: 9090\n")
    assert_problem(tmp_path, text, "port: 9090", "server.port", "duplicate key")


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = edit("    type: openai", "    type: gopher")
    text = edit("{teams: [ml]}", "{teams: [ml], bogus_key: 1}", text)
    assert len(problems(tmp_path, text)) == 2
    text = edit("{provider: mock, model: mock-claude}", "{provider: nowhere, model: unpriced}")
    text = edit("      - {id: ml, key: sk-ml}", "      - {id: demo, key: sk-ml}", text)
    text = edit("    gpt-4o: [gpt-4o-mini]", "    gpt-4o: [gpt-4o]", text)
    assert len(problems(tmp_path, text)) == 4


def test_empty_team_allow_list_allows_nothing(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, edit("    models: [gpt-4o-mini]", "    models: []")), {})
    assert not cfg.teams["ml"].may_use("gpt-4o-mini")
    assert cfg.teams["demo"].may_use("anything")  # the default allows every model


# ---------------------------------------------------------------------- environment interpolation


def test_missing_env_var_is_an_error_with_its_line(tmp_path: Path) -> None:
    text = edit("    api_key: secret", "    api_key: ${PROVIDER_KEY_UNSET}")
    assert_problem(
        tmp_path,
        text,
        "PROVIDER_KEY_UNSET",
        "providers.mock.api_key",
        "environment variable PROVIDER_KEY_UNSET is not set "
        "(use ${PROVIDER_KEY_UNSET:-default} for a default)",
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "http://127.0.0.1:9100/v1", id="default"),
        pytest.param({"MOCK_URL": ""}, "http://127.0.0.1:9100/v1", id="empty-uses-default"),
        pytest.param({"MOCK_URL": "http://10.0.0.1:1"}, "http://10.0.0.1:1/v1", id="set"),
    ],
)
def test_env_default(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    text = edit(
        "    base_url: http://127.0.0.1:9100/v1", "    base_url: ${MOCK_URL:-http://127.0.0.1:9100}/v1"
    )
    cfg = load_config(write(tmp_path, text), env)
    assert cfg.providers["mock"].base_url == expected


def test_env_var_set(tmp_path: Path) -> None:
    text = edit("        key: sk-demo", "        key: ${DEMO_KEY}")
    cfg = load_config(write(tmp_path, text), {"DEMO_KEY": "sk-from-env"})
    assert [p.key_id for p in cfg.keys.values()] == ["demo", "ml"]
    assert len(cfg.keys) == 2


def test_env_var_in_the_middle_of_a_string(tmp_path: Path) -> None:
    text = edit("    api_key: secret", "    api_key: pre-${A}-${B:-b}-post")
    assert load_config(write(tmp_path, text), {"A": "a"}).providers["mock"].api_key == "pre-a-b-post"


# ---------------------------------------------------------------------- YAML syntax and files


@pytest.mark.parametrize(
    ("anchor", "replacement", "marker"),
    [
        pytest.param("    type: openai", "    type: [openai", "    api_key", id="unclosed-flow"),
        pytest.param("    type: openai", "    type: openai\n   bad_indent: x", "bad_indent", id="indent"),
        pytest.param("    api_key: secret", "    api_key: secret\n\tx: 1", "\tx: 1", id="tab"),
    ],
)
def test_bad_yaml_reports_file_and_line(tmp_path: Path, anchor: str, replacement: str, marker: str) -> None:
    text = edit(anchor, replacement)
    found = problems(tmp_path, text)
    assert len(found) == 1
    prefix = f"{tmp_path / 'gateway.yaml'}:"
    assert found[0].startswith(prefix) and "invalid YAML" in found[0]
    line = int(found[0][len(prefix) :].split(":", 1)[0])
    assert abs(line - line_of(text, marker)) <= 1, found


def test_merge_keys_are_rejected(tmp_path: Path) -> None:
    text = edit("  port: 8080\n", "  <<: {port: 1}\n  port: 8080\n")
    [found] = problems(tmp_path, text)
    assert found.startswith(f"{tmp_path / 'gateway.yaml'}:{line_of(text, '<<:')}:") and "merge keys" in found


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", {})
    assert info.value.problems[0].startswith(f"{tmp_path / 'nope.yaml'}: cannot read")


def test_prices_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "prices.yaml").write_text(PRICES.read_text())
    text = edit(f"prices: {PRICES}", "prices: ../prices.yaml")
    cfg = load_config(write(tmp_path / "sub", text), {})
    assert cfg.models["gpt-4o"].deployments[0].rates.input == 1_000_000  # 1.00 USD per 1M tokens


def test_missing_prices_file(tmp_path: Path) -> None:
    text = edit(f"prices: {PRICES}", "prices: nowhere.yaml")
    found = problems(tmp_path, text)
    assert found[0].startswith(f"{tmp_path / 'nowhere.yaml'}: cannot read")


def test_a_bad_price_catalog_names_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "prices.yaml").write_text(
        "version: 1\ncurrency: USD\nmodels:\n  x:\n"
        "    provider: p\n    input: 1\n    output: 1\n    oops: 2\n"
    )
    text = edit(f"prices: {PRICES}", "prices: prices.yaml")
    found = problems(tmp_path, text)
    assert f"{tmp_path / 'prices.yaml'}:8: models.x.oops: unknown key 'oops'" in found
