"""YAML as the trainer reads it: numbers such as `1e-3` are floats (YAML 1.2), and a key
written twice in one mapping is an error instead of the last one silently winning."""

from __future__ import annotations

import re
from typing import Any

import yaml


class YamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key twice in one mapping is an error and that
    `1e-3` and `1.0e6` read as floats (YAML 1.2), not as the strings YAML 1.1 makes of them."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # YAML forbids a key twice in one mapping; PyYAML would keep the last one silently.
        first: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} appears twice in one mapping (first on "
                        f"line {first[key.value]}); YAML keeps only one, so remove the other",
                        key.start_mark)
                first[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)


YamlLoader.add_implicit_resolver(  # copies SafeLoader's table first: SafeLoader is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """Parse YAML text with `YamlLoader`."""
    return yaml.load(text, Loader=YamlLoader)
