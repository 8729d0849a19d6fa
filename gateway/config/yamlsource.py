"""Read YAML into plain Python objects while remembering the line of every path.

Validation errors must name the file, the dotted path and the line, so the loader walks
PyYAML's node graph itself instead of using ``safe_load``. ``${VAR}`` and ``${VAR:-default}``
are interpolated in string scalars here, once, so secrets never live in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem, already formatted as ``file:line: path: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class YamlDoc:
    """A parsed document: the data, plus the line (1-based) where each path starts."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of the longest known prefix of ``path`` (pydantic locations can go deeper)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def where(self, path: Path_) -> str:
        line = self.line_of(path)
        dotted = format_path(path) or "<root>"
        return f"{self.file}:{line}: {dotted}" if line else f"{self.file}: {dotted}"


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def interpolate(value: str, env: Mapping[str, str], missing: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _ENV_REF.sub(replace, value)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.doc = YamlDoc(file=file, data=None)
        self.env = env
        self.problems: list[str] = []
        # One constructor per parse: it caches every node it builds (a module-wide one would keep
        # each reloaded document alive) and is not safe to share between reload threads.
        self.loader = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.doc.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _COLLECTION_TAGS:
            # Tags on collections (``!!set``, ``!!python/...``) would otherwise be silently dropped.
            self._problem(node, path, f"unsupported tag {node.tag}")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _problem(self, node: yaml.Node, path: Path_, message: str) -> None:
        where = f"{self.doc.file}:{node.start_mark.line + 1}"
        self.problems.append(f"{where}: {format_path(path)}: {message}" if path else f"{where}: {message}")

    def _construct(self, node: yaml.Node, path: Path_) -> Any:
        """A scalar's Python value; an unknown tag or a bad ``!!int`` is a problem with its line."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self._problem(node, path, f"invalid value: {exc.problem or exc}")
        except Exception as exc:  # PyYAML's constructors raise anything on bad input (``!!timestamp x``)
            self._problem(node, path, f"invalid value for {node.tag}: {exc}")
        return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # ``<<: *anchor``: checked before construction, which fails on it
                self._problem(key_node, path, "merge keys (<<) are not supported; repeat the keys instead")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, path, "mapping keys must be plain scalars")
                continue
            key = str(self._construct(key_node, path))
            if key in out:
                line = key_node.start_mark.line + 1
                self.problems.append(f"{self.doc.file}:{line}: {format_path((*path, key))}: duplicate key")
            out[key] = self.build(value_node, (*path, key))
            # Point at the key, not at where its (possibly nested) value starts.
            self.doc.lines[(*path, key)] = key_node.start_mark.line + 1
        return out

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        value = self._construct(node, path)
        if isinstance(value, str) and "${" in value:
            missing: list[str] = []
            value = interpolate(value, self.env, missing)
            for name in missing:
                line = node.start_mark.line + 1
                self.problems.append(
                    f"{self.doc.file}:{line}: {format_path(path)}: environment variable {name} is not set "
                    f"(use ${{{name}:-default}} for a default)"
                )
        return value


def load_yaml(path: str | Path, env: Mapping[str, str] | None = None) -> YamlDoc:
    """Parse one YAML file into a ``YamlDoc``; raises ``ConfigError`` with file:line on any problem."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{file}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x})"]) from None
    return parse_yaml(text, file, env)


def parse_yaml(text: str, file: str = "<string>", env: Mapping[str, str] | None = None) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{file}{line}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.reader.ReaderError as exc:  # a control character: it has a position, not a mark
        lineno = text.count("\n", 0, exc.position) + 1
        raise ConfigError([f"{file}:{lineno}: invalid YAML: {exc.reason}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: invalid YAML: {exc}"]) from None
    builder = _Builder(file, os.environ if env is None else env)
    builder.doc.data = {} if node is None else builder.build(node, ())
    if builder.problems:
        raise ConfigError(builder.problems)
    return builder.doc
