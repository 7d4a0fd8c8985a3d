"""Read a YAML file strictly (UTF-8, no duplicate keys) with one-line errors: the one YAML reader
of suites, recipes and the doctor.

It sits in its own module so that `config` (suites) and `recipes` (paper recipes) can both import
it at the top: when it lived in `config`, `recipes` had to import it back from there inside a
function, an import circle config -> recipes -> config.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key repeated in one mapping is an error (PyYAML keeps the last one,
    which silently drops a setting)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:  # the mapping's own keys: a `<<: *anchor` merge may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            continue  # an unhashable key: construct_mapping reports it as a YAML error
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"{key_node.start_mark.name}: key '{key}' appears twice in one mapping "
                              f"(lines {seen[key].start_mark.line + 1} and {line})",
                              "keep one of them (YAML would silently keep the last)")
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file strictly: UTF-8 only, no duplicate keys; one-line ConfigError otherwise."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", "check the path and permissions") from e
    try:
        stream = io.StringIO(text)
        stream.name = str(path)  # for the marks in error messages
        return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}", "fix the syntax (indentation, colons, brackets)") from e
