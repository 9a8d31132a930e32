"""Trainer config overrides as the orchestrator reads them: `key.path=value` text and nested or
dotted sections, both becoming flat {dotted.key: value} settings.

The trainer parses its own `key=value` arguments (trainer/config.py): the two packages never
import each other, and `format_value` (contract) writes values both read back unchanged.
"""

from __future__ import annotations

from typing import Any

import yaml

from orchestrator.spec.document import SpecError, read_yaml


def split_assignment(text: str) -> tuple[str, str]:
    """`key.path=value` split at its first `=`: the key stripped, the value's text as written.

    Raises ValueError when there is no `=` or no key before it."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r} is not of the form key=value")
    return key.strip(), raw


def parse_set(text: str) -> tuple[str, Any]:
    """`key.path=value` from `--set`; the value is a YAML scalar, as the trainer reads it."""
    try:
        key, raw = split_assignment(text)
    except ValueError:
        raise SpecError([f"--set {text}: not of the form key.path=value"]) from None
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{a: {b: 1}, c.d: 2}` -> `{a.b: 1, c.d: 2}`: overrides may be nested or dotted."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
