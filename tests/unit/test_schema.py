"""policies/schema.json is the generated schema, and every shipped gateway.yaml conforms to it.

No JSON Schema library is a dependency, so a small structural checker below walks the schema:
objects (known keys only, required keys present, named keys by pattern), arrays, ``anyOf``,
``$ref``, enums and consts, and JSON types. String patterns and numeric bounds are left to the
pydantic models (and to tests/unit/test_config_validation.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import jsonutil
from gateway.config.model import GatewayConfig
from gateway.policy.schema import schema_text

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SCHEMA_FILE = POLICIES / "schema.json"
YAML_FILES = sorted(p for p in POLICIES.rglob("*.yaml") if p.name != "prices.yaml")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not SCHEMA_FILE.exists():  # the lead generates it; a fresh checkout of this branch may not have it yet
        SCHEMA_FILE.write_text(schema_text())
    loaded: dict[str, Any] = jsonutil.loads(SCHEMA_FILE.read_bytes())
    return loaded


def test_schema_file_is_the_generated_schema() -> None:
    if not SCHEMA_FILE.exists():
        SCHEMA_FILE.write_text(schema_text())
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "policies/schema.json is stale: run `python -m gateway policy schema --out policies/schema.json`"
    )


def test_schema_is_deterministic_and_complete(schema: dict[str, Any]) -> None:
    assert schema_text() == schema_text()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == set(GatewayConfig.model_fields)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"providers", "models", "teams"}


# ---------------------------------------------------------------------- a structural checker

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def problems(node: Any, sub: dict[str, Any], root: dict[str, Any], path: str = "") -> list[str]:
    if "$ref" in sub:
        name = sub["$ref"].removeprefix("#/$defs/")
        return problems(node, root["$defs"][name], root, path)
    if "anyOf" in sub:
        branches = [problems(node, branch, root, path) for branch in sub["anyOf"]]
        return [] if any(not b for b in branches) else min(branches, key=len)
    if "const" in sub and node != sub["const"]:
        return [f"{path}: expected {sub['const']!r}"]
    if "enum" in sub and node not in sub["enum"]:
        return [f"{path}: {node!r} is not one of {sub['enum']}"]
    kind = sub.get("type")
    if kind is not None:
        ok = isinstance(node, _TYPES[kind]) and not (kind in ("integer", "number") and isinstance(node, bool))
        if not ok:
            return [f"{path}: expected {kind}, got {type(node).__name__}"]
    if isinstance(node, dict):
        return _object(node, sub, root, path)
    if isinstance(node, list) and "items" in sub:
        return [p for i, item in enumerate(node) for p in problems(item, sub["items"], root, f"{path}[{i}]")]
    return []


def _object(node: dict[str, Any], sub: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    out = [f"{path}.{key}: required" for key in sub.get("required", []) if key not in node]
    props = sub.get("properties", {})
    patterns = sub.get("patternProperties", {})
    extra = sub.get("additionalProperties", True)
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        matching = [schema for pattern, schema in patterns.items() if re.search(pattern, str(key))]
        if key in props:
            out += problems(value, props[key], root, where)
        elif matching:
            out += [p for schema in matching for p in problems(value, schema, root, where)]
        elif extra is False:
            out.append(f"{where}: unknown key")
        elif isinstance(extra, dict):
            out += problems(value, extra, root, where)
    return out


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_there_are_policies_to_check() -> None:
    names = {p.relative_to(POLICIES).as_posix() for p in YAML_FILES}
    assert "gateway.yaml" in names
    assert {n for n in names if n.startswith("examples/")} >= {
        "examples/auto-routing.yaml",
        "examples/budget-tier-downgrade.yaml",
        "examples/multi-region-failover.yaml",
        "examples/team-allow-lists.yaml",
    }


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.relative_to(POLICIES).as_posix() for p in YAML_FILES])
def test_policy_conforms_to_the_schema(path: Path, schema: dict[str, Any]) -> None:
    doc = load(path)
    assert isinstance(doc, dict)
    assert set(doc) <= set(schema["properties"]), set(doc) - set(schema["properties"])
    assert problems(doc, schema, schema) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(lambda d: d.update(bogus=1), "bogus: unknown key", id="top-level-key"),
        pytest.param(lambda d: d["server"].update(prot=1), "server.prot: unknown key", id="nested-key"),
        pytest.param(lambda d: d["server"].update(port="x"), "server.port: expected integer", id="type"),
        pytest.param(
            lambda d: d["routing"]["rules"][0].update(route_to=5),
            "routing.rules[0].route_to: expected",
            id="union",
        ),
        pytest.param(
            lambda d: d["routing"]["rules"][0]["when"].update(operation="images"),
            "routing.rules[0].when.operation: 'images' is not one of",
            id="enum",
        ),
        pytest.param(lambda d: d.pop("teams"), ".teams: required", id="required"),
        pytest.param(
            lambda d: d["models"]["gpt-4o"]["deployments"][0].update(region=1),
            "models.gpt-4o.deployments[0].region: expected string",
            id="additional-properties",
        ),
    ],
)
def test_the_checker_catches_mistakes(schema: dict[str, Any], mutate: Any, expected: str) -> None:
    doc = load(POLICIES / "gateway.yaml")
    mutate(doc)
    found = problems(doc, schema, schema)
    assert any(p.startswith(expected) for p in found), found
