"""Checks sweep parameter names and values against the program's JSON Schema.

Names are dotted paths (`model.n_head`). A path walks `$ref`s and unions: under a discriminated
union such as `attention` (oneOf causal | local | sparse) a name is valid when any member has it;
which member a trial gets is the trainer's business, checked per trial by `validate --batch`.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

from orchestrator.search import param_names
from orchestrator.spec.document import SpecDoc


Schema = dict[str, Any]


def _deref(node: Schema, root: Schema) -> Schema:
    """Follow `$ref: #/$defs/X` chains."""
    while "$ref" in node:
        ref = node["$ref"]
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _alternatives(node: Schema, root: Schema) -> list[Schema]:
    """The schemas a value may match: the members of anyOf/oneOf, or the node itself."""
    node = _deref(node, root)
    members = node.get("anyOf") or node.get("oneOf")
    if not members:
        return [node]
    out: list[Schema] = []
    for member in members:
        out.extend(_alternatives(member, root))
    return out


def _children(node: Schema, root: Schema) -> dict[str, list[Schema]]:
    """Field name -> schemas of that field, over every object alternative of `node`."""
    fields: dict[str, list[Schema]] = {}
    for alt in _alternatives(node, root):
        for name, sub in (alt.get("properties") or {}).items():
            fields.setdefault(name, []).append(sub)
    return fields


def resolve(name: str, root: Schema) -> list[Schema] | str:
    """The field schemas a dotted name points at, or a one-sentence reason it names nothing."""
    level: list[Schema] = [root]
    walked: list[str] = []
    for part in name.split("."):
        fields: dict[str, list[Schema]] = {}
        for node in level:
            for key, subs in _children(node, root).items():
                fields.setdefault(key, []).extend(subs)
        where = f"`{'.'.join(walked)}`" if walked else "the top level"
        if not fields:
            return f"`{'.'.join(walked)}` is a value, not a section, so `{name}` names nothing"
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean `{'.'.join([*walked, close[0]])}`?" if close else "."
            return (f"`{name}` is not a field of the trainer config: {where} has "
                    f"{', '.join(sorted(fields))}{hint}")
        level = fields[part]
        walked.append(part)
    return level


def describe(fields: list[Schema], root: Schema) -> str:
    """What a field accepts, in words: `integer > 0`, `one of 'a', 'b'`, ..."""
    words = []
    for field in fields:
        for alt in _alternatives(field, root):
            words.append(_describe_one(alt))
    seen: list[str] = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return " or ".join(seen) or "any value"


def _describe_one(alt: Schema) -> str:
    if "const" in alt:
        return repr(alt["const"])
    if "enum" in alt:
        return "one of " + ", ".join(repr(v) for v in alt["enum"])
    kind = alt.get("type", "any value")
    bounds = []
    for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                     ("exclusiveMaximum", "<")):
        if key in alt:
            bounds.append(f"{sym} {alt[key]}")
    if kind == "array" and "prefixItems" in alt:
        kind = f"list of {len(alt['prefixItems'])}"
    return " ".join([str(kind), " and ".join(bounds)]).strip()


def value_error(value: Any, fields: list[Schema], root: Schema) -> str | None:
    """None when `value` fits one of the field schemas, else what is allowed."""
    import jsonschema  # only a spec with parameters needs it: other commands start faster
    import jsonschema.exceptions

    errors = []
    for field in fields:
        schema = {**field, "$defs": root.get("$defs", {})}
        found = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if not found:
            return None
        errors += found
    why = ""
    if isinstance(value, (dict, list)):  # say which part of a section or list is wrong
        best = jsonschema.exceptions.best_match(errors)
        inner = "".join(f"[{p!r}]" for p in best.absolute_path)
        why = f" ({best.message}{' at ' + inner if inner else ''})"
    return f"{value!r} does not fit: allowed is {describe(fields, root)}{why}"


def _kind(fields: list[Schema], root: Schema) -> set[str]:
    return {alt.get("type", "any") for f in fields for alt in _alternatives(f, root)}


def _bounds(fields: list[Schema], root: Schema) -> tuple[float, float, bool, bool]:
    """The loosest numeric bounds over the numeric alternatives: (lo, hi, lo_open, hi_open)."""
    lo, hi, lo_open, hi_open = math.inf, -math.inf, False, False
    for f in fields:
        for alt in _alternatives(f, root):
            if alt.get("type") not in ("integer", "number"):
                continue
            a_lo = alt.get("minimum", alt.get("exclusiveMinimum", -math.inf))
            a_hi = alt.get("maximum", alt.get("exclusiveMaximum", math.inf))
            if a_lo < lo:
                lo, lo_open = a_lo, "exclusiveMinimum" in alt
            if a_hi > hi:
                hi, hi_open = a_hi, "exclusiveMaximum" in alt
    return lo, hi, lo_open, hi_open


# W&B distributions whose support is unbounded on one or both sides.
_UNBOUNDED = {"normal": (-math.inf, math.inf), "q_normal": (-math.inf, math.inf),
              "log_normal": (0.0, math.inf), "q_log_normal": (0.0, math.inf)}
_INT_DISTRIBUTIONS = {"int_uniform"}
_LOG_VALUE_DISTRIBUTIONS = {"log_uniform_values", "q_log_uniform_values",
                            "inv_log_uniform_values"}


def distribution_error(param: dict[str, Any], fields: list[Schema], root: Schema) -> str | None:
    """None when every value a W&B parameter can draw fits the field, else why not.

    `values` and `value` are checked value by value; `min`/`max` distributions by their range and
    by whether they draw integers or floats; unbounded ones (normal) only on unbounded fields.
    """
    if "value" in param:
        return value_error(param["value"], fields, root)
    if "values" in param:
        if not isinstance(param["values"], list):
            return None  # the W&B schema check reports the shape
        for v in param["values"]:
            err = value_error(v, fields, root)
            if err:
                return err
        return None
    kinds = _kind(fields, root)
    numeric = kinds & {"integer", "number"}
    dist = param.get("distribution")
    if not numeric:
        return (f"a numeric distribution cannot fill a field of type "
                f"{describe(fields, root)}; use `values`")
    if dist is None and "min" in param and "max" in param:
        both_int = all(isinstance(param[k], int) for k in ("min", "max"))
        dist = "int_uniform" if both_int else "uniform"
    draws_float = dist not in _INT_DISTRIBUTIONS and not (
        dist and dist.startswith("q_") and isinstance(param.get("q", 1), int))
    if draws_float and "number" not in numeric:
        return (f"distribution `{dist}` draws floats but the field is an integer; use "
                f"`int_uniform`, a `q_` distribution with an integer q, or `values`")
    lo, hi, lo_open, hi_open = _bounds(fields, root)
    if dist in _UNBOUNDED:
        s_lo, s_hi = _UNBOUNDED[dist]
        # log-normal draws are > 0, which satisfies "> 0" and ">= 0".
        if s_lo < lo or s_hi > hi:
            return (f"distribution `{dist}` is unbounded but the field allows only "
                    f"{describe(fields, root)}; use a bounded distribution")
        return None
    if not all(isinstance(param.get(k), (int, float)) for k in ("min", "max")):
        return None  # the W&B schema check reports missing or non-numeric bounds
    if dist in ("log_uniform",):
        # W&B's legacy log_uniform takes exp-space bounds: the values are e**min .. e**max.
        p_lo, p_hi = math.exp(param["min"]), math.exp(param["max"])
    else:
        p_lo, p_hi = param["min"], param["max"]
    if dist in _LOG_VALUE_DISTRIBUTIONS and p_lo <= 0:
        return f"distribution `{dist}` needs min > 0 (got {p_lo})"
    low_bad = p_lo < lo or (lo_open and p_lo <= lo)
    high_bad = p_hi > hi or (hi_open and p_hi >= hi)
    if low_bad or high_bad:
        return (f"range [{p_lo}, {p_hi}] leaves the field's bounds: allowed is "
                f"{describe(fields, root)}")
    return None


def repeated_parameters(parameters: dict[str, Any], doc: SpecDoc, grid: bool) -> list[str]:
    """A parameter set twice, as `a.b` and as `a: {parameters: {b: ...}}`, or (in a grid) a
    value listed twice in one `values`: either shrinks the sweep silently (one is dropped)."""
    seen: dict[str, tuple[Any, ...]] = {}
    problems = []
    for key, param, loc in param_names(parameters):
        if key in seen:
            problems.append(doc.error(loc, f"{key} is set twice in `parameters` (also at "
                                      f"{doc.where(seen[key])}); keep one"))
        seen.setdefault(key, loc)
        values = param.get("values") if grid and isinstance(param, dict) else None
        listed = [json.dumps(v, sort_keys=True) for v in values] \
            if isinstance(values, list) else []  # not a list: W&B's schema check says so
        twice = sorted({v for v in listed if listed.count(v) > 1})
        if twice:
            problems.append(doc.error((*loc, "values"), f"{', '.join(twice)} listed more than "
                                      "once; a grid runs each value once, so the sweep would "
                                      "have fewer points than written (a typo for another "
                                      "value?)"))
    return problems
