"""A spec file read: its YAML as data, the line of every key (SpecDoc), and SpecError, the
problems of a spec as paragraphs that name the file, the line and the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class SpecError(Exception):
    """Problems with a spec: one paragraph each."""

    def __init__(self, paragraphs: list[str]) -> None:
        super().__init__("\n\n".join(paragraphs))
        self.paragraphs = paragraphs


@dataclass
class SpecDoc:
    """A spec file's text parsed twice: as data, and as nodes that remember their lines."""

    path: Path
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line(self, loc: tuple[Any, ...] = ()) -> int | None:
        """The line of the deepest part of `loc` the file has (None: not in the file)."""
        loc = tuple(loc)
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return self.lines.get(loc)

    def where(self, loc: tuple[Any, ...] = ()) -> str:
        """`FILE, line N`: the line of the deepest part of `loc` the file has."""
        line = self.line(loc)
        return f"{self.path}, line {line}" if line else str(self.path)

    def error(self, loc: tuple[Any, ...], text: str) -> str:
        """One paragraph: file and line, the field, then what is wrong and what is allowed."""
        dotted = ".".join(str(p) for p in loc) or "<top level>"
        return f"{self.where(loc)}, `{dotted}`: {text}"


def _line_map(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            out[sub] = key.start_mark.line + 1  # the key's line, where the user looks
            _line_map(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)


class YamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key twice in one mapping is an error and that
    `1e-3` and `1.0e6` read as floats (YAML 1.2), not as the strings YAML 1.1 makes of them
    (the trainer reads its configs the same way)."""

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


def read_spec(path: Path) -> SpecDoc:
    """Parse a spec file, keeping the line of every key."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError([f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); a spec is a "
                         "YAML file"]) from None
    except OSError as err:
        raise SpecError([f"{path}: cannot read the spec: {err.strerror or err}"]) from None
    try:
        data = read_yaml(text)
        root = yaml.compose(text, Loader=YamlLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError([f"{path}{at}: not valid YAML: {problem}"]) from None
    doc = SpecDoc(path=path, data=data)
    if root is not None:
        _line_map(root, (), doc.lines)
    if not isinstance(data, dict):
        raise SpecError([f"{path}: a spec is a mapping with at least `name`, `base`, `method` "
                         f"and `parameters`"])
    return doc
