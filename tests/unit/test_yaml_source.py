"""``gateway.config.yamlsource``: YAML to plain data, with the line of every path.

Every configuration error the gateway prints must name ``file:line``; these tests pin the line
bookkeeping (nested maps, lists, lists of maps, anchors), the problems the reader itself reports
(duplicate keys, merge keys, tags, missing environment variables, malformed YAML), and that all
problems are collected before failing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.yamlsource import ConfigError, YamlDoc, format_path, interpolate, load_yaml, parse_yaml


def parse(text: str, env: dict[str, str] | None = None) -> YamlDoc:
    return parse_yaml(textwrap.dedent(text).lstrip("\n"), "gw.yaml", env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# ---------------------------------------------------------------- line tracking

NESTED = """
version: 1
server:
  host: 127.0.0.1
  timeouts:
    connect_s: 2
    total_s: 20
teams:
  demo:
    keys:
      - id: demo
        key: sk-demo
      - id: second
        key: sk-2
    models: [gpt-4o, gpt-4o-mini]
    tags:
      env: prod
"""


def test_data_is_plain_python() -> None:
    doc = parse(NESTED)
    assert doc.data == {
        "version": 1,
        "server": {"host": "127.0.0.1", "timeouts": {"connect_s": 2, "total_s": 20}},
        "teams": {
            "demo": {
                "keys": [{"id": "demo", "key": "sk-demo"}, {"id": "second", "key": "sk-2"}],
                "models": ["gpt-4o", "gpt-4o-mini"],
                "tags": {"env": "prod"},
            }
        },
    }
    assert doc.file == "gw.yaml"


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ((), 1),
        (("version",), 1),
        (("server",), 2),  # a key whose value is a nested map: the key's own line
        (("server", "host"), 3),
        (("server", "timeouts"), 4),
        (("server", "timeouts", "connect_s"), 5),
        (("server", "timeouts", "total_s"), 6),
        (("teams", "demo"), 8),
        (("teams", "demo", "keys"), 9),
        (("teams", "demo", "keys", 0), 10),  # a list item: the line of its dash
        (("teams", "demo", "keys", 0, "id"), 10),
        (("teams", "demo", "keys", 0, "key"), 11),
        (("teams", "demo", "keys", 1), 12),
        (("teams", "demo", "keys", 1, "key"), 13),
        (("teams", "demo", "models"), 14),
        (("teams", "demo", "models", 1), 14),  # flow sequences: same line
        (("teams", "demo", "tags", "env"), 16),
    ],
)
def test_every_path_knows_its_line(path: tuple[str | int, ...], line: int) -> None:
    doc = parse(NESTED)
    assert doc.lines[path] == line
    assert doc.line_of(path) == line


def test_a_deeper_path_falls_back_to_its_longest_known_prefix() -> None:
    # pydantic reports locations below what the YAML spells out (a missing key, a union member).
    doc = parse(NESTED)
    assert doc.line_of(("teams", "demo", "keys", 1, "budget", "usd")) == 12
    assert doc.line_of(("teams", "nope")) == 7
    assert doc.line_of(("nope",)) == 1


def test_where_formats_file_line_and_dotted_path() -> None:
    doc = parse(NESTED)
    assert doc.where(("teams", "demo", "keys", 1, "key")) == "gw.yaml:13: teams.demo.keys[1].key"
    assert doc.where(()) == "gw.yaml:1: <root>"
    assert YamlDoc(file="x.yaml", data={}).where(("a",)) == "x.yaml: a"  # no line known at all


def test_lists_of_lists_and_maps_in_lists() -> None:
    doc = parse(
        """
        rules:
          - match:
              models:
                - gpt-4o
                - - nested
          - route_to: [a, b]
        """
    )
    assert doc.data == {"rules": [{"match": {"models": ["gpt-4o", ["nested"]]}}, {"route_to": ["a", "b"]}]}
    assert doc.lines[("rules", 0, "match", "models", 0)] == 4
    assert doc.lines[("rules", 0, "match", "models", 1, 0)] == 5
    assert doc.lines[("rules", 1, "route_to")] == 6


def test_anchors_and_aliases_are_expanded() -> None:
    doc = parse(
        """
        defaults: &d
          mode: exact
        teams:
          a:
            cache: *d
        """
    )
    assert doc.data["teams"]["a"]["cache"] == {"mode": "exact"}
    assert doc.lines[("teams", "a", "cache")] == 5


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_is_an_empty_mapping(text: str) -> None:
    assert parse_yaml(text, "gw.yaml", {}).data == {}


def test_scalars_keep_their_yaml_types() -> None:
    doc = parse(
        """
        i: 3
        f: 0.5
        b: true
        n: null
        s: "3"
        d: 2026-11-01
        """
    )
    assert doc.data["i"] == 3 and doc.data["f"] == 0.5 and doc.data["b"] is True
    assert doc.data["n"] is None and doc.data["s"] == "3"
    assert str(doc.data["d"]) == "2026-11-01"


@pytest.mark.parametrize(
    ("path", "dotted"),
    [
        ((), ""),
        (("a",), "a"),
        (("a", "b"), "a.b"),
        (("a", 0, "b"), "a[0].b"),
        (("a", 0, 1), "a[0][1]"),
        ((0,), "[0]"),
    ],
)
def test_format_path(path: tuple[str | int, ...], dotted: str) -> None:
    assert format_path(path) == dotted


# ---------------------------------------------------------------- problems the reader reports


def test_duplicate_keys_are_errors_with_the_second_line() -> None:
    assert problems(
        """
        server:
          port: 1
          host: a
          port: 2
        """
    ) == ["gw.yaml:4: server.port: duplicate key"]


def test_duplicate_top_level_and_nested_keys_are_all_reported() -> None:
    found = problems(
        """
        teams:
          a:
            keys: []
          a:
            keys: []
            keys: []
        teams: {}
        """
    )
    assert found == [
        "gw.yaml:4: teams.a: duplicate key",
        "gw.yaml:6: teams.a.keys: duplicate key",
        "gw.yaml:7: teams: duplicate key",
    ]


def test_merge_keys_are_rejected_with_their_line() -> None:
    found = problems(
        """
        base: &b
          rpm: 10
        teams:
          a:
            <<: *b
            tpm: 5
        """
    )
    assert len(found) == 1
    assert found[0].startswith("gw.yaml:5: teams.a: merge keys (<<) are not supported")


def test_a_flow_merge_key_is_rejected_too() -> None:
    assert problems("a: {<<: {b: 1}}\n")[0].startswith("gw.yaml:1: a: merge keys")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: !custom x\n", "gw.yaml:2: b: invalid value: could not determine a constructor"),
        ("a: !!int twelve\n", "gw.yaml:1: a: invalid value for tag:yaml.org,2002:int"),
        ("a: !!timestamp soon\n", "gw.yaml:1: a: invalid value for tag:yaml.org,2002:timestamp"),
        ("a:\n  b: !!set {x, y}\n", "gw.yaml:2: a.b: unsupported tag tag:yaml.org,2002:set"),
        (
            "a: !!python/object/apply:os.system ['true']\n",
            "gw.yaml:1: a: unsupported tag tag:yaml.org,2002:python/object/apply:os.system",
        ),
        ("? [a, b]\n: 1\n", "gw.yaml:1: mapping keys must be plain scalars"),
    ],
)
def test_tags_and_odd_keys_are_problems_not_crashes(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_explicit_standard_scalar_tags_still_work() -> None:
    assert parse("a: !!str 123\nb: !!float 1\n").data == {"a": "123", "b": 1.0}


# ---------------------------------------------------------------- malformed YAML


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3),  # unclosed flow sequence: found where it breaks
        ("a: 1\n  b: 2\n", 2),  # bad indentation
        ("a:\n\tb: 1\n", 2),  # a tab
        ("a: 'open\n", 2),  # unterminated quote: reported at end of input
        ("a: 1\n---\nb: 2\n", 2),  # two documents
        ("a: *nowhere\n", 1),  # an undefined alias
        ("a: 1\nb: 2\nc: \x01\n", 3),  # a control character (a reader error, no mark)
        ("x: 1\n- y\n", 2),
    ],
)
def test_malformed_yaml_names_file_and_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "gw.yaml", {})
    assert len(info.value.problems) == 1
    message = info.value.problems[0]
    assert message.startswith(f"gw.yaml:{line}: invalid YAML: "), message
    assert "Traceback" not in message


def test_load_yaml_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("server:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path, {})
    assert info.value.problems == [f"{path}:3: server.port: duplicate key"]


def test_load_yaml_reports_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml(missing, {})
    assert info.value.problems[0].startswith(f"{missing}: cannot read: ")


def test_load_yaml_rejects_bytes_that_are_not_utf8_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("a: 1\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_yaml(path, {})
    assert info.value.problems == [f"{path}:2: not UTF-8 (byte 0xe9)"]


# ---------------------------------------------------------------- environment interpolation


def test_env_references_are_replaced_in_strings() -> None:
    doc = parse(
        """
        providers:
          openai:
            api_key: ${OPENAI_KEY}
            base_url: https://${HOST}:${PORT}/v1
        """,
        {"OPENAI_KEY": "sk-secret", "HOST": "example.com", "PORT": "8443"},
    )
    assert doc.data["providers"]["openai"] == {
        "api_key": "sk-secret",
        "base_url": "https://example.com:8443/v1",
    }


def test_defaults_apply_when_the_variable_is_unset_or_empty() -> None:
    doc = parse(
        """
        a: ${UNSET:-fallback}
        b: ${EMPTY:-fallback}
        c: ${SET:-fallback}
        d: ${UNSET:-}
        e: x${UNSET:-a b c}y
        """,
        {"EMPTY": "", "SET": "value"},
    )
    assert doc.data == {"a": "fallback", "b": "fallback", "c": "value", "d": "", "e": "xa b cy"}


def test_interpolated_values_stay_strings_and_non_strings_are_untouched() -> None:
    doc = parse("port: ${PORT}\nn: 5\nflag: true\n", {"PORT": "8080"})
    assert doc.data == {"port": "8080", "n": 5, "flag": True}  # pydantic coerces "8080" later


def test_missing_variables_are_errors_with_line_and_path() -> None:
    found = problems(
        """
        providers:
          openai:
            api_key: ${OPENAI_KEY}
          azure:
            api_key: ${AZURE_KEY}-${ALSO_MISSING}
        """,
        {"EMPTY": ""},
    )
    assert found == [
        "gw.yaml:3: providers.openai.api_key: environment variable OPENAI_KEY is not set "
        "(use ${OPENAI_KEY:-default} for a default)",
        "gw.yaml:5: providers.azure.api_key: environment variable AZURE_KEY is not set "
        "(use ${AZURE_KEY:-default} for a default)",
        "gw.yaml:5: providers.azure.api_key: environment variable ALSO_MISSING is not set "
        "(use ${ALSO_MISSING:-default} for a default)",
    ]


def test_an_empty_variable_without_default_counts_as_missing() -> None:
    assert "environment variable TOKEN is not set" in problems("t: ${TOKEN}\n", {"TOKEN": ""})[0]


def test_env_interpolation_in_list_items() -> None:
    doc = parse("keys:\n  - ${A}\n  - ${B:-b}\n", {"A": "a"})
    assert doc.data == {"keys": ["a", "b"]}
    assert "gw.yaml:2: keys[0]: environment variable A" in problems("keys:\n  - ${A}\n")[0]


def test_text_that_only_looks_like_a_reference_is_left_alone() -> None:
    doc = parse("a: $HOME\nb: ${1BAD}\nc: ${}\nd: '$${X}'\n", {"X": "x"})
    assert doc.data == {"a": "$HOME", "b": "${1BAD}", "c": "${}", "d": "$x"}


def test_os_environ_is_the_default_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_YAML_VAR", "from-environ")
    assert parse_yaml("a: ${GW_TEST_YAML_VAR}\n").data == {"a": "from-environ"}


def test_all_problems_are_collected_before_failing() -> None:
    found = problems(
        """
        a: ${MISSING}
        b: 1
        b: 2
        c:
          <<: {x: 1}
        """
    )
    assert [p.split(":")[1] for p in found] == ["1", "3", "5"]


@given(
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    value=st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
)
def test_interpolate_substitutes_any_value_verbatim(name: str, value: str) -> None:
    missing: list[str] = []
    out = interpolate(f"<${{{name}}}>", {name: value}, missing)
    if value:
        assert out == f"<{value}>" and missing == []
    else:
        assert out == "<>" and missing == [name]
