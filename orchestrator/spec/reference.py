"""The spec reference in Markdown, generated from the pydantic SweepSpec so the docs cannot drift.

`orch docs` prints it; docs/sweeps.md embeds it and a test checks that the two are equal.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from orchestrator.spec.model import SweepSpec


def _type_name(annotation: Any) -> str:
    """A short, readable rendering of a type annotation."""
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    # A bare `|` would end the Markdown table cell, even inside backticks.
    return text.replace("typing.", "").replace("NoneType", "None").replace("|", "\\|")


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (`X`, `X | None`, a discriminated union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _submodels(arg)]
    return []


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"  # what a spec writes (`from`, not `from_`)
        subs = _submodels(field.annotation)
        if subs:
            for sub in subs:
                rows += _rows(sub, f"{key}.")
            continue
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | `{_type_name(field.annotation)}` | {_default(field)} | {desc} |")
    return rows


def spec_reference() -> str:
    """Every spec field with its type, default and meaning, as a Markdown table."""
    header = ["| field | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join(header + _rows(SweepSpec, ""))
