"""W&B's own checks of a sweep's search section, run without importing W&B's `sweeps` package
where its JSON schema suffices (the package pulls in numpy, scipy and requests)."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

from orchestrator.search import plain_parameter
from orchestrator.spec.document import SpecDoc


@functools.cache
def sweeps_validator() -> Any:
    """W&B's sweep config validator (`sweeps.config.schema.validator`), built the same way from
    the schema file its package ships, without importing the package (numpy and requests, most
    of the start-up of `orch validate`)."""
    import jsonschema

    root = importlib.util.find_spec("sweeps").submodule_search_locations[0]
    schema = json.loads((Path(root) / "config" / "schema.json").read_text())
    formats = jsonschema.FormatChecker()
    formats.checks("float")(lambda value: isinstance(value, float))
    formats.checks("integer")(lambda value: isinstance(value, int))
    return jsonschema.Draft7Validator(schema=schema, format_checker=formats)


@functools.cache
def distributions() -> list[str]:
    """The `distribution` names W&B's sweep config schema allows."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            dist = node.get("properties", {}).get("distribution", {})
            for key in ("enum", "const"):
                found.update(dist[key] if isinstance(dist.get(key), list) else
                             [dist[key]] if key in dist else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(sweeps_validator().schema)
    return sorted(found)


def _parameter_problem(param: Any) -> str | None:
    """What is wrong with a parameter where W&B's schema only says that no form fits it (its
    best match then blames the other keys): an unknown distribution, an empty `values`."""
    if not isinstance(param, dict):
        return None
    dist = param.get("distribution")
    if isinstance(dist, str) and dist not in (known := distributions()):
        close = difflib.get_close_matches(dist, known, n=1)
        guess = f" (did you mean `{close[0]}`?)" if close else ""
        return f"unknown distribution `{dist}`{guess}; W&B's are: {', '.join(known)}"
    if param.get("values") == []:
        return "`values` is empty: list at least one value"
    return None


def sweeps_schema_errors(doc: SpecDoc,
                         search: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(YAML location, paragraph) of every problem W&B's checks find in a search config."""
    import jsonschema.exceptions

    validator = sweeps_validator()
    out = []
    seen = set()
    for err in validator.iter_errors(search):
        seen.add(err.message)
        loc = tuple(err.absolute_path)
        best = jsonschema.exceptions.best_match(err.context) if err.context else None
        if loc[:1] == ("parameters",) and len(loc) == 2:
            text = _parameter_problem(err.instance) or (
                "not a valid W&B parameter. Allowed forms: {value: V}, {values: [..]}, "
                "{min: A, max: B, distribution: D}, {distribution: normal, mu, sigma}, or "
                "{parameters: {..}} for nesting" + (f" ({best.message})" if best else ""))
            out.append((loc, doc.error(loc, text)))
        elif best is not None:  # "not valid under any of the given schemas": the closest
            inner = tuple(best.absolute_path)  # from the root: it includes loc
            out.append((loc, doc.error(inner, f"{best.message} (W&B sweep config schema)")))
        else:
            out.append((loc, doc.error(loc, f"{err.message} (W&B sweep config schema)")))
    try:
        extra = _sweeps_violations(search)
    except ValueError as err:
        extra = [str(err)]
    names = sorted(search.get("parameters", {}), key=len, reverse=True)
    for msg in dict.fromkeys(extra):
        if msg in seen:
            continue
        name = next((n for n in names if n in msg), None)
        loc = ("parameters", name) if name else ()
        if not loc or loc not in {l for l, _ in out}:
            out.append((loc, doc.error(loc, msg)))
    # In the file's order: jsonschema's own order follows Python's hash seed from run to run.
    return sorted(out, key=lambda item: (doc.line(item[0]) or 0, item[1]))


def _sweeps_violations(search: dict[str, Any]) -> list[str]:
    """W&B's own checks of a sweep config (`schema_violations_from_proposed_config`).

    Beyond its JSON schema, it checks each parameter (bounds, probabilities, deprecated
    distributions) by building the engine's scipy-based parameters, seconds of every `orch
    validate`; plain parameters pass those checks, so they skip them. A spec's search config
    never has `scheduler` or `metrics`, the function's other checks.
    """
    params = search.get("parameters")
    if isinstance(params, dict) and all(
            plain_parameter(p) or (isinstance(p, dict) and set(p) == {"parameters"})
            for p in params.values()):
        return [err.message for err in sweeps_validator().iter_errors(search)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps import schema_violations_from_proposed_config

    return schema_violations_from_proposed_config(search)
